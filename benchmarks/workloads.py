"""The workloads of docs/WORKLOADS.md, their matmul FLOPs, the text, the timing loop and the check.

NumPy, the standard library and `jaxrnn.names` (pure Python) only: every peer's process
imports this module, and a torch peer must not pay for (or be slowed by) importing JAX.

A training step is forward + backward + optimiser update on one (B, T) batch, one-hot input,
a linear head to the vocabulary, loss = softmax cross-entropy averaged over the B*T
predictions (W1: the tutorial's, summed over the T = 25 characters of its one chunk; with
B = 1 that is the same work, and with SGD lr 0.01 it is what makes the loss move). Every peer
takes its batches from the same char-rnn streams (`stream_batch`), carries the recurrent state
across windows (truncated BPTT) where the workload says so, and resets it where jaxrnn does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from jaxrnn.names import MIN_CELLS, NUM_GATES  # pure Python: imports no JAX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_ENV = "JAXRNN_TINYSHAKESPEARE"
DEFAULT_TEXT = os.path.join(ROOT, "data", "tinyshakespeare.txt")
VOCAB_SIZE = 65            # tiny-shakespeare's, and the synthetic text's
SYNTHETIC_TOKENS = 1_115_394  # as many as tiny-shakespeare has characters
MIN_REPS = 3               # the budget never cuts the timed repetitions below this


CELL_LABELS = {"rnn_tanh": "tanh RNN", "rnn_relu": "ReLU RNN", "lstm": "LSTM", "gru": "GRU",
               "mingru": "minGRU", "minlstm": "minLSTM"}
# The minimal cells (jaxrnn.mincells): gates read x_t only, so no recurrent matmul, and no
# PyTorch module. W6's `torch` peer runs nn.GRU in their place, for scale (SCALE_CELL).
SCALE_CELL = {"mingru": "gru", "minlstm": "lstm"}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One row of the table in docs/WORKLOADS.md.

    `block_steps` is the number of training steps in one timed repetition of the peers that
    step from Python (the time per step is the block's time / block_steps); the jaxrnn peers
    time one jitted call of their own K steps instead. `quick_block_steps` replaces both under
    --quick.
    """

    id: str
    name: str
    cell: str                # a jaxrnn.names cell name: rnn_tanh | lstm | gru (PyTorch
                             # semantics) | mingru (no PyTorch module: jaxrnn.mincells)
    num_layers: int
    hidden_size: int
    batch_size: int
    seq_len: int
    optimizer: str           # sgd | adam
    lr: float
    clip: float | None       # elementwise gradient clip to [-clip, clip], or None
    loss: str                # mean (over B*T) | sum (over T, mean over B: the tutorial's)
    carry_state: bool        # carry the recurrent state across windows
    block_steps: int
    quick_block_steps: int

    @property
    def chars_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def describe(self) -> str:
        cell = CELL_LABELS[self.cell]
        opt = f"{self.optimizer.upper() if self.optimizer == 'sgd' else 'Adam'} {self.lr:g}"
        clip = f", clip ±{self.clip:g}" if self.clip else ""
        state = "" if self.carry_state else ", state not carried"
        return (f"{cell} {self.num_layers}x{self.hidden_size}, B={self.batch_size}, "
                f"T={self.seq_len}, {opt}{clip}, {self.loss} loss{state}")


@dataclasses.dataclass(frozen=True)
class SamplingWorkload:
    """S1: generating characters from the W2 model, `batch_size` samples at once."""

    id: str
    model: Workload
    batch_size: int
    length: int = 2000
    temperature: float = 1.0
    quick_length: int = 100

    name = "sampling"

    def describe(self) -> str:
        m = self.model
        return (f"{self.name}: the {m.id} model (LSTM {m.num_layers}x{m.hidden_size}), "
                f"B={self.batch_size}, {self.length} chars, temperature {self.temperature:g}")


W1 = Workload("W1", "tutorial-rnn", "rnn_tanh", 1, 100, 1, 25, "sgd", 0.01, 5.0, "sum", False,
              block_steps=100, quick_block_steps=50)
