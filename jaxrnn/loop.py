"""The one run loop: step scheduling, metrics, evaluation, samples, checkpoints and signals,
for any framework that brings its own steps (a `Driver`).

jaxrnn's trainer (`jaxrnn.train.JaxDriver`) and the PyTorch baseline
(`torch_baselines.training.TorchDriver`) both run through `run_loop`, so their metrics.jsonl
lines, logging cadence and sample primes mean the same thing.

Steps run in calls of K = config.steps_per_call whose boundaries sit at multiples of K (a
resumed run makes the same calls as an uninterrupted one). After each call, `itstime` says
which periodic jobs are due, in the spirit of big_vision's `u.itstime`: a job due every N
steps runs after the call that crossed a multiple of N.

Stopping early (out of `minutes`, or a SIGINT / SIGTERM) is decided at a call boundary, and
with many processes every process must take the same decision at the same step, or some
would wait forever in the next call's collectives. So after each call the driver's
`agree(flags)` makes the decisions common (`JaxDriver`: one collective, any process's stop
stops every process); a driver without it (one process) keeps its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from typing import Protocol

import numpy as np

from jaxrnn.config import Config
from jaxrnn.metrics import MetricsWriter, json_float


@dataclasses.dataclass
class Chunk:
    """What one call of `Driver.train` did.

    losses: <float>[n] the loss of each step (NaN where non-finite); grad_norm, param_norm and
    lr of the last step; skipped: steps skipped so far as non-finite.
    """

    losses: np.ndarray
    grad_norm: float
    param_norm: float
    lr: float
    skipped: int


class Driver(Protocol):
    """What a framework brings to the loop."""

    step: int  # steps taken so far (the next batch's index)

    def train(self, num_steps: int) -> Chunk:
        """Runs `num_steps` training steps; raises UserError on a non-finite stop."""

    def evaluate(self) -> dict | None:
        """{"loss_nats", "bits_per_char", "chars"} on the validation text, or None (none)."""

    def sample(self, length: int, seed: int) -> str:
        """A sample of `length` characters after the run's prime."""

    def save(self, *, is_best: bool, best_val: float, elapsed_s: float) -> None:
        """Writes a checkpoint (a driver without checkpoints does nothing)."""

    # Optional (`agreed` uses it if the driver has it):
    # def agree(self, flags: tuple[bool, ...]) -> tuple[bool, ...]:
    #     """The same flags on every process of a run: flag i is set if it is set on any
    #     process. Every process calls it at the same point (a collective)."""


def agreed(driver, flags: tuple[bool, ...]) -> tuple[bool, ...]:
    """`driver.agree(flags)`, or the flags themselves for a driver without it (one process:
    torch_baselines' TorchDriver, the tests' drivers)."""
    agree = getattr(driver, "agree", None)
    return tuple(flags) if agree is None else tuple(agree(tuple(flags)))


@dataclasses.dataclass
class LoopResult:
    steps_done: int          # steps taken in this call of run_loop
    train_time: float        # seconds spent in Driver.train
    val: dict | None         # the last evaluation
    best_val: float
    interrupted: bool        # stopped by SIGINT / SIGTERM (a checkpoint was saved)

    @property
    def steps_per_s(self) -> float:
        return self.steps_done / self.train_time if self.train_time else 0.0


def itstime(step: int, every: int, steps_in_call: int) -> bool:
    """Whether a call of `steps_in_call` steps ending at `step` crossed a multiple of `every`
    (`every` 0: never)."""
    return every > 0 and step % every < steps_in_call


class StopFlag:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint at the next call boundary.
    A second signal raises KeyboardInterrupt."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: give up waiting
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def progress_bar(enabled: bool, initial: int, total: int | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, mininterval=1.0)


