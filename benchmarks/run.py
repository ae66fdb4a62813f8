"""The driver: runs docs/WORKLOADS.md's workloads for every peer, each in its own process.

`run_benchmarks(...)` measures this machine's float32 matmul peak, then for every workload
runs each peer in a fresh `python -m benchmarks.child` process and turns its raw timings into
a record; `format_table(records)` prints them. Within a workload, `torch` runs first and,
with `bracket_torch`, once more last (docs/CPU_PROFILE_NOTES.md: torch itself drifts by 30% within
an hour on these shared machines); its record pools the timed repetitions of both runs.

A record (one per workload and peer; the JSON written by --json is a list of them):
  workload, peer, chars_per_s_median, chars_per_s_min, chars_per_s_max  (min/max over the
    timed repetitions), ratio_to_torch (medians), compile_s (trace + compile + first step),
    pct_peak (matmul FLOP/s as % of the measured float32 peak), peak_rss_mib (the child's),
    peak_device_mib (on a GPU: the child's peak GPU memory, else None),
  ok (the correctness check passed), check (what it saw), and: flops_per_step, gflops,
  block_steps, reps, config, version, text, machine, peak_gflops, loadavg_1m, wall_s, error,
  loss_first, loss_last (training), bracket_chars_per_s (torch: its runs before and after).
  kind ("train" | "sample" | "layer"), ratio_to_sequential (W6: chars/s over
    jaxrnn-sequential's, the sequential lax.scan; None elsewhere).
A peer that failed its check or crashed has ok = False and is marked FAIL in the table.

W6p (W6p-lstm, W6p-gru: variable lengths) runs through `benchmarks.peers_packed.run`, one
child per peer: records of kind "packed" with the same keys, chars/s counted over the valid
elements, ratio_to_torch to torch-packed's, and on jaxrnn's masked_cost_ratio (its median step
time over jaxrnn-unmasked's at the same padded shape); the table adds a line with both.

W7 (`run_layers`) runs one child per case (cell, H, T) and makes one record per measurement
(case, impl, mode): kind "layer", workload "W7", peer "jaxrnn", impl, resolved (what the impl
ran: kernel, fast, reference, deer, ...), cell, hidden_size, state_size, batch_size, seq_len,
mode ("forward" | "forward+backward"), status ("measured" | "skipped" | "failed"),
ms_per_call_median / _min / _max (over the timed calls), reps, first_call_ms, compile_s (XLA's
compile of the call, apart), memory_mib (XLA's memory analysis), ratio_to_sequential (impl
"reference"'s ms / this ms: > 1 is faster than the sequential scan), ratio_to_auto (the same
against impl "auto", the fastest sequential), iterations, residual, converged, fell_back,
nonfinite, rejected (Newton impls: jaxrnn.newton.diagnostics' SolveInfo of the forward solve),
diagnostics_s (that diagnostics call, its compile included),
estimate_s (the estimated seconds per call it was planned, or skipped, by), estimate_memory_mib
(the estimated memory of one skipped before it compiled), skip_reason, ok,
check, error, peak_rss_mib (the child's so far), version, machine, loadavg_1m, config. A skipped
measurement has ok = True (it is not a failure) and its reason in skip_reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import peers_packed
from benchmarks import workloads as wl

PEERS = ("jaxrnn", "jaxrnn-default", "jaxrnn-sequential", "torch", "torch-loop", "torch-mingru",
         "flax", "autograd", "jax-cudnn", "torch-packed", "torch-padded", "jaxrnn-unmasked")
SAMPLING_PEERS = ("jaxrnn", "torch")
# W6 (the minimal cells): jaxrnn's parallel scan and its sequential lax.scan, a PyTorch minGRU
# and, for scale, torch.nn.GRU; the other peers have no minGRU. These two run W6 only.
MIN_CELL_PEERS = ("jaxrnn", "jaxrnn-sequential", "torch-mingru", "torch")
MIN_CELL_ONLY_PEERS = ("jaxrnn-sequential", "torch-mingru")
LAYER_PEERS = ("jaxrnn",)  # W7 measures jaxrnn's layers only
GPU_ONLY_PEERS = ("jax-cudnn",)  # in the default peers on a GPU only
# W6p (variable lengths, benchmarks/peers_packed.py): its own five peers, jaxrnn and flax
# among them; the other three run W6p only.
PACKED_PEERS = peers_packed.PEERS
PACKED_ONLY_PEERS = ("torch-packed", "torch-padded", "jaxrnn-unmasked")
REQUIRES = {"jaxrnn": "jax", "jaxrnn-default": "jax", "jaxrnn-sequential": "jax", "flax": "flax",
            "torch": "torch", "torch-loop": "torch", "torch-mingru": "torch",
            "autograd": "autograd", "jax-cudnn": "jax", "torch-packed": "torch",
            "torch-padded": "torch", "jaxrnn-unmasked": "jax"}
RECORD_KEYS = ("workload", "peer", "chars_per_s_median", "chars_per_s_min", "chars_per_s_max",
               "ratio_to_torch", "compile_s", "pct_peak", "peak_rss_mib")
DEFAULT_REPEAT = 10
DEFAULT_BUDGET_S = 20.0
DEFAULT_TIMEOUT_S = 1800.0


def machine_info() -> str:
    """'<CPU model>, <cores> cores, Python <version>' (Linux: the model from /proc/cpuinfo)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def applies(workload_id: str, peer: str) -> bool:
    if workload_id == wl.LAYERS.id:
        return peer in LAYER_PEERS
    if workload_id in wl.PACKED_IDS:
        return peer in PACKED_PEERS
    if peer in PACKED_ONLY_PEERS:
        return False
    if workload_id in wl.SAMPLING:
        return peer in SAMPLING_PEERS
    if wl.TRAINING[workload_id].cell in wl.MIN_CELLS:
        return peer in MIN_CELL_PEERS
    if peer in MIN_CELL_ONLY_PEERS:
        return False
    if peer == "jax-cudnn":  # jax.experimental.rnn has an LSTM only
        return wl.TRAINING[workload_id].cell == "lstm"
    return peer != "autograd" or workload_id == "W1"


