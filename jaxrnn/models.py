"""The models a config can name, and the one function that builds them.

Every model has the interface of `jaxrnn.model` (init, zero_state, apply, step, nll) and a
`from_config(config, vocab_size, impl)` constructor that checks the config fields it needs.
A new model plugs in by adding its constructor here (and its name to `config.MODELS`).
"""

from __future__ import annotations

from jaxrnn.config import Config
from jaxrnn.minlm import MinLM
from jaxrnn.model import CharLM
from jaxrnn.tutorial import TutorialLM

MODELS = {
    "charlm": CharLM.from_config,
    "tutorial-rnn": TutorialLM.from_config,   # the tutorial's Part 1 RNN
    "tutorial-lstm": TutorialLM.from_config,  # the tutorial's Part 2 LSTM
    "minlm": MinLM.from_config,               # minGRU / minLSTM residual blocks (Feng et al.)
}


def build_model(config: Config, vocab_size: int, impl: str = "auto"):
    """The model `config.model` names, for a vocabulary of `vocab_size` characters; `impl` is
    the engine's implementation (`jaxrnn.Recurrent`), for models that have an engine."""
    return MODELS[config.model](config, vocab_size, impl)
