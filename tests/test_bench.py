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


# ---------------------------------------------------------------------------- W6 and W7


def test_w6_w7_are_named_not_default():
    assert bench.expand_workloads(["W6"]) == ["W6-256", "W6-1024", "W6-4096", "W6-16384"]
    assert bench.expand_workloads(["W6-1024", "W7"]) == ["W6-1024", "W7"]
    assert not {"W6", "W7"} & set(wl.DEFAULT_WORKLOADS)
    assert {"W6", "W7"} <= set(wl.WORKLOAD_IDS)
    w = wl.get("W6-4096")
    assert (w.cell, w.num_layers, w.hidden_size, w.batch_size, w.seq_len, w.carry_state) == (
        "mingru", 1, 256, 16, 4096, False)
    assert [p for p in bench.PEERS if bench.applies("W6-256", p)] == [
        "jaxrnn", "jaxrnn-sequential", "torch", "torch-mingru"]
    assert [p for p in bench.PEERS if bench.applies("W7", p)] == ["jaxrnn"]
    assert not bench.applies("W2", "jaxrnn-sequential") and not bench.applies("W2",
                                                                              "torch-mingru")
    # minGRU: input projection and head, no recurrent matmul; torch's nn.GRU counts its own
    assert wl.step_flops(w) == 3 * 2 * (65 * 512 + 256 * 65) * 16 * 4096
    assert wl.step_flops(w, cell="gru") == 3 * 2 * (65 * 768 + 256 * 768 + 256 * 65) * 16 * 4096


def test_torch_mingru_matches_jaxrnn():
    """The torch-mingru peer's log-space parallel scan is jaxrnn's minGRU (float64)."""
    torch = pytest.importorskip("torch")
    import jax

    from benchmarks.peers_mingru_torch import TorchMinGRULM, mingru_parallel, mingru_sequential
    from jaxrnn import Recurrent

    torch.manual_seed(0)
    model = TorchMinGRULM(65, 16).double()
    tokens = torch.randint(0, 65, (3, 200))
    x = torch.nn.functional.one_hot(tokens, 65).double()
    h_tilde, k = model.to_hidden_and_gate(x).chunk(2, dim=-1)
    hidden = mingru_parallel(h_tilde, k)
    with jax.enable_x64(True):
        rnn = Recurrent("mingru", 65, 16, impl="reference")
        params = [[{"weight_ih": jnp.asarray(model.to_hidden_and_gate.weight.detach().numpy()),
                    "bias_ih": jnp.asarray(model.to_hidden_and_gate.bias.detach().numpy())}]]
        want, _ = rnn.apply(params, jnp.asarray(x.numpy().transpose(1, 0, 2)))
        want = np.asarray(want).transpose(1, 0, 2)
    np.testing.assert_allclose(hidden.detach().numpy(), want, atol=1e-12)
    h0 = torch.rand(3, 16, dtype=torch.float64) + 0.1  # a carried state
    torch.testing.assert_close(mingru_parallel(h_tilde, k, h0),
                               mingru_sequential(h_tilde, k, h0))
    logits, state = model(tokens)
    assert logits.shape == (3, 200, 65) and state.shape == (3, 16)


def _history(**calls):
    """W7 history entries: name 'impl__mode__cell__H__T' -> seconds per call."""
    out = []
    for name, seconds in calls.items():
        impl, mode, cell, hidden, steps = name.split("__")
        out.append(dict(impl=impl.replace("_", "-"), mode=mode.replace("_", "+"), cell=cell,
                        hidden_size=int(hidden), seq_len=int(steps), call_s=seconds,
                        memory_bytes=1e6))
    return out