def installed(peer: str) -> bool:
    return importlib.util.find_spec(REQUIRES[peer]) is not None


def expand_workloads(ids) -> list[str]:
    """W1..W5, W7 and single ids as given; S1 becomes its two batch sizes (S1-B1, S1-B64),
    W6 its four T (W6-256 ... W6-16384), W6p its two cells (W6p-lstm, W6p-gru)."""
    out = []
    for workload_id in ids:
        if workload_id in wl.GROUPS:
            out.extend(wl.GROUPS[workload_id])
        elif (workload_id in wl.TRAINING or workload_id in wl.SAMPLING
              or workload_id in (wl.LAYERS.id, wl.SWEEP_ID) or workload_id in wl.PACKED_IDS):
            out.append(workload_id)
        else:
            raise ValueError(f"unknown workload {workload_id!r}; choose from "
                             f"{', '.join(wl.WORKLOAD_IDS)}")
    return out


def run_child(task: dict, timeout_s: float) -> dict:
    """Runs one task in `python -m benchmarks.child`; returns its result or {"error": ...}."""
    return wl.run_child(["benchmarks.child"], task, timeout_s)


def _merge_torch(first: dict, second: dict) -> dict:
    """One torch result from the runs before and after the other peers of a workload."""
    if "error" in first or "error" in second:
        return first if "error" in first else second
    merged = dict(first)
    merged["step_times"] = first["step_times"] + second["step_times"]
    merged["reps"] = first["reps"] + second["reps"]
    merged["ok"] = first["ok"] and second["ok"]
    merged["check"] = f"{first['check']}; again after the others: {second['check']}"
    merged["peak_rss_mib"] = max(first["peak_rss_mib"], second["peak_rss_mib"])
    merged["wall_s"] = first["wall_s"] + second["wall_s"]
    merged["bracket_step_s"] = [statistics.median(first["step_times"]),
                                statistics.median(second["step_times"])]
    return merged


