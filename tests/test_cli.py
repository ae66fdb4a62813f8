"""End to end: train, then sample, then evaluate, each as a real subprocess on a small text."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # the tensorboard extra: then the end-to-end run writes TensorBoard events too
    import tensorboardX  # noqa: F401

    TENSORBOARD = ("--tensorboard",)
except ImportError:
    TENSORBOARD = ()


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
               "--no-progress", "--final-sample", "50", *TENSORBOARD)
    assert "validation loss:" in proc.stdout and "50-character sample" in proc.stdout
    if TENSORBOARD:  # the final sample is TensorBoard text too, at the last step
        from tests.test_tensorboard import read_events

        sample = proc.stdout.split("50-character sample (best checkpoint) ---\n")[1][:-1]
        assert read_events(workdir / "tensorboard")["texts"]["final_sample"] == \
            [(40, f"```\n{sample}\n```")]
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


@pytest.mark.slow  # two cold CLI runs
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
                            "jaxrnn-train-torch", "jaxrnn-export", "jaxrnn-import"}, \
        "pip install -e . registers them"
    for ep in scripts.values():
        assert callable(ep.load()), ep
    for path in pathlib.Path(ROOT, "scripts").glob("*.py"):
        assert "sys.path" not in path.read_text(), path


# ---------------------------------------------------------------------------- --help


def _help_sections(main, capsys) -> dict[str, list[str]]:
    """{group title: [its flags]} of `main(["--help"])`'s output, and the whole text."""
    import re

    import pytest

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    sections, title = {}, None
    for line in text.splitlines():
        if re.match(r"^\S.*:$", line) and not line.startswith("usage"):
            title = line[:-1]
            sections[title] = []
        elif title is not None:
            sections[title] += re.findall(r"^  (--[\w-]+)", line)
    return sections, " ".join(text.split())  # the text with its line breaks undone


def test_help_groups_the_flags_and_shows_defaults(capsys):
    from benchmarks.cli import main as bench_main
    from jaxrnn import cli
    from torch_baselines.cli import parity_main, train_torch_main

    for main in (cli.train_main, train_torch_main, parity_main):
        sections, text = _help_sections(main, capsys)
        for name, _, default in cli.config_fields():
            group = cli.field_group(name)
            assert group != cli.OTHER_GROUP, f"{name}: give it a group in jaxrnn.cli.FIELD_GROUPS"
            assert cli.flag(name) in sections[group], (main.__name__, name, group)
        assert "--preset" in sections["run"] and "--data" in sections["data"]
        assert "(default: 256, or the preset's)" in text  # --hidden-size
        titles = list(sections)
        assert titles.index("data") < titles.index("model") < titles.index("optimisation") \
            < titles.index("output"), titles
    sections, text = _help_sections(cli.train_main, capsys)
    assert {"--workdir", "--overwrite", "--init-from", "--compile-cache"} <= set(sections["run"])
    assert {"--no-progress", "--final-sample", "--tensorboard"} <= set(sections["output"])
    assert "--encoding NAME" in text and "(default: utf-8)" in text
    assert "(default: 500)" in text  # --final-sample
    sections, _ = _help_sections(parity_main, capsys)
    assert {"--all", "--threshold", "--argmax-sample"} <= set(sections["parity"])

    sections, text = _help_sections(cli.sample_main, capsys)
    assert set(sections["sampling"]) == {"--prime", "--length", "--temperature", "--top-k",
                                         "--argmax", "--seed", "--num"}
    assert "(default: 1.0)" in text and "(default: best)" in text
    sections, _ = _help_sections(cli.evaluate_main, capsys)
    assert {"--data", "--skip-unknown", "--batch-size"} <= set(sections["data"])
    sections, _ = _help_sections(cli.prepare_data_main, capsys)
    assert set(sections["data"]) == {"--from", "--data-dir"}
    for main in (cli.sample_main, cli.evaluate_main, cli.prepare_data_main, bench_main):
        sections, _ = _help_sections(main, capsys)
        assert not sections["options"], (main.__name__, sections["options"])  # only -h
    sections, text = _help_sections(bench_main, capsys)
    assert {"--json", "--plot", "--from-json"} <= set(sections["output"])
    assert "(default: 10)" in text  # --repeat


def test_a_bool_flag_alone_means_true():
    import argparse

    from jaxrnn import cli

    parser = cli.ArgumentParser()
    cli.add_config_flags(parser)
    assert cli.config_from_args(parser.parse_args(["--tensorboard"])).tensorboard is True
    config = cli.config_from_args(parser.parse_args(["--carry-state", "false",
                                                     "--tensorboard", "no"]))
    assert config.carry_state is False and config.tensorboard is False
    plain = argparse.ArgumentParser()  # a plain parser takes the flags too, ungrouped
    cli.add_config_flags(plain)
    assert cli.config_from_args(plain.parse_args(["--hidden-size", "8"])).hidden_size == 8
