"""Training, evaluating and sampling `TorchCharLM` as jaxrnn.train does: the speed baseline.

Depends on torch and numpy. jaxrnn is imported only inside the functions that need it: the
data side of `train_torch` and `evaluate` (text, vocabulary, split, batches and evaluation
windows come from `jaxrnn.data` and `jaxrnn.train.Trainer.get_batch` as NumPy, so both
frameworks see the same characters in the same order) and the weights that `train_torch`
starts from (`torch_baselines.convert.charlm_to_torch`).

What must agree with jaxrnn (`jaxrnn.model.CharLM`, `jaxrnn.train`), and how it is made to:
  model      embedding [V, E] (or one-hot) -> nn.LSTM / nn.GRU / nn.RNN with dropout between
             layers -> dropout -> nn.Linear head [V, H]. Every parameter maps to one of
             jaxrnn's by name (`charlm_to_torch`, `charlm_from_torch` in torch_baselines.convert;
             keys and shapes checked).
  loss       mean NLL over B*T, or with loss_reduction="sum" the sum over B*T divided by B;
             the exact log-softmax, as CharLM.nll.
  clipping   elementwise: each gradient clamped to [-c, c] (= optax.clip).
             norm: g <- (g / ||g||) * c when ||g|| >= c, ||g|| the L2 norm over all gradients
             (= optax.clip_by_global_norm). Done by hand because torch.nn.utils.clip_grad_norm_
             multiplies by min(1, c / (||g|| + 1e-6)): a relative difference of 1e-6 / ||g|| on
             every clipped step (and a slightly different threshold), far above the 1e-9
             float64 parity target.
  optimiser  adam: torch.optim.Adam(betas=(0.9, 0.999), eps=1e-8) = optax.adam;
             rmsprop: torch.optim.RMSprop(alpha=rmsprop_decay, eps=1e-8), eps added outside
             the square root = optax.rmsprop(eps_in_sqrt=False); sgd: torch.optim.SGD = optax.sgd.
  schedule   `learning_rate(config, n, windows_per_epoch)` restates jaxrnn.train.lr_schedule in
             Python. It is evaluated at n = the number of updates applied so far (optax's
             `count`) and written into the param group before every optimizer.step().
  state      carried across stream windows and detached (truncated BPTT); reset to zeros where
             jaxrnn resets it (the first window of an epoch, or every window with
             carry_state=False). A step with a non-finite loss or gradient changes nothing but
             the step counter (on_nonfinite="skip") or stops the run ("stop").
  run loop   `train_torch` logs what jaxrnn.train.train_and_evaluate logs, at the same steps:
             a loss that no finite step gave (and a non-finite norm) is JSON null; the periodic
             sample starts from jaxrnn's prime (config.sample_prime, or the vocabulary's first
             character when the text lacks it).
  x64        follows the caller: a float64 config needs jax_enable_x64 on already (the entry
             points scripts/parity.py and scripts/train_torch.py turn it on from the config).

  >>> trainer = TorchTrainer(config, TorchCharLM.from_config(config, vocab_size))
  >>> metrics = trainer.train_step(inputs, targets, reset=False)   # {"loss", "grad_norm", ...}
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch

from torch_baselines.model import TorchCharLM, detach_state, sequence_loss, token_nll

# ---------------------------------------------------------------------------- optimisation


def learning_rate(config, count: int, windows_per_epoch: int = 1) -> float:
    """jaxrnn.train.lr_schedule(config, windows_per_epoch)(count), in plain Python.

    constant   lr.
    cosine     count < W: lr * (count + 1) / W (linear warm-up, the first step already trains);
               then floor + (lr - floor) * (1 + cos(pi * p)) / 2 with
               p = clip((count - W) / max(S - W, 1), 0, 1), S = max(steps, W + 1),
               floor = lr * min_lr_frac.
    char-rnn   lr * lr_decay ** max(0, epoch - lr_decay_after + 1), epoch = count // windows.
    """
    lr = config.lr
    if config.schedule == "constant":
        return lr
    if config.schedule == "cosine":
        warmup, total = config.warmup_steps, max(config.steps, config.warmup_steps + 1)
        if count < warmup:
            return lr * (count + 1) / max(warmup, 1)
        floor = lr * config.min_lr_frac
        progress = min(max((count - warmup) / max(total - warmup, 1), 0.0), 1.0)
        return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))
    epoch = count // windows_per_epoch
    return lr * config.lr_decay ** max(0, epoch - config.lr_decay_after + 1)


def make_optimizer(config, parameters) -> torch.optim.Optimizer:
    """The torch optimiser that jaxrnn.train.make_optimizer's optax chain matches."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    if config.optimizer == "rmsprop":  # eps outside the sqrt, like optax's eps_in_sqrt=False
        return torch.optim.RMSprop(parameters, lr=config.lr, alpha=config.rmsprop_decay,
                                   eps=1e-8)
    return torch.optim.SGD(parameters, lr=config.lr)


