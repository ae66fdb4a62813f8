"""The quality benchmark: validation loss against training minutes, jaxrnn and PyTorch side by side.

  python scripts/quality.py --data PATH [--runs jaxrnn:default,torch:lstm-2x256,...]
      [--minutes 8] [--eval-every-minutes 1] [--set field=value ...] [--out DIR]
      [--torch-threads N] [--compile-cache DIR] [--overwrite]

Every run trains for the same minutes of training time on the same split, one run after
another (never two at once), and is evaluated on the validation split at every mark of
`--eval-every-minutes` (and at minute 0). Evaluation pauses the training clock: its time is
reported apart. A run is `FRAMEWORK:SETTING`:

  jaxrnn:PRESET    a preset of jaxrnn/config.py (default, minlm, ...), trained by jaxrnn
  torch:SETTING    a named PyTorch setting (TORCH_SETTINGS) or a charlm preset, trained by
                   torch_baselines (nn.LSTM / GRU / RNN, torch's own initialisation)

`--set field=value` (any Config field; repeatable) applies to every run, after its setting. A
run stops at `--minutes` of training time, or earlier at its config's `steps` when that is not
0 (a step-based schedule has ended; `--set steps=0` trains on).

Both frameworks run through the same timed loop (`train_for`) over the run loop's `Driver`
protocol (jaxrnn.loop): jaxrnn's `JaxDriver` (K steps per jitted call) and torch_baselines'
`TorchDriver` (K Python steps), on one split (`split_corpus`, jaxrnn.data.split_by_position,
which jaxrnn.train and the torch baseline both split with) and the same batches
(`Trainer.get_batch`).

Writes into --out: one run directory per run (config.json, vocab.json, corpus.json,
metrics.jsonl, loss.png; jaxrnn: a checkpoint, torch: final_weights.npz), quality.json
(everything: configs, evaluations, machine, versions, date, git commit), quality.md (the
table) and quality.png (validation loss against training minutes, one line per run). The
three files are rewritten after every run, so an interrupted benchmark keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import io
import json
import math
import os
import shlex
import subprocess
import sys
import time
import typing

import numpy as np

from jaxrnn import data as data_lib
from jaxrnn.cli import parse_bool
from jaxrnn.config import PRESETS, Config, preset
from jaxrnn.errors import UserError
from jaxrnn.fileio import atomic_write

FRAMEWORKS = ("jaxrnn", "torch")
# Named PyTorch settings: Config overrides on the default preset's fields. Time-based runs:
# a constant learning rate (no step horizon for a schedule), no step limit.
TORCH_SETTINGS: dict[str, dict] = {
    # The nn.LSTM 2x256: B=64, T=100, Adam 2e-3, no dropout; the torch baseline's
    # embedding (TorchCharLM, the default preset's embedding_size 64).
    "lstm-2x256": dict(cell="lstm", hidden_size=256, num_layers=2, embedding_size=64,
                       dropout=0.0, seq_len=100, batch_size=64, optimizer="adam", lr=2e-3,
                       schedule="constant", warmup_steps=0, steps=0),
    # The same with one-hot input (embedding_size 0), as char-rnn feeds its LSTM.
    "lstm-2x256-onehot": dict(cell="lstm", hidden_size=256, num_layers=2, embedding_size=0,
                              dropout=0.0, seq_len=100, batch_size=64, optimizer="adam",
                              lr=2e-3, schedule="constant", warmup_steps=0, steps=0),
}

# ---------------------------------------------------------------------------- runs and configs


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of the benchmark: a framework and a setting (a preset or a torch setting)."""

    framework: str
    setting: str

    @property
    def name(self) -> str:
        return f"{self.framework}:{self.setting}"

    @property
    def dirname(self) -> str:
        """The run directory's name under the output folder ("jaxrnn-default")."""
        return f"{self.framework}-{self.setting}"