W2 = Workload("W2", "char-rnn default", "lstm", 2, 128, 50, 50, "adam", 2e-3, None, "mean",
              True, block_steps=10, quick_block_steps=4)
W3 = Workload("W3", "char-rnn large", "lstm", 2, 512, 64, 100, "adam", 2e-3, None, "mean",
              True, block_steps=2, quick_block_steps=2)
W4 = Workload("W4", "long sequences", "lstm", 1, 256, 16, 1000, "adam", 2e-3, None, "mean",
              True, block_steps=10, quick_block_steps=2)
W5 = Workload("W5", "gru", "gru", 2, 128, 50, 50, "adam", 2e-3, None, "mean", True,
              block_steps=10, quick_block_steps=4)
# W6: a minGRU char-LM over long windows, one workload per T (W6-256 ... W6-16384). The state
# is not carried across windows: every window starts from zeros (the point is the time axis,
# which the parallel scan spreads over the cores). block_steps: the Python-stepping (torch)
# peers' steps per timed block, about 40k characters.
W6_SEQ_LENS = (256, 1024, 4096, 16384)
W6_BLOCK_STEPS = {256: 10, 1024: 4, 4096: 2, 16384: 1}
W6 = tuple(Workload(f"W6-{T}", "mingru long sequences", "mingru", 1, 256, 16, T, "adam", 2e-3,
                    None, "mean", False, block_steps=W6_BLOCK_STEPS[T], quick_block_steps=2)
           for T in W6_SEQ_LENS)
TRAINING = {w.id: w for w in (W1, W2, W3, W4, W5) + W6}
SAMPLING = {s.id: s for s in (SamplingWorkload("S1-B1", W2, 1),
                              SamplingWorkload("S1-B64", W2, 64))}
# --workloads names that stand for several workloads
# W6p: variable-length (packed) sequence classification, LSTM and GRU 1x256, B=32, T=500:
# benchmarks/peers_packed.py (its own peers; runs when named)
PACKED_IDS = ("W6p-lstm", "W6p-gru")
GROUPS = {"S1": tuple(SAMPLING), "W6": tuple(w.id for w in W6), "W6p": PACKED_IDS}
# What --workloads accepts (and any id of TRAINING / SAMPLING, e.g. W6-1024); S1 stands for both
# of its batch sizes, W6 for its four T. DEFAULT_WORKLOADS is what runs without --workloads:
# W6 and W7 are left out, each would add about as much time as the rest of the run, and W6p
# (about 10 minutes on 2 cores).
WORKLOAD_IDS = ("W1", "W2", "W3", "W4", "W5", "S1", "W6", "W6p", "W7", "W8")
SWEEP_ID = "W8"  # a sweep of 8 W2 members: benchmarks/sweep_workload.py (runs when named)
DEFAULT_WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "S1")


def get(workload_id: str):
    if workload_id == LAYERS.id:
        return LAYERS
    if workload_id == SWEEP_ID:
        from benchmarks.sweep_workload import W8

        return W8
    if workload_id in PACKED_IDS:
        from benchmarks.peers_packed import W6P

        return W6P[workload_id]
    return TRAINING.get(workload_id) or SAMPLING[workload_id]


# ---------------------------------------------------------------------------- FLOPs


def forward_matmul_flops_per_char(cell: str, num_layers: int, hidden_size: int,
                                  vocab_size: int = VOCAB_SIZE) -> int:
    """2 * multiply-adds of the forward matmuls for one character of one sequence.

    Input projections (layer 0's acts on the one-hot input, as a matmul in every peer but the
    tutorial ports), recurrent matmuls (none in the minimal cells) and the head; the gate math
    (and the minimal cells' scan) is not counted.
    """
    gates = NUM_GATES[cell] * hidden_size
    recurrent = 0 if cell in MIN_CELLS else hidden_size * gates
    total = 0
    for layer in range(num_layers):
        input_size = vocab_size if layer == 0 else hidden_size
        total += input_size * gates + recurrent
    total += hidden_size * vocab_size
    return 2 * total


