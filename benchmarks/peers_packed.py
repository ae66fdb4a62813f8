"""W6p: a training step of a sequence classifier over variable-length (packed) sequences.

  jaxrnn-bench --workloads W6p [--peers jaxrnn,torch-packed] [--quick]

Two workloads, `W6p-lstm` and `W6p-gru` (`W6p` names both): one layer of 256 units, B = 32
sequences padded to T = 500 with lengths drawn uniformly from [T/8, T] (seed 0), each element
a random float vector of width 64 (N(0, 1), zero past its sequence's end), and one label per
sequence out of 10 classes (seed 0). A step: the recurrent layer, each sequence's last valid
output -> a linear head -> softmax cross-entropy (mean over the B sequences) -> backward ->
Adam 2e-3. Every step trains on the same batch, so the loss check (the loss falls) means the
classifier is fitting its labels. The peers, each in its own process:

  torch-packed     pack_padded_sequence(x, lengths, enforce_sorted=False) -> nn.LSTM / nn.GRU;
                   the last valid output is h_n (one forward layer). The ratios are to it.
  torch-padded     the module over the whole padded batch, the last valid output taken by
                   index: every sequence runs all T steps (the same numbers for one forward
                   layer, not for a reverse direction or the final state), shown for scale.
  flax             flax.linen.RNN(OptimizedLSTMCell / GRUCell) with seq_lengths, jitted, optax.
  jaxrnn           jaxrnn.Recurrent(...).apply(params, x, lengths=lengths) (impl "auto": the
                   masked fused kernel on a CPU) and jaxrnn.last_valid, jitted, optax.
  jaxrnn-unmasked  the same at the same padded shape without lengths (the unmasked kernel),
                   the last valid output by index: the masked kernel's cost is its step time
                   over this one's (the summary line under the table; target <= 1.15x).

The figure is chars/s counted over the valid elements only (sum(lengths) per step, the same
count for every peer), and the FLOPs likewise (3x the forward matmuls of the valid elements
and the head). This module imports NumPy and the standard library only at the top: JAX and
torch are imported inside the process that runs a peer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import workloads as wl

PEERS = ("torch-packed", "torch-padded", "flax", "jaxrnn", "jaxrnn-unmasked")
BASE_PEER = "torch-packed"           # what the table's "x torch" is to on W6p
UNMASKED_PEER = "jaxrnn-unmasked"    # what jaxrnn's masked cost is to
MASKED_COST_TARGET = 1.15            # issue #14: masked <= 1.15x the unmasked kernel
JAX_PEERS = ("flax", "jaxrnn", "jaxrnn-unmasked")


@dataclasses.dataclass(frozen=True)
class PackedWorkload:
    """One W6p workload: a one-layer `cell` classifier over a fixed padded batch.

    `block_steps` is the number of training steps in one timed repetition (every peer steps
    from Python, one jitted or eager step per batch); `quick_block_steps` replaces it under
    --quick.
    """

    id: str
    name: str
    cell: str                  # lstm | gru (PyTorch semantics)
    hidden_size: int = 256
    batch_size: int = 32
    seq_len: int = 500         # T, the padded length
    input_size: int = 64       # the width of each element's random float vector
    num_classes: int = 10
    lr: float = 2e-3           # Adam, torch's defaults otherwise
    seed: int = 0              # the lengths, inputs and labels
    block_steps: int = 4
    quick_block_steps: int = 2

    @property
    def min_length(self) -> int:
        return max(1, self.seq_len // 8)

    def describe(self) -> str:
        return (f"{self.name}: {wl.CELL_LABELS[self.cell]} 1x{self.hidden_size}, "
                f"B={self.batch_size}, T={self.seq_len}, lengths uniform in "
                f"[{self.min_length}, {self.seq_len}] (seed {self.seed}), random inputs of "
                f"width {self.input_size}, last valid output -> linear -> cross-entropy over "
                f"{self.num_classes} classes, Adam {self.lr:g}; chars/s over the valid elements")


W6P = {w.id: w for w in (PackedWorkload("W6p-lstm", "packed sequences", "lstm"),
                         PackedWorkload("W6p-gru", "packed sequences", "gru"))}


def packed_batch(w: PackedWorkload):
    """The batch every step trains on: (x <float32>[T, B, I] time-major, zero past each
    sequence's end; lengths <int64>[B] in [T/8, T], unsorted; labels <int64>[B])."""
    rng = np.random.default_rng(w.seed)
    lengths = rng.integers(w.min_length, w.seq_len, size=w.batch_size, endpoint=True)
    x = rng.standard_normal((w.seq_len, w.batch_size, w.input_size)).astype(np.float32)
    x[np.arange(w.seq_len)[:, None] >= lengths[None, :]] = 0.0
    labels = rng.integers(0, w.num_classes, size=w.batch_size)
    return x, lengths, labels


def step_flops(w: PackedWorkload, lengths) -> int:
    """Matmul FLOPs of one step, 3x the forward: the input and recurrent matmuls of every
    valid element, and the head of every sequence (the padding is not counted)."""
    gates = wl.NUM_GATES[w.cell] * w.hidden_size
    per_element = (w.input_size + w.hidden_size) * gates
    head = w.hidden_size * w.num_classes
    return 3 * 2 * (int(np.sum(lengths)) * per_element + w.batch_size * head)


# ---------------------------------------------------------------------------- torch peers


def torch_classifier(w: PackedWorkload, packed: bool):
    """torch-packed (packed=True) or torch-padded: nn.LSTM / nn.GRU + nn.Linear, PyTorch's
    default initialisation. forward(x <float>[T, B, I], lengths <int64>[B] on the CPU) ->
    logits <float>[B, C]."""
    import torch
    import torch.nn as nn
    from torch.nn.utils.rnn import pack_padded_sequence

    rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU}[w.cell]

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn_class(w.input_size, w.hidden_size)
            self.head = nn.Linear(w.hidden_size, w.num_classes)

        def forward(self, x, lengths):
            if packed:
                sequences = pack_padded_sequence(x, lengths, enforce_sorted=False)
                _, h_n = self.rnn(sequences)
                # one forward layer: h_n (in the batch's own order) is the last valid output
                last = (h_n[0] if w.cell == "lstm" else h_n)[-1]
            else:
                output, _ = self.rnn(x)  # [T, B, H], every sequence over all T steps
                index = (lengths - 1).to(x.device)
                last = output[index, torch.arange(x.shape[1], device=x.device)]
            return self.head(last)

    return Classifier()