def make_record(workload_id: str, peer: str, result: dict, peak_gflops: float,
                text: str) -> dict:
    """A record from a child's result (timings still raw)."""
    workload = wl.get(workload_id)
    record = {key: None for key in RECORD_KEYS}
    record.update(workload=workload_id, peer=peer, ok=False, text=text,
                  peak_gflops=peak_gflops, ratio_to_sequential=None,
                  kind="sample" if workload_id in wl.SAMPLING else "train")
    if "error" in result:
        record.update(error=result["error"], check=result["error"], wall_s=result.get("wall_s"))
        return record
    if workload_id in wl.SAMPLING:
        chars = workload.batch_size * result["length"]  # per "step": one generate call
        flops_per_char = wl.sampling_flops_per_char(workload, result["vocab_size"])
        flops = flops_per_char * chars
    else:
        chars = workload.chars_per_step
        flops = wl.step_flops(workload, result["vocab_size"], cell=result.get("cell"))
    stats = wl.chars_stats(result["step_times"], chars)
    achieved = flops * stats["chars_per_s_median"] / chars
    record.update(stats)
    record.update(
        compile_s=result["compile_s"], peak_rss_mib=result["peak_rss_mib"],
        peak_device_mib=result.get("peak_device_mib"),
        pct_peak=100.0 * achieved / (peak_gflops * 1e9) if peak_gflops else None,
        ok=bool(result["ok"]), check=result["check"], flops_per_step=flops,
        gflops=achieved / 1e9, block_steps=result["block_steps"], reps=result["reps"],
        config=result.get("config"), version=result.get("version"),
        loadavg_1m=result.get("loadavg_1m"), wall_s=result.get("wall_s"))
    for key in ("bracket_step_s", "loss_first", "loss_last", "length", "cell"):
        if key in result:
            record[key] = result[key]
    if "bracket_step_s" in result:
        record["bracket_chars_per_s"] = [chars / t for t in result["bracket_step_s"]]
    return record