def step_flops(workload: Workload, vocab_size: int = VOCAB_SIZE, cell: str | None = None) -> int:
    """Matmul FLOPs of one training step: 3x the forward (forward, and two for backward).

    `cell`: the cell a peer ran in place of the workload's (W6's `torch`: nn.GRU)."""
    per_char = forward_matmul_flops_per_char(cell or workload.cell, workload.num_layers,
                                             workload.hidden_size, vocab_size)
    return 3 * per_char * workload.chars_per_step


def sampling_flops_per_char(sampling: SamplingWorkload, vocab_size: int = VOCAB_SIZE) -> int:
    """Matmul FLOPs of one generated character (forward only)."""
    m = sampling.model
    return forward_matmul_flops_per_char(m.cell, m.num_layers, m.hidden_size, vocab_size)


# ---------------------------------------------------------------------------- the text


def text_path(explicit: str | None = None) -> str | None:
    """The tiny-shakespeare file to use: `explicit`, $JAXRNN_TINYSHAKESPEARE, data/, or None."""
    for candidate in (explicit, os.environ.get(TEXT_ENV), DEFAULT_TEXT):
        if candidate and os.path.exists(candidate):
            return candidate
    if explicit:
        raise FileNotFoundError(f"no such file: {explicit}")
    return None


def describe_text(path: str | None) -> str:
    if path is None:
        return (f"synthetic: {SYNTHETIC_TOKENS:,} random tokens over {VOCAB_SIZE} symbols from "
                f"a fixed random walk (no tiny-shakespeare found: set {TEXT_ENV} or run "
                f"scripts/prepare_data.py)")
    return f"tiny-shakespeare: {path}"


