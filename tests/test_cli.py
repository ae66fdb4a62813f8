"""End to end: train, then sample, then evaluate, each as a real subprocess on a small text."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, check=True):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_train_sample_evaluate(tmp_path, small_text):
    data = tmp_path / "text.txt"
    data.write_text(small_text)
    workdir = tmp_path / "run"
    proc = run("scripts/train.py", "--data", str(data), "--workdir", str(workdir),
               "--hidden-size", "32", "--embedding-size", "16", "--num-layers", "1",
               "--batch-size", "8", "--seq-len", "16", "--steps", "40", "--eval-every", "20",
               "--checkpoint-every", "20", "--log-every", "10", "--val-frac", "0.1",
               "--no-progress", "--final-sample", "50")
    assert "validation loss:" in proc.stdout and "50-character sample" in proc.stdout
    for name in ("config.json", "vocab.json", "metrics.jsonl", "loss.png", "last.msgpack",
                 "best.msgpack"):
        assert (workdir / name).exists(), name
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert records[-1]["step"] == 40 and "val_loss" in records[-1]

    sample = run("scripts/sample.py", str(workdir), "--prime", "the ", "--length", "30",
                 "--num", "2", "--seed", "3").stdout
    assert sample.count("the ") >= 2 and "--- sample 1 ---" in sample
    greedy_a = run("scripts/sample.py", str(workdir), "--prime", "to", "--argmax").stdout
    greedy_b = run("scripts/sample.py", str(workdir), "--prime", "to", "--argmax",
                   "--seed", "9").stdout
    assert greedy_a == greedy_b

    result = json.loads(run("scripts/evaluate.py", str(workdir), "--data", str(data)).stdout)
    assert set(result) == {"loss_nats", "bits_per_char", "chars"}
    assert result["chars"] == len(small_text) - 1 and 0 < result["loss_nats"] < 4.5

    bad = run("scripts/sample.py", str(workdir), "--prime", "QZ€", check=False)
    assert bad.returncode == 2 and "'€'" in bad.stderr and "Traceback" not in bad.stderr


def _metrics(workdir):
    """metrics.jsonl without the wall-clock fields."""
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "chars_per_s")}
            for r in records]


def test_compile_cache_is_used_and_changes_nothing(tmp_path, small_text):
    """A run compiled afresh, and the same run from the cache, write identical metrics; with
    --compile-cache off nothing is written to the cache folder."""
    data = tmp_path / "text.txt"
    data.write_text(small_text)
    cache = tmp_path / "xla"
    flags = ["--data", str(data), "--hidden-size", "16", "--num-layers", "1",
             "--batch-size", "4", "--seq-len", "8", "--steps", "12", "--eval-every", "6",
             "--log-every", "3", "--no-progress", "--final-sample", "0"]
    run("scripts/train.py", "--workdir", str(tmp_path / "a"), "--compile-cache", "off", *flags)
    assert not cache.exists()
    run("scripts/train.py", "--workdir", str(tmp_path / "b"), "--compile-cache", str(cache),
        *flags)
    entries = set(os.listdir(cache))
    assert entries  # the compiled programs
    run("scripts/train.py", "--workdir", str(tmp_path / "c"), "--compile-cache", str(cache),
        *flags)
    assert set(os.listdir(cache)) == entries  # every program came from the cache
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b") == _metrics(tmp_path / "c")


# ---------------------------------------------------------------------------- fields and flags


def test_library_errors_name_fields_and_the_cli_shows_flags(capsys):
    import argparse

    import pytest

    from jaxrnn import cli
    from jaxrnn.config import preset
    from jaxrnn.data import Vocab
    from jaxrnn.errors import UserError
    from jaxrnn.sampling import sample_text

    cases = [(lambda: preset("default", hidden_size=0), ("hidden_size",),
              "hidden_size must be at least 1; got 0", "--hidden-size must be at least 1; got 0"),
             (lambda: preset("default", steps=0), ("steps", "minutes"),
              "steps and minutes are both 0: give steps=N or minutes=M (or both)",
              "--steps and --minutes are both 0: give --steps N or --minutes M (or both)"),
             (lambda: sample_text(None, None, Vocab.from_text("ab"), "a", 5, top_k=3), ("top_k",),
              "top_k must be in 0..2", "--top-k must be in 0..2"),
             (lambda: sample_text(None, None, Vocab.from_text("ab"), "a", 0), ("length", "num"),
              "length and num must be at least 1", "--length and --num must be at least 1")]
    for call, fields, library, command_line in cases:
        with pytest.raises(UserError) as info:
            call()
        assert info.value.fields == fields and str(info.value).startswith(library)
        assert "--" not in str(info.value)

        def main():
            call()

        with pytest.raises(SystemExit) as exit_info:
            cli.cli_main(main)()
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: {command_line}")

    # a field's name inside a path, a file name or a longer word stays as it is
    assert cli.flag_message("/x/encoding/prime.txt: encoding; errors='replace', num_layers",
                            ("encoding", "errors", "prime", "num")) == \
        "/x/encoding/prime.txt: --encoding; --errors replace, num_layers"
    assert cli.flag_message("use overwrite=True", ("overwrite",)) == "use --overwrite"
    assert cli.flag("data_path") == "--data" and cli.flag("from_path") == "--from"
    assert cli.flag("tutorial.faithful_log_softmax") == "--faithful-log-softmax"

    parser = argparse.ArgumentParser()
    cli.add_config_flags(parser)
    config = cli.config_from_args(parser.parse_args(
        ["--preset", "tutorial-rnn", "--cell", "rnn", "--faithful-log-softmax", "true"]))
    assert config.cell == "rnn_tanh" and config.tutorial.faithful_log_softmax  # "rnn": an alias
    assert cli.config_from_args(parser.parse_args([])) == preset("default")


def test_default_impl_follows_the_environment(monkeypatch):
    from jaxrnn.cli import default_impl

    for value, impl in (("off", "fast"), ("0", "fast"), ("FALSE", "fast"), ("no", "fast"),
                        ("auto", "auto"), ("on", "auto")):
        monkeypatch.setenv("JAXRNN_CPU_KERNELS", value)
        assert default_impl() == impl
    monkeypatch.delenv("JAXRNN_CPU_KERNELS")
    assert default_impl() == "auto"


def test_console_scripts_are_installed_and_scripts_are_thin():
    import importlib.metadata
    import pathlib

    scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.name.startswith("jaxrnn-")}
    assert set(scripts) == {"jaxrnn-train", "jaxrnn-sample", "jaxrnn-evaluate",
                            "jaxrnn-prepare-data", "jaxrnn-bench", "jaxrnn-parity",
                            "jaxrnn-train-torch"}, "pip install -e . registers them"
    for ep in scripts.values():
        assert callable(ep.load()), ep
    for path in pathlib.Path(ROOT, "scripts").glob("*.py"):
        assert "sys.path" not in path.read_text(), path