def parse_runs(text: str) -> list[RunSpec]:
    """'jaxrnn:default,torch:lstm-2x256' -> [RunSpec, ...]; unknown names are UserErrors."""
    specs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        framework, sep, setting = item.partition(":")
        if not sep or framework not in FRAMEWORKS or not setting:
            raise UserError(f"--runs: {item!r} is not FRAMEWORK:SETTING with FRAMEWORK one of "
                            f"{', '.join(FRAMEWORKS)} (e.g. jaxrnn:default, torch:lstm-2x256)")
        known = PRESETS if framework == "jaxrnn" else {**TORCH_SETTINGS, **PRESETS}
        if setting not in known:
            raise UserError(f"--runs: unknown {framework} setting {setting!r}; choose one of "
                            f"{', '.join(known)}")
        specs.append(RunSpec(framework, setting))
    if not specs:
        raise UserError("--runs names no run")
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"--runs names {', '.join(repeated)} more than once")
    return specs


def parse_overrides(items: list[str]) -> dict:
    """['val_frac=0.1', 'dropout=0'] -> {"val_frac": 0.1, "dropout": 0.0}, typed by Config.

    A section's field is given by its own name (`dim=128`), as `jaxrnn.config.preset` takes
    it. `minutes` is --minutes's, not an override.
    """
    from jaxrnn.cli import config_fields  # (name, type, default) of every field

    kinds = {name: kind for name, kind, _ in config_fields()}
    overrides = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise UserError(f"--set {item!r}: expected field=value (e.g. val_frac=0.1)")
        if name == "minutes":
            raise UserError("--set minutes: every run trains for --minutes; use --minutes")
        if name not in kinds:
            raise UserError(f"--set {item!r}: unknown config field {name!r} (the fields of "
                            f"jaxrnn.config.Config, as jaxrnn-train --help lists them)")
        kind = kinds[name]
        try:
            overrides[name] = parse_bool(value) if kind is bool else kind(value)
        except (ValueError, argparse.ArgumentTypeError):
            raise UserError(f"--set {item!r}: {name} takes {kind.__name__} values, got "
                            f"{value!r}") from None
    return overrides


def run_config(spec: RunSpec, overrides: dict, minutes: float) -> Config:
    """The config of one run: its setting, then `overrides`, with `minutes` of training."""
    if spec.setting in TORCH_SETTINGS and spec.framework == "torch":
        return Config.from_dict({**TORCH_SETTINGS[spec.setting], **overrides,
                                 "minutes": minutes})
    return preset(spec.setting, **{**overrides, "minutes": minutes})


# ---------------------------------------------------------------------------- the shared split


@dataclasses.dataclass
class Corpus:
    """The text every run trains and validates on, split once.

    train_tokens <int32>[N_train], val_tokens <int32>[N_val]: the split by position of the
    text's tokens (the last val_frac is the validation set), shared by every run.
    """

    path: str
    sha256: str
    num_bytes: int
    vocab: data_lib.Vocab
    val_frac: float
    train_tokens: np.ndarray
    val_tokens: np.ndarray

    def summary(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.num_bytes,
                "chars": len(self.train_tokens) + len(self.val_tokens),
                "vocab_size": len(self.vocab), "val_frac": self.val_frac,
                "train_chars": len(self.train_tokens), "val_chars": len(self.val_tokens)}


def split_corpus(data_path: str, named_configs: list[tuple[str, Config]],
                 encoding: str = "utf-8", errors: str = "strict") -> Corpus:
    """Reads and splits the text once for every run; the runs must agree on val_frac.

    Each config's batch layout is checked against the training part here, so a run that would
    not fit fails before the first one trains.
    """
    fracs = {config.val_frac for _, config in named_configs}
    if len(fracs) > 1:
        shown = ", ".join(f"{name} {config.val_frac:g}" for name, config in named_configs)
        raise UserError(f"the runs split the text differently (val_frac: {shown}); give them "
                        f"one split with --set val_frac=F", fields=("val_frac",))
    (val_frac,) = fracs
    text = data_lib.read_text(data_path, encoding, errors)
    vocab = data_lib.Vocab.from_text(text)
    tokens = vocab.encode(text, what=data_path)
    train_tokens, val_tokens = data_lib.split_by_position(tokens, val_frac)
    if len(val_tokens) < 2:
        raise UserError(f"the validation split of {data_path} has {len(val_tokens)} "
                        f"characters; the benchmark measures validation loss: use a longer "
                        f"text or a larger val_frac", fields=("val_frac",))
    for name, config in named_configs:
        data_lib.StreamLayout(len(train_tokens), config.batch_size, config.seq_len).check(
            f"training part of {data_path} ({len(tokens)} characters less val_frac "
            f"{val_frac}) for {name}", fields=("val_frac",))
    return Corpus(data_path, data_lib.sha256_of(data_path), os.path.getsize(data_path), vocab,
                  val_frac, train_tokens, val_tokens)


