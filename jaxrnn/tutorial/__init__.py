"""The tutorial in JAX: a from-scratch RNN and LSTM (Parts 1-2) and the batched RNN (Part 3).

The tutorial builds character language models on tiny-shakespeare three times:
  Part 1  a vanilla RNN written with the `autograd` package, trained online on one 25-character
          chunk at a time;
  Part 2  an LSTM in the same style;
  Part 3  the RNN again as a PyTorch module (`i2h` over cat(input, hidden), `h2o`, LogSoftmax),
          trained on (T, B) batches.
This package keeps the tutorial's parameter names, shapes, initialisation, loss and training
loops, and replaces the Python loops with `lax.scan` and `autograd.grad` with `jax.grad`. The
faithful originals live in `torch_baselines/tutorial.py` (Part 3) and
`torch_baselines/autograd_tutorial.py` (Part 1); `tests/test_tutorial.py` checks them against
each other and against a NumPy reference. (Part 4, packed sequences, is the core engine's:
`jaxrnn.packing`.)

Modules, one job each:
  init      the initialisers: init_rnn, init_lstm, init_batched_rnn (and the parameter names)
  parts12   Parts 1-2's models on one chunk <int>[T]: rnn_/lstm_ step, forward, loss
  online    Parts 1-2's training: chunks <int32>[K, 25], sgd_clip_update, train_step,
            train_online (one scan over chunks), train_tutorial (with samples)
  batched   Part 3: get_batch ([T, B, V] one-hot, [T, B] targets), batched_rnn_forward/loss,
            train_batched
  sampler   sample: the tutorial's sampler for all three models
  lm        TutorialLM: Parts 1-2's models behind the core's model interface

The loss of a Parts 1-2 chunk is the *sum* over its T characters of -log p(targets[t]). The
tutorial's log-softmax is log(softmax(o) + 1e-6); `faithful=True` reproduces it, the default is
the exact log-softmax (both `jaxrnn.losses`, re-exported here as FAITHFUL_EPS and log_probs).

Where it plugs into the core: only through `TutorialLM` (lm.py), which has the interface of
`jaxrnn.model.CharLM` (init, zero_state, apply, step, nll, from_config). The model registry
`jaxrnn.models.build_model` maps config.model "tutorial-rnn" / "tutorial-lstm" to
`TutorialLM.from_config`; the presets of the same names in `jaxrnn/config.py` set the
tutorial's recipe (H=100, 25-character chunks, batch 1, SGD 0.01, clip ±5, summed NLL), and the
tutorial's own options sit in the config section `Config.tutorial` (`TutorialOptions`:
faithful_log_softmax), read by `TutorialLM.from_config` only. The core imports nothing else
from this package, and the batch-size-1 rule of these models is `TutorialLM`'s, not the config's.
"""

from jaxrnn.losses import FAITHFUL_EPS, log_probs
from jaxrnn.tutorial.batched import (batched_rnn_forward, batched_rnn_loss, batched_rnn_step,
                                     get_batch, train_batched)
from jaxrnn.tutorial.init import (BATCHED_RNN_PARAM_NAMES, INIT_SCALE, LSTM_PARAM_NAMES,
                                  RNN_PARAM_NAMES, init_batched_rnn, init_lstm, init_rnn)
from jaxrnn.tutorial.lm import TutorialLM
from jaxrnn.tutorial.online import (SEQ_LENGTH, chunks, sgd_clip_update, train_online,
                                    train_step, train_tutorial)
from jaxrnn.tutorial.parts12 import (lstm_forward, lstm_loss, lstm_step, rnn_forward, rnn_loss,
                                     rnn_step)
from jaxrnn.tutorial.sampler import sample

__all__ = [
    "FAITHFUL_EPS", "log_probs",
    "INIT_SCALE", "RNN_PARAM_NAMES", "LSTM_PARAM_NAMES", "BATCHED_RNN_PARAM_NAMES",
    "init_rnn", "init_lstm", "init_batched_rnn",
    "rnn_step", "rnn_forward", "rnn_loss", "lstm_step", "lstm_forward", "lstm_loss",
    "SEQ_LENGTH", "chunks", "sgd_clip_update", "train_step", "train_online", "train_tutorial",
    "get_batch", "batched_rnn_step", "batched_rnn_forward", "batched_rnn_loss", "train_batched",
    "sample",
    "TutorialLM",
]
