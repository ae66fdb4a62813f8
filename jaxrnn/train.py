"""Training: the jitted step, K steps per call, evaluation, and the resumable run loop.

The one function of training is `train_step(state, batch, key) -> (state, metrics)`; it runs
inside `train_chunk`, a `lax.scan` over K steps that gathers each step's batch on the device
from the step number, so a jitted call does K steps and talks to the host once. The state is
a plain pytree (`TrainState`) and everything the next step needs is in it, including the
carried recurrent state, so a run resumes exactly from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import checkpoint as ckpt_lib
from jaxrnn import data as data_lib
from jaxrnn.config import Config, config_diff
from jaxrnn.errors import UserError
from jaxrnn.fileio import atomic_write
from jaxrnn.model import build_model, cross_entropy


class TrainState(NamedTuple):
    """Everything a training step reads and writes; a plain pytree."""

    step: jax.Array        # <int32>[] steps taken (the next batch's index)
    params: Any
    opt_state: Any
    carry: Any             # recurrent state carried across stream windows, [.., B, H]
    rng: jax.Array         # <uint32>[2] raw key data; per-step keys are fold_in(rng, step)
    skipped: jax.Array     # <int32>[] steps skipped for non-finite values (--on-nonfinite skip)
    halted_at: jax.Array   # <int32>[] -1, or the step whose loss/grads were non-finite (stop)


# ---------------------------------------------------------------------------- optimiser


def lr_schedule(config: Config, windows_per_epoch: int):
    """step -> learning rate, for the config's schedule."""
    lr = config.lr
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "cosine":
        # nanoGPT's: linear warm-up to lr over warmup_steps (step 0 already trains, at
        # lr / warmup_steps), then a cosine down to lr * min_lr_frac at config.steps.
        warmup, total = config.warmup_steps, max(config.steps, config.warmup_steps + 1)
        floor = lr * config.min_lr_frac

        def cosine(step):
            step = jnp.asarray(step, jnp.result_type(float))  # float64 under x64
            progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
            decayed = floor + 0.5 * (lr - floor) * (1.0 + jnp.cos(jnp.pi * progress))
            return jnp.where(step < warmup, lr * (step + 1) / max(warmup, 1), decayed)

        return cosine

    def char_rnn(step):  # multiply by lr_decay at the end of every epoch >= lr_decay_after
        epoch = step // windows_per_epoch
        decays = jnp.maximum(0, epoch - config.lr_decay_after + 1)
        return lr * config.lr_decay ** decays

    return char_rnn


def make_optimizer(config: Config, windows_per_epoch: int = 1):
    """Clipping (elementwise, as char-rnn; or by global norm) chained with the optimiser."""
    schedule = lr_schedule(config, windows_per_epoch)
    if config.optimizer == "adam":  # Kingma & Ba, eps outside the sqrt, as torch.optim.Adam
        opt = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
    elif config.optimizer == "rmsprop":  # torch.optim.RMSprop and char-rnn: eps outside sqrt
        opt = optax.rmsprop(schedule, decay=config.rmsprop_decay, eps=1e-8, eps_in_sqrt=False)
    else:
        opt = optax.sgd(schedule)
    clip = {"none": optax.identity(),
            "elementwise": optax.clip(config.clip_value),
            "norm": optax.clip_by_global_norm(config.clip_value)}[config.clip]
    return optax.chain(clip, opt), schedule