def tokens_digest(tokens) -> str:
    """sha256 of a token array as int32 (what a driver trains or validates on)."""
    import hashlib

    return hashlib.sha256(np.asarray(tokens, np.int32).tobytes()).hexdigest()


# ---------------------------------------------------------------------------- the contenders


@dataclasses.dataclass
class Contender:
    """A driver ready to train (jaxrnn.loop.Driver) and what the report says about it."""

    driver: typing.Any
    num_params: int
    train_tokens: typing.Any   # the arrays the driver itself holds (for the split check)
    val_tokens: typing.Any
    finish: typing.Callable[[float, float], None]  # (best_val, train_s): final files
    warmup_s: float | None = None  # the untimed warm-up call (jaxrnn: compiling), if any


def jaxrnn_contender(config: Config, corpus: Corpus, run, metrics, impl: str = "auto"):
    """jaxrnn's `JaxDriver` on a fresh TrainState; `finish` writes a checkpoint.

    Compiling is kept off the training clock: a throwaway driver on its own copy of the
    initial state makes the first call (the jitted K-step function is the trainer's, so the
    real run reuses it) and `warmup_s` reports that call's time.
    """
    import jax

    from jaxrnn.train import JaxDriver, Trainer

    trainer = Trainer.create(config, len(corpus.vocab), len(corpus.train_tokens), impl)

    def fresh_driver():  # the state is donated to each call: every driver gets its own
        return JaxDriver(trainer, jax.device_put(trainer.init_state()), corpus.train_tokens,
                         corpus.val_tokens, corpus.vocab, run, metrics)

    t0 = time.perf_counter()
    try:
        fresh_driver().train(min(config.steps_per_call, config.steps or config.steps_per_call))
    except UserError:  # non-finite already: the timed run meets it and reports it
        pass
    warmup_s = time.perf_counter() - t0
    driver = fresh_driver()
    num_params = sum(int(np.size(leaf))
                     for leaf in jax.tree_util.tree_leaves(driver.state.params))

    def finish(best_val: float, train_s: float):
        driver.save(is_best=False, best_val=best_val, elapsed_s=train_s)

    return Contender(driver, num_params, np.asarray(driver.device_tokens), driver.val_tokens,
                     finish, warmup_s)


def require_torch(config: Config) -> None:
    """Raises UserError unless PyTorch is installed and has a twin of the config's model."""
    try:
        from torch_baselines.training import require_torch_model
    except ImportError as e:
        raise UserError(f"torch runs need PyTorch ({e}); install the torch extra "
                        f"(pip install -e '.[torch]')") from None
    require_torch_model(config)


def torch_contender(config: Config, corpus: Corpus, run):
    """torch_baselines' `TorchDriver`: `TorchCharLM.from_config` (torch's initialisation,
    seeded by config.seed) trained on jaxrnn's batches; `finish` writes final_weights.npz."""
    import jax
    import jax.numpy as jnp
    import torch

    from jaxrnn.train import Trainer, sample_prime
    from torch_baselines.model import TorchCharLM
    from torch_baselines.training import (TorchDriver, TorchTrainer, require_torch_model,
                                          require_x64)

    require_torch_model(config)
    require_x64(config)
    # the batches are jaxrnn's (Trainer.get_batch, as NumPy), as the torch baseline takes them
    batch_trainer = Trainer.create(config, len(corpus.vocab), len(corpus.train_tokens))
    rng = batch_trainer.init_state().rng
    gather = jax.jit(lambda tokens, step: batch_trainer.get_batch(tokens, step, rng))

    def batch(tokens, step: int):
        inputs, targets, reset = gather(tokens, jnp.int32(step))
        return (torch.from_numpy(np.asarray(inputs).astype(np.int64)),
                torch.from_numpy(np.asarray(targets).astype(np.int64)), bool(reset))

    device_tokens = jnp.asarray(corpus.train_tokens)
    batch(device_tokens, 0)  # compile the gather now, not in the first timed call
    torch.manual_seed(config.seed)
    module = TorchCharLM.from_config(config, len(corpus.vocab))
    windows = data_lib.StreamLayout(len(corpus.train_tokens), config.batch_size,
                                    config.seq_len).windows_per_epoch
    driver = TorchDriver(TorchTrainer(config, module, windows), batch, device_tokens,
                         corpus.val_tokens, corpus.vocab, sample_prime(config, corpus.vocab))

    def finish(best_val: float, train_s: float):
        buffer = io.BytesIO()
        np.savez(buffer, **{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})
        atomic_write(os.path.join(run.path, "final_weights.npz"), buffer.getvalue())

    num_params = sum(p.numel() for p in module.parameters())
    return Contender(driver, num_params, np.asarray(driver.device_tokens), driver.val_tokens,
                     finish)


