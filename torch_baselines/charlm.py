"""jaxrnn's CharLM and its training written again in PyTorch: the parity reference and the
speed baseline.

Depends on torch and numpy. jaxrnn is imported only inside the functions that need it: the
weight conversions (`charlm_to_torch`, `charlm_from_torch`), the data side of `train_torch`
and `evaluate` (text, vocabulary, split, batches and evaluation windows come from `jaxrnn.data`
and `jaxrnn.train.Trainer.get_batch` as NumPy, so both frameworks see the same characters in
the same order) and the parity helpers (`run_parity`, which runs both frameworks side by side,
`parity_config`, `parity_corpus`).

What must agree with jaxrnn (`jaxrnn.model.CharLM`, `jaxrnn.train`), and how it is made to:
  model      embedding [V, E] (or one-hot) -> nn.LSTM / nn.GRU / nn.RNN with dropout between
             layers -> dropout -> nn.Linear head [V, H]. Every parameter maps to one of
             jaxrnn's by name (`charlm_to_torch`, `charlm_from_torch`; keys and shapes checked).
  loss       mean NLL over B*T, or with loss_reduction="sum" the sum over B*T divided by B.
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

  >>> module = TorchCharLM(vocab_size=65, cell="lstm", hidden_size=128, num_layers=2)
  >>> logits, state = module(tokens)                  # tokens <int64>[B, T] -> [B, T, V]
  >>> model, params = charlm_from_torch(module)       # jaxrnn CharLM with equal weights
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# jaxrnn cell name -> (torch module class, extra constructor arguments)
RNN_CLASSES = {"lstm": (nn.LSTM, {}), "gru": (nn.GRU, {}),
               "rnn": (nn.RNN, {"nonlinearity": "tanh"}),
               "rnn_relu": (nn.RNN, {"nonlinearity": "relu"})}
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------------------- the model


class TorchCharLM(nn.Module):
    """Embedding (or one-hot) -> nn.LSTM / GRU / RNN -> dropout -> linear head.

    The same structure and parameter shapes as `jaxrnn.model.CharLM`:
      embedding.weight [V, E]           absent when embedding_size == 0 (one-hot input)
      rnn.weight_ih_l{k}, ...           as torch.nn.LSTM / GRU / RNN (time-major)
      head.weight [V, H], head.bias [V]
    Dropout acts between recurrent layers and on the last layer's output, in training mode only.
    """

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden_size: int = 256,
                 num_layers: int = 2, embedding_size: int = 0, dropout: float = 0.0):
        super().__init__()
        if cell not in RNN_CLASSES:
            raise ValueError(f"cell must be one of {sorted(RNN_CLASSES)}, got {cell!r}")
        self.vocab_size, self.cell = vocab_size, cell
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.embedding_size, self.dropout_rate = embedding_size, dropout
        self.embedding = nn.Embedding(vocab_size, embedding_size) if embedding_size else None
        rnn_class, kwargs = RNN_CLASSES[cell]
        # With one layer there is no "between layers"; torch warns about dropout > 0 there.
        self.rnn = rnn_class(embedding_size or vocab_size, hidden_size, num_layers,
                             dropout=dropout if num_layers > 1 else 0.0, **kwargs)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "TorchCharLM":
        """A module for a `jaxrnn.config.Config`, in its dtype, initialised by its scheme.

        init="pytorch" is torch's own default initialisation (jaxrnn's "pytorch" scheme draws
        from the same distributions); init="char-rnn" is `char_rnn_init_`. Seed torch first.
        """
        module = cls(vocab_size, config.cell, config.hidden_size, config.num_layers,
                     config.embedding_size, config.dropout).to(TORCH_DTYPES[config.dtype])
        if config.init == "char-rnn":
            char_rnn_init_(module)
        return module

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def zero_state(self, batch_size: int):
        """The all-zero state: <float>[L, B, H], a tuple (h, c) for the LSTM."""
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size, dtype=self.dtype)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def forward(self, tokens, state=None):
        """tokens <int64>[B, T] -> (logits <float>[B, T, V], state [L, B, H] (LSTM: (h, c)))."""
        tokens = tokens.t()  # [T, B]: time-major, as jaxrnn's Recurrent
        if self.embedding is not None:
            x = self.embedding(tokens)  # [T, B, E]
        else:
            x = F.one_hot(tokens, self.vocab_size).to(self.dtype)  # [T, B, V]
        hidden, state = self.rnn(x, state)  # [T, B, H]
        return self.head(self.dropout(hidden)).transpose(0, 1), state  # [B, T, V]


@torch.no_grad()
def char_rnn_init_(module: TorchCharLM) -> TorchCharLM:
    """char-rnn's initialisation, in place: every parameter U(±0.08), LSTM forget-gate bias_ih 1.

    The same scheme as jaxrnn's init="char-rnn" (not the same draws).
    """
    for parameter in module.parameters():
        parameter.uniform_(-0.08, 0.08)
    if module.cell == "lstm":
        hidden = module.hidden_size
        for layer in range(module.num_layers):
            getattr(module.rnn, f"bias_ih_l{layer}")[hidden:2 * hidden] = 1.0
    return module


def detach_state(state):
    """Cuts the graph behind a carried state (truncated BPTT)."""
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def token_nll(logits, targets, faithful_log_softmax: bool = False):
    """<float>[..., V], <int64>[...] -> <float>[...], as jaxrnn.model.cross_entropy."""
    if faithful_log_softmax:  # the tutorial's log(softmax(o) + 1e-6)
        log_probs = torch.log(torch.softmax(logits, dim=-1) + 1e-6)
    else:
        log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(-1, targets[..., None])[..., 0]


def sequence_loss(logits, targets, reduction: str = "mean", faithful_log_softmax=False):
    """<float>[B, T, V], <int64>[B, T] -> scalar: mean NLL over B*T, or ("sum") sum / B."""
    nll = token_nll(logits, targets, faithful_log_softmax)  # [B, T]
    return nll.mean() if reduction == "mean" else nll.sum() / nll.shape[0]


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
        loss = sequence_loss(logits, targets, config.loss_reduction,
                             config.faithful_log_softmax)
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


# ---------------------------------------------------------------------------- conversion


def _expected_shapes(model) -> dict[str, tuple[int, ...]]:
    """TorchCharLM state_dict key -> shape, for a jaxrnn CharLM."""
    from torch_baselines.convert import expected_shapes

    shapes = {f"rnn.{k}": v for k, v in expected_shapes(model.rnn).items()}
    if model.embedding_size:
        shapes["embedding.weight"] = (model.vocab_size, model.embedding_size)
    shapes["head.weight"] = (model.vocab_size, model.hidden_size)
    shapes["head.bias"] = (model.vocab_size,)
    return shapes


def _check(want: dict, got: dict, what: str) -> None:
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or unexpected:
        raise ValueError(f"{what}: missing keys {missing}, unexpected keys {unexpected}")
    for key, shape in want.items():
        if tuple(got[key].shape) != tuple(shape):
            raise ValueError(f"{what}: {key!r} must have shape {tuple(shape)}, "
                             f"got {tuple(got[key].shape)}")


def charlm_state_dict(params, model) -> dict[str, np.ndarray]:
    """jaxrnn CharLM params -> {TorchCharLM state_dict key: numpy array}, keys/shapes checked."""
    from torch_baselines.convert import params_to_state_dict

    top = {"rnn", "head"} | ({"embedding"} if model.embedding_size else set())
    if set(params) != top or set(params["head"]) != {"weight", "bias"}:
        raise ValueError(f"CharLM params must have keys {sorted(top)} with head {{weight, bias}}"
                         f"; got {sorted(params)}")
    flat = {f"rnn.{k}": v for k, v in params_to_state_dict(model.rnn, params["rnn"]).items()}
    if model.embedding_size:
        flat["embedding.weight"] = np.asarray(params["embedding"])
    flat["head.weight"] = np.asarray(params["head"]["weight"])
    flat["head.bias"] = np.asarray(params["head"]["bias"])
    _check(_expected_shapes(model), flat, "CharLM params (as TorchCharLM keys)")
    return flat


def charlm_to_torch(params, model) -> TorchCharLM:
    """(jaxrnn CharLM params, CharLM) -> a TorchCharLM with the same weights and dtype."""
    flat = charlm_state_dict(params, model)
    dtypes = {a.dtype for a in flat.values()}
    if len(dtypes) != 1:
        raise ValueError(f"params must all have one dtype, got {sorted(map(str, dtypes))}")
    module = TorchCharLM(model.vocab_size, model.cell, model.hidden_size, model.num_layers,
                         model.embedding_size, model.dropout)
    module = module.to(TORCH_DTYPES[np.dtype(dtypes.pop()).name])
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in flat.items()},
                           strict=True)
    return module


def charlm_from_torch(module: TorchCharLM, dtype=None):
    """TorchCharLM -> (jaxrnn CharLM, params) with the same weights.

    dtype: the jax dtype of params; default keeps the module's (float64 needs jax_enable_x64).
    """
    import jax.numpy as jnp

    from jaxrnn.model import CharLM
    from torch_baselines.convert import _jax_dtype, params_from_state_dict

    # copies: a jax array may wrap a numpy view of a tensor without copying (see convert.py)
    state = {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}
    jax_dtype = _jax_dtype(np.float64 if module.dtype == torch.float64 else np.float32, dtype)
    model = CharLM(module.vocab_size, module.cell, module.hidden_size, module.num_layers,
                   module.embedding_size, module.dropout_rate, dtype=jax_dtype.name)
    _check(_expected_shapes(model), state, "TorchCharLM state_dict")
    rnn_state = {k[len("rnn."):]: v for k, v in state.items() if k.startswith("rnn.")}
    params = {"rnn": params_from_state_dict(model.rnn, rnn_state, jax_dtype),
              "head": {"weight": jnp.asarray(state["head.weight"], jax_dtype),
                       "bias": jnp.asarray(state["head.bias"], jax_dtype)}}
    if module.embedding_size:
        params["embedding"] = jnp.asarray(state["embedding.weight"], jax_dtype)
    return model, params


# ---------------------------------------------------------------------------- data from jaxrnn


def _batch_function(trainer, rng):
    """step -> (inputs, targets, reset) as NumPy, from jaxrnn's own Trainer.get_batch (jitted).

    `rng` is the run's key data (TrainState.rng), which random batches are drawn from.
    """
    import jax
    import jax.numpy as jnp

    from jaxrnn.train import TrainState

    rng = jnp.asarray(np.asarray(rng))

    @jax.jit
    def batch(tokens, step):
        state = TrainState(step=step, params=None, opt_state=None, carry=None, rng=rng,
                           skipped=None, halted_at=None)
        return trainer.get_batch(tokens, state)

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
      every log_every steps (loss: the mean over the last steps_per_call steps), and
      {"step", "val_loss", "val_bpc"} every eval_every steps and at the end.
    init_weights: "jaxrnn" starts from the weights jaxrnn's run with the same seed starts from
    (converted), so the two runs differ only by framework (and dropout masks); "torch" uses
    TorchCharLM.from_config after torch.manual_seed(seed).
    Writes config.json, vocab.json, metrics.jsonl and final_weights.npz (the state_dict as
    named arrays) into `workdir`; no checkpoints: every call starts over.
    """
    import jax

    from jaxrnn import data as data_lib
    from jaxrnn.errors import UserError
    from jaxrnn.train import Trainer

    if config.model != "charlm":
        raise UserError(f"train_torch trains the charlm model only, not {config.model}")
    if init_weights not in ("jaxrnn", "torch"):
        raise UserError(f"init_weights must be jaxrnn or torch, got {init_weights!r}")
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    text = data_lib.read_text(data_path, encoding, errors)
    vocab = data_lib.Vocab.from_text(text)
    tokens = vocab.encode(text, what=data_path)
    train_tokens, val_tokens, _ = data_lib.split_by_position(tokens, config.val_frac)
    trainer = Trainer.create(config, len(vocab), len(train_tokens))
    jax_state = trainer.init_state()
    torch.manual_seed(config.seed)
    if init_weights == "jaxrnn":
        module = charlm_to_torch(jax_state.params, trainer.model)
    else:
        module = TorchCharLM.from_config(config, len(vocab))
    windows = data_lib.StreamLayout(len(train_tokens), config.batch_size,
                                    config.seq_len).windows_per_epoch
    torch_trainer = TorchTrainer(config, module, windows)
    batch = _batch_function(trainer, jax_state.rng)
    device_tokens = jax.numpy.asarray(train_tokens)
    batch(device_tokens, 0)  # compile the batch gather now, not inside the timed steps

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json())
    vocab.save(os.path.join(workdir, "vocab.json"))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    metrics_file = open(metrics_path, "w")

    def write_metrics(record):
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()

    K = config.steps_per_call
    total_steps = config.steps or 10**12
    deadline = time.monotonic() + 60 * config.minutes if config.minutes else None
    chars_per_step = config.batch_size * config.seq_len
    train_time = window_time = 0.0
    window_steps, step, val = 0, 0, None
    try:
        while step < total_steps:
            # Calls of K steps with boundaries at multiples of K, as jaxrnn's loop, so that the
            # logged loss (the mean over one call) means the same thing in both.
            n = min(K - step % K, total_steps - step)
            t0 = time.perf_counter()
            losses = []
            for _ in range(n):
                inputs, targets, reset = batch(device_tokens, torch_trainer.step)
                try:
                    metrics = torch_trainer.train_step(inputs, targets, reset)
                except FloatingPointError:
                    raise UserError(
                        f"non-finite loss or gradient at step {torch_trainer.step}; try a "
                        f"smaller --lr, --clip norm, or --on-nonfinite skip") from None
                losses.append(metrics["loss"])
            dt = time.perf_counter() - t0
            step = torch_trainer.step
            train_time += dt
            window_time += dt
            window_steps += n
            if step % config.log_every < n or step >= total_steps:
                finite = [x for x in losses if math.isfinite(x)]
                record = {"step": step,
                          "loss": float(np.mean(finite)) if finite else float("nan"),
                          "grad_norm": metrics["grad_norm"], "param_norm": metrics["param_norm"],
                          "lr": metrics["lr"], "skipped": torch_trainer.skipped,
                          "elapsed_s": round(train_time, 3),
                          "chars_per_s": round(window_steps * chars_per_step /
                                               max(window_time, 1e-9), 1)}
                write_metrics(record)
                if progress:
                    log(f"step {step}: loss {record['loss']:.4f}, "
                        f"{record['chars_per_s']:,.0f} chars/s")
                window_steps, window_time = 0, 0.0
            out_of_time = deadline is not None and time.monotonic() >= deadline
            done = step >= total_steps or out_of_time
            if len(val_tokens) >= 2 and (step % config.eval_every < n or done):
                val = evaluate(module, val_tokens, config.seq_len, config.eval_batch_size,
                               config.faithful_log_softmax)
                write_metrics({"step": step, "val_loss": val["loss_nats"],
                               "val_bpc": val["bits_per_char"]})
                log(f"step {step}: val loss {val['loss_nats']:.4f} nats/char "
                    f"({val['bits_per_char']:.4f} bits/char)")
            if config.sample_every and step % config.sample_every < n and not done:
                ids = sample_ids(module, vocab.encode(vocab.chars[0]), config.sample_length,
                                 seed=step)
                log(f"--- sample at step {step} ---\n{vocab.chars[0] + vocab.decode(ids)}\n---")
            if out_of_time:
                break
    finally:
        metrics_file.close()
    np.savez(os.path.join(workdir, "final_weights.npz"),
             **{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})
    text_sample = ""
    if final_sample:
        prime = "\n" if "\n" in vocab.chars else vocab.chars[0]
        ids = sample_ids(module, vocab.encode(prime), final_sample, seed=config.seed)
        text_sample = prime + vocab.decode(ids)
    steps_per_s = torch_trainer.step / train_time if train_time else 0.0
    return TorchRunResult(module, torch_trainer.step, val, steps_per_s,
                          steps_per_s * chars_per_step, text_sample, workdir)