def run_benchmarks(workloads=wl.DEFAULT_WORKLOADS, peers=None, *,
                   repeat: int = DEFAULT_REPEAT, budget_s: float = DEFAULT_BUDGET_S,
                   quick: bool = False, text: str | None = None, bracket_torch: bool = True,
                   steps_per_call: int | None = None, torch_threads: int | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "auto",
                   tf32: bool = True, layers: dict | None = None, log=print,
                   on_workload=None) -> list[dict]:
    """Runs every (workload, peer) pair; returns the records (see the module docstring).

    Args:
      workloads: ids among wl.WORKLOAD_IDS (S1: both batch sizes; W6: its four T) or single
        ids (W6-1024).
      peers: names among PEERS; peers whose package is not installed are skipped with a note.
      repeat: at most this many timed repetitions per peer...
      budget_s: ...fewer when they would take longer than this (never fewer than 3).
      quick: tiny blocks and samples, no warm-up: a smoke test; the figures mean nothing.
      text: the tiny-shakespeare file (default: $JAXRNN_TINYSHAKESPEARE or data/), else
        synthetic tokens.
      bracket_torch: run torch again after the other peers of each workload and pool both.
      steps_per_call: the `jaxrnn` peer's K on every workload instead of its tuned one.
      torch_threads: torch's threads instead of os.cpu_count() (docs/WORKLOADS.md: threads =
        cores).
      timeout_s: a peer's process running longer than this is stopped and marked FAIL.
      device: "cpu", "gpu", or "auto" (the GPU when JAX or torch sees one).
      tf32: on a GPU, float32 matmuls in TF32 on both sides (speed) or not (parity).
      peers: None = every peer that applies on the device (jax-cudnn only on a GPU).
      layers: W7's options (`layer_options`: grid, cells, hidden_sizes, seq_lens, impls,
        budget_s, total_budget_s, max_iters); None: the defaults.
      on_workload: called with the records so far after each workload (and each W7 case),
        e.g. to save them, so that a run cut short keeps what it measured.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu; got {device!r}")
    peers_given = peers is not None
    peers = list(PEERS if peers is None else peers)
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    workload_ids = expand_workloads(workloads)
    text_file = wl.text_path(text)
    text_note = wl.describe_text(text_file)
    runnable = []
    for peer in peers:
        if installed(peer):
            runnable.append(peer)
        else:
            log(f"note: skipping peer {peer}: {REQUIRES[peer]} is not installed "
                f"(pip install -e '.[torch,bench]')")
    log(f"data: {text_note}")
    machine = machine_info()
    load = os.getloadavg()[0]
    log(f"machine: {machine}; load average {load:.1f}"
        + ("  (busy: timings will be noisy)" if load > 0.5 * os.cpu_count() else ""))

    peak = run_child({"kind": "peak", "quick": quick, "device": device, "tf32": tf32},
                     timeout_s)
    if "error" in peak:
        log(f"note: matmul peak failed ({peak['error']}); no % of peak")
        peak_gflops = None
        device = "cpu" if device == "auto" else device
    else:
        device = peak["device"]
        peak_gflops = max(peak["gflops"].values())
        shown = ", ".join(f"{k} {v:.0f}" for k, v in peak["gflops"].items())
        kind = "TF32" if peak.get("tf32") else "float32"
        log(f"{kind} matmul peak ({device}): {peak_gflops:.0f} GFLOP/s (best of {shown}; "
            f"{peak['size']}x{peak['size']})")
    if device == "gpu":
        log(f"device: GPU (torch = cuDNN); TF32 {'on' if tf32 else 'off'} on every side")
        machine += " + GPU"
    elif not peers_given:
        runnable = [p for p in runnable if p not in GPU_ONLY_PEERS]

    records = []
    for workload_id in workload_ids:
        workload = wl.get(workload_id)
        if workload_id == wl.SWEEP_ID:  # W8 brings its own peers (sweep_workload.PEERS)
            from benchmarks import sweep_workload

            records.extend(sweep_workload.run(quick=quick, repeat=repeat, budget_s=budget_s,
                                              text=text_file, device=device, tf32=tf32,
                                              timeout_s=timeout_s, log=log))
            if on_workload is not None:
                on_workload(records)
            continue
        if workload_id in wl.PACKED_IDS:  # W6p: its own driver (benchmarks/peers_packed.py)
            packed = [p for p in runnable if applies(workload_id, p)]
            records.extend(peers_packed.run(
                [workload_id], packed, quick=quick, repeat=repeat, budget_s=budget_s,
                bracket_torch=bracket_torch, torch_threads=torch_threads, device=device,
                tf32=tf32, timeout_s=timeout_s, peak_gflops=peak_gflops, machine=machine,
                log=log))
            if on_workload is not None:
                on_workload(records)
            continue
        if workload_id == wl.LAYERS.id:
            if not any(applies(workload_id, p) for p in runnable):
                log(f"note: skipping {workload_id}: it measures the jaxrnn peer only, which "
                    f"is not among the peers")
            else:
                records.extend(run_layers(
                    layer_options(layers, quick), repeat=repeat, quick=quick,
                    timeout_s=timeout_s, device=device, tf32=tf32, machine=machine,
                    log=log, on_case=(None if on_workload is None else
                                      lambda done: on_workload(records + done))))
                if on_workload is not None:
                    on_workload(records)
            continue
        kind = "sample" if workload_id in wl.SAMPLING else "train"
        order = [p for p in runnable if applies(workload_id, p)]
        if "torch" in order:  # torch first (and, bracketing, last)
            order.remove("torch")
            order.insert(0, "torch")
            if bracket_torch and len(order) > 1:
                order.append("torch")
        log(f"{workload_id}: {workload.describe()}")
        results = {}
        for peer in order:
            task = dict(kind=kind, workload=workload_id, peer=peer, text=text_file,
                        repeat=repeat, budget_s=budget_s, quick=quick,
                        steps_per_call=steps_per_call, torch_threads=torch_threads,
                        device=device, tf32=tf32)
            loadavg = os.getloadavg()[0]
            result = run_child(task, timeout_s)
            result.setdefault("loadavg_1m", loadavg)
            if peer in results:
                result = _merge_torch(results[peer], result)
            results[peer] = result
            log("  " + _progress_line(workload_id, peer, result))
        workload_records = [make_record(workload_id, peer, result, peak_gflops, text_note)
                            for peer, result in results.items()]
        for record in workload_records:
            record["machine"] = machine
        for base_peer, key in (("torch", "ratio_to_torch"),
                               ("jaxrnn-sequential", "ratio_to_sequential")):
            base = next((r for r in workload_records if r["peer"] == base_peer), None)
            for record in workload_records:
                if base and base["chars_per_s_median"] and record["chars_per_s_median"]:
                    record[key] = record["chars_per_s_median"] / base["chars_per_s_median"]
        records.extend(sorted(workload_records, key=lambda r: PEERS.index(r["peer"])))
        if on_workload is not None:
            on_workload(records)
    return records


def _progress_line(workload_id: str, peer: str, result: dict) -> str:
    if "error" in result:
        return f"{peer:17s} FAILED: {result['error']}"
    chars = (wl.get(workload_id).batch_size * result["length"] if "length" in result
             else wl.get(workload_id).chars_per_step)
    median = chars / statistics.median(result["step_times"])
    flag = "ok" if result["ok"] else "FAIL"
    return (f"{peer:17s} {median:12,.0f} chars/s  ({result['reps']} reps of "
            f"{result['block_steps']}, {result['wall_s']:.0f} s)  {flag}: {result['check']}")


# ---------------------------------------------------------------------------- W7: layers


LAYER_OPTION_KEYS = ("grid", "cells", "hidden_sizes", "seq_lens", "impls", "budget_s",
                     "total_budget_s", "max_iters")


def layer_options(options: dict | None = None, quick: bool = False) -> dict:
    """W7's options, every key filled in: `options` (None values and missing keys take the
    defaults) over the grid's defaults ("default", "full", or under --quick "quick")."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = set(options) - set(LAYER_OPTION_KEYS)
    if unknown:
        raise ValueError(f"unknown W7 option(s) {', '.join(sorted(unknown))}")
    grid = options.get("grid") or ("quick" if quick else "default")
    hidden_sizes, seq_lens = wl.LAYERS.grid(grid)
    out = dict(grid=grid, cells=wl.LAYERS.cells, hidden_sizes=hidden_sizes, seq_lens=seq_lens,
               impls=wl.LAYERS.impls, budget_s=wl.W7_BUDGET_S[grid],
               total_budget_s=wl.W7_TOTAL_BUDGET_S[grid], max_iters=wl.LAYERS.max_iters)
    out.update(options)
    if not out["total_budget_s"]:
        out["total_budget_s"] = None  # 0: no total
    for key in ("cells", "hidden_sizes", "seq_lens", "impls"):
        out[key] = tuple(out[key])
    bad = [c for c in out["cells"] if c not in wl.LAYERS.cells]
    if bad:
        raise ValueError(f"unknown W7 cell(s) {', '.join(bad)}; choose from "
                         f"{', '.join(wl.LAYERS.cells)}")
    bad = [i for i in out["impls"] if i not in wl.LAYERS.impls]
    if bad:
        raise ValueError(f"unknown W7 impl(s) {', '.join(bad)}; choose from "
                         f"{', '.join(wl.LAYERS.impls)}")
    for key in ("hidden_sizes", "seq_lens"):
        if not out[key] or min(out[key]) < 1:
            raise ValueError(f"W7 {key.replace('_', ' ')} must be positive integers")
    if not out["budget_s"] > 0 or not out["max_iters"] >= 1:
        raise ValueError("the W7 budget must be positive and max_iters at least 1")
    # the reference runs first in every case: the others are checked against it
    out["impls"] = tuple(sorted(out["impls"], key=wl.LAYERS.impls.index))
    return out