def test_w7_estimates_and_skips():
    history = _history(deer__forward__gru__8__1024=0.01, reference__forward__gru__8__1024=0.002,
                       deer__forward__lstm__8__1024=0.05)
    # nothing to go on: the first case of a series always runs
    assert wl.estimate_layer(history, "gru", "elk", "forward", 8, 1024)[0] is None
    # deer scales as D^3 (and memory as D^2), linearly in T; the others as D^2
    seconds, memory, source = wl.estimate_layer(history, "gru", "deer", "forward", 32, 2048)
    assert seconds == pytest.approx(0.01 * 2 * 64) and memory == pytest.approx(1e6 * 2 * 16)
    assert "H=8 T=1024" in source
    assert wl.estimate_layer(history, "gru", "reference", "forward", 32, 1024)[0] == (
        pytest.approx(0.002 * 16))
    # the LSTM's state is (h, c): D = 2H; a forward + backward with no history: 3x the forward
    assert wl.estimate_layer(history, "lstm", "deer", "forward+backward", 16, 1024)[0] == (
        pytest.approx(3 * 0.05 * 8))
    # from H=8, T=1024 to H=32, T=16384: the reference 0.5 s per call, deer 10 s (x 5 calls)
    runs, skipped = wl.plan_layer_case(history, "gru", 32, 16384, ("reference", "deer"),
                                       wl.MODES, budget_s=30.0, repeat=10, warmup=1,
                                       memory_limit=None)
    assert [(r["impl"], r["mode"]) for r in runs] == [("reference", "forward"),
                                                      ("reference", "forward+backward")]
    assert {(s["impl"], s["mode"]) for s in skipped} == {("deer", "forward"),
                                                         ("deer", "forward+backward")}
    assert all("budget" in s["reason"] for s in skipped)
    assert skipped[0]["estimate_s"] == pytest.approx(0.01 * 16 * 64)
    runs, skipped = wl.plan_layer_case(history, "gru", 32, 1024, ("reference",), ("forward",),
                                       budget_s=30.0, repeat=10, warmup=1, memory_limit=1e6)
    assert not runs and "memory limit" in skipped[0]["reason"]


def test_w7_measure_calls_stops_over_budget():
    import time

    calls = []
    timing = wl.measure_calls(lambda: calls.append(1), repeat=5, budget_s=10.0, warmup=1)
    assert timing["reps"] == 5 and len(timing["call_times"]) == 5 and len(calls) == 7
    timing = wl.measure_calls(lambda: time.sleep(0.05), repeat=5, budget_s=0.1, warmup=1)
    assert timing["over_budget"] and timing["first_call_s"] >= 0.05


def test_w7_driver_records(monkeypatch):
    """run_layers with a fake child: records, ratios, skips by estimate and by total budget,
    a crashed child's measurements as failures, and the table."""
    tasks = []

    def fake_child(task, timeout_s):
        tasks.append(task)
        case = task["case"]
        if case["seq_len"] == 512:
            return {"measurements": [], "error": "exit -9: killed", "wall_s": 1.0}
        out = []
        for run in case["runs"]:
            ms = {"reference": 4.0, "auto": 2.0, "deer": 8.0}[run["impl"]]
            ms *= case["seq_len"] / 128 * (3 if run["mode"] != "forward" else 1)
            m = dict(run, status="measured", ok=True, check="fine", resolved=run["impl"],
                     ms_per_call_median=ms, ms_per_call_min=ms, ms_per_call_max=ms, reps=3,
                     compile_s=0.1, memory_bytes=2**20, peak_rss_mib=100.0)
            if run["impl"] == "deer":
                m.update(iterations=3, residual=1e-6, converged=True, fell_back=False)
            out.append(m)
        return {"measurements": out, "version": "fake", "wall_s": 1.0}

    monkeypatch.setattr(bench, "run_child", lambda *a: pytest.fail("not a layer task"))
    monkeypatch.setattr(bench, "run_layer_child", fake_child)
    options = bench.layer_options(dict(cells=["gru"], hidden_sizes=[8], seq_lens=[128, 256, 512],
                                       impls=["deer", "reference", "auto"], budget_s=0.09), True)
    assert options["impls"] == ("reference", "auto", "deer")  # the reference first
    records = bench.run_layers(options, repeat=1, quick=True, timeout_s=10, device="cpu",
                               tf32=True, machine="fake", log=lambda *_: None)
    assert len(records) == 3 * 3 * 2
    by = {(r["seq_len"], r["impl"], r["mode"]): r for r in records}
    first = by[(128, "deer", "forward")]
    assert first["status"] == "measured" and first["iterations"] == 3 and first["ok"]
    assert first["ratio_to_sequential"] == pytest.approx(0.5)
    assert first["ratio_to_auto"] == pytest.approx(0.25)
    assert by[(128, "reference", "forward")]["ratio_to_sequential"] == 1.0
    assert set(bench.RECORD_KEYS) <= set(first) and first["kind"] == "layer"
    # T=256: deer's forward (8 ms -> 16 ms, x 3 calls) fits 0.09 s, its forward + backward
    # (48 ms x 2 calls) does not: skipped with the estimate and the reason
    skipped = by[(256, "deer", "forward+backward")]
    assert skipped["status"] == "skipped" and skipped["ok"]
    assert skipped["estimate_s"] == pytest.approx(0.048) and "budget" in skipped["skip_reason"]
    assert by[(256, "deer", "forward")]["status"] == "measured"
    # T=512: the child crashed; what it was asked to run is a failure, the skips stay skips
    crashed = by[(512, "reference", "forward")]
    assert crashed["status"] == "failed" and not crashed["ok"] and "killed" in crashed["check"]
    assert by[(512, "deer", "forward")]["status"] == "skipped"
    table = bench.format_table(records)
    assert "ms/call median [min-max]" in table and "skipped: estimated" in table
    assert "chars/s" not in table  # no training records: no training table
    # the total budget spent: nothing more runs
    tasks.clear()
    options = dict(options, total_budget_s=1e-9)
    records = bench.run_layers(options, repeat=1, quick=True, timeout_s=10, device="cpu",
                               tf32=True, machine="fake", log=lambda *_: None)
    assert not tasks and all(r["status"] == "skipped" for r in records)
    assert "total time budget" in records[0]["skip_reason"]
    with pytest.raises(ValueError, match="unknown W7 impl"):
        bench.layer_options({"impls": ["newton"]})


