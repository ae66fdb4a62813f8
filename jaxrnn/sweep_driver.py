"""Running a sweep: its run directories, `SweepDriver` for the run loop, the ranking table.

  DIR/sweep.json          the grid: swept fields, their values, each member's values
  DIR/sweep.jsonl         one line per evaluation: every member's val loss, best and status
  DIR/sweep.png           the members' validation curves
  DIR/members/<k>/        member k's own run directory (jaxrnn.rundir): config.json with its
                          values, vocab.json, corpus.json, metrics.jsonl, loss.png and
                          checkpoints, so jaxrnn-sample and jaxrnn-evaluate read it as any run

`train_sweep` reads as `jaxrnn.train.train_and_evaluate` does: each member's directory decides
to resume, refuse or start over; the members' checkpoints must agree on a step (a kill between
two members' saves leaves them apart: every member then resumes from the newest step they all
hold); `jaxrnn.loop.run_loop` drives the steps with `SweepDriver`, so logging, evaluation and
checkpoints keep the loop's cadence. The loop's metrics lines fan out to each member's
metrics.jsonl through `SweepMetrics`, each member's line with its own losses.

A member whose loss or gradients go non-finite is handled by on_nonfinite as a run is: "skip"
skips and counts its bad steps; "stop" freezes it (its steps become no-ops,
`TrainState.halted_at`) while the others go on, and the table and sweep.jsonl say so. A stopped
member's checkpoints keep its last good state (with halted_at set), at the sweep's steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os

import jax
import numpy as np

from jaxrnn import checkpoint as ckpt_lib
from jaxrnn import data as data_lib
from jaxrnn.config import Config
from jaxrnn.errors import UserError
from jaxrnn.fileio import atomic_write
from jaxrnn.loop import Chunk, run_loop
from jaxrnn.metrics import MetricsWriter, json_float, plot_losses, read_metrics
from jaxrnn.rundir import RunDir
from jaxrnn.sweep import (SWEEPABLE, Grid, SweepProgram, member_configs, member_slice,
                          parse_grid)
from jaxrnn.trainer import sample_prime


@dataclasses.dataclass
class Member:
    """One member's run directory and what the host knows of it."""

    index: int
    label: str
    config: Config
    run: RunDir
    metrics: MetricsWriter | None = None
    best_val: float = math.inf
    val: dict | None = None          # its last evaluation
    chunk: Chunk | None = None       # its last call of K steps
    halted_at: int = -1              # on_nonfinite stop: the step it went non-finite at
    improved: bool = False           # a new best not yet written to best.msgpack

    @property
    def running(self) -> bool:
        return self.halted_at < 0

    @property
    def status(self) -> str:
        if not self.running:
            return f"stopped: non-finite at step {self.halted_at}"
        skipped = self.chunk.skipped if self.chunk is not None else 0
        return f"ok, {skipped} step(s) skipped as non-finite" if skipped else "ok"


@dataclasses.dataclass
class SweepResult:
    rows: list            # one dict per member, ranked by validation loss (`ranking`)
    table: str
    steps_per_s: float
    chars_per_s: float    # training characters per second, all members together
    workdir: str
    interrupted: bool = False


# ---------------------------------------------------------------------------- the driver


