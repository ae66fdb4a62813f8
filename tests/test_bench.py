"""The benchmark harness (benchmarks/, scripts/bench.py): FLOPs, batches and checks, then a
smoke run of the real command on W1 and W2 with tiny blocks (--quick --repeat 1)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import run as bench
from benchmarks import workloads as wl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_step_flops():
    # W2, per character: layer 0 (65 + 128) x 4*128, layer 1 (128 + 128) x 4*128, head
    # 128 x 65 multiply-adds; x2 FLOPs each, x3 for forward + backward, x B*T characters.
    macs = (65 + 128) * 512 + (128 + 128) * 512 + 128 * 65
    assert wl.step_flops(wl.W2) == 3 * 2 * macs * 50 * 50
    # W1: U [100, 65], W [100, 100], V [65, 100] over 25 characters.
    assert wl.step_flops(wl.W1) == 3 * 2 * (65 * 100 + 100 * 100 + 100 * 65) * 25
    assert wl.sampling_flops_per_char(wl.SAMPLING["S1-B1"]) == 2 * macs


def test_stream_batch_matches_jaxrnn():
    from jaxrnn.data import stream_batch

    tokens = (np.arange(1000) * 7 % 65).astype(np.int32)
    for step in (0, 1, 7, 8, 9):  # 8 windows per epoch: step 8 starts the next epoch
        inputs, targets, reset = wl.stream_batch(tokens, step, 4, 30)
        want = stream_batch(jnp.asarray(tokens), step, 4, 30)
        np.testing.assert_array_equal(inputs, want[0])
        np.testing.assert_array_equal(targets, want[1])
        assert reset == bool(want[2])


def test_synthetic_text_is_learnable():
    tokens, vocab_size = wl.load_tokens(None)
    assert vocab_size == 65 and tokens.dtype == np.int32
    assert len(np.unique(tokens)) == 65

    def entropy(counts):
        p = counts[counts > 0] / counts.sum()
        return -(p * np.log(p)).sum()

    unigram = entropy(np.bincount(tokens, minlength=65))
    pairs = np.bincount(tokens[:-1].astype(np.int64) * 65 + tokens[1:], minlength=65 * 65)
    conditional = entropy(pairs) - unigram
    # skewed frequencies and a predictable next symbol: a model can learn it
    assert unigram < math.log(65) - 0.5 and conditional < unigram - 1.0


def test_loss_check():
    assert wl.loss_check(np.linspace(4.2, 3.3, 40))[0]
    ok, why = wl.loss_check([4.2] * 40)
    assert not ok and "did not drop" in why
    ok, why = wl.loss_check([4.2, 3.9, math.nan, 3.0])
    assert not ok and "non-finite" in why
    assert not wl.loss_check([4.2])[0]
    # the drop is read over the first max_steps; finiteness over all of them
    rising_late = np.concatenate([np.linspace(4.2, 3.3, 40), np.linspace(3.3, 5.0, 40)])
    assert wl.loss_check(rising_late, max_steps=40)[0]
    assert not wl.loss_check(rising_late, max_steps=80)[0]
    assert not wl.loss_check(np.append(rising_late, math.inf), max_steps=40)[0]


def test_sample_check():
    rng = np.random.default_rng(0)
    assert wl.sample_check(rng.integers(0, 65, (4, 500)))[0]
    assert not wl.sample_check(np.zeros((1, 500), np.int64))[0]
    assert not wl.sample_check(np.full((2, 10), 70))[0]


def test_failed_peers_are_flagged():
    crashed = bench.make_record("W2", "flax", {"error": "exit 1: boom"}, 100.0, "text")
    result = {"step_times": [0.04, 0.05, 0.045], "compile_s": 1.0, "peak_rss_mib": 300.0,
              "ok": False, "check": "loss 4.2 -> 4.2 over 30 steps (did not drop by 2%)",
              "block_steps": 10, "reps": 3, "vocab_size": 65}
    no_drop = bench.make_record("W2", "torch", result, 100.0, "text")
    assert not crashed["ok"] and not no_drop["ok"]
    assert no_drop["chars_per_s_median"] == pytest.approx(2500 / 0.045)
    table = bench.format_table([crashed, no_drop])
    assert table.count("FAIL") == 2 and "boom" in table and "did not drop" in table


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown peer"):
        bench.run_benchmarks(["W1"], ["jax"], log=lambda *_: None)
    with pytest.raises(ValueError, match="unknown workload"):
        bench.expand_workloads(["W9"])
    assert bench.expand_workloads(["W2", "S1"]) == ["W2", "S1-B1", "S1-B64"]


def test_missing_peers_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(bench, "installed", lambda peer: peer != "flax")
    notes = []
    records = bench.run_benchmarks(["W1"], ["flax"], quick=True, log=notes.append)
    assert records == []
    assert any("skipping peer flax" in note for note in notes)


def test_gpu_only_peers_stay_out_of_a_default_cpu_run(monkeypatch):
    """With no --peers, a CPU run leaves jax-cudnn out (no cuDNN there); on a GPU it is in."""
    seen = []

    def fake_child(task, timeout_s):
        if task["kind"] == "peak":
            return {"gflops": {"numpy": 100.0}, "size": 8, "device": task["device"],
                    "tf32": False}
        seen.append((task["device"], task["peer"]))
        return {"error": "not run"}

    monkeypatch.setattr(bench, "run_child", fake_child)
    bench.run_benchmarks(["W2"], device="cpu", log=lambda *_: None)
    assert seen and all(device == "cpu" for device, _ in seen)
    assert "jax-cudnn" not in {peer for _, peer in seen}
    seen.clear()
    records = bench.run_benchmarks(["W2", "W5"], device="gpu", log=lambda *_: None)
    assert ("gpu", "jax-cudnn") in seen
    # jax.experimental.rnn has an LSTM only: no GRU record for it
    assert {r["workload"] for r in records if r["peer"] == "jax-cudnn"} == {"W2"}
    with pytest.raises(ValueError, match="device must be"):
        bench.run_benchmarks(["W2"], device="tpu", log=lambda *_: None)


def _run_bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "scripts/bench.py", "--quick", "--repeat", "1",
                           "--no-bracket", "--torch-threads", "1", "--json", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _check_records(records, workloads, peers):
    installed = [p for p in peers if importlib.util.find_spec(bench.REQUIRES[p])]
    want = {(w, p) for w in workloads for p in installed if bench.applies(w, p)}
    assert {(r["workload"], r["peer"]) for r in records} == want
    for r in records:
        assert set(bench.RECORD_KEYS) <= set(r), r
        assert r["ok"], r["check"]
        assert r["chars_per_s_min"] <= r["chars_per_s_median"] <= r["chars_per_s_max"]
        assert r["compile_s"] >= 0 and r["peak_rss_mib"] > 0 and r["pct_peak"] > 0
        assert r["loss_last"] < r["loss_first"]
        if importlib.util.find_spec("torch"):
            assert r["ratio_to_torch"] > 0


def test_bench_smoke(tmp_path):
    """The real command on W1 and W2: every record has its keys and passed its check.

    jax-cudnn asked for on a CPU runs jax.experimental.rnn's reference scan on the cuDNN
    weight layout (its GPU path is measured on a lent GPU: BENCHMARKS.md)."""
    peers = ["jaxrnn", "torch", "autograd", "jax-cudnn"]
    stdout, records = _run_bench(tmp_path, "--workloads", "W1,W2", "--peers", ",".join(peers))
    _check_records(records, ["W1", "W2"], peers)
    assert "chars/s median [min-max]" in stdout and "float32 matmul peak" in stdout


@pytest.mark.slow
def test_bench_every_peer(tmp_path):
    peers = list(bench.PEERS)
    _, records = _run_bench(tmp_path, "--workloads", "W1,W2,W5", "--peers", ",".join(peers))
    _check_records(records, ["W1", "W2", "W5"], peers)
