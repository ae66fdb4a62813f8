"""The jitted training step, K steps per call, and evaluation: what jaxrnn brings to the loop.

The one function of training is `train_step(state, batch, key) -> (state, metrics)`; it runs
inside `train_chunk`, a `lax.scan` over K steps that gathers each step's batch on the device
from the step number, so a jitted call does K steps and talks to the host once. The state is
a plain pytree (`TrainState`) and everything the next step needs is in it, including the
carried recurrent state, so a run resumes exactly from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import data as data_lib
from jaxrnn.config import Config
from jaxrnn.errors import UserError
from jaxrnn.models import build_model
from jaxrnn.optim import make_optimizer


class TrainState(NamedTuple):
    """Everything a training step reads and writes; a plain pytree."""

    step: jax.Array        # <int32>[] steps taken (the next batch's index)
    params: Any
    opt_state: Any
    carry: Any             # recurrent state carried across stream windows, [.., B, H]
    rng: jax.Array         # <uint32>[2] raw key data; per-step keys are fold_in(rng, step)
    skipped: jax.Array     # <int32>[] steps skipped for non-finite values (on_nonfinite="skip")
    halted_at: jax.Array   # <int32>[] -1, or the step whose loss/grads were non-finite (stop)


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
        """The trainer of a config; float64 needs jax_enable_x64 on (the caller's choice)."""
        if config.dtype == "float64" and not jax.config.jax_enable_x64:
            raise UserError("dtype float64 needs jax_enable_x64 on; turn it on before "
                            "training (jaxrnn-train does so from the config)", fields=("dtype",))
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
        """The model's NLL, the mean over B*T (or the sum / B). Returns (loss, carry)."""
        logits, carry = self.model.apply(params, carry, inputs, key)
        nll = self.model.nll(logits, targets)
        loss = nll.mean() if self.config.loss_reduction == "mean" else nll.sum() / nll.shape[0]
        return loss, carry

    def get_batch(self, tokens, step, rng):
        """The batch of `step`, gathered on the device: (inputs, targets, reset).

        Args:
          tokens: <int32>[N] the training text.
          step: <int32>[] the step (the batch's index).
          rng: <uint32>[2] the run's key data (`TrainState.rng`); random batches use it.
        Returns:
          inputs, targets <int32>[B, T] and reset <bool>[]: whether the carried state
          starts from zeros.
        """
        c = self.config
        if c.batch_mode == "streams":
            inputs, targets, epoch_start = data_lib.stream_batch(tokens, step, c.batch_size,
                                                                 c.seq_len)
            reset = jnp.logical_or(epoch_start, not c.carry_state)
        else:
            key = jax.random.fold_in(jax.random.wrap_key_data(rng), 2 * step + 1)
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
            batch = self.get_batch(tokens, state.step, state.rng)
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2 * state.step)
            return self.train_step(state, batch, key)

        return jax.lax.scan(body, state, None, length=num_steps)

    @functools.cached_property
    def jit_train_chunk(self):
        """`train_chunk` jitted (num_steps static, the state donated); one per trainer."""
        return jax.jit(self.train_chunk, static_argnums=2, donate_argnums=0)

    @functools.cached_property
    def _jit_eval(self):
        return jax.jit(self.eval_windows_sum)

    # ------------------------------------------------------------------------ evaluation

    def evaluate(self, params, tokens: np.ndarray, batch_size: int | None = None) -> dict:
        """Loss over a whole text with the state carried across windows (char-rnn's way).

        Returns {"loss_nats", "bits_per_char", "chars"}: the mean NLL per predicted character.
        """
        batch_size = batch_size or self.config.eval_batch_size
        inputs, targets, weights = data_lib.eval_windows(tokens, batch_size, self.config.seq_len)
        total, count = self._jit_eval(params, jnp.asarray(inputs), jnp.asarray(targets),
                                      jnp.asarray(weights))
        loss = float(total) / float(count)
        return {"loss_nats": loss, "bits_per_char": loss / math.log(2), "chars": int(count)}

    def eval_windows_sum(self, params, inputs, targets, weights):
        """Summed weighted NLL and weight over [W, B, T] windows, state carried."""
        carry0 = self.model.zero_state(inputs.shape[1])

        def body(carry, window):
            x, y, w = window
            logits, carry = self.model.apply(params, carry, x)
            nll = self.model.nll(logits, y)
            return carry, ((nll * w).sum(), w.sum())

        _, (sums, counts) = jax.lax.scan(body, carry0, (inputs, targets, weights))
        return sums.sum(), counts.sum()


def sample_prime(config: Config, vocab: data_lib.Vocab) -> str:
    """The prime of a run's samples: the config's, or the first character when the text
    lacks it."""
    return config.sample_prime if not vocab.unknown(config.sample_prime) else vocab.chars[0]
