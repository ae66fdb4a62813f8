# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Introducing RNNs and LSTMs, in jaxrnn
#
# The tutorial this project began from, in four parts, written with JAX and jaxrnn:
#
# 1. **A vanilla RNN from scratch**: the equations, a numerically stable softmax, the loss of
#    one 25-character chunk through `lax.scan`, its gradient by `jax.grad`, a short training
#    run, samples.
# 2. **An LSTM**, the same way.
# 3. **Batched training**: the PyTorch model and jaxrnn's trained side by side from the same
#    weights, their loss curves on one plot, and how far apart they end.
# 4. **Variable lengths**: padding plus `lengths` in jaxrnn against PyTorch's
#    `pack_padded_sequence`, on the tutorial's three-sequence example and then on a batch of
#    uneven lines of text, trained both ways.
#
# Every setting is short, so the whole notebook runs in well under a minute on two CPU
# cores; the last cell says what to change for a full run. The text is tiny-shakespeare when
# this machine has it (`jaxrnn-prepare-data` puts it in `data/tinyshakespeare.txt`, or set
# `JAXRNN_TINYSHAKESPEARE=PATH`), and otherwise the four sonnets bundled with
# `torch_baselines` (2,441 characters).

# %%
import math
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from jaxrnn import Recurrent, last_valid, pad_sequences
from jaxrnn import tutorial as T
from jaxrnn.data import Vocab
from jaxrnn.model import CharLM
from torch_baselines.convert import charlm_state_dict, params_from_state_dict
from torch_baselines.model import TorchCharLM, sequence_loss
from torch_baselines.packed import PackedRecurrent
from torch_baselines.parity import parity_corpus

# One PyTorch thread: at this notebook's tiny sizes threads cost more than they save, and on a
# busy 2-core machine two of them can make PyTorch many times slower.
torch.set_num_threads(1)

text, source = parity_corpus()  # tiny-shakespeare if present, else the bundled sonnets
vocab = Vocab.from_text(text)
data = vocab.encode(text)  # <int32>[N] character ids; the vocabulary is the sorted characters
print(f"text: {source}: {len(text):,} characters, {len(vocab)} distinct")
print(repr(text[:120]))

# %% [markdown]
# The settings, in one place. They are sized for a quick demonstration; see the end of the
# notebook for a full run.

# %%
HIDDEN = 100          # Parts 1-2: the tutorial's hidden size
ONLINE_CHUNKS = 2000  # Parts 1-2: 25-character chunks of online SGD (one update per chunk)
SAMPLE_EVERY = 1000   # Parts 1-2: a sample after every this many chunks
BATCHED_STEPS = 150   # Part 3: training steps of a (B, T) batch, each framework
BATCH, SEQ_LEN = 32, 25
BATCHED_HIDDEN = 128  # Part 3: the RNN's hidden size
BATCHED_LR = 0.3      # Part 3: SGD's learning rate on the mean loss per character
LINES_BATCH = 16      # Part 4: lines per batch
LINES_STEPS = 40      # Part 4: training steps, each framework
LINES_HIDDEN = 64     # Part 4: the LSTM's hidden size
LINES_LR = 3e-3       # Part 4: Adam's learning rate
SEED = 0