@pytest.mark.slow  # a minute: W6/W7 code is covered by the tiny in-process tests above
def test_bench_w6_w7_smoke(tmp_path):
    """The real command on W6-256 (every W6 peer) and a small W7 (the GRU at H=8, T=256 by
    reference, auto and deer; --quick): every record has its fields and passed its check."""
    peers = ["jaxrnn", "jaxrnn-sequential", "torch-mingru", "torch"]
    stdout, records = _run_bench(tmp_path, "--workloads", "W6-256,W7", "--peers",
                                 ",".join(peers), "--w7-cells", "gru", "--w7-impls",
                                 "reference,auto,deer")
    train = [r for r in records if r["kind"] == "train"]
    layers = [r for r in records if r["kind"] == "layer"]
    _check_records(train, ["W6-256"], peers)
    for r in train:
        assert r["ratio_to_sequential"] > 0
    if importlib.util.find_spec("torch"):
        assert next(r for r in train if r["peer"] == "torch")["cell"] == "gru"
    assert {(r["impl"], r["mode"]) for r in layers} == {
        (i, m) for i in ("reference", "auto", "deer") for m in wl.MODES}
    for r in layers:
        assert set(bench.RECORD_KEYS) <= set(r), r
        assert r["ok"] and r["status"] == "measured", r
        assert (r["cell"], r["hidden_size"], r["seq_len"], r["batch_size"]) == ("gru", 8, 256, 8)
        assert r["ms_per_call_min"] <= r["ms_per_call_median"] <= r["ms_per_call_max"]
        assert r["ratio_to_sequential"] > 0 and r["ratio_to_auto"] > 0 and r["compile_s"] > 0
        if r["impl"] == "deer":
            assert r["iterations"] >= 1 and r["converged"] and not r["fell_back"]
        else:
            assert r["iterations"] is None and r["resolved"] in ("reference", "fast", "kernel")
    assert "x seq" in stdout and "ms/call median [min-max]" in stdout


# ---------------------------------------------------------------------------- W6p


def _tiny_packed(cell: str, **fields):
    """A W6p workload small enough for the default suite (H 16, T 20, B 4)."""
    import dataclasses

    from benchmarks.peers_packed import W6P

    tiny = dict(hidden_size=16, seq_len=20, batch_size=4, input_size=8, num_classes=3,
                lr=0.05, block_steps=2, quick_block_steps=2)
    return dataclasses.replace(W6P[f"W6p-{cell}"], **{**tiny, **fields})