class SweepDriver:
    """`jaxrnn.loop.Driver` for M members: one jitted call trains them all."""

    def __init__(self, program: SweepProgram, states, step: int, train_tokens, val_tokens,
                 vocab: data_lib.Vocab, members: list[Member], log=print):
        self.program, self.members, self.vocab, self.log = program, members, vocab, log
        placement = program.placement
        self.states = placement.put(states)
        self.hyperparams = placement.put(program.hyperparams())
        self.device_tokens = placement.replicate(np.asarray(train_tokens))
        self.val_tokens = val_tokens
        self.step = step
        self._elapsed_s = 0.0  # of the last checkpoint (a pending best's payload takes it)

    def train(self, num_steps: int) -> Chunk:
        self._write_pending_bests()
        self.states, metrics = self.program.jit_train_chunk(self.states, self.hyperparams,
                                                            self.device_tokens, num_steps)
        metrics, skipped, halted_at = jax.device_get(
            (metrics, self.states.skipped, self.states.halted_at))  # the one host sync
        self.step += num_steps
        for m in self.members:
            k = m.index
            m.chunk = Chunk(np.asarray(metrics["loss"][k], np.float64),
                            float(metrics["grad_norm"][k][-1]),
                            float(metrics["param_norm"][k][-1]), float(metrics["lr"][k][-1]),
                            int(skipped[k]))
            if m.running and halted_at[k] >= 0:
                m.halted_at = int(halted_at[k])
                lr = metrics["lr"][k][m.halted_at - (self.step - num_steps)]
                self.log(f"member {k} ({m.label}): non-finite loss or gradient at step "
                         f"{m.halted_at} (learning rate {float(lr):g}); it is stopped there "
                         f"(its last good state is kept) and the other members go on")
        if not any(m.running for m in self.members):
            raise UserError(
                "every member of the sweep went non-finite ("
                + "; ".join(f"member {m.index} at step {m.halted_at}" for m in self.members)
                + "); the checkpoints written before are kept. Try smaller lr values, clip "
                "norm, or on_nonfinite skip", fields=("lr", "clip", "on_nonfinite"))
        return _summary(self.members)

    def evaluate(self) -> dict | None:
        if len(self.val_tokens) < 2:
            return None
        for m, val in zip(self.members, self.program.evaluate(self.states.params,
                                                             self.val_tokens)):
            if not m.running:  # a stopped run evaluates no more
                continue
            m.val = val
            if val["loss_nats"] < m.best_val:
                m.best_val, m.improved = val["loss_nats"], True
        best = _best_running(self.members)
        return None if best is None else best.val

    def sample(self, length: int, seed: int) -> str:
        from jaxrnn.sampling import sample_text

        member = _best_running(self.members) or self.members[0]
        params = member_slice(self.states.params, member.index)
        text = sample_text(self.program.base.model, params, self.vocab,
                           prime=sample_prime(member.config, self.vocab), length=length,
                           seed=seed)
        return f"[member {member.index}: {member.label}]\n{text}"

    def _payload(self, member: Member, host_states, elapsed_s: float) -> bytes:
        return ckpt_lib.to_bytes(config_json=member.config.to_json(),
                                 vocab_json=self.vocab.to_json(), step=self.step,
                                 state=member_slice(host_states, member.index),
                                 best_val=member.best_val,
                                 metrics=member.metrics.records(self.step), elapsed_s=elapsed_s)

    def save(self, *, is_best: bool, best_val: float, elapsed_s: float) -> None:
        """Every member's checkpoint at this step (each with its own best; the loop's is_best
        and best_val are the sweep's best member's, not each member's)."""
        host = jax.device_get(self.states)
        for m in self.members:
            m.run.checkpoints.save(self.step, self._payload(m, host, elapsed_s),
                                   is_best=m.improved)
            m.improved = False
        self._elapsed_s = elapsed_s

    def _write_pending_bests(self) -> None:
        """A member's new best that no checkpoint followed (the loop saves at the sweep's
        best, not each member's): its best.msgpack now, before the state moves on."""
        pending = [m for m in self.members if m.improved]
        if not pending:
            return
        host = jax.device_get(self.states)
        for m in pending:
            atomic_write(m.run.checkpoints.best_path,
                         self._payload(m, host, self._elapsed_s))
            m.improved = False


def _best_running(members) -> Member | None:
    scored = [m for m in members if m.running and m.val is not None]
    return min(scored, key=lambda m: m.val["loss_nats"]) if scored else None


def _summary(members) -> Chunk:
    """The loop's view of a call (its progress bar): the mean over the running members."""
    running = [m for m in members if m.running] or members
    losses = np.stack([m.chunk.losses for m in running])
    finite = np.isfinite(losses)
    counts = finite.sum(0)
    mean = np.where(counts > 0, np.where(finite, losses, 0).sum(0) / np.maximum(counts, 1),
                    np.nan)
    return Chunk(mean, float(np.mean([m.chunk.grad_norm for m in running])),
                 float(np.mean([m.chunk.param_norm for m in running])),
                 float(running[0].chunk.lr), int(sum(m.chunk.skipped for m in running)))