# %% [markdown]
# ## Part 1: a vanilla RNN from scratch
#
# A character-level language model reads a text one character at a time and predicts the
# next. With a vocabulary of $V$ characters, the character at step $t$ is the one-hot vector
# $x_t \in \{0, 1\}^V$, and an RNN with $H$ hidden units keeps a state $h_t \in \mathbb{R}^H$:
#
# $$h_t = \tanh(U x_t + W h_{t-1} + b_h), \qquad o_t = V h_t + b_o, \qquad
#   p_t = \operatorname{softmax}(o_t), \quad
#   \operatorname{softmax}(o)_k = \frac{e^{o_k}}{\sum_j e^{o_j}},$$
#
# with $U \in \mathbb{R}^{H \times V}$, $W \in \mathbb{R}^{H \times H}$,
# $V \in \mathbb{R}^{V \times H}$ (the tutorial's names: $V$ is both the output matrix and
# the vocabulary size) and $h_0 = 0$. Since $x_t$ is one-hot, $U x_t$ is just the
# column of $U$ at the character's id. The loss of a chunk of $T$ characters with targets
# $y_t$ (the character after $x_t$) is the summed negative log-likelihood
#
# $$L = -\sum_{t=1}^{T} \log p_t[y_t].$$
#
# ### The stable softmax
#
# $e^{o_k}$ overflows for $o_k \gtrsim 89$ in float32, and then the softmax is `inf / inf =
# nan`. Subtracting the largest logit first changes nothing mathematically
# ($e^{o_k - m} / \sum_j e^{o_j - m}$ with $m = \max_j o_j$) and keeps every exponent
# $\le 0$. For the loss we want the log-probability, computed directly as
# $\log p_k = (o_k - m) - \log \sum_j e^{o_j - m}$, which never takes the log of an underflowed
# zero. (The tutorial computed $\log(\operatorname{softmax}(o) + 10^{-6})$ instead; jaxrnn
# keeps that as `faithful=True` for reproducing it, and uses the exact form by default.)

# %%
def naive_softmax(o):
    e = jnp.exp(o)
    return e / jnp.sum(e)


def stable_softmax(o):
    e = jnp.exp(o - jnp.max(o))
    return e / jnp.sum(e)


def log_softmax(o):
    """<float>[..., V] -> <float>[..., V]: log softmax over the last axis, stably."""
    z = o - jnp.max(o, axis=-1, keepdims=True)
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))


o = jnp.array([1000.0, 0.0, -1000.0])
print("naive softmax :", naive_softmax(o))
print("stable softmax:", stable_softmax(o))
print("log softmax   :", log_softmax(o))

# %% [markdown]
# ### The model and its loss, with `lax.scan`
#
# The Python loop over time becomes `jax.lax.scan(body, h0, inputs)`: `body` maps
# (state, input) to (new state, output), and scan stacks the outputs. The whole chunk is then
# one compiled program, and `jax.grad` differentiates through it (backpropagation through
# time), so no backward pass is written by hand. The parameters start as the tutorial's:
# every entry `randn * 0.01` (`jaxrnn.tutorial.init_rnn`).

# %%
def rnn_step(params, h, x_id):
    """One step: h <float>[H], x_id a character id -> (h_t <float>[H], o_t <float>[V])."""
    h = jnp.tanh(params["U"][:, x_id] + params["W"] @ h + params["b_h"])
    return h, params["V"] @ h + params["b_o"]


def rnn_chunk_loss(params, inputs, targets):
    """inputs, targets <int>[T] -> the summed NLL of the chunk, from h_0 = 0."""
    h0 = jnp.zeros(params["W"].shape[0])
    _, logits = jax.lax.scan(lambda h, x_id: rnn_step(params, h, x_id), h0, inputs)  # (T, V)
    return -jnp.sum(jnp.take_along_axis(log_softmax(logits), targets[:, None], axis=1))


rnn_params = T.init_rnn(jax.random.key(SEED), len(vocab), HIDDEN)
print({name: p.shape for name, p in rnn_params.items()})
inputs, targets = T.chunks(data, 1)  # the tutorial's first chunk: text[0:25] -> text[1:26]
loss, grads = jax.jit(jax.value_and_grad(rnn_chunk_loss))(rnn_params, inputs[0], targets[0])
print(f"loss of the first chunk: {loss:.4f} (25 log V = {25 * math.log(len(vocab)):.4f}: "
      f"at initialisation every character is about equally likely)")
print("largest gradient entry per parameter:",
      {name: f"{float(jnp.max(jnp.abs(g))):.2e}" for name, g in grads.items()})