def run_layer_child(task: dict, timeout_s: float) -> dict:
    """A W7 case's child; on a crash or a timeout, the measurements it wrote before it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (wl.ROOT, env.get("PYTHONPATH")) if p)
    if task.get("device") == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    with tempfile.TemporaryDirectory(prefix="jaxrnn-bench-") as tmp:
        task = {**task, "out": os.path.join(tmp, "result.json")}
        start = time.monotonic()
        error = None
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.child", json.dumps(task)],
                                  cwd=wl.ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
            if proc.returncode != 0:
                lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
                error = f"exit {proc.returncode}: " + " | ".join(lines[-3:])
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout_s:.0f} s"
        result = {"measurements": []}
        if os.path.exists(task["out"]):
            with open(task["out"]) as f:
                result = json.load(f)
    result["wall_s"] = time.monotonic() - start
    if error:
        result["error"] = error
    return result


def _layer_record(case: dict, measurement: dict, result: dict, options: dict,
                  machine: str, loadavg: float) -> dict:
    cell, hidden = case["cell"], case["hidden_size"]
    record = {key: None for key in RECORD_KEYS}
    record.update(
        kind="layer", workload=wl.LAYERS.id, peer="jaxrnn", impl=measurement["impl"],
        resolved=measurement.get("resolved"), cell=cell, hidden_size=hidden,
        state_size=wl.state_size(cell, hidden), batch_size=case["batch_size"],
        seq_len=case["seq_len"], mode=measurement["mode"], status=measurement["status"],
        ms_per_call_median=None, ms_per_call_min=None, ms_per_call_max=None,
        reps=measurement.get("reps"),
        first_call_ms=(None if measurement.get("first_call_s") is None
                       else 1e3 * measurement["first_call_s"]),
        compile_s=measurement.get("compile_s"),
        memory_mib=(None if measurement.get("memory_bytes") is None
                    else measurement["memory_bytes"] / 2**20),
        ratio_to_sequential=None, ratio_to_auto=None, iterations=None, residual=None,
        converged=None, fell_back=None, nonfinite=None, rejected=None, diagnostics_s=None,
        estimate_s=measurement.get("estimate_s"),
        estimate_memory_mib=(None if measurement.get("estimate_memory_bytes") is None
                             else measurement["estimate_memory_bytes"] / 2**20),
        skip_reason=measurement.get("reason"),
        ok=measurement["status"] == "skipped" or bool(measurement.get("ok")),
        check=measurement.get("check") or measurement.get("reason"),
        error=measurement.get("error"), peak_rss_mib=measurement.get("peak_rss_mib"),
        version=result.get("version"), machine=machine, loadavg_1m=loadavg,
        config={"budget_s": options["budget_s"], "max_iters": options["max_iters"],
                "grid": options["grid"]})
    for key in ("ms_per_call_median", "ms_per_call_min", "ms_per_call_max", "iterations",
                "residual", "converged", "fell_back", "nonfinite", "rejected", "diagnostics_s"):
        if key in measurement:
            record[key] = measurement[key]
    if record["status"] == "skipped":
        record["check"] = "skipped: " + (measurement.get("reason") or "")
    return record


def _layer_ratios(case_records: list[dict]) -> None:
    """ratio_to_sequential / ratio_to_auto: impl reference's / auto's ms over each one's."""
    for mode in wl.MODES:
        same = {r["impl"]: r for r in case_records if r["mode"] == mode}
        for base_impl, key in (("reference", "ratio_to_sequential"), ("auto", "ratio_to_auto")):
            base = same.get(base_impl)
            if not base or not base["ms_per_call_median"]:
                continue
            for record in same.values():
                if record["ms_per_call_median"]:
                    record[key] = base["ms_per_call_median"] / record["ms_per_call_median"]


