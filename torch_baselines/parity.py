"""Parity runs: jaxrnn and `TorchCharLM` trained side by side from equal weights on equal
batches, and the figures of how far apart they end up (scripts/parity.py prints them).

Imports JAX (through torch_baselines.convert); a float64 config needs jax_enable_x64 on
already, which the caller sets (scripts/parity.py from the config, the tests with their x64
fixture): `run_parity` never changes it. `PARITY_TEXT` is the built-in text (Shakespeare's
sonnets 18, 29, 116 and 130, public domain), read from sonnets.txt next to this file.

  >>> config = parity_config(cell="gru", optimizer="adam", clip="norm", dtype="float32")
  >>> result = run_parity(config, PARITY_TEXT)
  >>> result.summary["passed"], result.summary["max_abs_loss_diff"]
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os

import numpy as np
import torch

from torch_baselines.convert import charlm_from_torch, charlm_state_dict, charlm_to_torch
from torch_baselines.model import TorchCharLM
from torch_baselines.training import (TorchTrainer, _batch_function, require_torch_model,
                                      require_x64, sample_ids)

# A small model and batch for parity runs: both branches of every clip mode act within a few
# hundred steps, and on the built-in text an epoch is ~9 windows, so the state is reset often.
PARITY_BASE = dict(hidden_size=64, num_layers=2, embedding_size=16, dropout=0.0, seq_len=32,
                   batch_size=8, schedule="cosine", warmup_steps=10, steps=200,
                   steps_per_call=1, on_nonfinite="stop")
# Per optimiser / clip mode, unless given: learning rates that make visible progress in 200
# steps without diverging (sgd at 1.0 blows up the unclipped rnn_relu), and clip values that
# some steps exceed and others do not (the JSON line counts the clipped steps).
PARITY_LR = {"adam": 3e-3, "rmsprop": 2e-3, "sgd": 0.5}
PARITY_CLIP_VALUE = {"none": 1.0, "elementwise": 0.02, "norm": 0.5}
PARITY_THRESHOLD = {"float64": 1e-9, "float32": 1e-4}


# The built-in parity text (Shakespeare's sonnets 18, 29, 116 and 130, public domain).
PARITY_TEXT = importlib.resources.files("torch_baselines").joinpath("sonnets.txt").read_text(
    encoding="utf-8")


def parity_corpus(data_path: str | None = None) -> tuple[str, str]:
    """(text, where it came from): `data_path`, else tiny-shakespeare if this machine has it
    (JAXRNN_TINYSHAKESPEARE or data/tinyshakespeare.txt), else the built-in PARITY_TEXT."""
    from jaxrnn.data import DEFAULT_DATA_DIR, TINYSHAKESPEARE_ENV, read_text

    candidates = [data_path] if data_path else [
        os.environ.get(TINYSHAKESPEARE_ENV), os.path.join(DEFAULT_DATA_DIR, "tinyshakespeare.txt")]
    for path in candidates:
        if path and (data_path or os.path.exists(path)):
            return read_text(path), path
    return PARITY_TEXT, f"built-in text ({len(PARITY_TEXT)} characters)"


def parity_config(preset: str | None = None, **overrides):
    """The Config of a parity run: PARITY_BASE (or a named preset, with dropout 0) + overrides.

    Without a preset, lr and clip_value default per optimiser and clip mode (PARITY_LR,
    PARITY_CLIP_VALUE).
    """
    from jaxrnn.config import PRESETS, Config
    from jaxrnn.errors import UserError

    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        base = {**PRESETS[preset], "dropout": 0.0}
    else:
        base = {**PARITY_BASE,
                "lr": PARITY_LR[overrides.get("optimizer", "adam")],
                "clip_value": PARITY_CLIP_VALUE[overrides.get("clip", "norm")]}
    return Config.from_dict({**base, **overrides})


@dataclasses.dataclass
class ParityResult:
    summary: dict                  # the JSON line: figures and settings
    jax_losses: np.ndarray         # <float64>[steps]
    torch_losses: np.ndarray       # <float64>[steps]


def _largest(values) -> float:
    return float(np.max(values)) if len(values) else float("nan")


def _max_abs_diff(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
               for k in a)


def run_parity(config, text: str, *, init_in: str = "jax", argmax_sample: int = 0,
               threshold: float | None = None, sensitivity: bool = False) -> ParityResult:
    """Trains jaxrnn and TorchCharLM side by side from equal weights on equal batches.

    The JAX side is jaxrnn's own training code: `Trainer.jit_train_chunk` (its `train_step`
    inside a `lax.scan`, the batches gathered by `get_batch`) for config.steps steps; the torch
    side is `TorchTrainer.train_step` on the same batches. Weights are made in one framework
    (init_in "jax" or "torch") and converted. Compared: the loss of every step, the gradient
    norm and learning rate of every step, and the parameters and carried state at the end.
    With argmax_sample > 0, both frameworks sample that many characters greedily from the JAX
    run's final weights (converted), which must give the same text.

    With sensitivity=True, jaxrnn also trains from the same weights moved by at most one ulp
    (a random half of the elements to the next float up), and summary["self_sensitivity"] is
    the largest loss difference between its two runs: how far rounding alone moves this
    training trajectory. No two implementations that round differently can be expected to
    agree much better than that (a float32 ReLU RNN under Adam, for one, is chaotic enough
    that ulps grow to 1e-2 in 200 steps).

    Returns a ParityResult; summary["passed"] is whether the largest loss difference is within
    `threshold` (default PARITY_THRESHOLD[dtype]) and the samples agree.
    """
    import jax
    import jax.numpy as jnp

    from jaxrnn import data as data_lib
    from jaxrnn.train import Trainer

    _check_config(config, init_in)
    threshold = PARITY_THRESHOLD[config.dtype] if threshold is None else threshold
    vocab = data_lib.Vocab.from_text(text)
    train_tokens, _ = data_lib.split_by_position(vocab.encode(text), config.val_frac)
    trainer = Trainer.create(config, len(vocab), len(train_tokens))
    state, module = _equal_weights(config, trainer, len(vocab), init_in)
    windows = data_lib.StreamLayout(len(train_tokens), config.batch_size,
                                    config.seq_len).windows_per_epoch
    device_tokens = jnp.asarray(train_tokens)

    torch_trainer = TorchTrainer(config, module, windows)
    torch_metrics, resets, torch_halted_at = _train_torch(
        torch_trainer, _batch_function(trainer, state.rng), device_tokens, config.steps)
    bumped_state = _bumped(state, trainer, config.seed) if sensitivity else None
    # jax: the real training code, all steps in one jitted call (the state is donated)
    state, metrics = trainer.jit_train_chunk(state, device_tokens, config.steps)
    metrics = jax.device_get(metrics)

    summary = _compare(config, trainer, state, metrics, torch_trainer, torch_metrics)
    summary.update(init_in=init_in, state_resets=int(resets), threshold=threshold,
                   halted_at={"jax": int(state.halted_at), "torch": torch_halted_at})
    if sensitivity:
        _, bumped_metrics = trainer.jit_train_chunk(bumped_state, device_tokens, config.steps)
        summary["self_sensitivity"] = _largest(np.abs(
            np.asarray(bumped_metrics["loss"], np.float64) - metrics["loss"]))
    passed = bool(summary["max_abs_loss_diff"] <= threshold) and \
        summary["halted_at"] == {"jax": -1, "torch": -1}
    if argmax_sample:
        same, ids = _argmax_samples(trainer, state.params, train_tokens[:8], argmax_sample)
        summary.update(argmax_sample_identical=same,
                       argmax_sample=vocab.decode(train_tokens[:8]) + vocab.decode(ids))
        passed = passed and same
    summary["passed"] = passed
    done = len(torch_metrics)  # steps both frameworks took (fewer if torch hit a non-finite)
    return ParityResult(summary, np.asarray(metrics["loss"], np.float64)[:done],
                        np.array([m["loss"] for m in torch_metrics]))


def _check_config(config, init_in: str) -> None:
    from jaxrnn.errors import UserError

    require_torch_model(config)
    if config.dropout:
        raise UserError("parity needs dropout 0: the frameworks draw different dropout masks",
                        fields=("dropout",))
    if init_in not in ("jax", "torch"):
        raise UserError(f"init_in must be jax or torch, got {init_in!r}", fields=("init_in",))
    require_x64(config)


def _equal_weights(config, trainer, vocab_size: int, init_in: str):
    """(jaxrnn TrainState, TorchCharLM) with equal weights, made in `init_in`'s framework."""
    state = trainer.init_state()
    if init_in == "torch":
        torch.manual_seed(config.seed)
        module = TorchCharLM.from_config(config, vocab_size)
        _, params = charlm_from_torch(module)
        return state._replace(params=params, opt_state=trainer.optimizer.init(params)), module
    return state, charlm_to_torch(state.params, trainer.model)