def test_w6p_is_named_not_default():
    from benchmarks import peers_packed as pp

    assert bench.expand_workloads(["W6p"]) == ["W6p-lstm", "W6p-gru"]
    assert "W6p" in wl.WORKLOAD_IDS and not {"W6p"} & set(wl.DEFAULT_WORKLOADS)
    w = wl.get("W6p-gru")
    assert (w.cell, w.hidden_size, w.batch_size, w.seq_len) == ("gru", 256, 32, 500)
    assert set(p for p in bench.PEERS if bench.applies("W6p-lstm", p)) == set(pp.PEERS)
    for peer in ("torch-packed", "torch-padded", "jaxrnn-unmasked"):
        assert not any(bench.applies(w, peer) for w in ("W1", "W2", "W5", "S1-B1", "W6-256"))
    # the batch: lengths uniform in [T/8, T] from the seed, zero input past each end
    x, lengths, labels = pp.packed_batch(w)
    assert x.shape == (500, 32, 64) and lengths.min() >= 62 and lengths.max() <= 500
    assert len(set(lengths.tolist())) > 16 and labels.max() < w.num_classes
    assert np.all(x[np.arange(500)[:, None] >= lengths] == 0)
    assert np.all(x[lengths - 1, np.arange(32)] != 0)
    np.testing.assert_array_equal(pp.packed_batch(w)[1], lengths)  # fixed by the seed
    # FLOPs over the valid elements only: (64 + 256) x 3*256 per element, the head per sequence
    assert pp.step_flops(w, lengths) == 3 * 2 * (lengths.sum() * 320 * 768 + 32 * 256 * 10)


def test_w6p_tiny_run_every_peer():
    """Every W6p peer on tiny LSTM and GRU workloads, in this process: records, the check,
    the ratios to torch-packed, the masked / unmasked cost, the table's summary line."""
    pytest.importorskip("torch")
    pytest.importorskip("flax")
    from benchmarks import peers_packed as pp
    from jaxrnn import Recurrent

    workloads = [_tiny_packed("lstm"), _tiny_packed("gru")]
    records = pp.run(workloads, quick=True, repeat=1, budget_s=1.0, peak_gflops=100.0,
                     log=lambda *_: None, child=pp.run_in_process)
    assert [(r["workload"], r["peer"]) for r in records] == [
        (w.id, p) for w in workloads for p in pp.PEERS]
    for r in records:
        assert set(bench.RECORD_KEYS) <= set(r) and r["kind"] == "packed"
        assert r["ok"], r["check"]
        assert r["loss_last"] < r["loss_first"]
        assert r["chars_per_s_min"] <= r["chars_per_s_median"] <= r["chars_per_s_max"]
        assert r["ratio_to_torch"] > 0 and r["pct_peak"] > 0
    for w in workloads:
        by = {r["peer"]: r for r in records if r["workload"] == w.id}
        assert by["torch-packed"]["ratio_to_torch"] == 1.0
        assert by["torch-packed"]["reps"] == 2  # bracketed: run before and after the others
        # a forward layer's last valid output is the same padded or packed: equal first losses
        # from equal initialisations (torch's seed, jaxrnn's key)
        assert by["torch-padded"]["loss_first"] == pytest.approx(
            by["torch-packed"]["loss_first"], rel=1e-5)
        assert by["jaxrnn-unmasked"]["loss_first"] == pytest.approx(
            by["jaxrnn"]["loss_first"], rel=1e-5)
        assert by["jaxrnn"]["masked_cost_ratio"] > 0
        if Recurrent(w.cell, 8, 16).plan.unmasked == "kernel":  # the kernels built here
            assert by["jaxrnn"]["config"]["layers"] == "kernel"
            assert by["jaxrnn-unmasked"]["config"]["layers"] == "kernel"
    table = bench.format_table(records)
    for peer in pp.PEERS:
        assert peer in table
    for w in workloads:
        assert f"{w.id}: jaxrnn " in table
    assert table.count("unmasked step time at the same padded shape") == 2
    assert "x torch is the ratio to torch-packed" in table