# ---------------------------------------------------------------------------- the timed loop


@dataclasses.dataclass
class Evaluation:
    """One validation pass. minutes: training time before it; mark_minutes: the eval mark it
    stands for (None: the end of a run that stopped between marks); eval_s: its own time."""

    minutes: float
    mark_minutes: float | None
    step: int
    loss_nats: float
    bits_per_char: float
    eval_s: float


@dataclasses.dataclass
class TimedRun:
    """What `train_for` measured."""

    evaluations: list[Evaluation]
    steps: int             # steps taken
    train_s: float         # seconds inside Driver.train (the training clock)
    eval_s: float          # seconds inside Driver.evaluate
    first_call_s: float    # the first timed Driver.train call
    stopped: str           # "minutes" | "steps" | "error"
    error: str | None
    last_train_loss: float | None


def train_for(driver, *, minutes: float, eval_every_minutes: float, steps_per_call: int,
              max_steps: int = 0, metrics=None, log_every: int = 0, chars_per_step: int = 0,
              clock=time.perf_counter, on_eval=None) -> TimedRun:
    """Trains `driver` (a jaxrnn.loop.Driver) for `minutes` of training time.

    Calls `driver.train(n)` with call boundaries at multiples of `steps_per_call`; after each
    call the training clock (the time inside `train` only) is checked: the first call that ends
    past a mark k * eval_every_minutes is followed by an evaluation, timed apart, and the run
    stops after the call that ends past `minutes` (or at `max_steps` when it is not 0, or on a
    UserError from `train`, a non-finite stop). It is also evaluated before the first step.
    `metrics` (a jaxrnn.metrics.MetricsWriter) receives the run loop's training lines every
    `log_every` steps and {"step", "val_loss", "val_bpc", "elapsed_s"} per evaluation;
    `on_eval(evaluation)` is called after each.
    """
    from jaxrnn.loop import itstime

    budget_s, cadence_s = 60.0 * minutes, 60.0 * eval_every_minutes
    num_marks = math.floor(minutes / eval_every_minutes + 1e-9)
    evaluations: list[Evaluation] = []
    train_s = eval_s = window_s = 0.0
    first_call_s, window_steps, last_loss, error = None, 0, None, None
    start_step = driver.step

    def evaluate(mark: int | None):
        nonlocal eval_s
        t0 = clock()
        val = driver.evaluate()
        dt = clock() - t0
        eval_s += dt
        if val is None:
            return
        evaluation = Evaluation(train_s / 60.0,
                                None if mark is None else round(mark * eval_every_minutes, 9),
                                driver.step, float(val["loss_nats"]),
                                float(val["bits_per_char"]), dt)
        evaluations.append(evaluation)
        if metrics is not None:
            metrics.write({"step": evaluation.step, "val_loss": evaluation.loss_nats,
                           "val_bpc": evaluation.bits_per_char, "elapsed_s": round(train_s, 3)})
        if on_eval is not None:
            on_eval(evaluation)

    evaluate(0)
    next_mark, stopped = 1, "minutes"
    while True:
        step = driver.step
        if max_steps and step >= max_steps:  # nothing left to train
            stopped = "steps"
            break
        n = steps_per_call - step % steps_per_call
        if max_steps:
            n = min(n, max_steps - step)
        t0 = clock()
        try:
            chunk = driver.train(n)
        except UserError as e:  # a non-finite stop: what was measured until then stands
            train_s += clock() - t0
            stopped, error = "error", str(e)
            break
        dt = clock() - t0
        train_s, window_s, window_steps = train_s + dt, window_s + dt, window_steps + n
        first_call_s = dt if first_call_s is None else first_call_s
        finite = np.isfinite(chunk.losses)
        last_loss = float(chunk.losses[finite].mean()) if finite.any() else None
        steps_done = bool(max_steps) and driver.step >= max_steps
        out_of_time = train_s >= budget_s
        if metrics is not None and (itstime(driver.step, log_every, n) or steps_done
                                    or out_of_time):
            metrics.write({"step": driver.step, "loss": last_loss,
                           "grad_norm": float(chunk.grad_norm),
                           "param_norm": float(chunk.param_norm), "lr": float(chunk.lr),
                           "skipped": int(chunk.skipped), "elapsed_s": round(train_s, 3),
                           "chars_per_s": round(window_steps * chars_per_step /
                                                max(window_s, 1e-9), 1)})
            window_s, window_steps = 0.0, 0
        crossed = min(math.floor(train_s / cadence_s + 1e-9), num_marks)
        if crossed >= next_mark or steps_done or out_of_time:
            evaluate(crossed if crossed >= next_mark else None)
            next_mark = crossed + 1
        if steps_done or out_of_time:
            stopped = "steps" if steps_done and not out_of_time else "minutes"
            break
    return TimedRun(evaluations, driver.step - start_step, train_s, eval_s, first_call_s or 0.0,
                    stopped, error, last_loss)