def run_layers(options: dict, *, repeat: int, quick: bool, timeout_s: float, device: str,
               tf32: bool, machine: str, log=print, on_case=None) -> list[dict]:
    """W7: every case of the grid in `options` (`layer_options`), one child each, in
    wl.layer_cases' order; measurements over the budgets are skipped (wl.plan_layer_case) and
    recorded with their estimate and reason. Returns the records."""
    log(f"{wl.LAYERS.id}: {wl.LAYERS.describe()}")
    total = options["total_budget_s"]
    log(f"  grid {options['grid']}: cells {', '.join(options['cells'])}, H "
        f"{', '.join(map(str, options['hidden_sizes']))}, T "
        f"{', '.join(map(str, options['seq_lens']))}; impls {', '.join(options['impls'])}; "
        f"budget {options['budget_s']:g} s per measurement, "
        + (f"{total:g} s in all" if total else "no total budget"))
    warmup = 0 if quick else 1
    memory_limit = wl.memory_limit_bytes()
    history, records = [], []
    start = time.monotonic()
    for cell, hidden, steps in wl.layer_cases(options["cells"], options["hidden_sizes"],
                                              options["seq_lens"]):
        case = dict(cell=cell, hidden_size=hidden, seq_len=steps, batch_size=wl.LAYERS.batch_size)
        runs, skipped = wl.plan_layer_case(history, cell, hidden, steps, options["impls"],
                                           wl.MODES, budget_s=options["budget_s"],
                                           repeat=repeat, warmup=warmup,
                                           memory_limit=memory_limit)
        time_left = None if total is None else total - (time.monotonic() - start)
        if time_left is not None and time_left <= 0:
            skipped += [dict(run, reason="W7's total time budget was spent") for run in runs]
            runs = []
        loadavg = os.getloadavg()[0]
        result = {"measurements": []}
        if runs:
            task = dict(kind="layer", workload=wl.LAYERS.id, peer="jaxrnn",
                        case=dict(case, runs=runs), repeat=repeat, quick=quick,
                        budget_s=options["budget_s"], max_iters=options["max_iters"],
                        time_left_s=1e9 if time_left is None else time_left,
                        history=history, device=device, tf32=tf32)
            # a case runs many measurements: at least 2 x budget + 60 s for each of them
            result = run_layer_child(task, max(timeout_s, len(runs) * (
                2 * options["budget_s"] + 60.0)))
            if result.get("memory_limit_bytes"):
                memory_limit = result["memory_limit_bytes"]
        measured = {(m["impl"], m["mode"]): m for m in result["measurements"]}
        for run in runs:  # what the child did not get to (it crashed or timed out)
            if (run["impl"], run["mode"]) not in measured:
                measured[(run["impl"], run["mode"])] = dict(
                    run, status="failed", ok=False,
                    error=result.get("error", "no result"), check=result.get("error"))
        for skip in skipped:
            measured[(skip["impl"], skip["mode"])] = dict(skip, status="skipped")
        case_records = [_layer_record(case, measured[(impl, mode)], result, options, machine,
                                      loadavg)
                        for impl in options["impls"] for mode in wl.MODES
                        if (impl, mode) in measured]
        _layer_ratios(case_records)
        for m in measured.values():
            seconds = (None if m.get("ms_per_call_median") is None
                       else m["ms_per_call_median"] / 1e3)
            if seconds is None and m["status"] == "skipped":
                seconds, estimated = m.get("estimate_s"), True
            else:
                estimated = False
            if seconds is not None:
                memory = m.get("memory_bytes", m.get("estimate_memory_bytes"))
                history.append(dict(cell=cell, impl=m["impl"], mode=m["mode"],
                                    hidden_size=hidden, seq_len=steps, call_s=seconds,
                                    memory_bytes=memory, estimated=estimated))
        records.extend(case_records)
        counts = {status: sum(r["status"] == status for r in case_records)
                  for status in ("measured", "skipped", "failed")}
        log(f"  {cell} H={hidden} T={steps}: {counts['measured']} measured, "
            f"{counts['skipped']} skipped, {counts['failed']} failed "
            f"({result.get('wall_s', 0):.0f} s)"
            + (f"; {result['error']}" if result.get("error") else ""))
        if on_case is not None:
            on_case(records)
    return records


