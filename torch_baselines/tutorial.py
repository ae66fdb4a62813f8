"""The tutorial's Part 3, kept faithful: a character RNN as a PyTorch module, batched training.

Depends only on torch and numpy. Two fixes to the tutorial, both explicit here:
  * `char_to_index` comes from a vocabulary, the sorted unique characters of the text (a list
    of characters, or any object with a `.chars` sequence such as `jaxrnn.data.Vocab`), so the
    ids do not depend on set iteration order;
  * the device is an argument (`device`, default "cpu"), never picked silently.

Batches (`get_batch`): the text is cut into W = (N - 1) // T consecutive, non-overlapping windows
of T characters; window w has inputs encoded[w*T : (w+1)*T] and targets encoded[w*T + 1 :
(w+1)*T + 1]. Step s uses windows (s mod S)*B + b, b = 0 .. B-1, as its batch columns, with
S = W // B steps per epoch. `jaxrnn.tutorial.get_batch` returns exactly the same arrays.

  >>> vocab = build_vocab(text)
  >>> model = RNN(len(vocab), 128, len(vocab))
  >>> losses = train(model, encode(text, vocab), num_steps=1000, seq_length=25, batch_size=32)
  >>> print(sample(model, vocab, "a", 100))
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


# ---------------------------------------------------------------------------- vocabulary


def build_vocab(text: str) -> list[str]:
    """The sorted unique characters of `text`."""
    return sorted(set(text))


def _chars(vocab) -> list[str]:
    return list(getattr(vocab, "chars", vocab))


def char_to_index(vocab) -> dict[str, int]:
    """{char: id} for a list of characters (or an object with `.chars`)."""
    return {c: i for i, c in enumerate(_chars(vocab))}


def encode(text: str, vocab) -> np.ndarray:
    """<int64>[len(text)] the id of every character; KeyError names a character not in vocab."""
    index = char_to_index(vocab)
    return np.array([index[c] for c in text], dtype=np.int64)


# ---------------------------------------------------------------------------- the model


class RNN(nn.Module):
    """The tutorial's RNN cell, one time step per call:

      combined = cat(input, hidden)                  [B, I + H]
      hidden   = tanh(i2h(combined))                 [B, H]
      output   = log_softmax(h2o(hidden), dim=1)     [B, O]
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size + hidden_size, hidden_size)
        self.h2o = nn.Linear(hidden_size, output_size)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, input, hidden):
        combined = torch.cat((input, hidden), 1)
        hidden = torch.tanh(self.i2h(combined))
        output = self.softmax(self.h2o(hidden))
        return output, hidden

    def initHidden(self, batch_size: int = 1):
        weight = self.i2h.weight
        return torch.zeros(batch_size, self.hidden_size, dtype=weight.dtype, device=weight.device)


def params_to_numpy(model: RNN) -> dict[str, np.ndarray]:
    """The module's weights under jaxrnn.tutorial's names ("i2h.weight" -> "i2h_weight")."""
    return {k.replace(".", "_"): v.detach().cpu().numpy().copy()
            for k, v in model.state_dict().items()}


def load_numpy_params(model: RNN, params) -> RNN:
    """Copies a jaxrnn.tutorial params dict (any arrays) into `model`, checking keys and shapes."""
    state = model.state_dict()
    want = {k.replace(".", "_"): k for k in state}
    if set(params) != set(want):
        raise ValueError(f"params must have keys {sorted(want)}, got {sorted(params)}")
    new_state = {}
    for name, key in want.items():
        value = np.asarray(params[name])
        if tuple(value.shape) != tuple(state[key].shape):
            raise ValueError(f"{name} must have shape {tuple(state[key].shape)}, "
                             f"got {value.shape}")
        new_state[key] = torch.tensor(np.array(value), dtype=state[key].dtype)
    model.load_state_dict(new_state)
    return model


# ---------------------------------------------------------------------------- data