def _train_torch(torch_trainer, batch, device_tokens, steps: int):
    """`steps` torch steps on jaxrnn's batches: (metrics per step, resets, halted_at or -1)."""
    torch_metrics, resets = [], 0
    for _ in range(steps):
        inputs, targets, reset = batch(device_tokens, torch_trainer.step)
        resets += reset
        try:
            torch_metrics.append(torch_trainer.train_step(inputs, targets, reset))
        except FloatingPointError:  # on_nonfinite="stop"; jaxrnn halts at the same step
            return torch_metrics, resets, torch_trainer.step
    return torch_metrics, resets, -1


def _bumped(state, trainer, seed: int):
    """The state with a random half of the parameters' elements moved one ulp up (made before
    the jitted call donates `state`)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    bumped = jax.tree.map(lambda p: np.where(rng.random(p.shape) < 0.5,
                                             np.nextafter(np.asarray(p), np.inf),
                                             np.asarray(p)), state.params)
    return jax.tree.map(jnp.array, state._replace(params=bumped,
                                                  opt_state=trainer.optimizer.init(bumped)))


def _compare(config, trainer, state, metrics, torch_trainer, torch_metrics) -> dict:
    """The summary figures: per-step loss / grad-norm / lr differences, final parameters and
    carried state, and the run's settings."""
    import jax

    done = len(torch_metrics)

    def diff(name):
        return np.abs(np.asarray(metrics[name], np.float64)[:done] -
                      [m[name] for m in torch_metrics])

    torch_params = {k: v.detach().numpy() for k, v in torch_trainer.module.state_dict().items()}
    torch_carry = torch_trainer.carry
    torch_carry = list(torch_carry) if isinstance(torch_carry, tuple) else [torch_carry]
    carry_diff = _largest([float(np.max(np.abs(np.asarray(a) - b.numpy())))
                           for a, b in zip(jax.tree.leaves(state.carry), torch_carry)
                           if b is not None])
    return {
        "max_abs_loss_diff": _largest(diff("loss")),
        "max_abs_param_diff": _max_abs_diff(charlm_state_dict(state.params, trainer.model),
                                            torch_params),
        "max_abs_carry_diff": carry_diff,
        "max_abs_grad_norm_diff": _largest(diff("grad_norm")),
        "max_abs_lr_diff": _largest(diff("lr")),
        "steps": config.steps, "cell": config.cell, "num_layers": config.num_layers,
        "optimizer": config.optimizer, "clip": config.clip, "clip_value": config.clip_value,
        "dtype": config.dtype, "lr": config.lr, "schedule": config.schedule,
        "hidden_size": config.hidden_size, "embedding_size": config.embedding_size,
        "batch_size": config.batch_size, "seq_len": config.seq_len, "seed": config.seed,
        "first_loss": float(metrics["loss"][0]), "last_loss": float(metrics["loss"][-1]),
        "clipped_steps": sum(m["clipped"] for m in torch_metrics),
        "nonfinite_steps": sum(not m["finite"] for m in torch_metrics),
    }


def _argmax_samples(trainer, params, prime, length: int):
    """Greedy samples of both frameworks from jaxrnn's weights: (identical, jaxrnn's ids)."""
    import jax
    import jax.numpy as jnp

    from jaxrnn.sampling import generate

    jax_ids = np.asarray(generate(trainer.model, params, jnp.asarray(prime[None]),
                                  jax.random.key(0), 1.0, length=length, argmax=True))[0]
    torch_ids = sample_ids(charlm_to_torch(params, trainer.model), prime, length, argmax=True)
    return bool(np.array_equal(jax_ids, torch_ids)), jax_ids