# ---------------------------------------------------------------------------- the table


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def format_table(records: list[dict]) -> str:
    """The training and sampling records' table (workload, peer, chars/s median [min-max],
    ratio to torch, ratio to jaxrnn-sequential where W6 ran, compile s, % peak, RSS, check),
    then W7's (`format_layer_table`)."""
    layer_records = [r for r in records if r.get("kind") == "layer"]
    records = [r for r in records if r.get("kind") != "layer"]
    tables = []
    if records or not layer_records:
        tables.append(_format_speed_table(records))
    packed_summary = peers_packed.format_summary(records)  # W6p: jaxrnn's two targets
    if packed_summary:
        tables[-1] += "\n" + packed_summary
    if layer_records:
        tables.append(format_layer_table(layer_records))
    return "\n\n".join(tables)


def _format_speed_table(records: list[dict]) -> str:
    on_gpu = any(r.get("peak_device_mib") is not None for r in records)
    memory = "GPU MiB" if on_gpu else "RSS MiB"
    sequential = any(r.get("ratio_to_sequential") is not None for r in records)
    header = (f"{'workload':9s} {'peer':17s} {'chars/s median [min-max]':>32s} {'x torch':>8s} "
              + (f"{'x seq':>7s} " if sequential else "")
              + f"{'compile s':>9s} {'% peak':>7s} {memory:>8s}  check")
    lines = [header, "-" * len(header)]
    previous = None
    for r in records:
        if previous is not None and r["workload"] != previous:
            lines.append("")
        previous = r["workload"]
        if r["chars_per_s_median"] is None:
            speed = "-"
        else:
            speed = (f"{r['chars_per_s_median']:,.0f} [{r['chars_per_s_min']:,.0f}-"
                     f"{r['chars_per_s_max']:,.0f}]")
        check = "ok" if r["ok"] else f"FAIL ({r.get('check')})"
        memory_mib = r.get("peak_device_mib") if on_gpu else r["peak_rss_mib"]
        lines.append(f"{r['workload']:9s} {r['peer']:17s} {speed:>32s} "
                     f"{_fmt(r['ratio_to_torch'], '.2f'):>8s} "
                     + (f"{_fmt(r.get('ratio_to_sequential'), '.2f'):>7s} " if sequential
                        else "")
                     + f"{_fmt(r['compile_s'], '.2f'):>9s} "
                     f"{_fmt(r['pct_peak'], '.1f'):>7s} "
                     f"{_fmt(memory_mib, '.0f'):>8s}  "
                     f"{check}")
    return "\n".join(lines)


def _ms(value) -> str:
    return "-" if value is None else (f"{value:.3g}" if value < 1000 else f"{value:,.0f}")