def torch_train_step(model, w: PackedWorkload, x, lengths, labels):
    """One Adam step of `model` on the batch per call; returns the loss (a 0-d tensor)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=w.lr, betas=(0.9, 0.999), eps=1e-8)

    def step():
        loss = F.cross_entropy(model(x, lengths), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def train_torch(w: PackedWorkload, peer: str, *, block_steps: int, repeat: int,
                budget_s: float, warmup_blocks: int, device: str = "cpu") -> dict:
    import torch

    from benchmarks.peers_torch import torch_device

    torch.manual_seed(0)
    dev = torch_device(device)
    x, lengths, labels = packed_batch(w)
    model = torch_classifier(w, packed=peer == "torch-packed").to(dev).train()
    step = torch_train_step(model, w, torch.from_numpy(x).to(dev), torch.from_numpy(lengths),
                            torch.from_numpy(labels).to(dev))

    def run_block(n):
        losses = [step() for _ in range(n)]
        return torch.stack(losses).tolist() if losses else []  # one host sync per block

    result = wl.measure(run_block, block_steps, repeat, budget_s, warmup_blocks)
    module = f"nn.{type(model.rnn).__name__}"
    result["config"] = {"module": (f"pack_padded_sequence(enforce_sorted=False) + {module}"
                                   if peer == "torch-packed" else
                                   f"{module} over the padded batch, last output by index")}
    return result


# ---------------------------------------------------------------------------- JAX peers


def jaxrnn_classifier(w: PackedWorkload, masked: bool, impl: str = "auto"):
    """jaxrnn (masked=True) or jaxrnn-unmasked: (rnn, init(key, dtype) -> params,
    logits(params, x <float>[T, B, I], lengths <int>[B]) -> <float>[B, C]).

    params = {"rnn": the Recurrent's (PyTorch layout), "head": {"weight" [C, H], "bias" [C]}},
    the head initialised as nn.Linear's, U(+-1/sqrt(H)).
    """
    import jax
    import jax.numpy as jnp

    from jaxrnn import Recurrent, last_valid

    rnn = Recurrent(w.cell, w.input_size, w.hidden_size, impl=impl)

    def init(key, dtype=jnp.float32):
        k_rnn, k_w, k_b = jax.random.split(key, 3)
        bound = 1.0 / np.sqrt(w.hidden_size)
        head = {"weight": jax.random.uniform(k_w, (w.num_classes, w.hidden_size), dtype,
                                             -bound, bound),
                "bias": jax.random.uniform(k_b, (w.num_classes,), dtype, -bound, bound)}
        return {"rnn": rnn.init(k_rnn, dtype), "head": head}

    def logits(params, x, lengths):
        output, _ = rnn.apply(params["rnn"], x, lengths=lengths if masked else None)
        last = last_valid(output, lengths)  # [B, H]
        return last @ params["head"]["weight"].T + params["head"]["bias"][None, :]

    return rnn, init, logits


def jax_train_step(logits_fn, w: PackedWorkload):
    """(optimizer, step): step(params, opt_state, x, lengths, labels) -> (params, opt_state,
    loss), one jitted Adam step (params and optimiser state donated)."""
    import functools

    import jax
    import optax

    optimizer = optax.adam(w.lr, b1=0.9, b2=0.999, eps=1e-8)

    def loss_fn(params, x, lengths, labels):
        return optax.softmax_cross_entropy_with_integer_labels(
            logits_fn(params, x, lengths), labels).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, lengths, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, lengths, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer, step


def flax_classifier(w: PackedWorkload):
    """(init(key) -> params, logits(params, x [T, B, I], lengths [B]) -> [B, C]): flax.linen
    RNN(OptimizedLSTMCell / GRUCell) with seq_lengths, the last valid output by index, Dense."""
    import flax.linen as nn
    import jax.numpy as jnp

    cell_class = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[w.cell]

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x, lengths):  # x [B, T, I] (flax's batch-major)
            outputs = nn.RNN(cell_class(w.hidden_size))(x, seq_lengths=lengths)  # [B, T, H]
            last = outputs[jnp.arange(x.shape[0]), lengths - 1]
            return nn.Dense(w.num_classes)(last)

    model = Classifier()
    x0 = jnp.zeros((w.batch_size, w.seq_len, w.input_size), jnp.float32)
    lengths0 = jnp.full((w.batch_size,), w.seq_len, jnp.int32)

    def init(key):
        return model.init(key, x0, lengths0)

    def logits(params, x, lengths):
        return model.apply(params, jnp.swapaxes(x, 0, 1), lengths)

    return init, logits, cell_class.__name__


def train_jax(w: PackedWorkload, peer: str, *, block_steps: int, repeat: int,
              budget_s: float, warmup_blocks: int) -> dict:
    import jax
    import jax.numpy as jnp

    from benchmarks import peers_jax

    x, lengths, labels = packed_batch(w)
    batch = (jnp.asarray(x), jnp.asarray(lengths, jnp.int32), jnp.asarray(labels, jnp.int32))
    if peer == "flax":
        init, logits_fn, cell_name = flax_classifier(w)
        config = {"module": f"flax.linen.RNN({cell_name}, seq_lengths)"}
    else:
        masked = peer == "jaxrnn"
        rnn, init, logits_fn = jaxrnn_classifier(w, masked)
        config = {"module": "jaxrnn.Recurrent" + (" with lengths" if masked else
                                                  " without lengths (same padded shape)"),
                  "impl": rnn.impl,
                  "layers": rnn.plan.for_call(rnn.cell, jnp.dtype(jnp.float32), masked)}
    optimizer, step = jax_train_step(logits_fn, w)
    params = init(jax.random.key(0))
    state = {"params": params, "opt_state": optimizer.init(params)}

    def run_block(n):
        losses = []
        for _ in range(n):
            state["params"], state["opt_state"], loss = step(state["params"],
                                                             state["opt_state"], *batch)
            losses.append(loss)
        return [float(v) for v in jax.device_get(losses)]  # one host sync per block

    run_block, compile_s = peers_jax._noting_compiles(run_block)
    result = wl.measure(run_block, block_steps, repeat, budget_s, warmup_blocks)
    result["config"] = config
    return peers_jax._compile_plus_first_step(result, compile_s[0])


# ---------------------------------------------------------------------------- one peer


def run_task(task: dict) -> dict:
    """Measures one peer on one workload in this process (no setup: see `child_main`).

    task: {"workload": a PackedWorkload's fields (dataclasses.asdict), "peer", "quick",
    "repeat", "budget_s", "device"}. Returns wl.measure's dict with config, ok, check,
    loss_first, loss_last."""
    w = PackedWorkload(**task["workload"])
    peer = task["peer"]
    timing = dict(block_steps=w.quick_block_steps if task["quick"] else w.block_steps,
                  repeat=task["repeat"], budget_s=task["budget_s"],
                  warmup_blocks=0 if task["quick"] else 1)
    if peer in ("torch-packed", "torch-padded"):
        result = train_torch(w, peer, device=task.get("device", "cpu"), **timing)
    elif peer in JAX_PEERS:
        result = train_jax(w, peer, **timing)
    else:
        raise ValueError(f"unknown W6p peer {peer!r}; choose from {', '.join(PEERS)}")
    result["ok"], result["check"] = wl.loss_check(result["losses"])
    result["loss_first"], result["loss_last"] = result["losses"][0], result["losses"][-1]
    del result["losses"]
    return result


def child_main(task: dict) -> None:
    """The child process: the peer's setup (threads, TF32, compile events), `run_task`, the
    peak memory; the result JSON written to task["out"]."""
    device, tf32 = task.get("device", "cpu"), task.get("tf32", True)
    if task["peer"] in JAX_PEERS:
        from benchmarks import peers_jax

        version = peers_jax.setup(tf32)
        peak_device_mib = peers_jax.peak_device_mib
    else:
        from benchmarks import peers_torch

        version = peers_torch.setup(task.get("torch_threads"), device, tf32)
        peak_device_mib = lambda: peers_torch.peak_device_mib(device)  # noqa: E731
    result = {"version": version, **run_task(task)}
    result["peak_device_mib"] = None if device == "cpu" else peak_device_mib()
    result["peak_rss_mib"] = wl.peak_rss_mib()
    with open(task["out"], "w") as f:
        json.dump(result, f)


def run_in_process(task: dict, timeout_s: float | None = None) -> dict:
    """`run_task` here, as `run`'s `child` (tests, debugging): no fresh process, no setup (so
    no compile events: compile_s is one step), no timeout."""
    start = time.monotonic()
    result = run_task(task)
    result["wall_s"] = time.monotonic() - start
    result["peak_rss_mib"] = wl.peak_rss_mib()  # this process's, the test runner's
    return result


def spawn(task: dict, timeout_s: float) -> dict:
    """`child_main` in a fresh `python -m benchmarks.peers_packed --child` process; its
    result, or {"error": ...}."""
    return wl.run_child(["benchmarks.peers_packed", "--child"], task, timeout_s)


# ---------------------------------------------------------------------------- the driver


def make_record(w: PackedWorkload, peer: str, result: dict, peak_gflops: float | None) -> dict:
    """A record in benchmarks.run's shape (its table prints it), kind "packed"."""
    from benchmarks.run import RECORD_KEYS

    _, lengths, _ = packed_batch(w)
    chars = int(np.sum(lengths))
    record = {key: None for key in RECORD_KEYS}
    record.update(workload=w.id, peer=peer, kind="packed", ok=False, ratio_to_sequential=None,
                  masked_cost_ratio=None, chars_per_step=chars,
                  text=f"random inputs (seed {w.seed})")
    if "error" in result:
        record.update(error=result["error"], check=result["error"], wall_s=result.get("wall_s"))
        return record
    flops = step_flops(w, lengths)
    stats = wl.chars_stats(result["step_times"], chars)
    achieved = flops * stats["chars_per_s_median"] / chars
    record.update(stats)
    record.update(
        compile_s=result["compile_s"], peak_rss_mib=result.get("peak_rss_mib"),
        peak_device_mib=result.get("peak_device_mib"),
        pct_peak=100.0 * achieved / (peak_gflops * 1e9) if peak_gflops else None,
        ok=bool(result["ok"]), check=result["check"], flops_per_step=flops,
        gflops=achieved / 1e9, block_steps=result["block_steps"], reps=result["reps"],
        config=result.get("config"), version=result.get("version"),
        loadavg_1m=result.get("loadavg_1m"), wall_s=result.get("wall_s"),
        loss_first=result["loss_first"], loss_last=result["loss_last"],
        step_s_median=statistics.median(result["step_times"]))
    if "bracket_step_s" in result:
        record["bracket_step_s"] = result["bracket_step_s"]
        record["bracket_chars_per_s"] = [chars / t for t in result["bracket_step_s"]]
    return record


