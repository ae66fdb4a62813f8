"""One measurement in a fresh process: `python -m benchmarks.child TASK_JSON`.

The driver (`benchmarks.run`) starts one of these per (workload, peer), so that every peer
starts with clean memory and thread pools and its peak RSS is its own. TASK_JSON holds:
  kind      "train" | "sample" | "layer" (W7) | "peak" (this machine's float32 matmul peak)
  workload  a workload id (train: W1..W5, W6-256..W6-16384; sample: S1-B1, S1-B64; layer: W7)
  peer      jaxrnn | jaxrnn-default | jaxrnn-sequential | torch | torch-loop | torch-mingru |
            flax | autograd | jax-cudnn (layer: jaxrnn)
  text      the text file, or null for the synthetic text
  repeat, budget_s, quick   see benchmarks.workloads.measure and --quick
  steps_per_call  optional: the jaxrnn peer's K instead of its FASTEST one
  torch_threads   optional: torch's threads instead of the number of cores
  device    "cpu" or "gpu" (torch on CUDA; JAX sees the GPU unless JAX_PLATFORMS=cpu);
            the "peak" task takes "auto" and reports the device it found
  tf32      on a GPU: float32 matmuls in TF32 (speed runs) or in full float32 (parity runs)
  out       where to write the result (JSON)
  layer (W7) only: case ({"cell", "hidden_size", "seq_len", "batch_size", "runs"}),
            budget_s (per measurement), time_left_s (W7's total budget left), max_iters,
            history (the earlier cases' measurements, for the estimates)
The result holds the raw per-step times and the losses; the driver turns them into a record.
A layer task's result is {"version", "measurements": [...], "memory_limit_bytes"}, rewritten
after every measurement, so that a case stopped midway keeps what it measured.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from benchmarks import workloads as wl

JAX_PEERS = ("jaxrnn", "jaxrnn-default", "jaxrnn-sequential", "flax", "jax-cudnn")
TORCH_PEERS = ("torch", "torch-loop", "torch-mingru")


def _setup(task: dict) -> str:
    peer = task["peer"]
    if peer in JAX_PEERS:
        from benchmarks import peers_jax

        return peers_jax.setup(task.get("tf32", True))
    if peer in TORCH_PEERS:
        from benchmarks import peers_torch

        return peers_torch.setup(task.get("torch_threads"), task.get("device", "cpu"),
                                 task.get("tf32", True))
    if peer == "autograd":
        from benchmarks import peers_autograd

        return peers_autograd.setup()
    raise ValueError(f"unknown peer {peer!r}")


def _peak_device_mib(task: dict) -> float | None:
    """The GPU memory this peer's process used at its peak (MiB); None on CPU."""
    if task.get("device", "cpu") == "cpu":
        return None
    if task["peer"] in JAX_PEERS:
        from benchmarks import peers_jax

        return peers_jax.peak_device_mib()
    if task["peer"] in TORCH_PEERS:
        from benchmarks import peers_torch

        return peers_torch.peak_device_mib(task["device"])
    return None


def run_train(task: dict) -> dict:
    workload = wl.TRAINING[task["workload"]]
    peer = task["peer"]
    tokens, vocab_size = wl.load_tokens(task["text"])
    quick = task["quick"]
    common = dict(repeat=task["repeat"], budget_s=task["budget_s"],
                  warmup_blocks=0 if quick else 1)
    block_steps = workload.quick_block_steps if quick else workload.block_steps
    if peer in ("jaxrnn", "jaxrnn-default", "jaxrnn-sequential"):
        from benchmarks import peers_jax

        steps_per_call = workload.quick_block_steps if quick else None
        if peer in ("jaxrnn", "jaxrnn-sequential") and task.get("steps_per_call"):
            steps_per_call = task["steps_per_call"]
        result = peers_jax.train_jaxrnn(workload, peer, tokens, vocab_size,
                                        steps_per_call=steps_per_call, **common)
    elif peer == "flax":
        from benchmarks import peers_jax

        result = peers_jax.train_flax(workload, tokens, vocab_size, block_steps=block_steps,
                                      **common)
    elif peer == "jax-cudnn":
        from benchmarks import peers_jax

        result = peers_jax.train_jax_cudnn(workload, tokens, vocab_size,
                                           block_steps=block_steps, **common)
    elif peer in TORCH_PEERS:
        from benchmarks import peers_torch

        result = peers_torch.train(workload, peer, tokens, vocab_size, block_steps=block_steps,
                                   device=task.get("device", "cpu"), **common)
    elif peer == "autograd":
        from benchmarks import peers_autograd

        result = peers_autograd.train(workload, tokens, vocab_size, block_steps=block_steps,
                                      **common)
    else:
        raise ValueError(f"unknown peer {peer!r}")
    result["ok"], result["check"] = wl.loss_check(result["losses"])
    result["loss_first"], result["loss_last"] = result["losses"][0], result["losses"][-1]
    result["vocab_size"] = vocab_size
    del result["losses"]
    return result


