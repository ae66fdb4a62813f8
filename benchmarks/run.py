"""The driver: runs docs/WORKLOADS.md's workloads for every peer, each in its own process.

`run_benchmarks(...)` measures this machine's float32 matmul peak, then for every workload
runs each peer in a fresh `python -m benchmarks.child` process and turns its raw timings into
a record; `format_table(records)` prints them. Within a workload, `torch` runs first and,
with `bracket_torch`, once more last (docs/PERF_NOTES.md: torch itself drifts by 30% within
an hour on these shared machines); its record pools the timed repetitions of both runs.

A record (one per workload and peer; the JSON written by --json is a list of them):
  workload, peer, chars_per_s_median, chars_per_s_min, chars_per_s_max  (min/max over the
    timed repetitions), ratio_to_torch (medians), compile_s (trace + compile + first step),
    pct_peak (matmul FLOP/s as % of the measured float32 peak), peak_rss_mib (the child's),
    peak_device_mib (on a GPU: the child's peak GPU memory, else None),
  ok (the correctness check passed), check (what it saw), and: flops_per_step, gflops,
  block_steps, reps, config, version, text, machine, peak_gflops, loadavg_1m, wall_s, error,
  loss_first, loss_last (training), bracket_chars_per_s (torch: its runs before and after).
A peer that failed its check or crashed has ok = False and is marked FAIL in the table.
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

from benchmarks import workloads as wl

PEERS = ("jaxrnn", "jaxrnn-default", "torch", "torch-loop", "flax", "autograd", "jax-cudnn")
SAMPLING_PEERS = ("jaxrnn", "torch")
GPU_ONLY_PEERS = ("jax-cudnn",)  # in the default peers on a GPU only
REQUIRES = {"jaxrnn": "jax", "jaxrnn-default": "jax", "flax": "flax", "torch": "torch",
            "torch-loop": "torch", "autograd": "autograd", "jax-cudnn": "jax"}
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
    if workload_id in wl.SAMPLING:
        return peer in SAMPLING_PEERS
    if peer == "jax-cudnn":  # jax.experimental.rnn has an LSTM only
        return wl.TRAINING[workload_id].cell == "lstm"
    return peer != "autograd" or workload_id == "W1"


def installed(peer: str) -> bool:
    return importlib.util.find_spec(REQUIRES[peer]) is not None


def expand_workloads(ids) -> list[str]:
    """W1..W5 as given; S1 becomes its two batch sizes (S1-B1, S1-B64)."""
    out = []
    for workload_id in ids:
        if workload_id == "S1":
            out.extend(wl.SAMPLING)
        elif workload_id in wl.TRAINING or workload_id in wl.SAMPLING:
            out.append(workload_id)
        else:
            raise ValueError(f"unknown workload {workload_id!r}; choose from "
                             f"{', '.join(wl.WORKLOAD_IDS)}")
    return out


def run_child(task: dict, timeout_s: float) -> dict:
    """Runs one task in `python -m benchmarks.child`; returns its result or {"error": ...}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (wl.ROOT, env.get("PYTHONPATH")) if p)
    if task.get("device") == "cpu":
        env["JAX_PLATFORMS"] = "cpu"  # a CPU run keeps JAX off any GPU the machine has
    with tempfile.TemporaryDirectory(prefix="jaxrnn-bench-") as tmp:
        task = {**task, "out": os.path.join(tmp, "result.json")}
        start = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.child", json.dumps(task)],
                                  cwd=wl.ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": timeout_s}
        wall_s = time.monotonic() - start
        if proc.returncode != 0 or not os.path.exists(task["out"]):
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            return {"error": f"exit {proc.returncode}: " + " | ".join(lines[-3:]),
                    "wall_s": wall_s}
        with open(task["out"]) as f:
            result = json.load(f)
    result["wall_s"] = wall_s
    return result


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
                  peak_gflops=peak_gflops)
    if "error" in result:
        record.update(error=result["error"], check=result["error"], wall_s=result.get("wall_s"))
        return record
    if workload_id in wl.SAMPLING:
        chars = workload.batch_size * result["length"]  # per "step": one generate call
        flops_per_char = wl.sampling_flops_per_char(workload, result["vocab_size"])
        flops = flops_per_char * chars
    else:
        chars = workload.chars_per_step
        flops = wl.step_flops(workload, result["vocab_size"])
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
    for key in ("bracket_step_s", "loss_first", "loss_last", "length"):
        if key in result:
            record[key] = result[key]
    if "bracket_step_s" in result:
        record["bracket_chars_per_s"] = [chars / t for t in result["bracket_step_s"]]
    return record


def run_benchmarks(workloads=wl.WORKLOAD_IDS, peers=None, *, repeat: int = DEFAULT_REPEAT,
                   budget_s: float = DEFAULT_BUDGET_S, quick: bool = False,
                   text: str | None = None, bracket_torch: bool = True,
                   steps_per_call: int | None = None, torch_threads: int | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "auto",
                   tf32: bool = True, log=print, on_workload=None) -> list[dict]:
    """Runs every (workload, peer) pair; returns the records (see the module docstring).

    Args:
      workloads: ids among W1..W5 and S1 (S1: both batch sizes).
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
      on_workload: called with the records so far after each workload (e.g. to save them,
        so that a run cut short keeps what it measured).
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
        torch_record = next((r for r in workload_records if r["peer"] == "torch"), None)
        for record in workload_records:
            if torch_record and torch_record["chars_per_s_median"] and record[
                    "chars_per_s_median"]:
                record["ratio_to_torch"] = (record["chars_per_s_median"]
                                            / torch_record["chars_per_s_median"])
        records.extend(sorted(workload_records, key=lambda r: PEERS.index(r["peer"])))
        if on_workload is not None:
            on_workload(records)
    return records


def _progress_line(workload_id: str, peer: str, result: dict) -> str:
    if "error" in result:
        return f"{peer:15s} FAILED: {result['error']}"
    chars = (wl.get(workload_id).batch_size * result["length"] if "length" in result
             else wl.get(workload_id).chars_per_step)
    median = chars / statistics.median(result["step_times"])
    flag = "ok" if result["ok"] else "FAIL"
    return (f"{peer:15s} {median:12,.0f} chars/s  ({result['reps']} reps of "
            f"{result['block_steps']}, {result['wall_s']:.0f} s)  {flag}: {result['check']}")


# ---------------------------------------------------------------------------- the table


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def format_table(records: list[dict]) -> str:
    """workload, peer, chars/s median [min-max], ratio to torch, compile s, % peak, RSS, check."""
    on_gpu = any(r.get("peak_device_mib") is not None for r in records)
    memory = "GPU MiB" if on_gpu else "RSS MiB"
    header = (f"{'workload':9s} {'peer':15s} {'chars/s median [min-max]':>32s} {'x torch':>8s} "
              f"{'compile s':>9s} {'% peak':>7s} {memory:>8s}  check")
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
        lines.append(f"{r['workload']:9s} {r['peer']:15s} {speed:>32s} "
                     f"{_fmt(r['ratio_to_torch'], '.2f'):>8s} {_fmt(r['compile_s'], '.2f'):>9s} "
                     f"{_fmt(r['pct_peak'], '.1f'):>7s} "
                     f"{_fmt(memory_mib, '.0f'):>8s}  "
                     f"{check}")
    return "\n".join(lines)


def format_notes(records: list[dict]) -> str:
    """Per workload: its definition and FLOPs; the torch bracket; the peers' configurations."""
    lines = []
    seen = set()
    for r in records:
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
            lines.append(f"  {r['peer']:15s} " + "; ".join(extra))
    return "\n".join(lines)