print(f"jaxrnn.tutorial.rnn_loss, the library's version of the same equations: "
      f"{jax.jit(T.rnn_loss)(rnn_params, inputs[0], targets[0]):.4f}")

# %% [markdown]
# ### Training
#
# The tutorial trains *online*: chunk $k$ is `text[25k : 25k + 25]` with the targets one
# character later; each chunk starts from $h_0 = 0$, and each gives one update
# $\theta \leftarrow \theta - 0.01 \cdot \operatorname{clip}(\nabla_\theta L, -5, 5)$.
# `jaxrnn.tutorial.train_tutorial` runs that loop with every block of chunks compiled into a
# single `lax.scan` (no Python per step) and samples after each block: the sampler feeds a
# start character, draws the next from $p_t$, feeds it back, and so on. A short text is
# repeated (`np.resize` cycles it) to make enough chunks.

# %%
online_data = np.resize(data, ONLINE_CHUNKS * T.SEQ_LENGTH + 1)
start_id = vocab.index["a"] if "a" in vocab.index else 0


def show_sample(step, mean_loss, ids):
    print(f"--- after {step} chunks, mean loss of the last block {mean_loss:.2f}")
    print(vocab.chars[start_id] + vocab.decode(ids))


started = time.perf_counter()
rnn_params, rnn_losses, _ = T.train_tutorial(
    T.rnn_loss, "rnn", rnn_params, online_data, ONLINE_CHUNKS, jax.random.key(SEED + 1),
    start_id, sample_every=SAMPLE_EVERY, sample_length=200, log=show_sample)
print(f"Part 1: {ONLINE_CHUNKS} chunks in {time.perf_counter() - started:.1f} s "
      f"(compiling included)")

# %% [markdown]
# ## Part 2: the LSTM
#
# The LSTM adds a cell state $c_t$ that gates control: what to write ($i$), keep ($f$) and
# show ($o$), with $\sigma$ the logistic sigmoid and $\odot$ the elementwise product:
#
# $$\begin{aligned}
# i_t &= \sigma(U_i x_t + W_i h_{t-1} + b_i) & f_t &= \sigma(U_f x_t + W_f h_{t-1} + b_f) \\
# o_t &= \sigma(U_o x_t + W_o h_{t-1} + b_o) & \tilde c_t &= \tanh(U_c x_t + W_c h_{t-1} + b_c) \\
# c_t &= f_t \odot c_{t-1} + i_t \odot \tilde c_t & h_t &= o_t \odot \tanh(c_t)
# \end{aligned}$$
#
# and the logits are $V h_t + b$. Because $c_t$ is updated by a sum, not squashed through a
# nonlinearity at every step, gradients flow back over many more steps than in the RNN.
# The state is now the pair $(h, c)$; `lax.scan` carries any pytree.

# %%
def lstm_step(params, carry, x_id):
    """One step: carry (h, c), each <float>[H] -> ((h_t, c_t), logits <float>[V])."""
    h, c = carry
    gate = {g: params[f"U_{g}"][:, x_id] + params[f"W_{g}"] @ h + params[f"b_{g}"]
            for g in "ifoc"}
    c = jax.nn.sigmoid(gate["f"]) * c + jax.nn.sigmoid(gate["i"]) * jnp.tanh(gate["c"])
    h = jax.nn.sigmoid(gate["o"]) * jnp.tanh(c)
    return (h, c), params["V"] @ h + params["b"]


def lstm_chunk_loss(params, inputs, targets):
    """inputs, targets <int>[T] -> the summed NLL of the chunk, from (h_0, c_0) = (0, 0)."""
    zeros = jnp.zeros(params["W_i"].shape[0])
    _, logits = jax.lax.scan(lambda hc, x_id: lstm_step(params, hc, x_id), (zeros, zeros),
                             inputs)
    return -jnp.sum(jnp.take_along_axis(log_softmax(logits), targets[:, None], axis=1))


