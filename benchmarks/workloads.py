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
import math
import os
import statistics
import time

import numpy as np

from jaxrnn.names import NUM_GATES  # pure Python: imports no JAX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_ENV = "JAXRNN_TINYSHAKESPEARE"
DEFAULT_TEXT = os.path.join(ROOT, "data", "tinyshakespeare.txt")
VOCAB_SIZE = 65            # tiny-shakespeare's, and the synthetic text's
SYNTHETIC_TOKENS = 1_115_394  # as many as tiny-shakespeare has characters
MIN_REPS = 3               # the budget never cuts the timed repetitions below this


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
    cell: str                # a jaxrnn.names cell name: rnn_tanh | lstm | gru (PyTorch semantics)
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
        cell = {"rnn_tanh": "tanh RNN", "rnn_relu": "ReLU RNN", "lstm": "LSTM",
                "gru": "GRU"}[self.cell]
        opt = f"{self.optimizer.upper() if self.optimizer == 'sgd' else 'Adam'} {self.lr:g}"
        clip = f", clip ±{self.clip:g}" if self.clip else ""
        return (f"{cell} {self.num_layers}x{self.hidden_size}, B={self.batch_size}, "
                f"T={self.seq_len}, {opt}{clip}, {self.loss} loss")


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
TRAINING = {w.id: w for w in (W1, W2, W3, W4, W5)}
SAMPLING = {s.id: s for s in (SamplingWorkload("S1-B1", W2, 1),
                              SamplingWorkload("S1-B64", W2, 64))}
# What --workloads accepts; S1 stands for both of its batch sizes.
WORKLOAD_IDS = ("W1", "W2", "W3", "W4", "W5", "S1")


def get(workload_id: str):
    return TRAINING.get(workload_id) or SAMPLING[workload_id]


# ---------------------------------------------------------------------------- FLOPs


def forward_matmul_flops_per_char(cell: str, num_layers: int, hidden_size: int,
                                  vocab_size: int = VOCAB_SIZE) -> int:
    """2 * multiply-adds of the forward matmuls for one character of one sequence.

    Input projections (layer 0's acts on the one-hot input, as a matmul in every peer but the
    tutorial ports), recurrent matmuls and the head; the gate math is not counted.
    """
    gates = NUM_GATES[cell] * hidden_size
    total = 0
    for layer in range(num_layers):
        input_size = vocab_size if layer == 0 else hidden_size
        total += input_size * gates + hidden_size * gates
    total += hidden_size * vocab_size
    return 2 * total


def step_flops(workload: Workload, vocab_size: int = VOCAB_SIZE) -> int:
    """Matmul FLOPs of one training step: 3x the forward (forward, and two for backward)."""
    per_char = forward_matmul_flops_per_char(workload.cell, workload.num_layers,
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