def add_ratios(records: list[dict]) -> None:
    """ratio_to_torch: chars/s over torch-packed's; masked_cost_ratio (jaxrnn): its step time
    over jaxrnn-unmasked's (medians), per workload."""
    for workload_id in dict.fromkeys(r["workload"] for r in records):
        same = {r["peer"]: r for r in records if r["workload"] == workload_id}
        base = same.get(BASE_PEER)
        for r in same.values():
            if base and base["chars_per_s_median"] and r["chars_per_s_median"]:
                r["ratio_to_torch"] = r["chars_per_s_median"] / base["chars_per_s_median"]
        masked, unmasked = same.get("jaxrnn"), same.get(UNMASKED_PEER)
        if masked and unmasked and masked.get("step_s_median") and unmasked.get("step_s_median"):
            masked["masked_cost_ratio"] = masked["step_s_median"] / unmasked["step_s_median"]


def run(workloads, peers=PEERS, *, quick: bool = False, repeat: int = 10,
        budget_s: float = 20.0, bracket_torch: bool = True, torch_threads: int | None = None,
        device: str = "cpu", tf32: bool = True, timeout_s: float = 1800.0,
        peak_gflops: float | None = None, machine: str | None = None, log=print,
        child=None) -> list[dict]:
    """Every peer of `peers` (in PEERS' order) on every workload of `workloads` (ids of W6P or
    PackedWorkload values), each in its own process (`child(task, timeout_s)`, default
    `spawn`); torch-packed first and, bracketing, last (its timed repetitions pooled).
    Returns the records with their ratios (`add_ratios`)."""
    from benchmarks.run import _merge_torch

    child = child or spawn
    order = [p for p in PEERS if p in peers]
    if BASE_PEER in order and bracket_torch and len(order) > 1:
        order.append(BASE_PEER)
    records = []
    for w in workloads:
        w = W6P[w] if isinstance(w, str) else w
        log(f"{w.id}: {w.describe()}")
        results = {}
        for peer in order:
            task = dict(workload=dataclasses.asdict(w), peer=peer, quick=quick, repeat=repeat,
                        budget_s=budget_s, device=device, tf32=tf32,
                        torch_threads=torch_threads)
            loadavg = os.getloadavg()[0]
            result = child(task, timeout_s)
            result.setdefault("loadavg_1m", loadavg)
            if peer in results:
                result = _merge_torch(results[peer], result)
            results[peer] = result
            log("  " + _progress_line(w, peer, result))
        workload_records = [make_record(w, peer, results[peer], peak_gflops)
                            for peer in PEERS if peer in results]
        for record in workload_records:
            record["machine"] = machine
        add_ratios(workload_records)
        summary = format_summary(workload_records)
        if summary:
            log("  " + summary)
        records.extend(workload_records)
    return records