lstm_params = T.init_lstm(jax.random.key(SEED), len(vocab), HIDDEN)
print(f"loss of the first chunk: "
      f"{jax.jit(lstm_chunk_loss)(lstm_params, inputs[0], targets[0]):.4f}; "
      f"jaxrnn.tutorial.lstm_loss: {jax.jit(T.lstm_loss)(lstm_params, inputs[0], targets[0]):.4f}")

started = time.perf_counter()
lstm_params, lstm_losses, _ = T.train_tutorial(
    T.lstm_loss, "lstm", lstm_params, online_data, ONLINE_CHUNKS, jax.random.key(SEED + 1),
    start_id, sample_every=SAMPLE_EVERY, sample_length=200, log=show_sample)
print(f"Part 2: {ONLINE_CHUNKS} chunks in {time.perf_counter() - started:.1f} s "
      f"(compiling included)")

# %%
def moving_average(values, width=100):
    """(x, y): the mean of each `width` consecutive values, x the count of values it ends at."""
    means = np.convolve(np.asarray(values), np.ones(width) / width, mode="valid")
    return np.arange(width, width + len(means)), means


plt.figure(figsize=(7, 3.5))
plt.plot(*moving_average(rnn_losses), label="Part 1: RNN")
plt.plot(*moving_average(lstm_losses), label="Part 2: LSTM")
plt.xlabel("chunk")
plt.ylabel("loss per chunk (nats, mean of 100)")
plt.title("Online training on 25-character chunks")
plt.legend()
plt.show()

# %% [markdown]
# In a run this short the LSTM is behind the RNN: it has four times the weights to fit at the
# same small learning rate, with every gate starting near $\sigma(0) = 1/2$. What it is for,
# carrying information over long spans of text, pays off only in much longer runs.

# %% [markdown]
# ## Part 3: batched training, side by side with PyTorch
#
# One chunk per update leaves most of a CPU idle. The tutorial's Part 3 trains on batches:
# $B$ windows of $T$ characters at once, time-major, the hidden state a matrix
# $[B, H]$. Its model was a PyTorch module, $h = \tanh(\mathrm{i2h}([x; h]))$ and a linear
# `h2o`: that is `torch.nn.RNN` followed by `nn.Linear` (with the one bias of `i2h` split in
# two, `bias_ih + bias_hh`). jaxrnn's `CharLM` is that model (one-hot input,
# `jaxrnn.Recurrent` with PyTorch's semantics, a linear head), and
# `torch_baselines.model.TorchCharLM` is its PyTorch twin. (The tutorial's own module,
# ported line by line, is `jaxrnn.tutorial.train_batched`; `tests/test_tutorial.py` checks
# it against the PyTorch original.)
#
# We build the PyTorch model, copy its weights into jaxrnn's model, and train both for the
# same steps on the same batches with the same optimiser (plain SGD on the mean NLL per
# character). jaxrnn keeps PyTorch's parameter layout and gate order, so the copy is a
# rename: `rnn.weight_ih_l0` becomes `params["rnn"][0][0]["weight_ih"]` (layer 0, direction
# 0), which `torch_baselines.convert.params_from_state_dict` does with a check of every key
# and shape, and `head.weight` becomes `params["head"]["weight"]`. Batch $s$ is the
# tutorial's: the text cut into windows of $T$ characters, step $s$ taking windows
# $(s \bmod S)B + b$ for $b = 0 \dots B - 1$ ($S$ the number of whole batches in the text).