def get_batch(encoded, step: int, seq_length: int, batch_size: int, vocab_size: int,
              device="cpu", dtype=torch.float32):
    """Batch `step`: one-hot inputs [T, B, V] and targets [T, B] (layout: module docstring).

      inputs[t, b]  = encoded[((step mod S)*B + b)*T + t]
      targets[t, b] = encoded[((step mod S)*B + b)*T + t + 1],   S = ((N - 1) // T) // B

    Returns:
      (x <dtype>[T, B, vocab_size], y <int64>[T, B]) on `device`.
    """
    encoded = np.asarray(encoded)
    steps_per_epoch = ((len(encoded) - 1) // seq_length) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"a batch of {batch_size} windows of {seq_length} needs a text of at "
                         f"least {batch_size * seq_length + 1} ids, got {len(encoded)}")
    starts = ((step % steps_per_epoch) * batch_size + np.arange(batch_size)) * seq_length
    positions = np.arange(seq_length)[:, None] + starts[None, :]        # (T, B)
    inputs = torch.as_tensor(encoded[positions], dtype=torch.int64, device=device)
    targets = torch.as_tensor(encoded[positions + 1], dtype=torch.int64, device=device)
    x = torch.zeros(seq_length, batch_size, vocab_size, dtype=dtype, device=device)
    x.scatter_(2, inputs.unsqueeze(2), 1.0)
    return x, targets


# ---------------------------------------------------------------------------- training


def batch_loss(model: RNN, x, y, criterion=None):
    """sum over t of NLLLoss(output_t, y[t]) (each the mean over the batch), from initHidden."""
    criterion = nn.NLLLoss() if criterion is None else criterion
    hidden = model.initHidden(x.shape[1])
    loss = 0
    for t in range(x.shape[0]):
        output, hidden = model(x[t], hidden)
        loss = loss + criterion(output, y[t])
    return loss


def train(model: RNN, encoded, num_steps: int, seq_length: int, batch_size: int,
          lr: float = 0.001, device="cpu", start_step: int = 0, log_every: int = 0):
    """The tutorial's loop: for each step, get_batch, zero state, summed NLL, backward, SGD.

    The model is moved to `device`; batches take the model's dtype.
    Returns:
      losses: list of float, each step's loss before its update.
    """
    model.to(device)
    dtype = next(model.parameters()).dtype
    vocab_size = model.i2h.in_features - model.hidden_size
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    criterion = nn.NLLLoss()
    losses = []
    for step in range(start_step, start_step + num_steps):
        x, y = get_batch(encoded, step, seq_length, batch_size, vocab_size, device, dtype)
        optimizer.zero_grad()
        loss = batch_loss(model, x, y, criterion)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}: loss {loss.item():.4f}")
    return losses


# ---------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_ids(model: RNN, start_id: int, length: int = 100, greedy: bool = False,
               generator: torch.Generator | None = None) -> list[int]:
    """`length` generated ids from a zero state, feeding start_id first (it is not included).

    Each next id is torch.multinomial(exp(output)) with `generator`, or the argmax if greedy.
    """
    weight = model.i2h.weight
    vocab_size = model.i2h.in_features - model.hidden_size
    hidden = model.initHidden(1)
    x = torch.zeros(1, vocab_size, dtype=weight.dtype, device=weight.device)
    x[0, start_id] = 1.0
    ids = []
    for _ in range(length):
        output, hidden = model(x, hidden)
        if greedy:
            next_id = int(torch.argmax(output[0]))
        else:
            next_id = int(torch.multinomial(output[0].exp(), 1, generator=generator))
        ids.append(next_id)
        x.zero_()
        x[0, next_id] = 1.0
    return ids


def sample(model: RNN, vocab, start_char: str = "a", length: int = 100, greedy: bool = False,
           generator: torch.Generator | None = None) -> str:
    """The tutorial's sampler: `length` characters generated after `start_char`."""
    chars = _chars(vocab)
    ids = sample_ids(model, char_to_index(chars)[start_char], length, greedy, generator)
    return "".join(chars[i] for i in ids)