def test_w6p_peers_flag_runs_only_those(monkeypatch):
    """--peers jaxrnn,torch-packed on W6p: only those two (torch-packed bracketing jaxrnn),
    through run_benchmarks' dispatch, with a fake child process."""
    from benchmarks import peers_packed as pp

    ran = []

    def fake_spawn(task, timeout_s):
        ran.append((task["workload"]["id"], task["peer"]))
        step_s = 0.5 if task["peer"] == "torch-packed" else 0.1
        return {"step_times": [step_s] * 3, "compile_s": 1.0, "ok": True, "check": "fine",
                "loss_first": 2.3, "loss_last": 2.0, "block_steps": 4, "reps": 3,
                "peak_rss_mib": 100.0, "wall_s": 1.0}

    def fake_child(task, timeout_s):
        assert task["kind"] == "peak", task
        return {"gflops": {"numpy": 100.0}, "size": 8, "device": "cpu", "tf32": False}

    monkeypatch.setattr(pp, "spawn", fake_spawn)
    monkeypatch.setattr(bench, "run_child", fake_child)
    records = bench.run_benchmarks(["W6p"], ["jaxrnn", "torch-packed"], device="cpu",
                                   log=lambda *_: None)
    assert ran == [(w, p) for w in ("W6p-lstm", "W6p-gru")
                   for p in ("torch-packed", "jaxrnn", "torch-packed")]
    assert [(r["workload"], r["peer"]) for r in records] == [
        (w, p) for w in ("W6p-lstm", "W6p-gru") for p in ("torch-packed", "jaxrnn")]
    jaxrnn = records[1]
    assert jaxrnn["ratio_to_torch"] == pytest.approx(5.0)
    assert jaxrnn["masked_cost_ratio"] is None  # no jaxrnn-unmasked ran
    assert "jaxrnn 5.00x torch-packed's chars/s" in bench.format_table(records)


def test_w6p_jaxrnn_and_torch_packed_losses_agree_float64():
    """From the same weights (torch_baselines.convert), jaxrnn's masked step and torch-packed's
    (and the padded variants of both) give the same losses over 3 Adam steps, in float64."""
    torch = pytest.importorskip("torch")
    import jax

    from benchmarks import peers_packed as pp
    from torch_baselines.convert import params_from_state_dict

    for cell in ("lstm", "gru"):
        w = _tiny_packed(cell, lr=0.01)
        x, lengths, labels = pp.packed_batch(w)
        torch.manual_seed(0)
        packed = pp.torch_classifier(w, packed=True).double()
        weights = {k: v.clone() for k, v in packed.state_dict().items()}
        losses = {}
        with jax.enable_x64(True):
            for masked in (True, False):
                rnn, _, logits = pp.jaxrnn_classifier(w, masked)
                params = {"rnn": params_from_state_dict(
                              rnn, {k[4:]: v.numpy().copy() for k, v in weights.items()
                                    if k.startswith("rnn.")}, jnp.float64),
                          "head": {"weight": jnp.asarray(weights["head.weight"].numpy().copy()),
                                   "bias": jnp.asarray(weights["head.bias"].numpy().copy())}}
                optimizer, step = pp.jax_train_step(logits, w)
                state = optimizer.init(params)
                batch = (jnp.asarray(x, jnp.float64), jnp.asarray(lengths), jnp.asarray(labels))
                out = []
                for _ in range(3):
                    params, state, loss = step(params, state, *batch)
                    out.append(float(loss))
                losses["jaxrnn" if masked else "jaxrnn-unmasked"] = out
        for name in ("torch-packed", "torch-padded"):
            model = pp.torch_classifier(w, packed=name == "torch-packed").double()
            model.load_state_dict(weights)
            step = pp.torch_train_step(model, w, torch.from_numpy(x).double(),
                                       torch.from_numpy(lengths), torch.from_numpy(labels))
            losses[name] = [float(step()) for _ in range(3)]
        assert losses["torch-packed"][2] < losses["torch-packed"][0]
        for name, values in losses.items():
            np.testing.assert_allclose(values, losses["torch-packed"], rtol=1e-10,
                                       err_msg=f"{cell}: {name}")


@pytest.mark.slow
def test_bench_w6p_smoke(tmp_path):
    """The real command on W6p (both cells, every peer, full size, --quick)."""
    from benchmarks import peers_packed as pp

    stdout, records = _run_bench(tmp_path, "--workloads", "W6p")
    installed = [p for p in pp.PEERS if importlib.util.find_spec(bench.REQUIRES[p])]
    assert {(r["workload"], r["peer"]) for r in records} == {
        (w, p) for w in wl.PACKED_IDS for p in installed}
    for r in records:
        assert set(bench.RECORD_KEYS) <= set(r), r
        assert r["ok"], r["check"]
        assert r["loss_last"] < r["loss_first"] and r["ratio_to_torch"] > 0
    assert "x torch is the ratio to torch-packed" in stdout
    if "jaxrnn-unmasked" in installed:
        assert stdout.count("unmasked step time at the same padded shape") >= 2