class SweepMetrics(MetricsWriter):
    """The loop's metrics writer for a sweep: each of its lines goes to every running
    member's metrics.jsonl with the member's own values; each evaluation also to sweep.jsonl."""

    def __init__(self, path: str, members: list[Member], grid: Grid):
        super().__init__(path)
        self.members, self.grid = members, grid

    def begin(self, step: int) -> None:
        for m in self.members:
            m.metrics.begin(step)

    def write(self, record: dict) -> None:
        if "val_loss" in record:
            self._write_val(record)
            return
        for m in self.members:
            if not m.running:  # as a stopped run: no line for the call that stopped it
                continue
            c = m.chunk
            finite = np.isfinite(c.losses)
            m.metrics.write({**record,
                             "loss": float(c.losses[finite].mean()) if finite.any() else None,
                             "grad_norm": json_float(c.grad_norm),
                             "param_norm": json_float(c.param_norm), "lr": float(c.lr),
                             "skipped": int(c.skipped)})

    def _write_val(self, record: dict) -> None:
        step = record["step"]
        for m in self.members:
            if m.running and m.val is not None:
                m.metrics.write({**record, "val_loss": m.val["loss_nats"],
                                 "val_bpc": m.val["bits_per_char"]})
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "members": member_rows(self.members, self.grid)},
                               allow_nan=False) + "\n")

    def write_text(self, tag: str, text: str, step: int) -> None:
        for m in self.members:
            m.metrics.write_text(tag, text, step)

    def flush(self) -> None:
        for m in self.members:
            m.metrics.flush()

    def close(self) -> None:
        for m in self.members:
            m.metrics.close()


def member_rows(members, grid: Grid) -> list[dict]:
    """One JSON-ready dict per member: its index, values, last and best val loss, status."""
    rows = []
    for m in members:
        val = m.val or {}
        rows.append({"member": m.index, **grid.members[m.index],
                     "val_loss": json_float(val.get("loss_nats", math.nan)),
                     "val_bpc": json_float(val.get("bits_per_char", math.nan)),
                     "best_val": json_float(m.best_val),
                     "skipped": m.chunk.skipped if m.chunk is not None else 0,
                     "halted_at": m.halted_at, "status": m.status})
    return rows


def ranking(rows: list[dict]) -> list[dict]:
    """Rows by validation loss, lowest first; stopped members and unevaluated ones last."""
    def key(row):
        stopped = row["halted_at"] >= 0
        loss = row["val_loss"] if row["val_loss"] is not None else math.inf
        return (stopped, loss, row["member"])

    return sorted(rows, key=key)


