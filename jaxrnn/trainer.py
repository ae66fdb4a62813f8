"""The jitted training step, K steps per call, and evaluation: what jaxrnn brings to the loop.

The one function of training is `train_step(state, batch, key) -> (state, metrics)`; it runs
inside `train_chunk`, a `lax.scan` over K steps that gathers each step's batch on the device
from the step number, so a jitted call does K steps and talks to the host once. The state is
a plain pytree (`TrainState`) and everything the next step needs is in it, including the
carried recurrent state, so a run resumes exactly from a checkpoint.

With a `mesh` (`jaxrnn.mesh`), the same functions run data parallel: `jit_train_chunk` and
evaluation are jitted with the state's shardings (parameters and optimiser state replicated,
the carry and each batch split over the mesh's `data` axis along B) and run with the mesh as
JAX's mesh context, where the recurrent layers run per device on its block of streams
(`jaxrnn.mesh.split_batch`); the gradient's sum over devices is shard_map's and the
compiler's. Without one (None) everything is on one device, as it always was.
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
from jaxrnn import mesh as mesh_lib
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
    """The model, optimiser and data layout of one run, with its jitted functions.

    mesh: a `jax.sharding.Mesh` with a `data` axis (`jaxrnn.mesh`) to train data parallel
    over its devices, or None: one device.
    """

    config: Config
    model: Any
    optimizer: Any
    schedule: Any
    num_train_tokens: int
    mesh: Any = None

    @classmethod
    def create(cls, config: Config, vocab_size: int, num_train_tokens: int, impl="auto",
               mesh=None):
        """The trainer of a config; float64 needs jax_enable_x64 on (the caller's choice).

        With a `mesh`, its device count must divide batch_size (a UserError says which fit).
        """
        if config.dtype == "float64" and not jax.config.jax_enable_x64:
            raise UserError("dtype float64 needs jax_enable_x64 on; turn it on before "
                            "training (jaxrnn-train does so from the config)", fields=("dtype",))
        if mesh is not None:
            mesh_lib.check_batch(config.batch_size, mesh.size, jax.process_count())
        layout = data_lib.StreamLayout(num_train_tokens, config.batch_size, config.seq_len)
        layout.check()
        optimizer, schedule = make_optimizer(config, layout.windows_per_epoch)
        return cls(config, build_model(config, vocab_size, impl), optimizer, schedule,
                   num_train_tokens, mesh)

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
            state = state._replace(carry=self._split_carry(state.carry))
            batch = self.get_batch(tokens, state.step, state.rng)
            batch = (*self._split_rows(batch[:2]), batch[2])
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2 * state.step)
            return self.train_step(state, batch, key)

        return jax.lax.scan(body, state, None, length=num_steps)

    @functools.cached_property
    def jit_train_chunk(self):
        """`train_chunk` jitted (num_steps static, the state donated); one per trainer.

        With a mesh: the state in and out with `state_shardings`, the text replicated, the
        metrics replicated, traced and run with the mesh as JAX's mesh context
        (`jaxrnn.mesh.in_mesh`), so each layer's recurrence runs on each device's own block
        of streams (`jaxrnn.mesh.split_batch`)."""
        if self.mesh is None:
            return jax.jit(self.train_chunk, static_argnums=2, donate_argnums=0)
        everywhere = mesh_lib.replicated(self.mesh)
        return mesh_lib.in_mesh(jax.jit(self.train_chunk, static_argnums=2, donate_argnums=0,
                                        in_shardings=(self.state_shardings, everywhere),
                                        out_shardings=(self.state_shardings, everywhere)),
                                self.mesh)

    # ------------------------------------------------------------------------ the mesh

    @functools.cached_property
    def carry_axes(self):
        """The batch axis of each leaf of the carried state (`jaxrnn.mesh.batch_axes`)."""
        return mesh_lib.batch_axes(self.model.zero_state, self.config.batch_size)

    @functools.cached_property
    def state_shardings(self) -> TrainState:
        """The TrainState's NamedShardings on the mesh: the carry split over `data` along B,
        everything else replicated."""
        shapes = jax.eval_shape(self.init_state)
        everywhere = mesh_lib.replicated(self.mesh)
        return jax.tree.map(lambda _: everywhere, shapes)._replace(
            carry=mesh_lib.carry_shardings(self.mesh, shapes.carry, self.carry_axes))

    def put_state(self, state: TrainState) -> TrainState:
        """A state (host or device arrays, identical on every process) on the devices: the
        mesh's shardings, or the default device without a mesh."""
        if self.mesh is None:
            return jax.device_put(state)
        return mesh_lib.put(jax.device_get(state), self.state_shardings)

    def put_tokens(self, tokens):
        """The training text on the devices (replicated over the mesh)."""
        if self.mesh is None:
            return jnp.asarray(tokens)
        return mesh_lib.put(np.asarray(tokens), mesh_lib.replicated(self.mesh))

    def _split_carry(self, carry):
        """The carry constrained to its sharding (identity without a mesh)."""
        if self.mesh is None:
            return carry
        return jax.lax.with_sharding_constraint(
            carry, mesh_lib.carry_shardings(self.mesh, carry, self.carry_axes))

    def _split_rows(self, arrays, axis: int = 0):
        """Arrays constrained to be split over `data` along `axis` (identity without a mesh)."""
        if self.mesh is None:
            return arrays
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(
            a, mesh_lib.split_along(self.mesh, a.ndim, axis)), arrays)

    @functools.cached_property
    def _jit_eval(self):
        if self.mesh is None:
            return jax.jit(self.eval_windows_sum)
        everywhere = mesh_lib.replicated(self.mesh)
        windows = mesh_lib.split_along(self.mesh, 3, 1)  # [W, B, T] split along B
        return mesh_lib.in_mesh(jax.jit(self.eval_windows_sum, out_shardings=everywhere,
                                        in_shardings=(everywhere, windows, windows, windows)),
                                self.mesh)

    # ------------------------------------------------------------------------ evaluation

    def evaluate(self, params, tokens: np.ndarray, batch_size: int | None = None) -> dict:
        """Loss over a whole text with the state carried across windows (char-rnn's way).

        Returns {"loss_nats", "bits_per_char", "chars"}: the mean NLL per predicted character.
        """
        batch_size = batch_size or self.config.eval_batch_size
        inputs, targets, weights = data_lib.eval_windows(tokens, batch_size, self.config.seq_len)
        if self.mesh is None:
            windows = [jnp.asarray(a) for a in (inputs, targets, weights)]
        else:  # streams of weight 0 up to a multiple of the device count, split over `data`
            pad = -inputs.shape[1] % self.mesh.size
            windows = mesh_lib.put([np.pad(a, ((0, 0), (0, pad), (0, 0)))
                                    for a in (inputs, targets, weights)],
                                   mesh_lib.split_along(self.mesh, 3, 1))
        total, count = mesh_lib.to_host(self._jit_eval(params, *windows))
        loss = float(total) / float(count)
        return {"loss_nats": loss, "bits_per_char": loss / math.log(2), "chars": int(count)}

    def eval_windows_sum(self, params, inputs, targets, weights):
        """Summed weighted NLL and weight over [W, B, T] windows, state carried."""
        carry0 = self.model.zero_state(inputs.shape[1])
        if self.mesh is not None:
            axes = mesh_lib.batch_axes(self.model.zero_state, inputs.shape[1])
            carry0 = jax.lax.with_sharding_constraint(
                carry0, mesh_lib.carry_shardings(self.mesh, carry0, axes))

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