def format_layer_table(records: list[dict]) -> str:
    """W7: per case and mode, each impl's ms per call median [min-max], its ratios to the
    sequential scan (impl reference) and to the fastest sequential (impl auto; > 1: faster),
    the Newton iterations (* fell back to the sequential scan, unconverged), compile s, XLA's
    memory estimate, and the check (or why it was skipped)."""
    header = (f"{'cell':5s} {'H':>4s} {'T':>6s} {'mode':8s} {'impl':11s} {'ran':10s} "
              f"{'ms/call median [min-max]':>28s} {'x seq':>7s} {'x auto':>7s} {'iters':>6s} "
              f"{'compile s':>9s} {'MiB':>7s}  check")
    lines = [f"{wl.LAYERS.id} ({wl.LAYERS.name}, B={wl.LAYERS.batch_size}, float32)", header,
             "-" * len(header)]
    previous = None
    for r in records:
        key = (r["cell"], r["hidden_size"], r["seq_len"])
        if previous is not None and key != previous:
            lines.append("")
        previous = key
        if r["ms_per_call_median"] is None:
            speed = "-"
        else:
            speed = (f"{_ms(r['ms_per_call_median'])} [{_ms(r['ms_per_call_min'])}-"
                     f"{_ms(r['ms_per_call_max'])}]")
        iters = "-" if r.get("iterations") is None else (
            f"{r['iterations']}" + ("*" if r.get("fell_back") else ""))
        if r["status"] == "skipped":
            check = r["check"]
        else:
            check = ("ok" if r["ok"] else "FAIL") + (f" ({r['check']})" if r.get("check") else "")
        mode = "fwd" if r["mode"] == "forward" else "fwd+bwd"
        lines.append(f"{r['cell']:5s} {r['hidden_size']:4d} {r['seq_len']:6d} {mode:8s} "
                     f"{r['impl']:11s} {(r.get('resolved') or '-'):10s} {speed:>28s} "
                     f"{_fmt(r.get('ratio_to_sequential'), '.2f'):>7s} "
                     f"{_fmt(r.get('ratio_to_auto'), '.2f'):>7s} {iters:>6s} "
                     f"{_fmt(r.get('compile_s'), '.1f'):>9s} "
                     f"{_fmt(r.get('memory_mib'), '.0f'):>7s}  {check}")
    if any(r.get("fell_back") for r in records):
        lines.append("* not converged within max_iters: the layer was recomputed by the "
                     "sequential scan (exact; its time included)")
    return "\n".join(lines)


def format_notes(records: list[dict]) -> str:
    """Per workload: its definition and FLOPs; the torch bracket; the peers' configurations
    (W7: its grid, budgets and version, once)."""
    lines = []
    seen = set()
    for r in records:
        if r.get("kind") == "layer":
            if r["workload"] not in seen:
                seen.add(r["workload"])
                config = r.get("config") or {}
                counts = {s: sum(x.get("status") == s for x in records)
                          for s in ("measured", "skipped", "failed")}
                lines.append(f"{r['workload']}: {wl.LAYERS.describe()}")
                lines.append(f"  jaxrnn          {r.get('version')}; grid {config.get('grid')}, "
                             f"budget {config.get('budget_s')} s per measurement, max_iters "
                             f"{config.get('max_iters')}; {counts['measured']} measured, "
                             f"{counts['skipped']} skipped, {counts['failed']} failed")
            continue
        if r["workload"] not in seen:
            seen.add(r["workload"])
            workload = wl.get(r["workload"])
            flops = r.get("flops_per_step")
            unit = "one generate call" if r["workload"] in wl.SAMPLING else "one step"
            lines.append(f"{r['workload']}: {workload.describe()}"
                         + (f"; matmul FLOPs of {unit}: {flops / 1e9:.4g} G" if flops else ""))
        extra = [r["version"]] if r.get("version") else []
        if r.get("config"):
            extra.append(", ".join(f"{k}={v}" for k, v in r["config"].items()))
        if r.get("bracket_chars_per_s"):
            a, b = r["bracket_chars_per_s"]
            extra.append(f"torch before/after the others: {a:,.0f} / {b:,.0f} chars/s")
        if r.get("block_steps") is not None:
            extra.append(f"{r['reps']} timed reps of {r['block_steps']}")
        if extra:
            lines.append(f"  {r['peer']:17s} " + "; ".join(extra))
    return "\n".join(lines)