# %%
def tutorial_batches(data, num_steps, seq_len, batch_size):
    """(inputs, targets), each <int32>[num_steps, B, T], targets shifted by one character."""
    steps_per_epoch = ((len(data) - 1) // seq_len) // batch_size
    window = (np.arange(num_steps)[:, None] % steps_per_epoch) * batch_size \
        + np.arange(batch_size)[None, :]                                        # (S, B)
    positions = window[..., None] * seq_len + np.arange(seq_len)              # (S, B, T)
    return data[positions], data[positions + 1]


batch_inputs, batch_targets = tutorial_batches(data, BATCHED_STEPS, SEQ_LEN, BATCH)
torch.manual_seed(SEED)
torch_model = TorchCharLM(len(vocab), "rnn_tanh", hidden_size=BATCHED_HIDDEN, num_layers=1)
# impl="fast": jaxrnn's pure-JAX recurrence (a scan with a hand-written backward). The default,
# impl="auto", picks the fastest path of the machine: on a CPU a fused C++ kernel, which is
# compiled once, on first use, and would double this notebook's run time.
jax_model = CharLM(len(vocab), "rnn_tanh", hidden_size=BATCHED_HIDDEN, num_layers=1,
                   impl="fast")
weights = torch_model.state_dict()
jax_params = {  # the same weights, in jaxrnn's layout
    "rnn": params_from_state_dict(jax_model.rnn, {key.removeprefix("rnn."): value
                                                  for key, value in weights.items()
                                                  if key.startswith("rnn.")}),
    "head": {"weight": jnp.array(weights["head.weight"].numpy()),
             "bias": jnp.array(weights["head.bias"].numpy())}}
print({key: tuple(value.shape) for key, value in weights.items()})
print(jax.tree.map(jnp.shape, jax_params))

# %%
# jaxrnn: a jitted step, value_and_grad of the loss, then optax's SGD.
optimizer = optax.sgd(BATCHED_LR)


def jax_loss(params, inputs, targets):
    """inputs, targets <int32>[B, T] -> the mean NLL per character, from a zero state."""
    logits, _ = jax_model.apply(params, jax_model.zero_state(inputs.shape[0]), inputs)
    return jnp.mean(jax_model.nll(logits, targets))


@jax.jit
def jax_train_step(params, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(jax_loss)(params, inputs, targets)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def train_jax(params, num_steps):
    opt_state, losses = optimizer.init(params), []
    for s in range(num_steps):
        params, opt_state, loss = jax_train_step(params, opt_state, batch_inputs[s],
                                                 batch_targets[s])
        losses.append(loss)
    return params, np.array(losses)


# PyTorch: the usual loop.
torch_optimizer = torch.optim.SGD(torch_model.parameters(), lr=BATCHED_LR)


def train_torch(num_steps):
    losses = []
    for s in range(num_steps):
        logits, _ = torch_model(torch.from_numpy(batch_inputs[s]).long())
        loss = sequence_loss(logits, torch.from_numpy(batch_targets[s]).long())
        torch_optimizer.zero_grad()
        loss.backward()
        torch_optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


started = time.perf_counter()  # a first call compiles the step (its result is dropped)
jax.block_until_ready(jax_train_step(jax_params, optimizer.init(jax_params), batch_inputs[0],
                                     batch_targets[0]))
print(f"jaxrnn: compiled the step in {time.perf_counter() - started:.1f} s")
started = time.perf_counter()
jax_params, jax_losses = train_jax(jax_params, BATCHED_STEPS)
jax_seconds = time.perf_counter() - started
started = time.perf_counter()
torch_losses = train_torch(BATCHED_STEPS)
torch_seconds = time.perf_counter() - started
batched_chars = BATCHED_STEPS * BATCH * SEQ_LEN
print(f"jaxrnn : {BATCHED_STEPS} steps in {jax_seconds:.2f} s "
      f"({batched_chars / jax_seconds:,.0f} chars/s)")
print(f"PyTorch: {BATCHED_STEPS} steps in {torch_seconds:.2f} s "
      f"({batched_chars / torch_seconds:,.0f} chars/s)")

# %%
trained_jax = charlm_state_dict(jax_params, jax_model)  # {TorchCharLM key: numpy array}
trained_torch = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
loss_diff = float(np.max(np.abs(jax_losses - torch_losses)))
param_diff = max(float(np.max(np.abs(trained_jax[k] - trained_torch[k]))) for k in trained_torch)
print(f"loss: {jax_losses[0]:.4f} -> {jax_losses[-1]:.4f} (jaxrnn), "
      f"{torch_losses[0]:.4f} -> {torch_losses[-1]:.4f} (PyTorch)")
print(f"Part 3 parity: max |loss difference| = {loss_diff:.2e}, "
      f"max |parameter difference| = {param_diff:.2e}")

plt.figure(figsize=(7, 3.5))
plt.plot(jax_losses, label="jaxrnn", linewidth=3, alpha=0.5)
plt.plot(torch_losses, "--", label="PyTorch", color="black", linewidth=1)
plt.xlabel("step")
plt.ylabel("mean loss per character (nats)")
plt.title(f"The same RNN, the same batches (max |difference| {loss_diff:.1e})")
plt.legend()
plt.show()

# %% [markdown]
# The two curves lie on top of each other: in float32 they differ only by rounding, the
# largest difference printed above. (`jaxrnn-parity` does the same for every cell, optimiser
# and clipping mode, with jaxrnn's real training step, and fails if the losses drift apart by
# more than 1e-4 in float32 or 1e-9 in float64.)
#
# ## Part 4: sequences of different lengths
#
# Real batches are uneven: lines, sentences, words. PyTorch pads them to one length and then
# *packs* them (`pack_padded_sequence`) so the RNN never steps over padding; each sequence's
# final state is taken at its own last element. jaxrnn keeps the padded array, so every
# shape stays static for `jit`, and takes the lengths next to it:
# `Recurrent.apply(params, padded, lengths=lengths)` means exactly what PyTorch's packing
# means: outputs are zero past each length, and `h_n` is each sequence's state at its own end.
#
# The tutorial's example: three sequences of lengths 4, 2 and 1 through `nn.RNN(1, 1)`.

# %%
torch.manual_seed(SEED)
torch_rnn = torch.nn.RNN(1, 1)
sequences = [torch.tensor([[1.0], [2.0], [3.0], [4.0]]), torch.tensor([[5.0], [6.0]]),
             torch.tensor([[7.0]])]
lengths = torch.tensor([len(s) for s in sequences])

# PyTorch: pad, pack, run, pad back.
padded = pad_sequence(sequences)                                  # [T=4, B=3, 1]
packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
with torch.no_grad():
    packed_output, torch_h_n = torch_rnn(packed)
torch_output, _ = pad_packed_sequence(packed_output, total_length=padded.shape[0])

# jaxrnn: the same weights (convert.params_from_state_dict), padding and lengths.
# impl="reference" is the cell's lax.scan, the definition the faster paths are checked against.
rnn = Recurrent("rnn_tanh", input_size=1, hidden_size=1, impl="reference")
rnn_params4 = params_from_state_dict(rnn, torch_rnn.state_dict())
jax_padded, jax_lengths = pad_sequences([s.numpy() for s in sequences])   # (4, 3, 1), [4, 2, 1]
jax_output, jax_h_n = rnn.apply(rnn_params4, jax_padded, lengths=jax_lengths)

print("jaxrnn output [T, B]:\n", np.asarray(jax_output[..., 0]).round(6))
print("PyTorch output [T, B]:\n", torch_output[..., 0].numpy().round(6))
print("last valid outputs:", np.asarray(last_valid(jax_output, jax_lengths)[:, 0]).round(6),
      "= h_n:", np.asarray(jax_h_n[0, :, 0]).round(6))
output_diff = float(np.max(np.abs(np.asarray(jax_output) - torch_output.numpy())))
h_n_diff = float(np.max(np.abs(np.asarray(jax_h_n) - torch_h_n.numpy())))
print(f"Part 4 padded vs packed: max |output difference| = {output_diff:.2e}, "
      f"max |h_n difference| = {h_n_diff:.2e}")
_, unmasked_h_n = rnn.apply(rnn_params4, jax_padded)
print("without lengths the padding is read as input, and h_n is another:",
      np.asarray(unmasked_h_n[0, :, 0]).round(6))

# %% [markdown]
# ### A batch of uneven lines, trained both ways
#
# Now a real batch: lines of the text, each its own sequence, a one-layer LSTM predicting
# each line's next character. Both frameworks start from the same weights and see the same
# batches; the loss is the mean NLL over the valid characters only (a mask from the
# lengths). jaxrnn pads every batch to one length, so one compiled step serves every batch;
# PyTorch packs each batch. The timing is a short demonstration on a shared machine, not a
# benchmark (`jaxrnn-bench` is that).

# %%
MAX_LINE = 64
lines = [line[:MAX_LINE + 1] for line in text.split("\n") if len(line) >= 2]
num_batches = min(len(lines) // LINES_BATCH, LINES_STEPS)  # cycled if fewer than the steps
line_ids = [vocab.encode(line) for line in lines[:num_batches * LINES_BATCH]]
padded_len = max(len(ids) for ids in line_ids) - 1


def line_batch(s):
    """Batch s: (inputs, targets) <int32>[T, B] padded with zeros, lengths <int32>[B]."""
    group = line_ids[(s % num_batches) * LINES_BATCH:][:LINES_BATCH]
    inputs, lengths = pad_sequences([ids[:-1] for ids in group])
    targets, _ = pad_sequences([ids[1:] for ids in group])
    pad = padded_len - inputs.shape[0]  # one length for every batch: one compiled program
    return (jnp.pad(inputs, ((0, pad), (0, 0))), jnp.pad(targets, ((0, pad), (0, 0))),
            lengths)


line_batches = [line_batch(s) for s in range(LINES_STEPS)]
torch_line_batches = [tuple(torch.from_numpy(np.array(a)).long() for a in batch)
                      for batch in line_batches]
valid_chars = sum(int(jnp.sum(batch[2])) for batch in line_batches)
print(f"{num_batches} batches of {LINES_BATCH} lines, padded to {padded_len}; the lengths of "
      f"the first:", np.asarray(line_batches[0][2]).tolist())

# %% [markdown]
# The same weights on both sides, and each side's loss: a one-hot input, the LSTM over the
# padded batch (packed in PyTorch, with lengths in jaxrnn), a linear head, and the mean NLL
# over the valid positions.

# %%
torch.manual_seed(SEED)
torch_lstm = torch.nn.LSTM(len(vocab), LINES_HIDDEN)
torch_head = torch.nn.Linear(LINES_HIDDEN, len(vocab))
packed_lstm = PackedRecurrent(torch_lstm)  # pack_padded_sequence -> nn.LSTM -> pad back
# impl="reference": the cell's masked lax.scan (impl="auto" would take the fused CPU kernel,
# compiled on first use)
lstm = Recurrent("lstm", len(vocab), LINES_HIDDEN, impl="reference")
lstm_params = params_from_state_dict(lstm, torch_lstm.state_dict())  # the same weights
line_params = {"rnn": lstm_params,
               "head": {"weight": jnp.asarray(torch_head.weight.detach().numpy()),
                        "bias": jnp.asarray(torch_head.bias.detach().numpy())}}


def masked_mean(nll, lengths):
    """nll <float>[T, B] -> the mean over the valid positions t < lengths[b]."""
    mask = jnp.arange(nll.shape[0])[:, None] < lengths[None, :]
    return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.sum(mask)


def line_loss(params, inputs, targets, lengths):
    """inputs, targets <int32>[T, B], lengths <int32>[B] -> the mean NLL of the valid ones."""
    x = jax.nn.one_hot(inputs, len(vocab))                                    # [T, B, V]
    hidden, _ = lstm.apply(params["rnn"], x, lengths=lengths)                 # [T, B, H]
    logits = hidden @ params["head"]["weight"].T + params["head"]["bias"]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    return masked_mean(nll, lengths)


line_optimizer = optax.adam(LINES_LR)


@jax.jit
def line_step(params, opt_state, inputs, targets, lengths):
    loss, grads = jax.value_and_grad(line_loss)(params, inputs, targets, lengths)
    updates, opt_state = line_optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def torch_line_loss(inputs, targets, lengths):
    """The same loss in PyTorch, on int64 tensors of the same shapes."""
    x = torch.nn.functional.one_hot(inputs, len(vocab)).float()
    hidden, _ = packed_lstm(x, lengths)                                        # zero at padding
    nll = -torch.log_softmax(torch_head(hidden), -1).gather(-1, targets[..., None])[..., 0]
    mask = torch.arange(nll.shape[0])[:, None] < lengths[None, :]
    return (nll * mask).sum() / mask.sum()


torch_line_optimizer = torch.optim.Adam([*torch_lstm.parameters(), *torch_head.parameters()],
                                        lr=LINES_LR)

# %%
started = time.perf_counter()
opt_state = line_optimizer.init(line_params)
jax.block_until_ready(line_step(line_params, opt_state, *line_batches[0]))  # compiles
compile_seconds = time.perf_counter() - started
started = time.perf_counter()
jax_line_losses = []
for batch in line_batches:
    line_params, opt_state, loss = line_step(line_params, opt_state, *batch)
    jax_line_losses.append(loss)
jax_line_losses = np.array(jax_line_losses)
jax_seconds = time.perf_counter() - started

started = time.perf_counter()
torch_line_losses = []
for batch in torch_line_batches:
    loss = torch_line_loss(*batch)
    torch_line_optimizer.zero_grad()
    loss.backward()
    torch_line_optimizer.step()
    torch_line_losses.append(loss.item())
torch_line_losses = np.array(torch_line_losses)
torch_seconds = time.perf_counter() - started

print(f"loss {jax_line_losses[0]:.3f} -> {jax_line_losses[-1]:.3f} (jaxrnn), "
      f"{torch_line_losses[0]:.3f} -> {torch_line_losses[-1]:.3f} (PyTorch); "
      f"max |difference| {np.max(np.abs(jax_line_losses - torch_line_losses)):.2e}")
print(f"jaxrnn, padded + lengths: {LINES_STEPS} steps in {jax_seconds:.2f} s "
      f"({valid_chars / jax_seconds:,.0f} chars/s; compiling took {compile_seconds:.1f} s more)")
print(f"PyTorch, packed         : {LINES_STEPS} steps in {torch_seconds:.2f} s "
      f"({valid_chars / torch_seconds:,.0f} chars/s)")

# %% [markdown]
# ## A full run
#
# Everything above is sized to finish in seconds. For a run that learns the text:
#
# - **the text**: run `jaxrnn-prepare-data` (or set `JAXRNN_TINYSHAKESPEARE=PATH`) and restart
#   the kernel; the first cell then reads tiny-shakespeare (1.1 M characters);
# - **Parts 1-2**: `ONLINE_CHUNKS = 100_000` (about two passes over tiny-shakespeare) and
#   `SAMPLE_EVERY = 10_000`;
# - **Part 3**: `BATCHED_STEPS = 5_000`, and a larger `hidden_size` (256) for the models;
# - **Part 4**: `LINES_STEPS = 2_000` and `LINES_BATCH = 64`.
#
# The command-line tools train the same models with checkpoints, evaluation and samples:
# `jaxrnn-train --preset tutorial-rnn` (or `tutorial-lstm`) reproduces Parts 1-2, and
# `jaxrnn-train --preset default` trains the project's main LSTM.
