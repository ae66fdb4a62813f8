"""The optimiser of a run: the learning-rate schedule and the optax chain (clip, then update)."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jaxrnn.config import Config


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