def global_norm(tensors):
    """sqrt(sum of squares over every element of every tensor), as optax.tree.norm."""
    return torch.sqrt(sum(torch.sum(t * t) for t in tensors))


@torch.no_grad()
def clip_gradients_(grads, clip: str, clip_value: float, norm=None) -> bool:
    """Clips `grads` in place as jaxrnn's optax chain does. Returns whether clipping acted.

    elementwise: g <- clamp(g, -c, c)                       (optax.clip)
    norm:        g <- (g / ||g||) * c   if ||g|| >= c        (optax.clip_by_global_norm)
    `norm` may pass ||g|| when it is already computed.
    """
    if clip == "elementwise":
        active = any(bool((g.abs() > clip_value).any()) for g in grads)
        for g in grads:
            g.clamp_(-clip_value, clip_value)
        return active
    if clip == "norm":
        norm = global_norm(grads) if norm is None else norm
        if norm < clip_value:
            return False
        for g in grads:
            g.div_(norm).mul_(clip_value)
        return True
    if clip != "none":
        raise ValueError(f"clip must be none, elementwise or norm; got {clip!r}")
    return False


class TorchTrainer:
    """The torch side of one run: module, optimiser, carried state and counters.

    `train_step` is jaxrnn.train.Trainer.train_step for one batch: forward, backward, global
    gradient norm, clip, learning rate, update, carry. `step` counts steps taken (the next
    batch's index); `updates` counts updates applied (optax's count, which the schedule reads).
    """

    def __init__(self, config, module: TorchCharLM, windows_per_epoch: int = 1):
        self.config, self.module, self.windows_per_epoch = config, module, windows_per_epoch
        self.parameters = list(module.parameters())
        self.optimizer = make_optimizer(config, self.parameters)
        self.step = self.updates = self.skipped = 0
        self.carry = None  # None: zeros

    def train_step(self, inputs, targets, reset: bool) -> dict:
        """One step on inputs, targets <int64>[B, T]; `reset` zeroes the carried state first.

        Returns {"loss", "grad_norm" (before clipping), "param_norm" (after the update), "lr"
        (the schedule at this step, as jaxrnn logs it), "clipped", "finite"} as Python values.
        """
        config = self.config
        self.module.train()
        carry = None if reset else self.carry
        self.optimizer.zero_grad(set_to_none=True)
        logits, new_carry = self.module(inputs, carry)
        # the exact NLL, as CharLM.nll (the tutorial's log(softmax + 1e-6) is its models' only)
        loss = sequence_loss(logits, targets, config.loss_reduction)
        loss.backward()
        grads = [p.grad for p in self.parameters]
        grad_norm = global_norm(grads)
        loss_value, grad_norm_value = loss.item(), grad_norm.item()
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm_value)
        clipped = False
        if finite:
            clipped = clip_gradients_(grads, config.clip, config.clip_value, grad_norm)
            lr = learning_rate(config, self.updates, self.windows_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.updates += 1
            self.carry = detach_state(new_carry)
        elif config.on_nonfinite == "skip":
            self.skipped += 1  # parameters, optimiser state and carried state stay as they were
        else:
            raise FloatingPointError(f"non-finite loss or gradient at step {self.step}")
        metrics = {"loss": loss_value, "grad_norm": grad_norm_value,
                   "param_norm": global_norm([p.detach() for p in self.parameters]).item(),
                   "lr": learning_rate(config, self.step, self.windows_per_epoch),
                   "clipped": clipped, "finite": finite}
        self.step += 1
        return metrics


# ---------------------------------------------------------------------------- evaluation, sampling


@torch.no_grad()
def evaluate(module: TorchCharLM, tokens, seq_len: int, batch_size: int,
             faithful_log_softmax: bool = False) -> dict:
    """Loss over a whole text with the state carried across windows, as Trainer.evaluate.

    The windows come from jaxrnn.data.eval_windows (padding weighted 0). Returns
    {"loss_nats", "bits_per_char", "chars"}.
    """
    from jaxrnn.data import eval_windows

    inputs, targets, weights = eval_windows(np.asarray(tokens), batch_size, seq_len)
    was_training = module.training
    module.eval()
    state, total, count = None, 0.0, 0.0
    for x, y, w in zip(inputs, targets, weights):
        logits, state = module(torch.from_numpy(x).long(), state)
        nll = token_nll(logits, torch.from_numpy(y).long(), faithful_log_softmax)
        weight = torch.from_numpy(w).to(nll.dtype)
        total += (nll * weight).sum().item()
        count += weight.sum().item()
    module.train(was_training)
    loss = total / count
    return {"loss_nats": loss, "bits_per_char": loss / math.log(2), "chars": int(count)}


@torch.no_grad()
def sample_ids(module: TorchCharLM, prime, length: int, *, argmax: bool = False,
               temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """Generates `length` token ids after `prime` (<int>[P], P >= 1), as jaxrnn.sampling.generate.

    The prime runs through the model in one call; then each step picks the next token from the
    last logits (argmax: the likeliest, first on ties as jnp.argmax; else a draw from
    softmax(logits / temperature) with a torch generator seeded by `seed`) and feeds it back.
    Returns <int64>[length].
    """
    was_training = module.training
    module.eval()
    generator = torch.Generator().manual_seed(seed)
    logits, state = module(torch.as_tensor(np.asarray(prime), dtype=torch.long)[None, :])
    logits = logits[:, -1]  # [1, V]
    out = []
    for _ in range(length):
        if argmax:
            token = logits.argmax(dim=-1)  # [1]
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)[:, 0]
        out.append(int(token))
        logits, state = module(token[:, None], state)
        logits = logits[:, 0]
    module.train(was_training)
    return np.array(out, np.int64)


# ---------------------------------------------------------------------------- data from jaxrnn


def require_torch_model(config) -> None:
    """Raises UserError unless the config's model and cell have a PyTorch twin here."""
    from jaxrnn.config import REGULARIZER_OFF
    from jaxrnn.errors import UserError
    from jaxrnn.names import TORCH_CELLS

    if config.model != "charlm":
        raise UserError(f"the PyTorch side has the charlm model only, not {config.model}",
                        fields=("model",))
    if config.cell not in TORCH_CELLS:
        raise UserError(f"cell {config.cell} has no PyTorch module; the PyTorch side has "
                        f"{', '.join(TORCH_CELLS)}", fields=("cell",))
    on = [name for name, off in REGULARIZER_OFF.items() if getattr(config, name) != off]
    if on:
        raise UserError(f"the PyTorch side has no {', '.join(on)} (jaxrnn's regularisers, "
                        f"docs/REGULARIZERS.md); train them with jaxrnn-train",
                        fields=tuple(on))


def require_x64(config) -> None:
    """Raises UserError for a float64 config while jax_enable_x64 is off (x64 is the caller's)."""
    import jax

    from jaxrnn.errors import UserError

    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise UserError("dtype float64 needs jax_enable_x64; the entry points "
                        "(scripts/parity.py, scripts/train_torch.py) turn it on from the config")


def _batch_function(trainer, rng):
    """step -> (inputs, targets, reset) as NumPy, from jaxrnn's own Trainer.get_batch (jitted).

    `rng` is the run's key data (TrainState.rng, <uint32>[2]), which random batches are drawn
    from; `trainer.get_batch(tokens, step, rng)` takes it and the step (<int32>[]) directly.
    """
    import jax
    import jax.numpy as jnp

    rng = jnp.asarray(np.asarray(rng))

    @jax.jit
    def batch(tokens, step):
        return trainer.get_batch(tokens, step, rng)

    def numpy_batch(tokens, step: int):
        inputs, targets, reset = batch(tokens, jnp.int32(step))
        return (torch.from_numpy(np.asarray(inputs).astype(np.int64)),
                torch.from_numpy(np.asarray(targets).astype(np.int64)), bool(reset))

    return numpy_batch


# ---------------------------------------------------------------------------- the run loop


@dataclasses.dataclass
class TorchRunResult:
    module: TorchCharLM
    steps: int
    val: dict | None
    steps_per_s: float
    chars_per_s: float
    sample: str
    workdir: str


def train_torch(config, data_path: str, workdir: str, *, init_weights: str = "jaxrnn",
                final_sample: int = 500, encoding: str = "utf-8", errors: str = "strict",
                progress: bool = True, log=print) -> TorchRunResult:
    """Trains TorchCharLM per `config` on the text at `data_path`, as jaxrnn.train would.

    The same text, vocabulary, split, batches (jaxrnn's, as NumPy), state carrying, logging
    cadence and metrics.jsonl lines as `jaxrnn.train.train_and_evaluate`:
      {"step", "loss", "grad_norm", "param_norm", "lr", "skipped", "elapsed_s", "chars_per_s"}
      every log_every steps (loss: the mean over the finite losses of the last steps_per_call
      steps, null when there are none), and
      {"step", "val_loss", "val_bpc"} every eval_every steps and at the end.
    init_weights: "jaxrnn" starts from the weights jaxrnn's run with the same seed starts from
    (converted), so the two runs differ only by framework (and dropout masks); "torch" uses
    TorchCharLM.from_config after torch.manual_seed(seed).
    A float64 config needs jax_enable_x64 on (UserError otherwise); this never changes it.
    Writes config.json, vocab.json, metrics.jsonl and final_weights.npz (the state_dict as
    named arrays) into `workdir`; no checkpoints: every call starts over.
    """
    import jax

    from jaxrnn import data as data_lib
    from jaxrnn.errors import UserError
    from jaxrnn.loop import run_loop
    from jaxrnn.metrics import MetricsWriter
    from jaxrnn.rundir import RunDir
    from jaxrnn.train import Trainer, sample_prime
    from torch_baselines.convert import charlm_to_torch

    require_torch_model(config)
    if init_weights not in ("jaxrnn", "torch"):
        raise UserError(f"init_weights must be jaxrnn or torch, got {init_weights!r}",
                        fields=("init_weights",))
    require_x64(config)
    text = data_lib.read_text(data_path, encoding, errors)
    vocab = data_lib.Vocab.from_text(text)
    tokens = vocab.encode(text, what=data_path)
    train_tokens, val_tokens = data_lib.split_by_position(tokens, config.val_frac)
    trainer = Trainer.create(config, len(vocab), len(train_tokens))
    jax_state = trainer.init_state()
    torch.manual_seed(config.seed)
    if init_weights == "jaxrnn":
        module = charlm_to_torch(jax_state.params, trainer.model)
    else:
        module = TorchCharLM.from_config(config, len(vocab))
    windows = data_lib.StreamLayout(len(train_tokens), config.batch_size,
                                    config.seq_len).windows_per_epoch
    batch = _batch_function(trainer, jax_state.rng)
    device_tokens = jax.numpy.asarray(train_tokens)
    batch(device_tokens, 0)  # compile the batch gather now, not inside the timed steps

    run = RunDir(workdir)
    run.open(config, data_lib.sha256_of(data_path), overwrite=True)  # always starts over
    run.start_over(overwrite=True)
    run.write_header(config, vocab, data_lib.sha256_of(data_path), os.path.getsize(data_path))
    metrics = MetricsWriter(run.metrics_path, tensorboard=config.tensorboard)
    metrics.reset([])
    driver = TorchDriver(TorchTrainer(config, module, windows), batch, device_tokens,
                         val_tokens, vocab, sample_prime(config, vocab))
    loop = run_loop(driver, config, metrics, progress=progress, log=log, where=workdir)

    np.savez(os.path.join(workdir, "final_weights.npz"),
             **{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})
    text_sample = driver.sample(final_sample, seed=config.seed) if final_sample else ""
    chars_per_step = config.batch_size * config.seq_len
    return TorchRunResult(module, driver.step, loop.val, loop.steps_per_s,
                          loop.steps_per_s * chars_per_step, text_sample, workdir)


class TorchDriver:
    """The PyTorch side of `jaxrnn.loop.Driver`: `TorchTrainer.train_step` on jaxrnn's
    batches, one Python step at a time; no checkpoints (`save` does nothing)."""

    def __init__(self, trainer: TorchTrainer, batch, device_tokens, val_tokens, vocab,
                 prime: str):
        self.trainer, self.batch, self.device_tokens = trainer, batch, device_tokens
        self.val_tokens, self.vocab, self.prime = val_tokens, vocab, prime

    @property
    def step(self) -> int:
        return self.trainer.step

    def train(self, num_steps: int):
        from jaxrnn.errors import UserError
        from jaxrnn.loop import Chunk

        losses = []
        for _ in range(num_steps):
            inputs, targets, reset = self.batch(self.device_tokens, self.trainer.step)
            try:
                metrics = self.trainer.train_step(inputs, targets, reset)
            except FloatingPointError:
                raise UserError(
                    f"non-finite loss or gradient at step {self.trainer.step}; try a smaller "
                    f"lr, clip norm, or on_nonfinite skip",
                    fields=("lr", "clip", "on_nonfinite")) from None
            losses.append(metrics["loss"])
        return Chunk(np.asarray(losses, np.float64), metrics["grad_norm"],
                     metrics["param_norm"], metrics["lr"], self.trainer.skipped)

    def evaluate(self) -> dict | None:
        if len(self.val_tokens) < 2:
            return None
        config = self.trainer.config
        return evaluate(self.trainer.module, self.val_tokens, config.seq_len,
                        config.eval_batch_size)

    def sample(self, length: int, seed: int) -> str:
        ids = sample_ids(self.trainer.module, self.vocab.encode(self.prime), length, seed=seed)
        return self.prime + self.vocab.decode(ids)

    def save(self, *, is_best: bool, best_val: float, elapsed_s: float) -> None:
        pass
