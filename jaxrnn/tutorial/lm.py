"""`TutorialLM`: Part 1's RNN or Part 2's LSTM behind the core's model interface.

Job: the adapter that lets `jaxrnn.train` (and `jaxrnn.sampling`, `jaxrnn.evaluate`) run the
tutorial's models like `jaxrnn.model.CharLM`, by the same functions:

  from_config(config, vocab_size, impl) -> TutorialLM   what `jaxrnn.models.build_model` calls
  init(key) -> params                                    `init_rnn` / `init_lstm`
  zero_state(batch_size) -> state                        <float>[B, H] (LSTM: a tuple (h, c))
  apply(params, state, tokens <int32>[B, T], key=None) -> (logits <float>[B, T, V], state)
  step(params, state, tokens <int32>[B]) -> (state, logits <float>[B, V])
  nll(logits <float>[..., V], targets <int>[...]) -> <float>[...]

Each row of the batch runs `rnn_forward` / `lstm_forward` (vmapped); there is no dropout, so
`key` is ignored. The tutorial's own options (`Config.tutorial`, a `TutorialOptions`) are read
here and nowhere in the core; so is the rule that these models train online (batch_size 1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrnn.errors import UserError
from jaxrnn.losses import cross_entropy
from jaxrnn.tutorial.init import init_lstm, init_rnn
from jaxrnn.tutorial.parts12 import lstm_forward, lstm_step, rnn_forward, rnn_step


@dataclasses.dataclass(frozen=True)
class TutorialLM:
    """Part 1's RNN or Part 2's LSTM with the interface of `jaxrnn.model.CharLM`, so that
    `jaxrnn.train` trains them (presets "tutorial-rnn" and "tutorial-lstm").

    faithful_log_softmax: `nll` is the tutorial's -log(softmax + 1e-6) instead of the exact one.
    """

    kind: str                       # "rnn" | "lstm"
    vocab_size: int
    hidden_size: int = 100
    faithful_log_softmax: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in ("rnn", "lstm"):
            raise ValueError(f"kind must be 'rnn' or 'lstm', got {self.kind!r}")

    @classmethod
    def from_config(cls, config, vocab_size: int, impl: str = "auto") -> "TutorialLM":
        """The model of a `jaxrnn.config.Config` with model "tutorial-rnn" / "tutorial-lstm".

        Reads model, hidden_size, dtype and `config.tutorial.faithful_log_softmax`; `impl`
        is ignored (these models have no engine). Raises `UserError` (fields batch_size)
        unless batch_size is 1: the tutorial trains online, one chunk at a time.
        """
        if config.batch_size != 1:
            raise UserError(f"model {config.model} trains online, one chunk at a time: "
                            f"batch_size must be 1, got {config.batch_size}",
                            fields=("batch_size",))
        return cls(config.model.removeprefix("tutorial-"), vocab_size, config.hidden_size,
                   config.tutorial.faithful_log_softmax, config.dtype)

    def init(self, key):
        init = init_rnn if self.kind == "rnn" else init_lstm
        return init(key, self.vocab_size, self.hidden_size, jnp.dtype(self.dtype))

    def zero_state(self, batch_size: int):
        zeros = jnp.zeros((batch_size, self.hidden_size), jnp.dtype(self.dtype))
        return zeros if self.kind == "rnn" else (zeros, zeros)

    def apply(self, params, state, tokens, key=None):
        """tokens <int32>[B, T] -> (logits <float>[B, T, V], state)."""
        forward = rnn_forward if self.kind == "rnn" else lstm_forward
        return jax.vmap(forward, in_axes=(None, 0, 0))(params, tokens, state)

    def step(self, params, state, tokens):
        """tokens <int32>[B] -> (state, logits <float>[B, V]); one step, for sampling."""
        step = rnn_step if self.kind == "rnn" else lstm_step
        return jax.vmap(step, in_axes=(None, 0, 0))(params, state, tokens)

    def nll(self, logits, targets):
        """<float>[..., V], <int>[...] -> <float>[...]: -log p(target), the tutorial's
        log(softmax + 1e-6) when faithful_log_softmax."""
        return cross_entropy(logits, targets, self.faithful_log_softmax)
