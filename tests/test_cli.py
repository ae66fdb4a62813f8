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