# ---------------------------------------------------------------------------- parity


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
PARITY_TEXT = """\
Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.

When, in disgrace with fortune and men's eyes,
I all alone beweep my outcast state,
And trouble deaf heaven with my bootless cries,
And look upon myself and curse my fate,
Wishing me like to one more rich in hope,
Featured like him, like him with friends possess'd,
Desiring this man's art and that man's scope,
With what I most enjoy contented least;
Yet in these thoughts myself almost despising,
Haply I think on thee, and then my state,
Like to the lark at break of day arising
From sullen earth, sings hymns at heaven's gate;
For thy sweet love remember'd such wealth brings
That then I scorn to change my state with kings.

Let me not to the marriage of true minds
Admit impediments. Love is not love
Which alters when it alteration finds,
Or bends with the remover to remove:
O no! it is an ever-fixed mark
That looks on tempests and is never shaken;
It is the star to every wandering bark,
Whose worth's unknown, although his height be taken.
Love's not Time's fool, though rosy lips and cheeks
Within his bending sickle's compass come;
Love alters not with his brief hours and weeks,
But bears it out even to the edge of doom.
If this be error and upon me proved,
I never writ, nor no man ever loved.

My mistress' eyes are nothing like the sun;
Coral is far more red than her lips' red;
If snow be white, why then her breasts are dun;
If hairs be wires, black wires grow on her head.
I have seen roses damask'd, red and white,
But no such roses see I in her cheeks;
And in some perfumes is there more delight
Than in the breath that from my mistress reeks.
I love to hear her speak, yet well I know
That music hath a far more pleasing sound;
I grant I never saw a goddess go;
My mistress, when she walks, treads on the ground:
And yet, by heaven, I think my love as rare
As any she belied with false compare.
"""


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
    from jaxrnn.errors import UserError
    from jaxrnn.sampling import generate
    from jaxrnn.train import Trainer

    if config.model != "charlm":
        raise UserError(f"parity runs the charlm model, not {config.model}")
    if config.dropout:
        raise UserError("parity needs --dropout 0: the frameworks draw different dropout masks")
    if init_in not in ("jax", "torch"):
        raise UserError(f"init_in must be jax or torch, got {init_in!r}")
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    threshold = PARITY_THRESHOLD[config.dtype] if threshold is None else threshold
    vocab = data_lib.Vocab.from_text(text)
    train_tokens, _, _ = data_lib.split_by_position(vocab.encode(text), config.val_frac)
    trainer = Trainer.create(config, len(vocab), len(train_tokens))
    state = trainer.init_state()
    if init_in == "torch":
        torch.manual_seed(config.seed)
        module = TorchCharLM.from_config(config, len(vocab))
        _, params = charlm_from_torch(module)
        state = state._replace(params=params, opt_state=trainer.optimizer.init(params))
    else:
        module = charlm_to_torch(state.params, trainer.model)
    windows = data_lib.StreamLayout(len(train_tokens), config.batch_size,
                                    config.seq_len).windows_per_epoch
    batch = _batch_function(trainer, state.rng)
    device_tokens = jnp.asarray(train_tokens)
    steps = config.steps

    # torch
    torch_trainer = TorchTrainer(config, module, windows)
    torch_metrics, resets, torch_halted_at = [], 0, -1
    for _ in range(steps):
        inputs, targets, reset = batch(device_tokens, torch_trainer.step)
        resets += reset
        try:
            torch_metrics.append(torch_trainer.train_step(inputs, targets, reset))
        except FloatingPointError:  # on_nonfinite="stop"; jaxrnn halts at the same step
            torch_halted_at = torch_trainer.step
            break

    if sensitivity:  # made before the call below donates `state`
        rng = np.random.default_rng(config.seed)
        bumped = jax.tree.map(lambda p: np.where(rng.random(p.shape) < 0.5,
                                                 np.nextafter(np.asarray(p), np.inf),
                                                 np.asarray(p)), state.params)
        bumped_state = jax.tree.map(jnp.array, state._replace(
            params=bumped, opt_state=trainer.optimizer.init(bumped)))

    # jax: the real training code, all steps in one jitted call (the state is donated)
    state, metrics = trainer.jit_train_chunk(state, device_tokens, steps)
    metrics = jax.device_get(metrics)

    done = len(torch_metrics)  # steps both frameworks took (fewer if torch hit a non-finite)
    jax_losses = np.asarray(metrics["loss"], np.float64)[:done]
    torch_losses = np.array([m["loss"] for m in torch_metrics])
    grad_norm_diff = np.abs(np.asarray(metrics["grad_norm"], np.float64)[:done] -
                            [m["grad_norm"] for m in torch_metrics])
    lr_diff = np.abs(np.asarray(metrics["lr"], np.float64)[:done] -
                     [m["lr"] for m in torch_metrics])
    torch_params = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    jax_carry = jax.tree.leaves(state.carry)
    torch_carry = list(torch_trainer.carry) if isinstance(torch_trainer.carry, tuple) else \
        [torch_trainer.carry]
    carry_diff = _largest([float(np.max(np.abs(np.asarray(a) - b.numpy())))
                           for a, b in zip(jax_carry, torch_carry) if b is not None])
    loss_diff = np.abs(jax_losses - torch_losses)
    summary = {
        "max_abs_loss_diff": _largest(loss_diff),
        "max_abs_param_diff": _max_abs_diff(charlm_state_dict(state.params, trainer.model),
                                            torch_params),
        "max_abs_carry_diff": carry_diff,
        "max_abs_grad_norm_diff": _largest(grad_norm_diff),
        "max_abs_lr_diff": _largest(lr_diff),
        "steps": steps, "cell": config.cell, "num_layers": config.num_layers,
        "optimizer": config.optimizer, "clip": config.clip, "clip_value": config.clip_value,
        "dtype": config.dtype, "lr": config.lr, "schedule": config.schedule,
        "hidden_size": config.hidden_size, "embedding_size": config.embedding_size,
        "batch_size": config.batch_size, "seq_len": config.seq_len, "seed": config.seed,
        "init_in": init_in,
        "first_loss": float(metrics["loss"][0]), "last_loss": float(metrics["loss"][-1]),
        "clipped_steps": sum(m["clipped"] for m in torch_metrics), "state_resets": int(resets),
        "nonfinite_steps": sum(not m["finite"] for m in torch_metrics),
        "halted_at": {"jax": int(state.halted_at), "torch": torch_halted_at},
        "threshold": threshold,
    }
    if sensitivity:
        _, bumped_metrics = trainer.jit_train_chunk(bumped_state, device_tokens, steps)
        summary["self_sensitivity"] = _largest(np.abs(
            np.asarray(bumped_metrics["loss"], np.float64) - metrics["loss"]))
    passed = bool(summary["max_abs_loss_diff"] <= threshold) and \
        summary["halted_at"] == {"jax": -1, "torch": -1}
    if argmax_sample:
        prime = train_tokens[:8]
        jax_ids = np.asarray(generate(trainer.model, state.params, jnp.asarray(prime[None]),
                                      jax.random.key(0), 1.0, length=argmax_sample,
                                      argmax=True))[0]
        torch_ids = sample_ids(charlm_to_torch(state.params, trainer.model), prime,
                               argmax_sample, argmax=True)
        same = bool(np.array_equal(jax_ids, torch_ids))
        summary.update(argmax_sample_identical=same,
                       argmax_sample=vocab.decode(prime) + vocab.decode(jax_ids))
        passed = passed and same
    summary["passed"] = passed
    return ParityResult(summary, jax_losses, torch_losses)
