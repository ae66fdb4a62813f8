"""A minGRU / minLSTM language model: residual blocks as in Feng et al. 2024, "Were RNNs All
We Needed?" (its language-model experiments on Shakespeare).

  x = embedding(tokens)                                    [T, B, D]   (time-major inside)
  for each of num_blocks blocks:
      u = conv(norm(x))                                    [T, B, D]   causal depthwise, K taps
      x = x + proj(minRNN(u))                              minRNN: [T, B, D] -> [T, B, H]
                                                           proj:   [T, B, H] -> [T, B, D]
      x = x + mlp(norm(x))                                 D -> D * mlp_mult -> D, GELU
  logits = head(norm(x))                                   [T, B, V] -> returned as [B, T, V]

with H = round(D * expansion). The minRNN is `jaxrnn.Recurrent(cell, D, H)` (one layer, one
direction) for cell "mingru" or "minlstm": `apply` runs it over the whole window (impl="auto":
its parallel associative scan), `step` runs one position with `Recurrent.step`.

norm is RMSNorm with a learned scale by default (norm="rms"; "layer" is LayerNorm with a learned
scale and bias): it is what minGRU-pytorch's LM (which the paper's code follows) and Mamba use,
it is one reduction over D instead of LayerNorm's two, and every layer it feeds (conv, the
minRNN's input projection, the MLP, the head) has its own bias, which is what LayerNorm's
centring and bias would add; Zhang & Sennrich 2019 found it matches LayerNorm's quality.

conv (conv_size K > 0) is a causal depthwise convolution over time, one K-tap filter per
channel plus a bias: u[t, c] = b[c] + sum_{j<K} w[j, c] * v[t-K+1+j, c], v = norm(x). Its
taps before the window's first position come from the state (zeros at the start of a text).

The state is O(1) in the sequence length: a list over blocks of dicts
  {"rnn": <float>[1, B, H]  the block's minRNN state (Recurrent's layout; a tuple for a
                            cell whose carry is one),
   "conv": <float>[K-1, B, D]  the last K-1 inputs of the block's conv (absent for K <= 1)}.
`apply` returns the state after the window's last position, so windows chain exactly
(`apply` on two windows with the state carried equals `apply` on their concatenation), and
`step` from a state equals the next position of `apply`.

Dropout (rate `dropout`, with a key only) drops each block's two residual branches.

Parameters:
  embedding <float>[V, D]
  blocks: list over blocks of
    rnn_norm, mlp_norm: {"scale": [D]} (LayerNorm: and "bias": [D])
    conv: {"weight": [K, D], "bias": [D]}              absent for conv_size 0
    rnn: `Recurrent` params, [[{"weight_ih": [G*H, D], "bias_ih": [G*H], ...}]]
    proj: {"weight": [D, H], "bias": [D]}
    mlp: {"fc": {"weight": [M, D], "bias": [M]}, "out": {"weight": [D, M], "bias": [D]}}
  final_norm: as rnn_norm
  head: {"weight": [V, D], "bias": [V]}
Initialisation is PyTorch's defaults: embedding N(0, 1), every Linear and the conv
U(±1/sqrt(fan_in)) (the conv's fan-in is K), norms' scale 1 and bias 0; the minRNN's is its
cell's own (`Recurrent.init`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxrnn.cells import get_cell, matmul_transposed
from jaxrnn.names import MIN_CELLS  # the cells `from_config` accepts: mingru, minlstm
from jaxrnn.engine import Recurrent
from jaxrnn.errors import UserError
from jaxrnn.losses import cross_entropy
from jaxrnn.names import canonical_cell

NORMS = ("rms", "layer")
NORM_EPS = 1e-5


def _row(vector, ndim):
    """[N] -> [1, ..., 1, N] for broadcasting over ndim-1 leading dims (no rank promotion)."""
    return vector.reshape((1,) * (ndim - 1) + vector.shape)


def linear(params, x):
    """x <float>[..., I] @ weight[O, I]^T + bias[O] -> [..., O]."""
    y = matmul_transposed(x, params["weight"])
    return y + _row(params["bias"], y.ndim)


def norm(params, x, kind: str = "rms"):
    """RMSNorm (kind "rms": x / rms(x) * scale) or LayerNorm ("layer": centred, then
    * scale + bias) over the last axis."""
    if kind == "layer":
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + NORM_EPS)
    y = y * _row(params["scale"], y.ndim)
    if kind == "layer":
        y = y + _row(params["bias"], y.ndim)
    return y


def causal_conv(params, window, x):
    """The causal depthwise convolution over time of a time-major window.

    Args:
      params: {"weight": <float>[K, D], "bias": <float>[D]}; weight[K-1] multiplies the
        current input.
      window: <float>[K-1, B, D] the K-1 inputs before x[0] (zeros at a text's start);
        None for K = 1.
      x: <float>[T, B, D], any T >= 1 (shorter than K-1 too).
    Returns:
      (y <float>[T, B, D], window' <float>[K-1, B, D] the last K-1 inputs of
      concat(window, x), for the next call; None for K = 1):
      y[t] = bias + sum_j weight[j] * xp[t + j], xp = concat(window, x), summed in j order,
      as one step of it (T = 1) sums.
    """
    weight = params["weight"]
    taps, steps = weight.shape[0], x.shape[0]
    padded = x if window is None else jnp.concatenate([window, x], axis=0)  # [T+K-1, B, D]
    y = _row(params["bias"], 3)
    for j in range(taps):
        y = y + padded[j:j + steps] * _row(weight[j], 3)
    new_window = None if window is None else padded[steps:]
    return y, new_window


def mlp(params, x):
    """D -> M -> D with an exact (erf) GELU between, as torch.nn.GELU()."""
    return linear(params["out"], jax.nn.gelu(linear(params["fc"], x), approximate=False))


def _drop(keep, x, rate):
    """Inverted dropout with its mask given (as `jaxrnn.engine.dropout`)."""
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True)
class _Uniform:
    """A parameter to draw: U(±1/sqrt(fan_in)) of this shape (a leaf of `_draw_uniform`)."""

    shape: tuple
    fan_in: int


def _draw_uniform(key, spec, dtype):
    """The pytree `spec` with each `_Uniform` leaf drawn (other leaves kept), all from one
    flat U(-1, 1) draw: XLA:CPU compiled each separate draw in ~0.15 s (3.4 s for a tiny
    model's init)."""
    leaves, treedef = jax.tree.flatten(spec, is_leaf=lambda x: isinstance(x, _Uniform))
    sizes = [math.prod(leaf.shape) if isinstance(leaf, _Uniform) else 0 for leaf in leaves]
    flat = jax.random.uniform(key, (sum(sizes),), dtype, -1.0, 1.0)
    arrays, start = [], 0
    for leaf, size in zip(leaves, sizes):
        if isinstance(leaf, _Uniform):
            leaf = flat[start:start + size].reshape(leaf.shape) * (1.0 / leaf.fan_in**0.5)
        arrays.append(leaf)
        start += size
    return jax.tree.unflatten(treedef, arrays)


def _linear_spec(out_size, in_size):
    return {"weight": _Uniform((out_size, in_size), in_size),
            "bias": _Uniform((out_size,), in_size)}


@dataclasses.dataclass(frozen=True)
class MinLM:
    """The minGRU / minLSTM language model of the module docstring; the interface of
    `jaxrnn.model` (init, zero_state, apply, step, nll, from_config).

    `cell` is any unidirectional `jaxrnn.Recurrent` mode (from_config allows "mingru" and
    "minlstm" only); `impl` is the Recurrent's.
    """

    vocab_size: int
    cell: str = "mingru"
    dim: int = 256
    num_blocks: int = 3
    expansion: float = 1.5
    conv_size: int = 4
    mlp_mult: int = 4
    norm: str = "rms"
    dropout: float = 0.0
    dtype: str = "float32"
    impl: str = "auto"

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        for name in ("vocab_size", "dim", "num_blocks", "mlp_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.conv_size < 0:
            raise ValueError(f"conv_size must be 0 or more, got {self.conv_size}")
        if self.hidden_size < 1:
            raise ValueError(f"expansion {self.expansion} gives hidden size "
                             f"round({self.dim} * {self.expansion}) = {self.hidden_size}")

    @classmethod
    def from_config(cls, config, vocab_size: int, impl: str = "auto") -> "MinLM":
        """The model of a `jaxrnn.config.Config` with model "minlm".

        Reads cell, num_layers (the number of blocks), dropout, dtype and the section
        `config.minlm` (dim, expansion, conv_size, mlp_mult, norm); hidden_size and
        embedding_size are CharLM's and not read (the width is `dim`, the recurrent width
        round(dim * expansion)). Raises `UserError` naming the field for a cell other than
        mingru / minlstm (cell) and for init other than pytorch (init). impl "fast" (the
        entry points' "CPU kernels off") runs "auto" for a cell without a fast recurrence
        (the min cells: their parallel scan).
        """
        cell = canonical_cell(config.cell)
        if cell not in MIN_CELLS:
            raise UserError(f"model minlm runs the cells {' or '.join(MIN_CELLS)}; "
                            f"cell {cell!r} cannot run in it", fields=("cell",))
        if config.init != "pytorch":
            raise UserError(f"model minlm has PyTorch's default initialisation only (init "
                            f"pytorch); got init {config.init!r}", fields=("init",))
        options = config.minlm
        if impl == "fast" and get_cell(cell).fast is None:
            # "fast" is what the entry points ask for with the CPU kernels off
            # (jaxrnn.cli.default_impl); a min cell has no kernel to turn off: its fastest
            # form is the parallel scan that "auto" runs.
            impl = "auto"
        return cls(vocab_size, cell, options.dim, config.num_layers, options.expansion,
                   options.conv_size, options.mlp_mult, options.norm, config.dropout,
                   config.dtype, impl)

    # ------------------------------------------------------------------ sizes and parts

    @property
    def hidden_size(self) -> int:
        """H, the minRNN's width: round(dim * expansion)."""
        return int(round(self.dim * self.expansion))

    @property
    def mlp_size(self) -> int:
        return self.dim * self.mlp_mult

    @property
    def rnn(self) -> Recurrent:
        return Recurrent(self.cell, self.dim, self.hidden_size, 1, impl=self.impl)

    @property
    def _window(self) -> int:
        """How many past conv inputs the state holds: K-1 (0 without a conv)."""
        return max(self.conv_size - 1, 0)

    # ------------------------------------------------------------------ parameters, state

    def _norm_init(self, dtype):
        params = {"scale": jnp.ones((self.dim,), dtype)}
        if self.norm == "layer":
            params["bias"] = jnp.zeros((self.dim,), dtype)
        return params

    def init(self, key):
        """The parameters (module docstring), drawn in one jitted call: eagerly, every random
        draw of another shape compiled on its own (6 s for a tiny model on 2 cores)."""
        return _jit_init(self, key)

    def _init(self, key):
        dtype = jnp.dtype(self.dtype)
        d, h, m, k = self.dim, self.hidden_size, self.mlp_size, self.conv_size
        k_emb, k_rest, *k_rnns = jax.random.split(key, 2 + self.num_blocks)
        blocks = []
        for k_rnn in k_rnns:
            block = {"rnn_norm": self._norm_init(dtype),
                     "rnn": self.rnn.init(k_rnn, dtype),  # the cell's own init
                     "proj": _linear_spec(d, h), "mlp_norm": self._norm_init(dtype),
                     "mlp": {"fc": _linear_spec(m, d), "out": _linear_spec(d, m)}}
            if k:
                block["conv"] = {"weight": _Uniform((k, d), k), "bias": _Uniform((d,), k)}
            blocks.append(block)
        params = _draw_uniform(k_rest, {"blocks": blocks, "final_norm": self._norm_init(dtype),
                                        "head": _linear_spec(self.vocab_size, d)}, dtype)
        embedding = jax.random.normal(k_emb, (self.vocab_size * d,), dtype)
        return {"embedding": embedding.reshape(self.vocab_size, d), **params}

    def zero_state(self, batch_size: int):
        dtype = jnp.dtype(self.dtype)
        rnn = self.rnn
        state = []
        for _ in range(self.num_blocks):
            block = {"rnn": rnn.zero_state(batch_size, dtype)}
            if self._window:
                block["conv"] = jnp.zeros((self._window, batch_size, self.dim), dtype)
            state.append(block)
        return state

    # ------------------------------------------------------------------ running

    def _conv(self, params, block_state, u):
        """u [T, B, D] through the block's conv (identity without one); -> (y, state')."""
        if not self.conv_size:
            return u, block_state
        y, window = causal_conv(params["conv"], block_state.get("conv"), u)
        if window is not None:
            block_state = {**block_state, "conv": window}
        return y, block_state

    def _block(self, params, block_state, x, run_rnn, keep):
        """One residual block on time-major x [T, B, D]; run_rnn(rnn_params, state, u) ->
        (y [T, B, H], rnn_state); keep: None or the dropout masks <bool>[2, T, B, D] of the
        two branches."""
        u, block_state = self._conv(params, block_state, norm(params["rnn_norm"], x, self.norm))
        y, rnn_state = run_rnn(params["rnn"], block_state["rnn"], u)
        branch = linear(params["proj"], y)
        if keep is not None:
            branch = _drop(keep[0], branch, self.dropout)
        x = x + branch
        branch = mlp(params["mlp"], norm(params["mlp_norm"], x, self.norm))
        if keep is not None:
            branch = _drop(keep[1], branch, self.dropout)
        return x + branch, {**block_state, "rnn": rnn_state}

    def _forward(self, params, state, x, run_rnn, key=None):
        """The blocks and head on time-major x [T, B, D] -> (logits [T, B, V], state)."""
        keep = None
        if key is not None and self.dropout > 0:
            # Every branch's mask in one flat draw: XLA:CPU took 3.9 s to compile a rank-5
            # bernoulli at test sizes, 0.3 s for the same draw flat (one per branch: more).
            shape = (self.num_blocks, 2) + x.shape
            keep = jax.random.bernoulli(key, 1.0 - self.dropout,
                                        (math.prod(shape),)).reshape(shape)
        new_state = []
        for i, (block, block_state) in enumerate(zip(params["blocks"], state)):
            x, block_state = self._block(block, block_state, x, run_rnn,
                                         None if keep is None else keep[i])
            new_state.append(block_state)
        logits = linear(params["head"], norm(params["final_norm"], x, self.norm))
        return logits, new_state

    def apply(self, params, state, tokens, key=None):
        """tokens <int32>[B, T] -> (logits <float>[B, T, V], state after position T-1).

        Every block's minRNN runs over the whole window at once (the Recurrent's parallel
        form with impl="auto"). `key` turns on dropout of the residual branches (training)."""
        rnn = self.rnn

        def run_rnn(rnn_params, rnn_state, u):
            return rnn.apply(rnn_params, u, rnn_state)

        x = jnp.take(params["embedding"], tokens.T, axis=0)  # [T, B, D]
        logits, state = self._forward(params, state, x, run_rnn, key)
        return jnp.swapaxes(logits, 0, 1), state

    def step(self, params, state, tokens):
        """tokens <int32>[B] -> (state, logits <float>[B, V]): one position, for sampling; equal
        to that position of `apply` from the same state."""
        rnn = self.rnn

        def run_rnn(rnn_params, rnn_state, u):
            rnn_state, y = rnn.step(rnn_params, rnn_state, u[0])
            return y[None], rnn_state

        x = jnp.take(params["embedding"], tokens, axis=0)[None]  # [1, B, D]
        logits, state = self._forward(params, state, x, run_rnn)
        return state, logits[0]

    def nll(self, logits, targets):
        """<float>[..., V], <int>[...] -> <float>[...]: -log softmax(logits)[target]."""
        return cross_entropy(logits, targets)


_jit_init = jax.jit(MinLM._init, static_argnums=0)