def run_sample(task: dict) -> dict:
    sampling = wl.SAMPLING[task["workload"]]
    peer = task["peer"]
    _, vocab_size = wl.load_tokens(task["text"])
    length = sampling.quick_length if task["quick"] else sampling.length
    common = dict(length=length, repeat=task["repeat"], budget_s=task["budget_s"],
                  warmup_blocks=0 if task["quick"] else 1)
    if peer == "jaxrnn":
        from benchmarks import peers_jax

        result = peers_jax.sample_jaxrnn(sampling, vocab_size, **common)
    elif peer == "torch":
        from benchmarks import peers_torch

        result = peers_torch.sample(sampling, vocab_size, device=task.get("device", "cpu"),
                                    **common)
    else:
        raise ValueError(f"no sampling peer {peer!r}")
    # compile_s: trace + compile, not a whole first generation of `length` characters: JAX's
    # own events for jaxrnn, the first call's time over a steady one for torch
    median = sorted(result["step_times"])[len(result["step_times"]) // 2]
    result["compile_s"] = result.pop("compile_s_jax", max(0.0, result["first_block_s"] - median))
    result["ok"], result["check"] = wl.sample_check(result.pop("tokens"), vocab_size)
    result["length"] = length
    result["vocab_size"] = vocab_size
    return result


def run_layer(task: dict, version: str) -> dict:
    """W7: one case's measurements (peers_jax.layer_case), the result file rewritten after
    each one."""
    from benchmarks import peers_jax

    memory_limit = peers_jax.device_memory_limit()
    result = {"version": version, "measurements": [], "memory_limit_bytes": memory_limit}

    def write(measurements):
        result["measurements"] = measurements
        result["peak_rss_mib"] = wl.peak_rss_mib()
        with open(task["out"] + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(task["out"] + ".tmp", task["out"])

    quick = task["quick"]
    peers_jax.layer_case(task["case"], repeat=task["repeat"], budget_s=task["budget_s"],
                         warmup=0 if quick else 1,
                         deadline=time.monotonic() + task["time_left_s"],
                         max_iters=task["max_iters"], history=task.get("history", []),
                         memory_limit=memory_limit, write=write)
    write(result["measurements"])
    return result


def find_device(requested: str = "auto") -> str:
    """"gpu" when asked for, or (auto) when JAX or torch sees a CUDA GPU; else "cpu"."""
    if requested != "auto":
        return requested
    if os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":
        return "cpu"
    try:
        import jax

        if jax.default_backend() == "gpu":
            return "gpu"
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return "gpu"
    except ImportError:
        pass
    return "cpu"


def matmul_peak(size: int = 2048, reps: int = 5, device: str = "auto",
                tf32: bool = True) -> dict:
    """Best float32 GFLOP/s of a [size, size] @ [size, size] matmul in NumPy, JAX and torch.

    Each library runs one warm-up product and then `reps` timed ones; a library that is not
    installed is left out. On a GPU: JAX and torch on it, [4 * size]^2 (a small product
    does not fill an H200), TF32 as `tf32` says; NumPy is left out.
    """
    device = find_device(device)
    if device == "gpu":
        size *= 4
    flops = 2.0 * size**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    best = {}

    def time_best(fn):
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return wl.gflops(flops, min(times))

    if device == "cpu":
        best["numpy"] = time_best(lambda: a @ b)
    try:
        import jax
        import jax.numpy as jnp

        if device == "cpu" or jax.default_backend() == "gpu":
            precision = "tensorfloat32" if tf32 and device == "gpu" else "highest"
            ja, jb = jnp.asarray(a), jnp.asarray(b)
            matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
            best["jax"] = time_best(lambda: matmul(ja, jb).block_until_ready())
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(os.cpu_count())
        if device == "gpu":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()

            def product():
                torch.mm(ta, tb)
                torch.cuda.synchronize()

            best["torch"] = time_best(product)
        else:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            best["torch"] = time_best(lambda: torch.mm(ta, tb))
    except ImportError:
        pass
    return {"gflops": best, "size": size, "cores": os.cpu_count(), "device": device,
            "tf32": tf32 and device == "gpu"}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    task = json.loads(argv[0])
    if task["kind"] == "peak":
        result = matmul_peak(**({"size": 1024, "reps": 3} if task.get("quick") else {}),
                             device=task.get("device", "auto"), tf32=task.get("tf32", True))
    elif task["kind"] == "layer":
        run_layer(task, _setup(task))  # writes its own result file
        return
    else:
        result = {"version": _setup(task)}
        result.update(run_train(task) if task["kind"] == "train" else run_sample(task))
        result["peak_device_mib"] = _peak_device_mib(task)
    result["peak_rss_mib"] = wl.peak_rss_mib()
    with open(task["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
