"""The character language model: embedding -> recurrent layers -> linear head.

Every model that `jaxrnn.train` trains has the same four pure functions:
  init(key) -> params
  zero_state(batch_size) -> state                   the recurrent state, a pytree of [.., B, H]
  apply(params, state, tokens, key=None) -> (logits, state)
      tokens <int32>[B, T] -> logits <float>[B, T, V]; key turns on dropout (training)
  step(params, state, tokens) -> (state, logits)   tokens <int32>[B] -> logits <float>[B, V]
`CharLM` is the main one; `jaxrnn.tutorial` adapts the tutorial's models to the same shape.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrnn.cells import matmul_transposed
from jaxrnn.config import Config
from jaxrnn.engine import Recurrent, dropout

ENGINE_MODE = {"lstm": "lstm", "gru": "gru", "rnn": "rnn_tanh", "rnn_relu": "rnn_relu"}


@dataclasses.dataclass(frozen=True)
class CharLM:
    """Embedding (or one-hot) -> `Recurrent` (PyTorch semantics) -> dropout -> linear head.

    Parameters (PyTorch's layout, so `torch_baselines.charlm` converts by renaming):
      embedding <float>[V, E]              absent when embedding_size == 0 (one-hot input)
      rnn                                  `Recurrent` params, see jaxrnn.engine
      head: weight <float>[V, H], bias <float>[V]
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

    @classmethod
    def from_config(cls, config: Config, vocab_size: int, impl: str = "auto") -> "CharLM":
        return cls(vocab_size, config.cell, config.hidden_size, config.num_layers,
                   config.embedding_size, config.dropout, config.init, config.dtype, impl)

    @property
    def rnn(self) -> Recurrent:
        input_size = self.embedding_size or self.vocab_size
        return Recurrent(ENGINE_MODE[self.cell], input_size, self.hidden_size, self.num_layers,
                         dropout=self.dropout, impl=self.impl)

    def init(self, key):
        dtype = jnp.dtype(self.dtype)
        k_emb, k_rnn, k_head_w, k_head_b = jax.random.split(key, 4)
        params = {"rnn": self.rnn.init(k_rnn, dtype)}
        if self.embedding_size:
            # nn.Embedding's default: N(0, 1).
            params["embedding"] = jax.random.normal(
                k_emb, (self.vocab_size, self.embedding_size), dtype)
        bound = 1.0 / self.hidden_size**0.5  # nn.Linear's default U(±1/sqrt(fan_in))
        params["head"] = {
            "weight": jax.random.uniform(k_head_w, (self.vocab_size, self.hidden_size), dtype,
                                         -bound, bound),
            "bias": jax.random.uniform(k_head_b, (self.vocab_size,), dtype, -bound, bound),
        }
        if self.init_scheme == "char-rnn":
            params = _char_rnn_init(params, key, self.cell, self.hidden_size)
        return params

    def zero_state(self, batch_size: int):
        return self.rnn.zero_state(batch_size, jnp.dtype(self.dtype))

    def _embed(self, params, tokens):
        if self.embedding_size:
            return params["embedding"][tokens]
        return jax.nn.one_hot(tokens, self.vocab_size, dtype=jnp.dtype(self.dtype))

    def _head(self, params, hidden):
        head = params["head"]
        logits = matmul_transposed(hidden, head["weight"])
        return logits + head["bias"].reshape((1,) * (logits.ndim - 1) + head["bias"].shape)

    def apply(self, params, state, tokens, key=None):
        """tokens <int32>[B, T] -> (logits <float>[B, T, V], state)."""
        rnn_key = head_key = None
        if key is not None and self.dropout > 0:
            rnn_key, head_key = jax.random.split(key)
        # Layer 0 reads the ids: with the fast layers it gathers rows of the projected
        # embedding (or of W_ih^T, one-hot) instead of a [T*B, E] x [E, G*H] GEMM.
        hidden, state = self.rnn.apply_tokens(params["rnn"], tokens.T, params.get("embedding"),
                                              state, key=rnn_key,
                                              dtype=jnp.dtype(self.dtype))  # [T, B, H]
        if head_key is not None:
            hidden = dropout(head_key, hidden, self.dropout)
        return jnp.swapaxes(self._head(params, hidden), 0, 1), state  # [B, T, V]

    def step(self, params, state, tokens):
        """tokens <int32>[B] -> (state, logits <float>[B, V]); one step, for sampling."""
        state, hidden = self.rnn.step(params["rnn"], state, self._embed(params, tokens))
        return state, self._head(params, hidden)


def _char_rnn_init(params, key, cell, hidden_size):
    """char-rnn's initialisation: every parameter U(±0.08), LSTM forget-gate input bias 1."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [jax.random.uniform(k, a.shape, a.dtype, -0.08, 0.08) for k, a in zip(keys, leaves)]
    params = jax.tree.unflatten(treedef, leaves)
    if cell == "lstm":
        for layer in params["rnn"]:
            for p in layer:
                if "bias_ih" in p:
                    p["bias_ih"] = p["bias_ih"].at[hidden_size:2 * hidden_size].set(1.0)
    return params


def build_model(config: Config, vocab_size: int, impl: str = "auto"):
    """The model a config names: `CharLM`, or one of the tutorial's ports."""
    if config.model == "charlm":
        return CharLM.from_config(config, vocab_size, impl)
    from jaxrnn import tutorial  # the tutorial's models, adapted to the same interface

    return tutorial.TutorialLM(config.model.removeprefix("tutorial-"), vocab_size,
                               config.hidden_size, config.faithful_log_softmax,
                               jnp.dtype(config.dtype).name)


def cross_entropy(logits, targets, faithful_log_softmax: bool = False):
    """<float>[..., V], <int>[...] -> <float>[...] negative log-likelihood of the targets."""
    if faithful_log_softmax:
        # The tutorial's log(softmax(o) + 1e-6): not exact, kept for reproducing it.
        log_probs = jnp.log(jax.nn.softmax(logits, axis=-1) + 1e-6)
    else:
        log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