def run_loop(driver: Driver, config: Config, metrics: MetricsWriter, *,
             best_val: float = float("inf"), elapsed_before: float = 0.0,
             progress: bool = True, log=print, where: str = "") -> LoopResult:
    """Trains until config.steps (or config.minutes, or a signal), writing to `metrics`.

    Per call of K steps: a training line every log_every steps (its loss the mean over the
    call's finite steps, so a resumed run logs what an uninterrupted one does), an evaluation
    every eval_every steps and at the end, a sample every sample_every steps, a checkpoint
    every checkpoint_every steps, at the end, at a new best validation loss and on a signal.
    `where` names the run directory in the message a signal prints.

    `metrics.begin` is told the step the run continues from, the samples also go to
    `metrics.write_text` (TensorBoard, when the run writes it), and `metrics.close` is
    called on the way out, an error's included.
    """
    start_step = step = driver.step
    total_steps = config.steps or 10**12
    K = config.steps_per_call
    deadline = time.monotonic() + 60 * config.minutes if config.minutes else None
    chars_per_step = config.batch_size * config.seq_len
    bar = progress_bar(progress, start_step, config.steps or None)
    train_time = window_time = 0.0
    window_steps, val, interrupted = 0, None, False
    metrics.begin(start_step)
    with StopFlag() as stop, contextlib.closing(metrics):
        while step < total_steps:
            n = min(K - step % K, total_steps - step)  # call boundaries at multiples of K
            t0 = time.perf_counter()
            chunk = driver.train(n)
            dt = time.perf_counter() - t0
            step = driver.step
            train_time += dt
            window_time += dt
            window_steps += n
            bar.update(n)
            if itstime(step, config.log_every, n) or step >= total_steps:
                finite = np.isfinite(chunk.losses)
                record = {"step": step,
                          "loss": float(chunk.losses[finite].mean()) if finite.any() else None,
                          "grad_norm": json_float(chunk.grad_norm),
                          "param_norm": json_float(chunk.param_norm),
                          "lr": float(chunk.lr), "skipped": int(chunk.skipped),
                          "elapsed_s": round(elapsed_before + train_time, 3),
                          "chars_per_s": round(window_steps * chars_per_step /
                                               max(window_time, 1e-9), 1)}
                metrics.write(record)
                bar.set_postfix(loss="-" if record["loss"] is None else f"{record['loss']:.3f}",
                                chars_s=f"{record['chars_per_s']:.0f}")
                window_steps, window_time = 0, 0.0
            # one decision for every process (SIGTERM on one, a clock ahead on another)
            signum = stop.signum  # read once: a signal from here on is seen at the next call
            out_of_time, signalled = agreed(driver, (
                deadline is not None and time.monotonic() >= deadline, signum is not None))
            done = step >= total_steps or out_of_time
            is_best = False
            if itstime(step, config.eval_every, n) or done:
                evaluated = driver.evaluate()
                if evaluated is not None:
                    val = evaluated
                    is_best = val["loss_nats"] < best_val
                    best_val = min(best_val, val["loss_nats"])
                    metrics.write({"step": step, "val_loss": val["loss_nats"],
                                   "val_bpc": val["bits_per_char"]})
                    bar.write(f"step {step}: val loss {val['loss_nats']:.4f} nats/char "
                              f"({val['bits_per_char']:.4f} bits/char)")
            if itstime(step, config.sample_every, n) and not done:
                text = driver.sample(config.sample_length, seed=step)
                bar.write(f"--- sample at step {step} ---\n{text}\n---")
                metrics.write_text("samples", text, step)
            if itstime(step, config.checkpoint_every, n) or done or is_best or signalled:
                driver.save(is_best=is_best, best_val=best_val,
                            elapsed_s=elapsed_before + train_time)
                metrics.flush()  # the events up to a checkpoint are on disk with it
            if signalled:
                interrupted = True
                bar.close()
                name = signal.Signals(signum).name if signum else "a signal to another process"
                log(f"{name}: saved a checkpoint at step {step} in {where}; run the same "
                    f"command again to resume")
                break
            if out_of_time:
                break
    bar.close()
    if val is None:  # e.g. resumed a run that had already finished
        val = driver.evaluate()
    return LoopResult(step - start_step, train_time, val, best_val, interrupted)