# ---------------------------------------------------------------------------- the report


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> dict:
    """{"commit", "dirty"} of the checkout this module runs from (None where it is none)."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment() -> dict:
    """The machine, the versions, the date and the git commit, for quality.json."""
    from benchmarks.run import machine_info

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "cpu_count": os.cpu_count(),
            "versions": {name: _version(name) for name in
                         ("jaxrnn", "jax", "jaxlib", "optax", "numpy", "torch")},
            "git": git_commit()}


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def marks_of(records: list[dict]) -> list[float]:
    """The evaluation marks (minutes > 0) any run was evaluated at, in order."""
    return sorted({e["mark_minutes"] for r in records for e in r["evaluations"]
                   if e["mark_minutes"]})


def format_table(records: list[dict]) -> str:
    """A Markdown table: run, params, steps, chars/s, the validation loss (nats/char) at each
    mark, and the last evaluation in nats and bits per character."""
    marks = marks_of(records)
    header = ["run", "params", "steps", "chars/s", *(f"{m:g} min" for m in marks),
              "val nats", "val bpc"]
    rows = []
    for r in records:
        at_mark = {e["mark_minutes"]: e["loss_nats"] for e in r["evaluations"]}
        final = r["final"]
        rows.append([r["name"], f"{r['params']:,}", f"{r['steps']:,}",
                     f"{r['chars_per_s']:,.0f}",
                     *(f"{at_mark[m]:.4f}" if m in at_mark else "-" for m in marks),
                     f"{final['loss_nats']:.4f}" if final else "-",
                     f"{final['bits_per_char']:.4f}" if final else "-"])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    notes = [f"{r['name']}: stopped at its config's steps ({r['steps']:,}) after "
             f"{r['train_s'] / 60:.2f} min" for r in records if r["stopped"] == "steps"]
    notes += [f"{r['name']}: stopped by an error: {r['error']}" for r in records if r["error"]]
    return "\n".join([line(header), rule, *map(line, rows), *notes])


def plot_quality(records: list[dict], path: str, title: str = "") -> None:
    """quality.png: validation loss (nats/char; bits/char on the right) against training
    minutes, one line per run (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    later = []  # the losses after minute 0, which set the scale
    for index, r in enumerate(records):
        points = [(e["minutes"], e["loss_nats"]) for e in r["evaluations"]]
        if not points:
            continue
        later += [loss for minutes, loss in points if minutes > 0]
        ax.plot(*zip(*points), "o-", color=f"C{index}", ms=4,
                label=f"{r['name']} ({r['params']:,} params, {r['steps']:,} steps)")
    if later:  # minute 0 (the untrained model) would flatten the curves: leave it off the top
        low, high = min(later), max(later)
        margin = 0.1 * (high - low) or 0.05
        ax.set_ylim(low - margin, high + margin)
    ax.secondary_yaxis("right", functions=(lambda n: n / math.log(2),
                                           lambda b: b * math.log(2))).set_ylabel("bits/char")
    ax.set_xlabel("training minutes (evaluation excluded)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def write_outputs(report: dict, out_dir: str) -> str:
    """quality.json, quality.md and quality.png from the report so far; returns the table."""
    table = format_table(report["runs"])
    atomic_write(os.path.join(out_dir, "quality.json"),
                 (json.dumps(report, indent=2) + "\n").encode())
    atomic_write(os.path.join(out_dir, "quality.md"),
                 (f"{report['command']}\n\n{report['date']}, {report['machine']}\n\n"
                  f"{table}\n").encode())
    data = report["data"]
    plot_quality(report["runs"], os.path.join(out_dir, "quality.png"),
                 title=f"{os.path.basename(data['path'])}, val_frac {data['val_frac']:g}, "
                       f"{report['minutes']:g} min per run; {report['machine']}")
    return table


# ---------------------------------------------------------------------------- the benchmark


def run_quality(specs: list[RunSpec], data_path: str, out_dir: str, *, minutes: float = 8.0,
                eval_every_minutes: float = 1.0, overrides: dict | None = None,
                impl: str = "auto", overwrite: bool = False, command: str = "",
                before_run=None, log=print) -> dict:
    """Runs every spec in turn and writes the outputs after each (see the module docstring).

    `impl` is jaxrnn's engine implementation; `before_run(config)` is called before each run
    is built (the entry point sets jax_enable_x64 from its dtype there). Returns the report
    (what quality.json holds).
    """
    from jaxrnn.metrics import MetricsWriter, plot_losses
    from jaxrnn.rundir import RunDir

    if not minutes > 0:
        raise UserError(f"--minutes must be positive; got {minutes}")
    if not 0 < eval_every_minutes <= minutes:
        raise UserError(f"--eval-every-minutes must be in (0, --minutes]; got "
                        f"{eval_every_minutes}")
    overrides = dict(overrides or {})
    named = [(spec.name, run_config(spec, overrides, minutes)) for spec in specs]
    for spec, (_, config) in zip(specs, named):
        if spec.framework == "torch":  # before any run trains: a late refusal wastes the others
            require_torch(config)
    if os.path.exists(os.path.join(out_dir, "quality.json")) and not overwrite:
        raise UserError(f"{out_dir} holds a quality benchmark already; use --overwrite or "
                        f"another --out")
    corpus = split_corpus(data_path, named)
    os.makedirs(out_dir, exist_ok=True)
    report = {"benchmark": "quality", "command": command, **environment(), "impl": impl,
              "minutes": minutes, "eval_every_minutes": eval_every_minutes,
              "overrides": overrides, "data": corpus.summary(), "runs": []}
    for spec, (name, config) in zip(specs, named):
        if before_run is not None:
            before_run(config)
        run = RunDir(os.path.join(out_dir, spec.dirname), config.keep_checkpoints)
        run.open(config, corpus.sha256, overwrite=True)  # a benchmark run always starts over
        run.start_over(overwrite=True)
        run.write_header(config, corpus.vocab, corpus.sha256, corpus.num_bytes)
        metrics = MetricsWriter(run.metrics_path)
        metrics.reset([])
        if spec.framework == "jaxrnn":
            contender = jaxrnn_contender(config, corpus, run, metrics, impl)
        else:
            contender = torch_contender(config, corpus, run)
        log(f"=== {name}: {contender.num_params:,} params, {minutes:g} min "
            f"(load {_loadavg()}) ===")

        def on_eval(e: Evaluation, name=name):
            log(f"{name}: {e.minutes:6.2f} min  step {e.step:>6}  val {e.loss_nats:.4f} "
                f"nats/char ({e.bits_per_char:.4f} bits)  [eval {e.eval_s:.1f} s]")

        load_before = _loadavg()
        timed = train_for(contender.driver, minutes=minutes,
                          eval_every_minutes=eval_every_minutes,
                          steps_per_call=config.steps_per_call, max_steps=config.steps,
                          metrics=metrics, log_every=config.log_every,
                          chars_per_step=config.batch_size * config.seq_len, on_eval=on_eval)
        evaluations = [dataclasses.asdict(e) for e in timed.evaluations]
        best = min((e.loss_nats for e in timed.evaluations), default=float("inf"))
        contender.finish(best, timed.train_s)
        plot_losses(run.metrics_path, run.plot_path)
        report["runs"].append({
            "name": name, "framework": spec.framework, "setting": spec.setting,
            "run_dir": spec.dirname, "config": json.loads(config.to_json()),
            "params": contender.num_params, "steps": timed.steps,
            "train_s": round(timed.train_s, 3), "eval_s": round(timed.eval_s, 3),
            "first_call_s": round(timed.first_call_s, 3),
            "warmup_s": None if contender.warmup_s is None else round(contender.warmup_s, 3),
            "chars_per_s": round(timed.steps * config.batch_size * config.seq_len /
                                 max(timed.train_s, 1e-9), 1),
            "stopped": timed.stopped, "error": timed.error,
            "last_train_loss": timed.last_train_loss,
            "loadavg_1m": {"before": load_before, "after": _loadavg()},
            "split": {"train_chars": len(contender.train_tokens),
                      "val_chars": len(contender.val_tokens),
                      "train_sha256": tokens_digest(contender.train_tokens),
                      "val_sha256": tokens_digest(contender.val_tokens)},
            "evaluations": evaluations,
            "final": evaluations[-1] if evaluations else None,
        })
        table = write_outputs(report, out_dir)
        del contender
        gc.collect()
    log(table)
    return report


def _main(argv=None) -> None:
    from jaxrnn import compile_cache
    from jaxrnn.cli import add_compile_cache_flag, default_impl, set_x64

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the UTF-8 text to train and validate on")
    parser.add_argument("--runs", default="jaxrnn:default,torch:lstm-2x256",
                        help="comma-separated FRAMEWORK:SETTING; jaxrnn:PRESET "
                             f"({', '.join(PRESETS)}), torch:SETTING "
                             f"({', '.join(TORCH_SETTINGS)}, or a charlm preset) "
                             "(default: jaxrnn:default,torch:lstm-2x256)")
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="training minutes per run, evaluation excluded (default: 8)")
    parser.add_argument("--eval-every-minutes", type=float, default=1.0,
                        help="evaluate after every this many training minutes (default: 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE",
                        help="a Config field for every run, after its setting (repeatable)")
    parser.add_argument("--out", default="runs/quality",
                        help="output folder: a run directory per run, quality.json, quality.md, "
                             "quality.png (default: runs/quality)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the benchmark an --out folder holds")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch's threads (default: the number of cores)")
    add_compile_cache_flag(parser)
    args = parser.parse_args(argv)
    specs = parse_runs(args.runs)
    overrides = parse_overrides(args.overrides)
    if args.torch_threads is not None and args.torch_threads < 1:
        raise UserError(f"--torch-threads must be at least 1; got {args.torch_threads}")
    if any(spec.framework == "torch" for spec in specs):
        try:
            import torch
        except ImportError:  # run_quality refuses the torch runs, saying what to install
            pass
        else:
            torch.set_num_threads(args.torch_threads or os.cpu_count())
    compile_cache.enable(args.compile_cache)
    command = shlex.join(["python", "scripts/quality.py",
                          *(sys.argv[1:] if argv is None else argv)])
    run_quality(specs, args.data, args.out, minutes=args.minutes,
                eval_every_minutes=args.eval_every_minutes, overrides=overrides,
                impl=default_impl(), overwrite=args.overwrite, command=command,
                before_run=set_x64)


def main(argv=None) -> None:
    """The command line: a UserError is one line on stderr and exit code 2. Config fields
    keep their own names in messages (they are what --set takes)."""
    try:
        _main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; quality.json holds the runs that finished", file=sys.stderr)
        sys.exit(130)