def format_table(rows: list[dict], grid: Grid) -> str:
    """The ranking as text: rank, member, its values, val loss, bits/char, best, status."""
    def fmt(value):
        return "-" if value is None else (f"{value:g}" if isinstance(value, float)
                                          else str(value))

    header = ["rank", "member", *grid.fields, "val loss", "val bpc", "best val", "status"]
    body = [[str(i + 1), str(r["member"]), *(fmt(r[f]) for f in grid.fields),
             "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}",
             "-" if r["val_bpc"] is None else f"{r['val_bpc']:.4f}",
             "-" if r["best_val"] is None else f"{r['best_val']:.4f}", r["status"]]
            for i, r in enumerate(ranking(rows))]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [header] + body]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot_sweep(sweep_log: str, out_path: str, grid: Grid) -> None:
    """sweep.png: every member's validation loss against steps (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(sweep_log)
    if not records:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k in range(len(grid)):
        points = [(r["step"], row["val_loss"]) for r in records for row in r["members"]
                  if row["member"] == k and row["val_loss"] is not None
                  and row["halted_at"] < 0]
        if points:
            ax.plot(*zip(*points), "o-", markersize=3, label=f"{k}: {grid.label(k)}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if len(grid) > 8 else 1)
    fig.tight_layout()
    tmp = out_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_path)


# ---------------------------------------------------------------------------- resuming


def agreeing_checkpoints(runs: list[RunDir], latest: list, log=print):
    """The checkpoints every member resumes from: [(payload, path)] at one step, or None.

    `latest`: each run's newest good checkpoint (`RunDir.open`), or None. When they are not
    all at one step (a kill came between two members' saves), every member goes back to the
    newest step that all of them hold; with none in common, the sweep starts over.
    """
    if all(found is None for found in latest):
        return None
    steps = [None if found is None else int(found[0]["step"]) for found in latest]
    if None not in steps and len(set(steps)) == 1:
        return latest
    held = [{s for s, _ in run.checkpoints.step_files()} for run in runs]
    common = set.intersection(*held) if None not in steps else set()
    common = {s for s in common if s <= min(s for s in steps if s is not None)}
    if not common:
        log(f"the members' checkpoints are at steps {steps}, with no step they all hold: "
            f"starting the sweep over")
        return None
    step = max(common)
    log(f"the members' checkpoints are at steps {steps}: every member resumes from step "
        f"{step}, the newest they all hold")
    chosen = []
    for run in runs:
        path = dict(run.checkpoints.step_files())[step]
        chosen.append((ckpt_lib.read(path), path))
    return chosen


def _check_grid(path: str, grid: Grid, overwrite: bool) -> None:
    if overwrite or not os.path.exists(path):
        return
    with open(path) as f:
        recorded = json.load(f)
    if recorded.get("members") != json.loads(json.dumps(grid.members)):
        raise UserError(f"{os.path.dirname(path)} holds a sweep over another grid "
                        f"({recorded.get('fields')} = {recorded.get('values')}); use another "
                        f"workdir, or overwrite to start over",
                        fields=("sweep", "workdir", "overwrite"))


def _split(config: Config, data_path: str, tokens):
    train_tokens, val_tokens = data_lib.split_by_position(tokens, config.val_frac)
    data_lib.StreamLayout(len(train_tokens), config.batch_size, config.seq_len).check(
        f"training part of {data_path}", fields=("val_frac",))
    return train_tokens, val_tokens


def _keep_lines(path: str, step: int) -> None:
    """sweep.jsonl cut back to the evaluations of steps <= step (the checkpoints' step)."""
    records = read_metrics(path, step) if os.path.exists(path) else []
    atomic_write(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode())


# ---------------------------------------------------------------------------- the sweep


def train_sweep(base: Config, grid: Grid, data_path: str, workdir: str, *, overwrite=False,
                encoding="utf-8", errors="strict", progress: bool = True, impl: str = "auto",
                devices=None, log=print) -> SweepResult:
    """Trains every member of `grid` over `base` on the text at `data_path`, in one program.

    Writes DIR/sweep.json, sweep.jsonl, sweep.png and DIR/members/<k>/ (see the module
    docstring). Running again resumes every member from the same step. `devices`: where the
    members run (default: JAX's first device; several: split over a `members` mesh axis).
    """
    configs = member_configs(base, grid)
    os.makedirs(workdir, exist_ok=True)
    paths = {name: os.path.join(workdir, name) for name in ("sweep.json", "sweep.jsonl",
                                                             "sweep.png")}
    _check_grid(paths["sweep.json"], grid, overwrite)
    text = data_lib.read_text(data_path, encoding, errors)
    corpus_sha256, corpus_bytes = data_lib.sha256_of(data_path), os.path.getsize(data_path)
    members = [Member(k, grid.label(k), c, RunDir(os.path.join(workdir, "members", str(k)),
                                                  c.keep_checkpoints))
               for k, c in enumerate(configs)]
    latest = [m.run.open(m.config, corpus_sha256, overwrite=overwrite) for m in members]
    resumed = agreeing_checkpoints([m.run for m in members], latest, log)

    vocab = (data_lib.Vocab.from_json(resumed[0][0]["vocab"]) if resumed
             else data_lib.Vocab.from_text(text))
    train_tokens, val_tokens = _split(base, data_path, vocab.encode(text, what=data_path))
    for m in members:
        m.run.start_over(overwrite)
    program = SweepProgram.create(configs, len(vocab), len(train_tokens), impl, devices)
    log(f"sweep: {program.placement.describe()}")

    step, elapsed_before = 0, 0.0
    if resumed:
        states = []
        for m, (payload, path) in zip(members, resumed):
            states.append(ckpt_lib.restore_state(program.member_template(m.index),
                                                 payload["state"], path))
            m.best_val = payload["best_val"]
            m.halted_at = int(payload["state"]["halted_at"])
        states = program.stack(states)
        step, elapsed_before = int(resumed[0][0]["step"]), resumed[0][0]["elapsed_s"]
        log(f"resuming the sweep's {len(members)} members from step {step}")
    else:
        states = program.init_states()
    for m, found in zip(members, resumed or [None] * len(members)):
        m.run.write_header(m.config, vocab, corpus_sha256, corpus_bytes)
        tensorboard = getattr(m.config, "tensorboard", False)  # the runs' own option
        m.metrics = (MetricsWriter(m.run.metrics_path, tensorboard=True) if tensorboard
                     else MetricsWriter(m.run.metrics_path))
        m.metrics.reset(found[0]["metrics"] if found else [])
    atomic_write(paths["sweep.json"], json.dumps({**grid.to_json(), "base_config": json.loads(
        base.to_json())}, indent=2).encode())
    _keep_lines(paths["sweep.jsonl"], step)
    _restore_vals(paths["sweep.jsonl"], members)

    driver = SweepDriver(program, states, step, train_tokens, val_tokens, vocab, members, log)
    metrics = SweepMetrics(paths["sweep.jsonl"], members, grid)
    loop = run_loop(driver, base, metrics, elapsed_before=elapsed_before, progress=progress,
                    log=log, where=workdir)
    for m in members:
        plot_losses(m.run.metrics_path, m.run.plot_path)
    plot_sweep(paths["sweep.jsonl"], paths["sweep.png"], grid)
    rows = ranking(member_rows(members, grid))
    chars_per_step = base.batch_size * base.seq_len * len(members)
    return SweepResult(rows, format_table(rows, grid), loop.steps_per_s,
                       loop.steps_per_s * chars_per_step, workdir, loop.interrupted)


def _restore_vals(sweep_log: str, members) -> None:
    """The members' last evaluations from sweep.jsonl (a resumed sweep's table)."""
    records = read_metrics(sweep_log)
    if not records:
        return
    for row in records[-1]["members"]:
        m = members[row["member"]]
        if row["val_loss"] is not None:
            m.val = {"loss_nats": row["val_loss"], "bits_per_char": row["val_bpc"]}


# ---------------------------------------------------------------------------- command line


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """--sweep FIELD=V1,V2,... (repeatable: the grid is the product)."""
    title, description = "sweep", ("many models in one program (docs/SWEEPS.md): one member "
                                   "per combination of values, in DIR/members/<k>/")
    group = (parser.group(title, description) if hasattr(parser, "group")
             else parser.add_argument_group(title, description))
    group.add_argument("--sweep", action="append", default=None, metavar="FIELD=V1,V2,...",
                       help="train one member per value (repeat for a grid); sweepable: "
                            + ", ".join(SWEEPABLE) + "; the members are split over --devices")


def sweep_main(args: argparse.Namespace, config: Config, impl: str = "auto") -> None:
    """jaxrnn-train --sweep ...: runs the sweep, prints the table and the best's sample.

    The members are split over the first `args.devices` local devices (every one when it is
    absent or None); a multi-process sweep is refused.
    """
    if getattr(args, "init_from", None):
        raise UserError("init_from does not go with sweep: the members start from scratch",
                        fields=("init_from", "sweep"))
    if jax.process_count() > 1:
        raise UserError("a sweep runs in one process (its members split over that process's "
                        "devices); launch it without coordinator / distributed",
                        fields=("sweep", "coordinator", "distributed"))
    grid = parse_grid(args.sweep)
    print(f"sweep of {len(grid)} members over {', '.join(grid.fields)}; base config "
          f"({getattr(args, 'preset', 'default')} preset + flags):\n{config.to_json()}", flush=True)
    count = getattr(args, "devices", None)
    devices = jax.local_devices()
    if count is not None:
        if not 1 <= count <= len(devices):
            raise UserError(f"devices must be between 1 and {len(devices)} (this machine's); "
                            f"got {count}", fields=("devices",))
        devices = devices[:count]
    result = train_sweep(config, grid, args.data, args.workdir, overwrite=args.overwrite,
                         encoding=args.encoding, errors=args.errors,
                         progress=not args.no_progress, impl=impl, devices=devices)
    if result.interrupted:
        return
    print(f"trained {len(grid)} members at {result.chars_per_s:,.0f} chars/s in all")
    print(result.table)
    best = result.rows[0]
    if getattr(args, "final_sample", 0) and best["halted_at"] < 0:
        from jaxrnn.rundir import load_run
        from jaxrnn.sampling import sample_text

        member_dir = os.path.join(args.workdir, "members", str(best["member"]))
        member_config, vocab, model, params = load_run(member_dir, "best", impl=impl)
        text = sample_text(model, params, vocab, prime=sample_prime(member_config, vocab),
                           length=args.final_sample, seed=member_config.seed)
        print(f"--- {args.final_sample}-character sample of member {best['member']} "
              f"({grid.label(best['member'])}, best checkpoint) ---\n{text}")
