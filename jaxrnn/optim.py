"""The optimiser of a run: the learning-rate schedule and the optax chain (clip, then update).

Both read their hyperparameters from the config, or from `values` where given: a mapping of
config field -> value that overrides the field. A sweep (`jaxrnn.sweep`) passes each member's
values there as traced scalars inside its vmapped step, so the hyperparameters of SWEPT_FIELDS
must stay out of Python control flow here; a run without `values` computes exactly what it
did before they existed.
"""

from __future__ import annotations

import numbers
from typing import Mapping

import jax.numpy as jnp
import optax

from jaxrnn.config import Config

# The fields these functions read that may be traced values (a sweep's members differ in them).
SWEPT_FIELDS = ("lr", "clip_value", "warmup_steps", "min_lr_frac", "rmsprop_decay", "lr_decay",
                "lr_decay_after")


def _maximum(a, b):
    """max(a, b): Python's for Python numbers (as before sweeps), jnp's for traced values."""
    if isinstance(a, numbers.Number) and isinstance(b, numbers.Number):
        return max(a, b)
    return jnp.maximum(a, b)


def _reader(config: Config, values: Mapping | None):
    """name -> values[name] where given, else the config's field."""
    values = values or {}
    unknown = sorted(set(values) - set(SWEPT_FIELDS))
    if unknown:
        raise ValueError(f"the optimiser takes values for {', '.join(SWEPT_FIELDS)}; got "
                         f"{', '.join(unknown)}")
    return lambda name: values[name] if name in values else getattr(config, name)


def lr_schedule(config: Config, windows_per_epoch: int, values: Mapping | None = None):
    """step -> learning rate, for the config's schedule (fields overridden by `values`)."""
    get = _reader(config, values)
    lr = get("lr")
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "cosine":
        # nanoGPT's: linear warm-up to lr over warmup_steps (step 0 already trains, at
        # lr / warmup_steps), then a cosine down to lr * min_lr_frac at config.steps.
        warmup = get("warmup_steps")
        total = _maximum(config.steps, warmup + 1)
        floor = lr * get("min_lr_frac")

        def cosine(step):
            step = jnp.asarray(step, jnp.result_type(float))  # float64 under x64
            progress = jnp.clip((step - warmup) / _maximum(total - warmup, 1), 0.0, 1.0)
            decayed = floor + 0.5 * (lr - floor) * (1.0 + jnp.cos(jnp.pi * progress))
            return jnp.where(step < warmup, lr * (step + 1) / _maximum(warmup, 1), decayed)

        return cosine
    lr_decay, lr_decay_after = get("lr_decay"), get("lr_decay_after")

    def char_rnn(step):  # multiply by lr_decay at the end of every epoch >= lr_decay_after
        epoch = step // windows_per_epoch
        decays = jnp.maximum(0, epoch - lr_decay_after + 1)
        return lr * lr_decay ** decays

    return char_rnn


def make_optimizer(config: Config, windows_per_epoch: int = 1, values: Mapping | None = None):
    """Clipping (elementwise, as char-rnn; or by global norm) chained with the optimiser.

    `values`: config fields among SWEPT_FIELDS overridden (e.g. a sweep member's traced lr).
    Returns (the optax chain, the learning-rate schedule).
    """
    get = _reader(config, values)
    schedule = lr_schedule(config, windows_per_epoch, values)
    if config.optimizer == "adam":  # Kingma & Ba, eps outside the sqrt, as torch.optim.Adam
        opt = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
    elif config.optimizer == "rmsprop":  # torch.optim.RMSprop and char-rnn: eps outside sqrt
        opt = optax.rmsprop(schedule, decay=get("rmsprop_decay"), eps=1e-8, eps_in_sqrt=False)
    else:
        opt = optax.sgd(schedule)
    clip = {"none": optax.identity,
            "elementwise": lambda: optax.clip(get("clip_value")),
            "norm": lambda: optax.clip_by_global_norm(get("clip_value"))}[config.clip]()
    return optax.chain(clip, opt), schedule