def _progress_line(w: PackedWorkload, peer: str, result: dict) -> str:
    if "error" in result:
        return f"{peer:17s} FAILED: {result['error']}"
    chars = int(np.sum(packed_batch(w)[1]))
    median = chars / statistics.median(result["step_times"])
    flag = "ok" if result["ok"] else "FAIL"
    return (f"{peer:17s} {median:12,.0f} chars/s  ({result['reps']} reps of "
            f"{result['block_steps']}, {result.get('wall_s', 0):.0f} s)  {flag}: "
            f"{result['check']}")


def format_summary(records: list[dict]) -> str:
    """The W6p lines under the table: per workload, jaxrnn against torch-packed (the target
    >= 2x) and the masked kernel's cost over the unmasked one's (the target <= 1.15x)."""
    lines = []
    for r in records:
        if r.get("kind") != "packed" or r["peer"] != "jaxrnn" or not r["chars_per_s_median"]:
            continue
        parts = []
        if r.get("ratio_to_torch") is not None:
            parts.append(f"jaxrnn {r['ratio_to_torch']:.2f}x torch-packed's chars/s")
        if r.get("masked_cost_ratio") is not None:
            met = "met" if r["masked_cost_ratio"] <= MASKED_COST_TARGET else "NOT met"
            layers = (r.get("config") or {}).get("layers", "?")
            parts.append(f"masked ({layers}) / unmasked step time at the same padded shape "
                         f"{r['masked_cost_ratio']:.2f}x (target <= {MASKED_COST_TARGET:g}x: "
                         f"{met})")
        if parts:
            lines.append(f"{r['workload']}: " + "; ".join(parts))
    if lines:
        lines.append("(W6p's x torch is the ratio to torch-packed)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", required=True,
                        help="one peer's task (JSON), run in this process; the benchmark "
                             "itself is `jaxrnn-bench --workloads W6p`")
    args = parser.parse_args(argv)
    child_main(json.loads(args.child))


if __name__ == "__main__":
    main()
