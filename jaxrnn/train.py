"""Training a char-LM end to end: a text file and a config in, a run directory out.

`train_and_evaluate` reads top to bottom: the run directory decides to resume, refuse or start
over (`jaxrnn.rundir`); the text is read and split; the trainer (`jaxrnn.trainer`) and its
state are made or restored; `jaxrnn.loop.run_loop` drives the steps with `JaxDriver`, the
jaxrnn side of the loop's `Driver` interface (the PyTorch baseline brings its own).

With a `mesh` (`jaxrnn.mesh`) the run is data parallel over its devices, which may span many
processes: every process reads the same text and run directory and runs the same steps;
only process 0 writes files (config, metrics.jsonl, loss.png, checkpoints), and a checkpoint
holds the whole carried state, gathered from every process.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jaxrnn import checkpoint as ckpt_lib
from jaxrnn import data as data_lib
from jaxrnn import mesh as mesh_lib
from jaxrnn.config import Config
from jaxrnn.errors import UserError
from jaxrnn.loop import Chunk, run_loop
from jaxrnn.metrics import MetricsWriter, plot_losses
from jaxrnn.optim import lr_schedule, make_optimizer
from jaxrnn.rundir import RunDir
from jaxrnn.trainer import Trainer, TrainState, sample_prime

__all__ = ["train_and_evaluate", "RunResult", "JaxDriver", "load_corpus", "Trainer",
           "TrainState", "lr_schedule", "make_optimizer", "sample_prime"]


@dataclasses.dataclass
class RunResult:
    state: TrainState
    val: dict | None
    best_val: float
    steps_per_s: float
    chars_per_s: float
    workdir: str
    interrupted: bool = False


def load_corpus(data_path: str, vocab: data_lib.Vocab | None = None, encoding="utf-8",
                errors="strict"):
    """Reads a text file -> (vocab, tokens <int32>[N]). With `vocab`, unknown chars are errors."""
    text = data_lib.read_text(data_path, encoding, errors)
    vocab = vocab or data_lib.Vocab.from_text(text)
    return vocab, vocab.encode(text, what=data_path)


def train_and_evaluate(config: Config, data_path: str, workdir: str, *, overwrite=False,
                       init_from: str | None = None, encoding="utf-8", errors="strict",
                       progress: bool = True, impl: str = "auto", mesh=None,
                       log=print) -> RunResult:
    """Trains per `config` on the text at `data_path`, writing everything into `workdir`.

    Writes config.json, vocab.json, corpus.json, metrics.jsonl, loss.png and checkpoints (see
    jaxrnn.rundir). Running again on the same workdir resumes from the newest good
    checkpoint; a workdir holding a run with another config or another text is refused
    (unless `overwrite`). `impl` is the engine's implementation (`jaxrnn.Recurrent`).
    `mesh`: a `jaxrnn.mesh` data mesh to train data parallel on, or None (one device). In a
    multi-process run every process calls this with the same arguments, and the workdir must
    be on a file system they all see (each reads the checkpoint it resumes from).
    """
    main = mesh_lib.is_main_process()
    text = data_lib.read_text(data_path, encoding, errors)
    corpus_sha256, corpus_bytes = data_lib.sha256_of(data_path), os.path.getsize(data_path)
    run = RunDir(workdir, config.keep_checkpoints)
    resumed = run.open(config, corpus_sha256, overwrite=overwrite)

    vocab = data_lib.Vocab.from_json(resumed[0]["vocab"]) if resumed else \
        data_lib.Vocab.from_text(text)
    tokens = vocab.encode(text, what=data_path)
    train_tokens, val_tokens = _split(config, data_path, tokens)
    trainer = Trainer.create(config, len(vocab), len(train_tokens), impl, mesh)
    _agree_on_start(resumed, workdir)
    if main:
        run.start_over(overwrite)

    state = trainer.init_state()
    best_val, elapsed_before, kept_metrics = float("inf"), 0.0, []
    if resumed:
        payload, path = resumed
        state = ckpt_lib.restore_state(state, payload["state"], path)
        best_val, elapsed_before = payload["best_val"], payload["elapsed_s"]
        kept_metrics = payload["metrics"]
        log(f"resuming from {path} at step {int(payload['step'])}")
    elif init_from:
        state = _init_from(state, init_from, vocab, trainer)
    if main:
        run.write_header(config, vocab, corpus_sha256, corpus_bytes)
    # metrics.jsonl must match the checkpoint: its lines are the ones the checkpoint holds
    # (a kill may have left lines logged after it, or a torn last line).
    metrics = MetricsWriter(run.metrics_path, tensorboard=config.tensorboard)
    if not main:
        metrics = _NoFiles(run.metrics_path)
    metrics.reset(kept_metrics)

    driver = JaxDriver(trainer, trainer.put_state(state), train_tokens, val_tokens, vocab, run,
                       metrics)
    loop = run_loop(driver, config, metrics, best_val=best_val, elapsed_before=elapsed_before,
                    progress=progress, log=log, where=workdir)
    if main:
        plot_losses(run.metrics_path, run.plot_path)
    mesh_lib.barrier("jaxrnn: the run's files are written")  # e.g. before reading best.msgpack
    chars_per_step = config.batch_size * config.seq_len
    return RunResult(driver.state, loop.val, loop.best_val, loop.steps_per_s,
                     loop.steps_per_s * chars_per_step, workdir, loop.interrupted)


def _split(config: Config, data_path: str, tokens):
    """(train, val) token arrays, checked to fit the batch layout and to validate on."""
    train_tokens, val_tokens = data_lib.split_by_position(tokens, config.val_frac)
    data_lib.StreamLayout(len(train_tokens), config.batch_size, config.seq_len).check(
        f"training part of {data_path} ({len(tokens)} characters less val_frac "
        f"{config.val_frac})" if config.val_frac else f"text {data_path}",
        fields=("val_frac",))
    if config.val_frac > 0 and len(val_tokens) < 2:
        raise UserError(f"the validation split of {data_path} has {len(val_tokens)} "
                        f"characters; use a longer text or a larger val_frac",
                        fields=("val_frac",))
    return train_tokens, val_tokens


def _agree_on_start(resumed, workdir: str) -> None:
    """Every process must resume from the step process 0 resumes from (a no-op for one)."""
    step = int(resumed[0]["step"]) if resumed else 0
    main_step = mesh_lib.broadcast_int(step)
    if step != main_step:
        found = f"step {step}" if step else "no checkpoint"
        raise UserError(f"process {jax.process_index()} found {found} in {workdir}, process 0 "
                        f"step {main_step}; a multi-process run needs its workdir on a file "
                        f"system every process sees", fields=("workdir",))


class _NoFiles(MetricsWriter):
    """The metrics writer of processes other than 0: it writes nothing (process 0 does)."""

    def __init__(self, path: str):
        super().__init__(path)

    def reset(self, records: list[dict]) -> None:
        pass

    def write(self, record: dict) -> None:
        pass


class JaxDriver:
    """jaxrnn's side of `jaxrnn.loop.Driver`: jitted K-step calls on a TrainState.

    With the trainer's mesh, every process runs every method at the same points (training,
    evaluation, saving and `agree` are collectives); sampling runs on one device of each
    process.
    """

    def __init__(self, trainer: Trainer, state: TrainState, train_tokens, val_tokens,
                 vocab: data_lib.Vocab, run: RunDir, metrics: MetricsWriter):
        self.trainer, self.state, self.vocab = trainer, state, vocab
        self.run, self.metrics = run, metrics
        self.device_tokens = trainer.put_tokens(train_tokens)
        self.val_tokens = val_tokens
        self.step = int(state.step)

    def train(self, num_steps: int) -> Chunk:
        self.state, metrics = self.trainer.jit_train_chunk(self.state, self.device_tokens,
                                                           num_steps)
        # the one host sync per call (replicated values: no communication)
        metrics, (step, halted_at, skipped) = mesh_lib.to_host(
            (metrics, (self.state.step, self.state.halted_at, self.state.skipped)))
        if int(halted_at) >= 0:
            self._halt(int(halted_at), metrics)
        self.step = int(step)
        return Chunk(np.asarray(metrics["loss"], np.float64), float(metrics["grad_norm"][-1]),
                     float(metrics["param_norm"][-1]), float(metrics["lr"][-1]), int(skipped))

    def _halt(self, bad: int, metrics):
        last = self.run.checkpoints.step_files()
        where = (f"the last good checkpoint is {last[0][1]} (step {last[0][0]}; start a new "
                 f"workdir from it with init_from)") if last else "no checkpoint was written yet"
        raise UserError(
            f"non-finite loss or gradient at step {bad} (learning rate "
            f"{float(metrics['lr'][bad - self.step]):g}); nothing from it was saved, and "
            f"{where}. Try a smaller lr, clip norm, or on_nonfinite skip",
            fields=("workdir", "init_from", "lr", "clip", "on_nonfinite"))

    def agree(self, flags: tuple[bool, ...]) -> tuple[bool, ...]:
        """The loop's stop flags, set on every process if set on any (one collective with
        many processes), so that all of them stop after the same step."""
        return mesh_lib.any_process(flags)

    def evaluate(self) -> dict | None:
        if len(self.val_tokens) < 2:
            return None
        return self.trainer.evaluate(self.state.params, self.val_tokens)

    def sample(self, length: int, seed: int) -> str:
        from jaxrnn.sampling import sample_text

        config = self.trainer.config
        params = self.state.params
        if self.trainer.mesh is not None:
            params = mesh_lib.on_one_device(params)  # sampling runs on one device
        return sample_text(self.trainer.model, params, self.vocab,
                           prime=sample_prime(config, self.vocab), length=length, seed=seed)

    def save(self, *, is_best: bool, best_val: float, elapsed_s: float) -> None:
        """A checkpoint of the whole state: every process gathers, process 0 writes."""
        state = mesh_lib.to_host(self.state)  # the carry from every device and process
        if not mesh_lib.is_main_process():
            return
        config, step = self.trainer.config, int(state.step)
        payload = ckpt_lib.to_bytes(config_json=config.to_json(),
                                    vocab_json=self.vocab.to_json(), step=step,
                                    state=state, best_val=best_val,
                                    metrics=self.metrics.records(step), elapsed_s=elapsed_s)
        self.run.checkpoints.save(step, payload, is_best)


def _init_from(state: TrainState, path: str, vocab: data_lib.Vocab, trainer: Trainer):
    """Starts from another run's parameters (fresh optimiser and step)."""
    payload = ckpt_lib.read(path)
    their_vocab = data_lib.Vocab.from_json(payload["vocab"])
    if their_vocab != vocab:
        only_theirs = sorted(set(their_vocab.chars) - set(vocab.chars))
        only_ours = sorted(set(vocab.chars) - set(their_vocab.chars))
        raise UserError(
            f"init_from {path} has a different vocabulary ({len(their_vocab)} vs "
            f"{len(vocab)} characters; only in the checkpoint: "
            f"{data_lib.format_chars(only_theirs) or 'none'}; only in this text: "
            f"{data_lib.format_chars(only_ours) or 'none'})", fields=("init_from",))
    params = ckpt_lib.restore_state({"params": state.params},
                                    {"params": payload["state"]["params"]}, path)["params"]
    return state._replace(params=params, opt_state=trainer.optimizer.init(params))