def load_tokens(path: str | None) -> tuple[np.ndarray, int]:
    """(<int32>[N] token ids, vocab size): the text's sorted characters, or synthetic tokens.

    The synthetic text is a random walk over 256 states (s_{n+1} = s_n + jump mod 256, with a
    fixed skewed distribution of 8 jumps) read through a fixed map onto 65 symbols,
    floor(65 (s / 256)^3): random tokens, but with skewed frequencies (entropy 3.5 nats, against
    ln 65 = 4.17) and a learnable next-symbol structure (1.4 nats given the previous symbol),
    so the correctness check (the loss drops) means something, as on tiny-shakespeare.
    """
    if path is None:
        rng = np.random.default_rng(0)
        jumps = rng.choice(np.arange(8) * 7 + 1, size=SYNTHETIC_TOKENS,
                           p=np.array([32, 16, 8, 4, 2, 1, 1, 1]) / 65)
        states = np.cumsum(jumps) % 256
        tokens = np.minimum(VOCAB_SIZE - 1, VOCAB_SIZE * (states / 256) ** 3)
        return tokens.astype(np.int32), VOCAB_SIZE
    with open(path, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    lookup = np.zeros(max(map(ord, chars)) + 1, np.int32)
    lookup[[ord(c) for c in chars]] = np.arange(len(chars))
    return lookup[np.frombuffer(text.encode("utf-32-le"), np.uint32)], len(chars)


def windows_per_epoch(num_tokens: int, batch_size: int, seq_len: int) -> int:
    """As jaxrnn.data.StreamLayout: B streams of (N - 1) // B tokens, windows of T."""
    return ((num_tokens - 1) // batch_size) // seq_len


def stream_batch(tokens: np.ndarray, step: int, batch_size: int, seq_len: int):
    """The batch of `step`, exactly as jaxrnn.data.stream_batch: (inputs, targets, reset).

    inputs and targets are <int32>[B, T]; reset is True at the first window of an epoch, where
    a carried state goes back to zeros.
    """
    stream_len = (len(tokens) - 1) // batch_size
    window = step % (stream_len // seq_len)
    starts = np.arange(batch_size) * stream_len + window * seq_len
    chunk = tokens[starts[:, None] + np.arange(seq_len + 1)[None, :]]
    return chunk[:, :-1], chunk[:, 1:], window == 0


# ---------------------------------------------------------------------------- timing


def measure(run_block, block_steps: int, repeat: int, budget_s: float,
            warmup_blocks: int = 1) -> dict:
    """Times `run_block(block_steps)` repeatedly; returns per-step times and all losses.

    The first block pays for tracing, compiling and the first step; `warmup_blocks` more
    blocks run untimed; then `reps` blocks are timed, reps = `repeat` capped so that the timed
    blocks take about `budget_s` (never fewer than MIN_REPS, or `repeat` if that is smaller).

    Args:
      run_block: n -> list of the n steps' losses (floats; may be empty, e.g. sampling).
    Returns:
      {"step_times": [s per step, one per timed block], "losses": [every step's loss],
       "first_block_s", "compile_s", "reps", "block_steps"}.
    """
    losses = []
    start = time.perf_counter()
    losses += run_block(block_steps)
    first_block_s = time.perf_counter() - start
    estimate = first_block_s
    for _ in range(warmup_blocks):
        start = time.perf_counter()
        losses += run_block(block_steps)
        estimate = time.perf_counter() - start
    reps = min(repeat, max(MIN_REPS, int(budget_s / max(estimate, 1e-9))))
    step_times = []
    for _ in range(reps):
        start = time.perf_counter()
        losses += run_block(block_steps)
        step_times.append((time.perf_counter() - start) / block_steps)
    median = statistics.median(step_times)
    return {"step_times": step_times, "losses": [float(x) for x in losses],
            "first_block_s": first_block_s,
            # trace + compile + the first step: the first block less its other steps
            "compile_s": max(0.0, first_block_s - (block_steps - 1) * median),
            "reps": reps, "block_steps": block_steps}


# ---------------------------------------------------------------------------- checks


# The loss check reads each peer's first steps only: it guards against a broken step, and
# every peer runs a different number of steps (jaxrnn's K-step calls run 10x more on W1). The
# tutorial's W1 recipe (SGD 0.01 on a loss summed over 25 characters) is not stable forever
# in float32: one 12,000-step jaxrnn run (seed 0) drifted up from step ~8,000 while float64,
# other seeds and impl="reference" kept falling (BENCHMARKS.md).
CHECK_STEPS = 2000


def loss_check(losses, min_drop: float = 0.02, max_steps: int = CHECK_STEPS) -> tuple[bool, str]:
    """Did training lower the loss? Mean of the last tenth of the steps against the first.

    Passes when every loss is finite and, over the first `max_steps`, the late mean is at
    least `min_drop` (relative) below the early mean: per-batch losses vary, so single values
    are not compared.
    """
    losses = np.asarray(losses, np.float64)
    if losses.size < 2:
        return False, f"only {losses.size} loss value(s)"
    if not np.all(np.isfinite(losses)):
        return False, f"non-finite loss at step {int(np.argmin(np.isfinite(losses)))}"
    losses = losses[:max_steps]
    window = max(1, losses.size // 10)
    early, late = losses[:window].mean(), losses[-window:].mean()
    summary = f"loss {early:.3f} -> {late:.3f} over {losses.size} steps"
    if late > early * (1.0 - min_drop):
        return False, summary + f" (did not drop by {min_drop:.0%})"
    return True, summary


def sample_check(tokens, vocab_size: int = VOCAB_SIZE) -> tuple[bool, str]:
    """Sampled ids are in range and not degenerate (an untrained model at temperature 1 is
    nearly uniform, so thousands of draws must cover most of the vocabulary)."""
    tokens = np.asarray(tokens)
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        return False, f"ids out of range [{tokens.min()}, {tokens.max()}]"
    distinct = len(np.unique(tokens))
    need = min(vocab_size // 2, tokens.size // 4)
    summary = f"{tokens.size} ids, {distinct} distinct"
    if distinct < need:
        return False, summary + f" (expected at least {need})"
    if tokens.ndim == 2 and tokens.shape[0] > 1 and np.all(tokens == tokens[:1]):
        return False, summary + " (every row the same)"
    return True, summary


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def chars_stats(step_times, chars_per_step: int) -> dict:
    """chars/s median, min and max over the timed repetitions."""
    return {"chars_per_s_median": chars_per_step / statistics.median(step_times),
            "chars_per_s_min": chars_per_step / max(step_times),
            "chars_per_s_max": chars_per_step / min(step_times)}


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9 if seconds > 0 else math.nan


# ---------------------------------------------------------------------------- W7: layers


@dataclasses.dataclass(frozen=True)
class LayerWorkload:
    """W7: one recurrent layer over time, forward and forward + backward, by every impl.

    A case is (cell, H, T): one layer `jaxrnn.Recurrent(cell, H, H)` (input size H, as a layer
    of a stack) on x ~ N(0, 1) <float32>[T, B, H], PyTorch's initialisation, zero initial
    state. Every impl of `impls` runs it in the two `MODES`: the jitted forward (the output
    sequence) and the jitted forward + backward (the gradients of sum(output * c), c ~ N(0, 1)
    fixed, with respect to the parameters and x). One measurement is (case, impl, mode); its
    figure is ms per call, median [min-max] over the timed calls.

    The grids: `full_*` is the whole definition (docs/WORKLOADS.md); `default_*` what runs
    without --w7-grid full (about 10 minutes on 2 cores); `quick_*` the --quick smoke test.
    """

    id: str
    name: str
    cells: tuple
    batch_size: int
    impls: tuple
    full_hidden_sizes: tuple
    full_seq_lens: tuple
    default_hidden_sizes: tuple
    default_seq_lens: tuple
    quick_hidden_sizes: tuple
    quick_seq_lens: tuple
    max_iters: int

    def grid(self, which: str = "default") -> tuple[tuple, tuple]:
        """(hidden sizes, sequence lengths) of the "default", "full" or "quick" grid."""
        if which not in ("default", "full", "quick"):
            raise ValueError(f"the W7 grid is default, full or quick; got {which!r}")
        return (getattr(self, f"{which}_hidden_sizes"), getattr(self, f"{which}_seq_lens"))

    def describe(self) -> str:
        hidden, seq_lens = self.grid("full")
        return (f"{self.name}: one {'/'.join(CELL_LABELS[c] for c in self.cells)} layer, "
                f"input size = H in {{{', '.join(map(str, hidden))}}}, B={self.batch_size}, "
                f"T in {{{', '.join(map(str, seq_lens))}}}, {' and '.join(MODES)}, impls "
                f"{', '.join(self.impls)} (Newton: at most {self.max_iters} iterations, then the "
                f"sequential scan)")


MODES = ("forward", "forward+backward")
SEQUENTIAL_IMPLS = ("reference", "auto")
NEWTON_IMPLS = ("deer", "quasi-deer", "elk", "quasi-elk")
LAYERS = LayerWorkload(
    "W7", "parallel-in-time layers", ("gru", "lstm"), 8, SEQUENTIAL_IMPLS + NEWTON_IMPLS,
    full_hidden_sizes=(8, 32, 128), full_seq_lens=(1024, 16384, 65536),
    default_hidden_sizes=(8, 32), default_seq_lens=(1024, 16384),
    quick_hidden_sizes=(8,), quick_seq_lens=(256,), max_iters=100)
# Budgets: a measurement whose estimated time (calls x the estimated seconds per call) is over
# the per-measurement budget is skipped, with the estimate and the reason; so is everything
# left once W7's total budget is spent (None: no total). The full grid's defaults are larger.
W7_BUDGET_S = {"default": 30.0, "quick": 30.0, "full": 120.0}
W7_TOTAL_BUDGET_S = {"default": 600.0, "quick": 600.0, "full": None}
# Skip what would take more than this fraction of the machine's memory (the host's on a CPU;
# on a GPU the child reports the device's).
W7_MEMORY_FRACTION = 0.5
# How the work of one call grows with the state size D (H; 2H for the LSTM's (h, c)), at a
# fixed T: D^3 for the dense Newton methods (D x D Jacobians multiplied in the scan), D^2 for
# the others (the step's matvecs; the quasi methods' diagonal scans are O(D)); memory: D^2
# for the dense methods (T Jacobians), D for the others. Linear in T for all. At small D the
# overheads dominate and these overestimate: a measurement is skipped too soon, never too late.
COST_EXPONENT = {"reference": 2, "auto": 2, "quasi-deer": 2, "quasi-elk": 2, "deer": 3, "elk": 3}
MEMORY_EXPONENT = {"reference": 1, "auto": 1, "quasi-deer": 1, "quasi-elk": 1, "deer": 2,
                   "elk": 2}
BACKWARD_FACTOR = 3.0  # forward + backward against the forward, for a first estimate


def state_size(cell: str, hidden_size: int) -> int:
    """D, the size of the state the Newton solvers iterate on: H, or 2H for the LSTM's (h, c)."""
    return 2 * hidden_size if cell == "lstm" else hidden_size


def layer_cases(cells, hidden_sizes, seq_lens) -> list[tuple[str, int, int]]:
    """(cell, H, T) in the order they run: T, then H, ascending, the cells interleaved, so the
    small cases of every cell come first and each case's estimate has smaller ones to go on."""
    return [(cell, hidden, steps) for steps in sorted(seq_lens) for hidden in sorted(hidden_sizes)
            for cell in cells]


def calls_per_measurement(impl: str, mode: str, repeat: int, warmup: int) -> int:
    """The calls a measurement makes: the first, the warm-up ones, the fewest timed ones, and
    (a Newton forward) one more through jaxrnn.newton.diagnostics for the iterations."""
    extra = 1 if impl in NEWTON_IMPLS and mode == "forward" else 0
    return 1 + warmup + min(repeat, MIN_REPS) + extra


def estimate_layer(history, cell: str, impl: str, mode: str, hidden_size: int,
                   seq_len: int) -> tuple[float | None, float | None, str]:
    """(seconds per call, bytes, what it was scaled from) for a measurement, from `history`.

    `history`: dicts with cell, impl, mode, hidden_size, seq_len, call_s (measured, or an
    earlier estimate of a skipped measurement) and memory_bytes (or None). The base is the
    biggest earlier case of the same cell, impl and mode no bigger in H or T (a forward
    x BACKWARD_FACTOR stands in for a forward + backward with none); it is scaled linearly in
    T and by COST_EXPONENT / MEMORY_EXPONENT in the state size. (None, None, "") when there
    is nothing to go on (the first case of each series always runs).
    """
    d = state_size(cell, hidden_size)
    p, q = COST_EXPONENT[impl], MEMORY_EXPONENT[impl]
    sources = [(mode, 1.0)] + ([("forward", BACKWARD_FACTOR)] if mode != "forward" else [])
    for want_mode, factor in sources:
        candidates = [h for h in history
                      if (h["cell"], h["impl"], h["mode"]) == (cell, impl, want_mode)
                      and h["hidden_size"] <= hidden_size and h["seq_len"] <= seq_len
                      and (want_mode != mode
                           or (h["hidden_size"], h["seq_len"]) != (hidden_size, seq_len))
                      and h.get("call_s")]
        if candidates:
            base = max(candidates, key=lambda h: (state_size(cell, h["hidden_size"]) ** p
                                                  * h["seq_len"]))
            ratio_t = seq_len / base["seq_len"]
            ratio_d = d / state_size(cell, base["hidden_size"])
            seconds = factor * base["call_s"] * ratio_t * ratio_d ** p
            memory = (None if base.get("memory_bytes") is None
                      else factor * base["memory_bytes"] * ratio_t * ratio_d ** q)
            source = (f"{base['mode']} H={base['hidden_size']} T={base['seq_len']}"
                      + (", itself estimated" if base.get("estimated") else ""))
            return seconds, memory, source
    return None, None, ""


def plan_layer_case(history, cell: str, hidden_size: int, seq_len: int, impls, modes, *,
                    budget_s: float, repeat: int, warmup: int,
                    memory_limit: float | None) -> tuple[list[dict], list[dict]]:
    """Which measurements of a case to run, and which to skip (with why).

    Returns (runs, skipped): runs are {impl, mode, estimate_s}; skipped are {impl, mode,
    estimate_s, estimate_memory_bytes, reason}. A measurement is skipped when its estimated time
    (`calls_per_measurement` x the estimate per call) is over `budget_s`, or its estimated
    memory over `memory_limit`.
    """
    runs, skipped = [], []
    for impl in impls:
        for mode in modes:
            seconds, memory, source = estimate_layer(history, cell, impl, mode, hidden_size,
                                                     seq_len)
            calls = calls_per_measurement(impl, mode, repeat, warmup)
            reason = None
            if seconds is not None and seconds * calls > budget_s:
                reason = (f"estimated {seconds:.3g} s per call x {calls} calls > the "
                          f"{budget_s:g} s budget (scaled from {source})")
            elif memory is not None and memory_limit and memory > memory_limit:
                reason = (f"estimated {memory / 2**30:.3g} GiB > the "
                          f"{memory_limit / 2**30:.3g} GiB memory limit (scaled from {source})")
            if reason:
                skipped.append(dict(impl=impl, mode=mode, estimate_s=seconds,
                                    estimate_memory_bytes=memory, reason=reason))
            else:
                runs.append(dict(impl=impl, mode=mode, estimate_s=seconds))
    return runs, skipped


def memory_limit_bytes() -> float | None:
    """W7_MEMORY_FRACTION of this machine's physical memory (None where it cannot be read)."""
    try:
        return W7_MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def measure_calls(call, *, repeat: int, budget_s: float, warmup: int) -> dict:
    """Times `call()` (which waits for its result): the first call and `warmup` more untimed,
    then at least min(repeat, MIN_REPS) timed ones, up to `repeat` within `budget_s` in all.

    If the first call shows that the rest would not fit in `budget_s` (the estimate it was
    planned by was low), stops there: {"over_budget": True, "first_call_s"}. Otherwise
    {"call_times": [s, one per timed call], "first_call_s", "reps"}.
    """
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    fewest = min(repeat, MIN_REPS)
    if first * (warmup + fewest) > budget_s - first:
        return {"over_budget": True, "first_call_s": first}
    estimate = first
    for _ in range(warmup):
        begin = time.perf_counter()
        call()
        estimate = time.perf_counter() - begin
    left = budget_s - (time.perf_counter() - start)
    reps = min(repeat, max(fewest, int(left / max(estimate, 1e-9))))
    times = []
    for _ in range(reps):
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return {"call_times": times, "first_call_s": first, "reps": reps}


def ms_stats(call_times) -> dict:
    """ms per call: median, min and max over the timed calls."""
    return {"ms_per_call_median": 1e3 * statistics.median(call_times),
            "ms_per_call_min": 1e3 * min(call_times), "ms_per_call_max": 1e3 * max(call_times)}


def run_child(module_args: list[str], task: dict, timeout_s: float) -> dict:
    """Runs `python -m <module_args> <task as JSON>` in a fresh process, from the repository
    root with it on PYTHONPATH (JAX_PLATFORMS=cpu for a CPU task, so JAX stays off any GPU).

    The child writes its result as JSON to task["out"], a file this function picks. Returns
    that result with "wall_s" added, or {"error": ..., "wall_s": ...} if the child failed,
    wrote nothing or ran past `timeout_s`.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    if task.get("device") == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    with tempfile.TemporaryDirectory(prefix="jaxrnn-bench-") as tmp:
        task = {**task, "out": os.path.join(tmp, "result.json")}
        start = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", *module_args, json.dumps(task)],
                                  cwd=ROOT, env=env, capture_output=True, text=True,
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
