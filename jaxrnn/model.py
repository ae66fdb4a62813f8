"""The character language model: embedding -> recurrent layers -> linear head.

Every model that `jaxrnn.train` trains (`jaxrnn.models.build_model` names them) has the same
pure functions:
  init(key) -> params
  zero_state(batch_size) -> state                   the recurrent state, a pytree of [.., B, H]
  apply(params, state, tokens, key=None) -> (logits, state)
      tokens <int32>[B, T] -> logits <float>[B, T, V]; key turns on dropout (training)
  step(params, state, tokens) -> (state, logits)   tokens <int32>[B] -> logits <float>[B, V]
  nll(logits, targets) -> <float>[...]              per-token negative log-likelihood
`CharLM` is the main one; `jaxrnn.tutorial.TutorialLM` is the tutorial's models in this shape.

Token ids are this module's business, not the engine's: layer 0 of `CharLM` hands the engine
its input slab (`Recurrent.apply(projected0=...)`), gathered from rows of the projected
embedding table where that measured faster than embedding then projecting (`input_slabs`).

The regularisers (docs/REGULARIZERS.md, `jaxrnn.regularizers`) act only when `apply` gets a
key (training): weight drop and embedding dropout change the params of one call, locked
dropout and zoneout are engine options; `tie_weights` changes the head's parameters.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrnn import regularizers
from jaxrnn.cells import get_cell, matmul_transposed
from jaxrnn.config import Config
from jaxrnn.engine import Recurrent, dropout
from jaxrnn.losses import cross_entropy
from jaxrnn.names import canonical_cell

# Layer 0 gathers its slab only for a mid-sized one: below GATHER_MIN_TOKENS tokens (T*B) or
# above GATHER_MAX_SLAB elements (T*B*G*H) it builds its inputs and projects them with one
# GEMM. Measured on 2 CPU cores (BENCHMARKS.md): with 25 tokens (W1) the GEMM was 10% faster
# than the gather and its scatter-add gradient; at a 1.3M-element slab (W2) the gather was
# 9-20% faster; at 13M-16M (W3, W4) the gather, a single-threaded copy of the whole slab
# (21 ms at W4), was within noise to 6% slower, with ~27 MiB more peak memory at W3.
GATHER_MIN_TOKENS = 256
GATHER_MAX_SLAB = 4 * 2**20


def _row(vector, ndim):
    """Reshapes a [N] vector to broadcast over ndim-1 leading dims (rank promotion is off)."""
    return vector.reshape((1,) * (ndim - 1) + vector.shape)


def embedding_slab(cell, params, ids, table=None):
    """Layer 0's slab for token ids: equal to `x @ W_ih^T + cell.slab_bias(params)` with
    x = table[ids] (one-hot rows when table is None).

    Args:
      cell: a `jaxrnn.Cell` that takes a slab (every built-in cell).
      params: the layer's parameter dict (weight_ih <float>[G*H, D]).
      ids: <int>[T, B] token ids in [0, V).
      table: <float>[V, D] embedding table, or None for one-hot inputs (D = V).

    Returns:
      <float>[T, B, G*H]: rows of the projected table (table @ W_ih^T + bias, [V, G*H], one
      small GEMM) gathered by id, so no [T*B, D] x [D, G*H] GEMM runs. The gather's VJP is
      `jnp.take`'s scatter-add: a custom VJP doing one_hot(ids)^T @ d_slab instead was 2.4x
      slower for that op at W2 (1.2 vs 2.7 ms) and 15% faster at W3 / W4 sizes (32 vs 37 ms,
      38 vs 46 ms), under 3% of a step either way.
    """
    projected = params["weight_ih"].T if table is None else table @ params["weight_ih"].T
    bias = cell.slab_bias(params)
    if bias is not None:
        projected = projected + _row(bias, 2)
    return jnp.take(projected, ids, axis=0)


def one_hot_slab(cell, params, ids):
    """Layer 0's slab for one-hot inputs by one GEMM: one_hot(ids) @ (W_ih^T + bias).

    One-hot rows sum to one, so the bias folds into W_ih^T: each slab entry is W_ih[j, id] +
    b[j] rounded once, and no [T, B, G*H] add runs (a single-threaded 12 ms of a 330 ms W4
    step). ids <int>[T, B] -> <float>[T, B, G*H].
    """
    weight_ih = params["weight_ih"]
    rows = weight_ih.T
    bias = cell.slab_bias(params)
    if bias is not None:
        rows = rows + _row(bias, 2)
    steps, batch = ids.shape
    inputs = jax.nn.one_hot(ids.reshape(-1), weight_ih.shape[1], dtype=weight_ih.dtype)
    return (inputs @ rows).reshape(steps, batch, rows.shape[-1])


@dataclasses.dataclass(frozen=True)
class CharLM:
    """Embedding (or one-hot) -> `Recurrent` (PyTorch semantics) -> dropout -> linear head.

    Parameters (PyTorch's layout, so `torch_baselines.charlm` converts by renaming):
      embedding <float>[V, E]              absent when embedding_size == 0 (one-hot input)
      rnn                                  `Recurrent` params, see jaxrnn.engine
      head: weight <float>[V, H], bias <float>[V]
    With tie_weights the head has no weight of its own: logits = h @ embedding^T + bias
    (E == H), or (h @ projection^T) @ embedding^T + bias with head.projection <float>[E, H]
    (E != H).

    Regularisers (training only, i.e. with a key; docs/REGULARIZERS.md): weight_drop,
    embedding_dropout, zoneout (rates in [0, 1)) and locked_dropout (dropout's masks shared
    over time).
    """

    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 2
    embedding_size: int = 0
    dropout: float = 0.0
    init_scheme: str = "pytorch"
    dtype: str = "float32"
    impl: str = "auto"
    weight_drop: float = 0.0
    locked_dropout: bool = False
    embedding_dropout: float = 0.0
    zoneout: float = 0.0
    tie_weights: bool = False

    def __post_init__(self):
        if self.tie_weights and not self.embedding_size:
            raise ValueError("tie_weights needs an embedding (embedding_size > 0)")
        if self.embedding_dropout and not self.embedding_size:
            raise ValueError("embedding_dropout needs an embedding (embedding_size > 0)")

    @classmethod
    def from_config(cls, config: Config, vocab_size: int, impl: str = "auto") -> "CharLM":
        """The CharLM of a config. impl "fast" (the entry points' "CPU kernels off") runs
        "auto" where nothing but the reference scan can run: a cell without a fast
        recurrence (lstm_ln, gru_ln, the min cells), or zoneout."""
        if impl == "fast" and (config.zoneout > 0
                               or get_cell(canonical_cell(config.cell)).fast is None):
            impl = "auto"
        return cls(vocab_size, config.cell, config.hidden_size, config.num_layers,
                   config.embedding_size, config.dropout, config.init, config.dtype, impl,
                   config.weight_drop, config.locked_dropout, config.embedding_dropout,
                   config.zoneout, config.tie_weights)

    @property
    def rnn(self) -> Recurrent:
        input_size = self.embedding_size or self.vocab_size
        return Recurrent(canonical_cell(self.cell), input_size, self.hidden_size,
                         self.num_layers, dropout=self.dropout, impl=self.impl,
                         zoneout=self.zoneout, locked_dropout=self.locked_dropout)

    def init(self, key):
        dtype = jnp.dtype(self.dtype)
        k_emb, k_rnn, k_head_w, k_head_b = jax.random.split(key, 4)
        params = {"rnn": self.rnn.init(k_rnn, dtype)}
        if self.embedding_size:
            # nn.Embedding's default: N(0, 1).
            params["embedding"] = jax.random.normal(
                k_emb, (self.vocab_size, self.embedding_size), dtype)
        bound = 1.0 / self.hidden_size**0.5  # nn.Linear's default U(±1/sqrt(fan_in))
        if not self.tie_weights:
            weight = ("weight", (self.vocab_size, self.hidden_size))
        elif self.embedding_size != self.hidden_size:  # nn.Linear(H, E, bias=False)
            weight = ("projection", (self.embedding_size, self.hidden_size))
        else:
            weight = None
        params["head"] = {}
        if weight is not None:
            params["head"][weight[0]] = jax.random.uniform(k_head_w, weight[1], dtype,
                                                           -bound, bound)
        params["head"]["bias"] = jax.random.uniform(k_head_b, (self.vocab_size,), dtype,
                                                    -bound, bound)
        if self.init_scheme == "char-rnn":
            params = _char_rnn_init(params, key, self.cell, self.hidden_size)
        return params

    def zero_state(self, batch_size: int):
        return self.rnn.zero_state(batch_size, jnp.dtype(self.dtype))

    def _embed(self, params, tokens):
        if self.embedding_size:
            return params["embedding"][tokens]
        return jax.nn.one_hot(tokens, self.vocab_size, dtype=jnp.dtype(self.dtype))

    def input_slabs(self, params, ids):
        """Layer 0's input for ids <int>[T, B]: (x, None), or (None, slabs) with one slab
        <float>[T, B, G*H] per direction (see `Recurrent.apply(projected0=...)`).

        Mid-sized slabs are gathered from the projected table (`embedding_slab`); outside
        the GATHER_MIN_TOKENS / GATHER_MAX_SLAB range, one-hot inputs are one GEMM
        (`one_hot_slab`) and an embedding is looked up and left to the engine to project.
        """
        rnn = self.rnn
        layer0 = params["rnn"][0]
        table = params.get("embedding")
        slab_size = ids.size * rnn.cell.num_gates * rnn.hidden_size
        if GATHER_MIN_TOKENS <= ids.size and slab_size <= GATHER_MAX_SLAB:
            return None, [embedding_slab(rnn.cell, p, ids, table) for p in layer0]
        if table is None:
            return None, [one_hot_slab(rnn.cell, p, ids) for p in layer0]
        return jnp.take(table, ids, axis=0), None

    def _head(self, params, hidden):
        """hidden <float>[..., H] -> logits <float>[..., V]; tied: through the embedding."""
        head = params["head"]
        if not self.tie_weights:
            logits = matmul_transposed(hidden, head["weight"])
        else:
            if "projection" in head:
                hidden = matmul_transposed(hidden, head["projection"])  # [..., E]
            logits = matmul_transposed(hidden, params["embedding"])
        return logits + head["bias"].reshape((1,) * (logits.ndim - 1) + head["bias"].shape)

    def dropped_params(self, params, key):
        """The params that the input and the layers of one training call read: weight_hh
        dropped (weight_drop) and embedding rows dropped (embedding_dropout; the head, tied
        or not, reads `params` itself). split(key) gives the weight-drop and row keys."""
        weight_key, row_key = jax.random.split(key)
        params = dict(params)
        if self.weight_drop > 0:
            params["rnn"] = regularizers.weight_drop(weight_key, params["rnn"],
                                                     self.weight_drop)
        if self.embedding_dropout > 0:
            keep = regularizers.row_keep(row_key, self.vocab_size, self.embedding_dropout)
            params["embedding"] = regularizers.drop_rows(params["embedding"], keep,
                                                         self.embedding_dropout)
        return params

    def apply(self, params, state, tokens, key=None):
        """tokens <int32>[B, T] -> (logits <float>[B, T, V], state).

        With a key (training): with weight_drop or embedding_dropout on, first
        `key, sub = split(key)` and `dropped_params(params, sub)`; then, with dropout or
        zoneout on, `rnn_key, head_key = split(key)`: the engine's key and the head's dropout.
        """
        input_params = params
        if key is not None and (self.weight_drop > 0 or self.embedding_dropout > 0):
            key, sub = jax.random.split(key)
            input_params = self.dropped_params(params, sub)
        rnn_key = head_key = None
        if key is not None and (self.dropout > 0 or self.zoneout > 0):
            rnn_key, head_key = jax.random.split(key)
        x, slabs = self.input_slabs(input_params, tokens.T)
        hidden, state = self.rnn.apply(input_params["rnn"], x, state, key=rnn_key,
                                       projected0=slabs)  # [T, B, H]
        if head_key is not None and self.dropout > 0:
            drop = regularizers.locked_dropout if self.locked_dropout else dropout
            hidden = drop(head_key, hidden, self.dropout)
        return jnp.swapaxes(self._head(params, hidden), 0, 1), state  # [B, T, V]

    def step(self, params, state, tokens):
        """tokens <int32>[B] -> (state, logits <float>[B, V]); one step, for sampling."""
        state, hidden = self.rnn.step(params["rnn"], state, self._embed(params, tokens))
        return state, self._head(params, hidden)

    def nll(self, logits, targets):
        """<float>[..., V], <int>[...] -> <float>[...]: -log softmax(logits)[target]."""
        return cross_entropy(logits, targets)


def _char_rnn_init(params, key, cell, hidden_size):
    """char-rnn's initialisation: every parameter U(±0.08), LSTM forget-gate input bias 1."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [jax.random.uniform(k, a.shape, a.dtype, -0.08, 0.08) for k, a in zip(keys, leaves)]
    params = jax.tree.unflatten(treedef, leaves)
    if canonical_cell(cell) in ("lstm", "lstm_ln"):  # lstm_ln: β_ih's forget block
        for layer in params["rnn"]:
            for p in layer:
                if "bias_ih" in p:
                    p["bias_ih"] = p["bias_ih"].at[hidden_size:2 * hidden_size].set(1.0)
    for layer in params["rnn"]:  # layer norm's gains (lstm_ln, gru_ln) start at 1
        for p in layer:
            for name in p:
                if name.startswith("gain_"):
                    p[name] = jnp.ones_like(p[name])
    return params
