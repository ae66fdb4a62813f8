"""Non-finite values never reach a checkpoint: the run stops with a clear message, or skips.

The recipe for a reliable blow-up on a tiny model: a ReLU RNN, plain SGD, no clipping, and a
learning rate that warms up towards 1e3 (lr = step + 1), so the first steps are good and
write checkpoints, and a later one overflows. (An LSTM or GRU saturates instead: at lr 1e3 its
loss grows large but stays finite.)
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np

from jaxrnn import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOW_UP = ["--cell", "rnn_relu", "--optimizer", "sgd", "--clip", "none", "--lr", "1e3",
           "--schedule", "cosine", "--warmup-steps", "1000", "--hidden-size", "32",
           "--num-layers", "1", "--embedding-size", "16", "--batch-size", "4", "--seq-len",
           "16", "--steps", "40", "--steps-per-call", "5", "--checkpoint-every", "5",
           "--log-every", "5", "--eval-every", "20", "--no-progress", "--final-sample", "0"]


def train(tmp_path, small_text, *flags):
    data = tmp_path / "text.txt"
    data.write_text(small_text)
    workdir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "scripts/train.py", "--data", str(data),
                           "--workdir", str(workdir), *BLOW_UP, *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, workdir


def saved_params_are_finite(workdir):
    files = [p for p in os.listdir(workdir) if p.endswith(".msgpack")]
    assert files
    for name in files:
        params = ckpt_lib.read(str(workdir / name))["state"]["params"]
        assert all(np.isfinite(a).all() for a in jax.tree.leaves(params)), name


def test_nonfinite_stops_with_the_step_and_the_last_good_checkpoint(tmp_path, small_text):
    proc, workdir = train(tmp_path, small_text)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    print(f"\n[--lr 1e3] {lines[0]}")
    found = re.search(r"non-finite loss or gradient at step (\d+) \(learning rate [\d.e+]+\); nothing "
                      r"from it was saved, and the last good checkpoint is (\S+) \(step (\d+);",
                      lines[0])
    assert found, lines[0]
    bad_step, last_good, good_step = int(found[1]), found[2], int(found[3])
    assert 0 < good_step <= bad_step
    assert ckpt_lib.read(last_good)["step"] == good_step
    assert "--init-from" in lines[0] and "smaller --lr" in lines[0]
    saved_params_are_finite(workdir)
    # metrics.jsonl stops at the last logged good step.
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert max(m["step"] for m in records) <= bad_step


def test_on_nonfinite_skip_skips_and_counts(tmp_path, small_text):
    proc, workdir = train(tmp_path, small_text, "--on-nonfinite", "skip")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train_records = [m for m in records if "skipped" in m]
    assert train_records[-1]["step"] == 40
    skipped = train_records[-1]["skipped"]
    assert 0 < skipped < 40
    counts = [m["skipped"] for m in train_records]
    assert counts == sorted(counts)  # a running total
    print(f"\n[--on-nonfinite skip] skipped {skipped} of 40 steps; metrics.jsonl: "
          f"{json.dumps(train_records[-1])}")
    saved_params_are_finite(workdir)