# ---------------------------------------------------------------------------- the step


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The model, optimiser and data layout of one run, with its jitted functions."""

    config: Config
    model: Any
    optimizer: Any
    schedule: Any
    num_train_tokens: int

    @classmethod
    def create(cls, config: Config, vocab_size: int, num_train_tokens: int, impl="auto"):
        layout = data_lib.StreamLayout(num_train_tokens, config.batch_size, config.seq_len)
        layout.check()
        optimizer, schedule = make_optimizer(config, layout.windows_per_epoch)
        return cls(config, build_model(config, vocab_size, impl), optimizer, schedule,
                   num_train_tokens)

    def init_state(self, seed: int | None = None) -> TrainState:
        key = jax.random.key(self.config.seed if seed is None else seed)
        init_key, run_key = jax.random.split(key)
        params = self.model.init(init_key)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            carry=self.model.zero_state(self.config.batch_size),
            rng=jax.random.key_data(run_key),
            skipped=jnp.zeros((), jnp.int32),
            halted_at=jnp.full((), -1, jnp.int32),
        )

    def loss_fn(self, params, carry, inputs, targets, key):
        """Mean (or, for the tutorial, summed) next-character NLL. Returns (loss, carry)."""
        logits, carry = self.model.apply(params, carry, inputs, key)
        faithful = self.config.faithful_log_softmax
        nll = cross_entropy(logits.astype(jnp.float32) if logits.dtype == jnp.bfloat16
                            else logits, targets, faithful)
        loss = nll.mean() if self.config.loss_reduction == "mean" else nll.sum() / nll.shape[0]
        return loss, carry

    def get_batch(self, tokens, state: TrainState):
        """The batch of step `state.step`, gathered on the device: (inputs, targets, reset)."""
        c = self.config
        if c.batch_mode == "streams":
            inputs, targets, epoch_start = data_lib.stream_batch(tokens, state.step,
                                                                 c.batch_size, c.seq_len)
            reset = jnp.logical_or(epoch_start, not c.carry_state)
        else:
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2 * state.step + 1)
            inputs, targets = data_lib.random_batch(tokens, key, c.batch_size, c.seq_len)
            reset = jnp.bool_(True)
        return inputs, targets, reset

    def train_step(self, state: TrainState, batch, key):
        """One step: forward, backward, clip, update. Returns (state, metrics).

        Non-finite loss or gradients never reach the parameters: with on_nonfinite="skip" the
        step is skipped and counted; with "stop" this and every later step of the call is a
        no-op and `halted_at` records the step, for the host to report.
        """
        inputs, targets, reset = batch
        carry = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), state.carry)
        (loss, new_carry), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
            state.params, carry, inputs, targets, key)
        new_carry = jax.lax.stop_gradient(new_carry)
        updates, new_opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        running = state.halted_at < 0
        apply = finite & running

        def pick(new, old):
            return jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)

        if self.config.on_nonfinite == "skip":
            advance = running
            halted_at = state.halted_at
        else:
            advance = apply
            halted_at = jnp.where(running & ~finite, state.step, state.halted_at)
        new_state = TrainState(
            step=state.step + advance.astype(jnp.int32),
            params=pick(new_params, state.params),
            opt_state=pick(new_opt_state, state.opt_state),
            carry=pick(new_carry, state.carry),
            rng=state.rng,
            skipped=state.skipped + (running & ~finite).astype(jnp.int32),
            halted_at=halted_at,
        )
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "param_norm": optax.tree.norm(new_state.params),
                   "lr": jnp.asarray(self.schedule(state.step), jnp.float32)}
        return new_state, metrics

    def train_chunk(self, state: TrainState, tokens, num_steps: int):
        """`num_steps` training steps as one lax.scan; returns (state, metrics [num_steps])."""

        def body(state, _):
            batch = self.get_batch(tokens, state)
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2 * state.step)
            return self.train_step(state, batch, key)

        return jax.lax.scan(body, state, None, length=num_steps)

    @property
    def jit_train_chunk(self):
        return _jit_chunk(self)

    # ------------------------------------------------------------------------ evaluation

    def evaluate(self, params, tokens: np.ndarray, batch_size: int | None = None) -> dict:
        """Loss over a whole text with the state carried across windows (char-rnn's way).

        Returns {"loss_nats", "bits_per_char", "chars"}: the mean NLL per predicted character.
        """
        batch_size = batch_size or self.config.eval_batch_size
        inputs, targets, weights = data_lib.eval_windows(tokens, batch_size, self.config.seq_len)
        total, count = _jit_eval(self)(params, jnp.asarray(inputs), jnp.asarray(targets),
                                       jnp.asarray(weights))
        loss = float(total) / float(count)
        return {"loss_nats": loss, "bits_per_char": loss / math.log(2), "chars": int(count)}

    def eval_windows_sum(self, params, inputs, targets, weights):
        """Summed weighted NLL and weight over [W, B, T] windows, state carried."""
        carry0 = self.model.zero_state(inputs.shape[1])

        def body(carry, window):
            x, y, w = window
            logits, carry = self.model.apply(params, carry, x)
            nll = cross_entropy(logits, y, self.config.faithful_log_softmax)
            return carry, ((nll * w).sum(), w.sum())

        _, (sums, counts) = jax.lax.scan(body, carry0, (inputs, targets, weights))
        return sums.sum(), counts.sum()


_JIT_CACHE: dict = {}


def _jit_chunk(trainer: Trainer):
    key = ("chunk", id(trainer))
    if key not in _JIT_CACHE:
        _JIT_CACHE[key] = (trainer, jax.jit(trainer.train_chunk, static_argnums=2,
                                            donate_argnums=0))
    return _JIT_CACHE[key][1]


def _jit_eval(trainer: Trainer):
    key = ("eval", id(trainer))
    if key not in _JIT_CACHE:
        _JIT_CACHE[key] = (trainer, jax.jit(trainer.eval_windows_sum))
    return _JIT_CACHE[key][1]


# ---------------------------------------------------------------------------- the run loop


@dataclasses.dataclass
class RunResult:
    state: TrainState
    val: dict | None
    best_val: float
    steps_per_s: float
    chars_per_s: float
    workdir: str
    interrupted: bool = False


class _StopFlag:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint at the next call boundary."""

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


def load_corpus(data_path: str, vocab: data_lib.Vocab | None = None, encoding="utf-8",
                errors="strict"):
    """Reads a text file -> (vocab, tokens <int32>[N]). With `vocab`, unknown chars are errors."""
    text = data_lib.read_text(data_path, encoding, errors)
    vocab = vocab or data_lib.Vocab.from_text(text)
    return vocab, vocab.encode(text, what=data_path)


def _metrics_lines(path: str, up_to_step: int) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [m for m in lines if m["step"] <= up_to_step]


def train_and_evaluate(config: Config, data_path: str, workdir: str, *, overwrite=False,
                       init_from: str | None = None, encoding="utf-8", errors="strict",
                       progress: bool = True, impl: str = "auto", log=print) -> RunResult:
    """Trains per `config` on the text at `data_path`, writing everything into `workdir`.

    Writes config.json, vocab.json, metrics.jsonl (one JSON object per line), loss.png and
    checkpoints (see jaxrnn.checkpoint). Running again on the same workdir resumes from the
    newest good checkpoint; a workdir holding a run with another config is refused (unless
    `overwrite`).
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a folder")
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "config.json")
    vocab_path = os.path.join(workdir, "vocab.json")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    checkpoints = ckpt_lib.CheckpointDir(workdir, config.keep_checkpoints)

    resumed = None
    if os.path.exists(config_path) and not overwrite:
        try:
            with open(config_path) as f:
                old = Config.from_dict(json.load(f))
        except (ValueError, TypeError) as e:  # JSONDecodeError and UserError are ValueErrors
            raise UserError(f"{config_path} is unreadable ({e}); use --overwrite to start "
                            f"over") from None
        diff = config_diff(old, config)
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in
                              ((k, *v) for k, v in sorted(diff.items())))
            raise UserError(f"{workdir} holds a run with a different config ({shown}); use "
                            f"another --workdir, or --overwrite to start over")
        resumed = checkpoints.load_latest()

    vocab = data_lib.Vocab.from_json(resumed[0]["vocab"]) if resumed else None
    vocab, tokens = load_corpus(data_path, vocab, encoding, errors)
    train_tokens, val_tokens, _ = data_lib.split_by_position(tokens, config.val_frac)
    data_lib.StreamLayout(len(train_tokens), config.batch_size, config.seq_len).check(
        f"training part of {data_path} ({len(tokens)} characters less --val-frac "
        f"{config.val_frac})" if config.val_frac else f"text {data_path}")
    if config.val_frac > 0 and len(val_tokens) < 2:
        raise UserError(f"the validation split of {data_path} has {len(val_tokens)} "
                        f"characters; use a longer text or a larger --val-frac")
    checkpoints.remove_partial_writes()
    if overwrite:  # only now that the new run's inputs are known to be good
        for _, path in checkpoints.step_files():
            os.unlink(path)
        for path in (checkpoints.last_path, checkpoints.best_path, metrics_path):
            if os.path.exists(path):
                os.unlink(path)
    trainer = Trainer.create(config, len(vocab), len(train_tokens), impl)
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)

    state = trainer.init_state()
    best_val, elapsed_before, metrics_history = float("inf"), 0.0, []
    if resumed:
        payload, path = resumed
        state = ckpt_lib.restore_state(state, payload["state"], path)
        best_val, elapsed_before = payload["best_val"], payload["elapsed_s"]
        log(f"resuming from {path} at step {int(payload['step'])}")
    elif init_from:
        state = _init_from(state, init_from, vocab, trainer)
    atomic_write(config_path, config.to_json().encode())
    vocab.save(vocab_path)
    start_step = int(state.step)
    # metrics.jsonl must match the checkpoint: its lines are the ones the checkpoint holds
    # (a kill may have left lines logged after it, or a torn last line).
    kept = resumed[0]["metrics"] if resumed else []
    atomic_write(metrics_path, "".join(json.dumps(m) + "\n" for m in kept).encode())

    state = jax.device_put(state)
    device_tokens = jnp.asarray(train_tokens)
    chunk_fn = trainer.jit_train_chunk
    K = config.steps_per_call
    total_steps = config.steps or 10**12
    deadline = time.monotonic() + 60 * config.minutes if config.minutes else None
    chars_per_step = config.batch_size * config.seq_len

    def save(state, is_best=False):
        payload = ckpt_lib.to_bytes(config_json=config.to_json(), vocab_json=vocab.to_json(),
                                    step=int(state.step), state=state, best_val=best_val,
                                    metrics=_metrics_lines(metrics_path, int(state.step)),
                                    elapsed_s=elapsed_before + train_time)
        return checkpoints.save(int(state.step), payload, is_best)

    def write_metrics(record):
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    bar = _progress_bar(progress, start_step, config.steps or None)
    train_time = 0.0
    window_steps, window_time = 0, 0.0
    val = None
    interrupted = False
    with _StopFlag() as stop:
        step = start_step
        while step < total_steps:
            n = min(K - step % K, total_steps - step)  # keep call boundaries at multiples of K
            t0 = time.perf_counter()
            state, metrics = chunk_fn(state, device_tokens, n)
            metrics = jax.device_get(metrics)  # the one host sync per call
            dt = time.perf_counter() - t0
            if int(state.halted_at) >= 0:
                bad = int(state.halted_at)
                last = checkpoints.step_files()
                where = (f"the last good checkpoint is {last[0][1]} (step {last[0][0]}; start a "
                         f"new --workdir from it with --init-from)") if last else \
                    "no checkpoint was written yet"
                raise UserError(
                    f"non-finite loss or gradient at step {bad} (lr "
                    f"{float(metrics['lr'][bad - step]):g}); nothing from it was saved, and "
                    f"{where}. Try a smaller --lr, --clip norm, or --on-nonfinite skip")
            step = int(state.step)
            train_time += dt
            window_time += dt
            window_steps += n
            bar.update(n)
            if step % config.log_every < n or step >= total_steps:
                # The loss logged is the mean over this call's steps, so a resumed run logs
                # exactly what an uninterrupted one does.
                finite = np.isfinite(metrics["loss"])
                record = {"step": step, "loss": float(metrics["loss"][finite].mean())
                          if finite.any() else None,
                          "grad_norm": _json_float(metrics["grad_norm"][-1]),
                          "param_norm": _json_float(metrics["param_norm"][-1]),
                          "lr": float(metrics["lr"][-1]), "skipped": int(state.skipped),
                          "elapsed_s": round(elapsed_before + train_time, 3),
                          "chars_per_s": round(window_steps * chars_per_step /
                                               max(window_time, 1e-9), 1)}
                write_metrics(record)
                bar.set_postfix(loss="-" if record["loss"] is None else f"{record['loss']:.3f}",
                                chars_s=f"{record['chars_per_s']:.0f}")
                window_steps, window_time = 0, 0.0
            out_of_time = deadline is not None and time.monotonic() >= deadline
            done = step >= total_steps or out_of_time
            is_best = False
            if len(val_tokens) >= 2 and (step % config.eval_every < n or done):
                val = trainer.evaluate(state.params, val_tokens)
                is_best = val["loss_nats"] < best_val
                best_val = min(best_val, val["loss_nats"])
                write_metrics({"step": step, "val_loss": val["loss_nats"],
                               "val_bpc": val["bits_per_char"]})
                bar.write(f"step {step}: val loss {val['loss_nats']:.4f} nats/char "
                          f"({val['bits_per_char']:.4f} bits/char)")
            if config.sample_every and step % config.sample_every < n and not done:
                from jaxrnn.sampling import sample_text
                text = sample_text(trainer.model, state.params, vocab, prime=_prime(config, vocab),
                                   length=config.sample_length, seed=step)
                bar.write(f"--- sample at step {step} ---\n{text}\n---")
            signum = stop.signum  # read once: a signal between the two tests still saves
            if step % config.checkpoint_every < n or done or is_best or signum:
                save(state, is_best)
            if signum:
                interrupted = True
                name = signal.Signals(signum).name
                bar.close()
                log(f"{name}: saved a checkpoint at step {step} in {workdir}; run the same "
                    f"command again to resume")
                break
            if out_of_time:
                break
    bar.close()
    if val is None and len(val_tokens) >= 2:  # e.g. resumed a run that had already finished
        val = trainer.evaluate(state.params, val_tokens)
    _plot_losses(metrics_path, os.path.join(workdir, "loss.png"))
    steps_done = int(state.step) - start_step
    steps_per_s = steps_done / train_time if train_time else 0.0
    return RunResult(state, val, best_val, steps_per_s, steps_per_s * chars_per_step, workdir,
                     interrupted)


def _prime(config: Config, vocab: data_lib.Vocab) -> str:
    """The config's sample prime, or the first character when the text lacks it."""
    return config.sample_prime if not vocab.unknown(config.sample_prime) else vocab.chars[0]


def _json_float(value) -> float | None:
    """A finite float, or None: JSON has no NaN or infinity (steps skipped as non-finite)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _init_from(state: TrainState, path: str, vocab: data_lib.Vocab, trainer: Trainer):
    """Starts from another run's parameters (fresh optimiser and step)."""
    payload = ckpt_lib.read(path)
    their_vocab = data_lib.Vocab.from_json(payload["vocab"])
    if their_vocab != vocab:
        only_theirs = sorted(set(their_vocab.chars) - set(vocab.chars))
        only_ours = sorted(set(vocab.chars) - set(their_vocab.chars))
        raise UserError(
            f"--init-from {path} has a different vocabulary ({len(their_vocab)} vs "
            f"{len(vocab)} characters; only in the checkpoint: "
            f"{data_lib.format_chars(only_theirs) or 'none'}; only in this text: "
            f"{data_lib.format_chars(only_ours) or 'none'})")
    params = ckpt_lib.restore_state({"params": state.params},
                                    {"params": payload["state"]["params"]}, path)["params"]
    return state._replace(params=params, opt_state=trainer.optimizer.init(params))


def _progress_bar(enabled: bool, initial: int, total: int | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, mininterval=1.0)


def _plot_losses(metrics_path: str, out_path: str) -> None:
    """loss.png: training and validation loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _metrics_lines(metrics_path, 10**18)
    train = [(m["step"], m["loss"]) for m in records if m.get("loss") is not None]
    val = [(m["step"], m["val_loss"]) for m in records if "val_loss" in m]
    if not train and not val:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_path)
