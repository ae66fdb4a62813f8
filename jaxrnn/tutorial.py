"""The tutorial in JAX: a from-scratch RNN and LSTM (Parts 1-2) and the batched RNN (Part 3).

The tutorial builds character language models on tiny-shakespeare three times:
  Part 1  a vanilla RNN written with the `autograd` package, trained online on one 25-character
          chunk at a time;
  Part 2  an LSTM in the same style;
  Part 3  the RNN again as a PyTorch module (`i2h` over cat(input, hidden), `h2o`, LogSoftmax),
          trained on (T, B) batches.
This module keeps the tutorial's parameter names, shapes, initialisation, loss and training
loops, and replaces the Python loops with `lax.scan` and `autograd.grad` with `jax.grad`. The
faithful originals live in `torch_baselines/tutorial.py` (Part 3) and
`torch_baselines/autograd_tutorial.py` (Part 1); `tests/test_tutorial.py` checks them against
each other and against a NumPy reference.

Parts 1-2 work on one unbatched chunk: `inputs` and `targets` are <int>[T] character ids with
targets[t] = the character after inputs[t], and the hidden state starts at zero for every chunk.
x_t is the one-hot vector of inputs[t]; `U x_t` is computed as the column gather U[:, inputs[t]],
which equals the one-hot matmul.

The loss of a chunk is the *sum* over its T characters of -log p(targets[t]). The tutorial's
log-softmax is log(softmax(o) + 1e-6); `faithful=True` reproduces it, the default is the exact
`jax.nn.log_softmax`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from jaxrnn.cells import matmul_transposed

SEQ_LENGTH = 25          # the tutorial's chunk length
FAITHFUL_EPS = 1e-6      # the tutorial's log(softmax + 1e-6)
INIT_SCALE = 0.01        # the tutorial's np.random.randn(...) * 0.01, biases included

RNN_PARAM_NAMES = ("U", "W", "V", "b_h", "b_o")
LSTM_PARAM_NAMES = ("U_i", "W_i", "b_i", "U_f", "W_f", "b_f", "U_o", "W_o", "b_o",
                    "U_c", "W_c", "b_c", "V", "b")
BATCHED_RNN_PARAM_NAMES = ("i2h_weight", "i2h_bias", "h2o_weight", "h2o_bias")


# ============================================================================ initialisation


def _split_flat(flat, shapes: dict):
    """Cuts a flat vector into arrays of the given shapes, in order."""
    params, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        params[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    return params


def _randn_params(key, shapes: dict, scale: float, dtype):
    # One draw for all parameters: a single threefry in the program compiles several times
    # faster on CPU than one per parameter.
    total = sum(math.prod(shape) for shape in shapes.values())
    return _split_flat(scale * jax.random.normal(key, (total,), dtype), shapes)


@functools.partial(jax.jit, static_argnames=("vocab_size", "hidden_size", "dtype"))
def init_rnn(key, vocab_size: int, hidden_size: int, dtype=jnp.float32, scale=INIT_SCALE):
    """Part 1's RNN parameters, every one `randn * 0.01` as in the tutorial.

    Returns:
      {"U": [H, V], "W": [H, H], "V": [V, H], "b_h": [H], "b_o": [V]} with V = vocab_size,
      H = hidden_size.
    """
    h, v = hidden_size, vocab_size
    shapes = {"U": (h, v), "W": (h, h), "V": (v, h), "b_h": (h,), "b_o": (v,)}
    return _randn_params(key, shapes, scale, dtype)


@functools.partial(jax.jit, static_argnames=("vocab_size", "hidden_size", "dtype"))
def init_lstm(key, vocab_size: int, hidden_size: int, dtype=jnp.float32, scale=INIT_SCALE):
    """Part 2's LSTM parameters, every one `randn * 0.01` as in the tutorial.

    Returns:
      for each gate g in (i, f, o, c): U_g [H, V], W_g [H, H], b_g [H]; and the output layer
      V [V, H], b [V].
    """
    h, v = hidden_size, vocab_size
    shapes = {}
    for gate in ("i", "f", "o", "c"):
        shapes.update({f"U_{gate}": (h, v), f"W_{gate}": (h, h), f"b_{gate}": (h,)})
    shapes.update(V=(v, h), b=(v,))
    return _randn_params(key, shapes, scale, dtype)


@functools.partial(jax.jit,
                   static_argnames=("input_size", "hidden_size", "output_size", "dtype"))
def init_batched_rnn(key, input_size: int, hidden_size: int, output_size: int,
                     dtype=jnp.float32):
    """Part 3's RNN parameters in the torch module's layout, with nn.Linear's default init.

    nn.Linear(fan_in, fan_out) draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Returns:
      {"i2h_weight": [H, I+H], "i2h_bias": [H], "h2o_weight": [O, H], "h2o_bias": [O]}; the
      torch state_dict keys with "." replaced by "_". Columns [0, I) of i2h_weight act on the
      input and [I, I+H) on the hidden state, as in cat((input, hidden), 1).
    """
    shapes = {"i2h_weight": (hidden_size, input_size + hidden_size), "i2h_bias": (hidden_size,),
              "h2o_weight": (output_size, hidden_size), "h2o_bias": (output_size,)}
    bounds = {"i2h_weight": 1.0 / (input_size + hidden_size) ** 0.5,
              "h2o_weight": 1.0 / hidden_size ** 0.5}
    bounds.update(i2h_bias=bounds["i2h_weight"], h2o_bias=bounds["h2o_weight"])
    total = sum(math.prod(shape) for shape in shapes.values())
    unit = _split_flat(jax.random.uniform(key, (total,), dtype, -1.0, 1.0), shapes)
    return {name: bounds[name] * value for name, value in unit.items()}


# ============================================================================ Parts 1-2: models


def log_probs(logits, faithful: bool = False):
    """Log-probabilities over the last axis of <float>[..., V] logits.

    faithful=False: log_softmax(o), exact.
    faithful=True:  log(softmax(o) + 1e-6), the tutorial's formula (its gradient is
                    p_y / (p_y + 1e-6) times the exact one).
    """
    if faithful:
        return jnp.log(jax.nn.softmax(logits, axis=-1) + FAITHFUL_EPS)
    return jax.nn.log_softmax(logits, axis=-1)


def _chunk_nll(logits, targets, faithful):
    """sum_t -log p(targets[t]) for logits <float>[T, V] and targets <int>[T]."""
    picked = jnp.take_along_axis(log_probs(logits, faithful), targets[:, None], axis=1)
    return -jnp.sum(picked)


def rnn_step(params, h, x_id):
    """One step of Part 1's RNN on character id `x_id` (a scalar int).

      h_t = tanh(U x_t + W h_{t-1} + b_h)        o_t = V h_t + b_o

    Returns:
      (h_t <float>[H], o_t <float>[V]).
    """
    h = jnp.tanh(params["U"][:, x_id] + params["W"] @ h + params["b_h"])
    return h, params["V"] @ h + params["b_o"]


def rnn_forward(params, inputs, h0=None):
    """Runs Part 1's RNN over one chunk from h0 (zero by default).

    Args:
      inputs: <int>[T] character ids.
    Returns:
      (logits <float>[T, V], h_T <float>[H]).
    """
    hidden_size = params["W"].shape[0]
    h0 = jnp.zeros((hidden_size,), params["W"].dtype) if h0 is None else h0
    # The input term of every step is one gather before the loop: U x_t == U[:, inputs[t]].
    projected = params["U"][:, inputs].T + params["b_h"][None, :]          # (T, H)

    def body(h, xp):
        h = jnp.tanh(xp + params["W"] @ h)
        return h, h

    h_last, hs = jax.lax.scan(body, h0, projected)                          # hs: (T, H)
    logits = hs @ params["V"].T + params["b_o"][None, :]                    # (T, V)
    return logits, h_last


def rnn_loss(params, inputs, targets, faithful: bool = False):
    """Part 1's loss: sum over the chunk of -log p(targets[t] | inputs[:t+1]), h_0 = 0.

    Args:
      params: from `init_rnn`.
      inputs, targets: <int>[T] character ids, targets[t] = the character after inputs[t].
      faithful: use the tutorial's log(softmax + 1e-6) (see `log_probs`).
    Returns:
      <float>[] the summed negative log-likelihood.
    """
    logits, _ = rnn_forward(params, inputs)
    return _chunk_nll(logits, targets, faithful)


def lstm_step(params, carry, x_id):
    """One step of Part 2's LSTM on character id `x_id`.

      i = σ(U_i x + W_i h + b_i)     f = σ(U_f x + W_f h + b_f)     o = σ(U_o x + W_o h + b_o)
      c̃ = tanh(U_c x + W_c h + b_c)  c = f * c + i * c̃             h = o * tanh(c)
      logits = V h + b

    Args:
      carry: (h <float>[H], c <float>[H]).
    Returns:
      ((h, c), logits <float>[V]).
    """
    projected = tuple(params[f"U_{g}"][:, x_id] + params[f"b_{g}"] for g in "ifoc")
    carry = _lstm_recur(params, carry, projected)
    return carry, params["V"] @ carry[0] + params["b"]


def _lstm_recur(params, carry, projected):
    h, c = carry
    xi, xf, xo, xc = projected
    i = jax.nn.sigmoid(xi + params["W_i"] @ h)
    f = jax.nn.sigmoid(xf + params["W_f"] @ h)
    o = jax.nn.sigmoid(xo + params["W_o"] @ h)
    c_tilde = jnp.tanh(xc + params["W_c"] @ h)
    c = f * c + i * c_tilde
    return o * jnp.tanh(c), c


def lstm_forward(params, inputs, carry0=None):
    """Runs Part 2's LSTM over one chunk from carry0 ((0, 0) by default).

    Args:
      inputs: <int>[T] character ids.
    Returns:
      (logits <float>[T, V], (h_T, c_T) each <float>[H]).
    """
    hidden_size = params["W_i"].shape[0]
    if carry0 is None:
        zeros = jnp.zeros((hidden_size,), params["W_i"].dtype)
        carry0 = (zeros, zeros)
    # U_g x_t + b_g for every step and gate, gathered before the loop.
    projected = tuple(params[f"U_{g}"][:, inputs].T + params[f"b_{g}"][None, :]
                      for g in "ifoc")                                       # 4 x (T, H)

    def body(carry, xp):
        carry = _lstm_recur(params, carry, xp)
        return carry, carry[0]

    carry_t, hs = jax.lax.scan(body, carry0, projected)                     # hs: (T, H)
    logits = hs @ params["V"].T + params["b"][None, :]                      # (T, V)
    return logits, carry_t


def lstm_loss(params, inputs, targets, faithful: bool = False):
    """Part 2's loss: as `rnn_loss`, for the LSTM of `init_lstm`, with (h_0, c_0) = 0."""
    logits, _ = lstm_forward(params, inputs)
    return _chunk_nll(logits, targets, faithful)


# ============================================================================ Parts 1-2: training


@jax.jit
def sgd_clip_update(params, grads, lr=0.01, clip=5.0):
    """The tutorial's update: p <- p - lr * clip(g, -clip, clip), elementwise, for every leaf."""
    return jax.tree.map(lambda p, g: p - lr * jnp.clip(g, -clip, clip), params, grads)


@functools.partial(jax.jit, static_argnames=("loss_fn", "faithful"))
def train_step(loss_fn, params, inputs, targets, lr=0.01, clip=5.0, faithful=False):
    """One online step on one chunk: (loss, grads) = value_and_grad(loss_fn), then SGD + clip.

    Args:
      loss_fn: `rnn_loss` or `lstm_loss` (static: pass the function itself, not a partial).
      inputs, targets: <int>[T].
    Returns:
      (params, loss <float>[]) with the loss of the chunk *before* the update.
    """
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets, faithful)
    return sgd_clip_update(params, grads, lr, clip), loss


def chunks(data, num_chunks: int, seq_length: int = SEQ_LENGTH, start_chunk: int = 0):
    """The tutorial's non-overlapping chunks of the encoded text.

    Chunk k (k = start_chunk, ..., start_chunk + num_chunks - 1) has
      inputs  = data[k*T : (k+1)*T]
      targets = data[k*T + 1 : (k+1)*T + 1]
    with T = seq_length.

    Args:
      data: <int>[N] the encoded text; needs N >= (start_chunk + num_chunks) * T + 1.
    Returns:
      (inputs, targets), each <int32>[num_chunks, T].
    """
    data = jnp.asarray(data)
    end = (start_chunk + num_chunks) * seq_length
    if data.ndim != 1 or end + 1 > data.shape[0]:
        raise ValueError(f"{num_chunks} chunks of {seq_length} from chunk {start_chunk} need a "
                         f"1-D text of at least {end + 1} ids, got shape {data.shape}")
    begin = start_chunk * seq_length
    inputs = data[begin:end].reshape(num_chunks, seq_length)
    targets = data[begin + 1:end + 1].reshape(num_chunks, seq_length)
    return inputs.astype(jnp.int32), targets.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("loss_fn", "faithful"))
def _scan_chunks(loss_fn, params, inputs, targets, lr, clip, faithful):
    def body(params, chunk):
        return train_step(loss_fn, params, chunk[0], chunk[1], lr, clip, faithful)

    return jax.lax.scan(body, params, (inputs, targets))


def train_online(loss_fn, params, data, num_chunks: int, lr=0.01, clip=5.0, *,
                 faithful: bool = False, seq_length: int = SEQ_LENGTH, start_chunk: int = 0):
    """The tutorial's online training loop as one `lax.scan` over chunks.

    For k in start_chunk .. start_chunk + num_chunks - 1: the hidden state starts at zero, the
    loss of chunk k (see `chunks`) is differentiated, and `sgd_clip_update` is applied. No Python
    runs per step; the whole loop is one compiled program (one compilation per distinct
    num_chunks).

    Args:
      loss_fn: `rnn_loss` or `lstm_loss`.
      params: the matching parameters.
      data: <int>[N] the encoded text.
    Returns:
      (params, losses <float>[num_chunks]), losses[j] being the loss of chunk start_chunk + j
      before its update.
    """
    inputs, targets = chunks(data, num_chunks, seq_length, start_chunk)
    return _scan_chunks(loss_fn, params, inputs, targets, lr, clip, faithful)


def train_tutorial(loss_fn, model: str, params, data, num_chunks: int, key, start_id: int,
                   sample_every: int = 1000, sample_length: int = 100, lr=0.01, clip=5.0, *,
                   faithful: bool = False, log=None):
    """The tutorial's whole Part 1/2 loop: online training with a sample every `sample_every`.

    Training runs in blocks of `sample_every` chunks, each one `train_online` scan; after each
    block the model samples `sample_length` characters from `start_id` (the tutorial: 'a'),
    with key fold_in(key, first chunk of the block). The result equals one `train_online` over
    all num_chunks (tests/test_tutorial.py).

    Args:
      log: optional callable(step, mean_loss, sample_ids) called after every block.
    Returns:
      (params, losses <float>[num_chunks], samples: list of (step, <int32>[sample_length])).
    """
    all_losses, samples = [], []
    for start in range(0, num_chunks, sample_every):
        count = min(sample_every, num_chunks - start)
        params, losses = train_online(loss_fn, params, data, count, lr, clip,
                                      faithful=faithful, start_chunk=start)
        ids = sample(params, model, jax.random.fold_in(key, start), start_id, sample_length)
        samples.append((start + count, ids))
        all_losses.append(losses)
        if log is not None:
            log(start + count, float(jnp.mean(losses)), ids)
    return params, jnp.concatenate(all_losses), samples


# ============================================================================ sampling


def _batched_rnn_step(params, h, x_id):
    """Part 3's module on one character id: returns (h', log-probabilities <float>[O])."""
    weight = params["i2h_weight"]
    input_size = weight.shape[1] - weight.shape[0]
    # i2h(cat(onehot(x), h)) == weight[:, x] + weight[:, I:] @ h + bias.
    h = jnp.tanh(weight[:, x_id] + weight[:, input_size:] @ h + params["i2h_bias"])
    return h, jax.nn.log_softmax(params["h2o_weight"] @ h + params["h2o_bias"])


_STEPS = {"rnn": rnn_step, "lstm": lstm_step, "batched_rnn": _batched_rnn_step}


def _zero_state(params, model):
    if model == "lstm":
        zeros = jnp.zeros((params["W_i"].shape[0],), params["W_i"].dtype)
        return (zeros, zeros)
    weight = params["W"] if model == "rnn" else params["i2h_weight"]
    return jnp.zeros((weight.shape[0],), weight.dtype)


@functools.partial(jax.jit, static_argnames=("model", "length", "greedy"))
def sample(params, model: str, key, start_id, length: int = 100, greedy: bool = False):
    """Samples `length` characters, starting from character `start_id` and a zero state.

    Step t feeds the previous character (start_id first), and draws the next one from
    softmax(logits) (`jax.random.categorical` with key split(key, length)[t]) or, with
    greedy=True, takes the argmax.

    Args:
      model: "rnn" (Part 1), "lstm" (Part 2) or "batched_rnn" (Part 3).
    Returns:
      <int32>[length] the generated ids, not including start_id.
    """
    if model not in _STEPS:
        raise ValueError(f"model must be one of {sorted(_STEPS)}, got {model!r}")
    step = _STEPS[model]

    def body(carry, step_key):
        state, x_id = carry
        state, logits = step(params, state, x_id)
        if greedy:
            next_id = jnp.argmax(logits)
        else:
            next_id = jax.random.categorical(step_key, logits)
        next_id = next_id.astype(jnp.int32)
        return (state, next_id), next_id

    start = jnp.asarray(start_id, jnp.int32)
    _, ids = jax.lax.scan(body, (_zero_state(params, model), start),
                          jax.random.split(key, length))
    return ids


# ============================================================================ the training CLI


@dataclasses.dataclass(frozen=True)
class TutorialLM:
    """Part 1's RNN or Part 2's LSTM with the interface of `jaxrnn.model.CharLM`, so that
    `jaxrnn.train` trains them (presets "tutorial-rnn" and "tutorial-lstm").

      init(key) -> params                         `init_rnn` / `init_lstm`
      zero_state(batch_size) -> state             <float>[B, H] (LSTM: a tuple (h, c))
      apply(params, state, tokens, key=None) -> (logits <float>[B, T, V], state)
      step(params, state, tokens[B]) -> (state, logits <float>[B, V])

    Each row of the batch runs `rnn_forward` / `lstm_forward` (vmapped); there is no dropout,
    so `key` is ignored. The loss (and `faithful_log_softmax`) is the trainer's business.
    """

    kind: str                       # "rnn" | "lstm"
    vocab_size: int
    hidden_size: int = 100
    faithful_log_softmax: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in ("rnn", "lstm"):
            raise ValueError(f"kind must be 'rnn' or 'lstm', got {self.kind!r}")

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


# ============================================================================ Part 3: batched RNN


def get_batch(encoded, step, seq_length: int, batch_size: int, vocab_size: int,
              dtype=jnp.float32):
    """Part 3's batch `step`: exactly what `torch_baselines.tutorial.get_batch` returns.

    Layout. The text is cut into W = (N - 1) // T consecutive, non-overlapping windows of
    T = seq_length characters; window w has inputs encoded[w*T : (w+1)*T] and targets shifted
    by one, encoded[w*T + 1 : (w+1)*T + 1] (the same chunks as Part 1). An epoch is
    S = W // B steps; step s uses windows (s mod S)*B + b for b = 0 .. B-1 as batch columns
    (the leftover W - S*B windows are not used). So

      inputs[t, b]  = encoded[((s mod S)*B + b)*T + t]
      targets[t, b] = encoded[((s mod S)*B + b)*T + t + 1]

    `step` may be traced (this function runs inside `train_batched`'s scan).

    Args:
      encoded: <int>[N] the encoded text, N >= B*T + 1.
      step: int or <int>[] the step number.
    Returns:
      (x_onehot <dtype>[T, B, vocab_size], targets <int32>[T, B]).
    """
    encoded = jnp.asarray(encoded)
    steps_per_epoch = _steps_per_epoch(encoded.shape[0], seq_length, batch_size)
    first_window = (jnp.asarray(step) % steps_per_epoch) * batch_size
    starts = (first_window + jnp.arange(batch_size)) * seq_length            # (B,)
    positions = jnp.arange(seq_length)[:, None] + starts[None, :]            # (T, B)
    inputs = encoded[positions]
    targets = encoded[positions + 1].astype(jnp.int32)
    return jax.nn.one_hot(inputs, vocab_size, dtype=dtype), targets


def _steps_per_epoch(num_ids: int, seq_length: int, batch_size: int) -> int:
    steps = ((num_ids - 1) // seq_length) // batch_size
    if steps < 1:
        raise ValueError(f"a batch of {batch_size} windows of {seq_length} needs a text of at "
                         f"least {batch_size * seq_length + 1} ids, got {num_ids}")
    return steps


def batched_rnn_forward(params, x_onehot, h0=None):
    """Part 3's module over T steps:

      hidden = tanh(i2h(cat(input_t, hidden)))     output_t = log_softmax(h2o(hidden))

    Args:
      x_onehot: <float>[T, B, I].
      h0: optional <float>[B, H]; zero by default (`initHidden(B)`).
    Returns:
      (log_probs <float>[T, B, O], h_T <float>[B, H]).
    """
    steps, batch_size, input_size = x_onehot.shape
    weight, bias = params["i2h_weight"], params["i2h_bias"]
    hidden_size = weight.shape[0]
    if weight.shape[1] != input_size + hidden_size:
        raise ValueError(f"i2h_weight must be [H, I+H] = [{hidden_size}, "
                         f"{input_size + hidden_size}], got {weight.shape}")
    h0 = jnp.zeros((batch_size, hidden_size), x_onehot.dtype) if h0 is None else h0
    # cat((x, h)) @ weight.T == x @ weight[:, :I].T + h @ weight[:, I:].T; the input half of
    # every step is one GEMM before the loop.
    projected = x_onehot @ weight[:, :input_size].T + bias[None, None, :]     # (T, B, H)
    w_hh = weight[:, input_size:]

    def body(h, xp):
        h = jnp.tanh(xp + matmul_transposed(h, w_hh))
        return h, h

    h_last, hs = jax.lax.scan(body, h0, projected)                             # (T, B, H)
    logits = hs @ params["h2o_weight"].T + params["h2o_bias"][None, None, :]   # (T, B, O)
    return jax.nn.log_softmax(logits, axis=-1), h_last


def batched_rnn_loss(params, x_onehot, targets):
    """Part 3's loss: sum over the T steps of NLLLoss (the mean over the batch) of that step.

    Args:
      x_onehot: <float>[T, B, I].
      targets: <int>[T, B].
    Returns:
      <float>[] sum_t mean_b -log p(targets[t, b]).
    """
    logp, _ = batched_rnn_forward(params, x_onehot)
    picked = jnp.take_along_axis(logp, targets[:, :, None], axis=2)[:, :, 0]   # (T, B)
    return -jnp.sum(jnp.mean(picked, axis=1))


@functools.partial(jax.jit, static_argnames=("num_steps", "seq_length", "batch_size"))
def train_batched(params, encoded, num_steps: int, seq_length: int, batch_size: int,
                  lr=0.001, start_step=0):
    """Part 3's training loop as one `lax.scan` over steps: plain SGD (no clipping).

    Step s (s = start_step .. start_step + num_steps - 1) takes `get_batch(encoded, s, ...)`,
    starts from a zero hidden state, and applies p <- p - lr * grad(batched_rnn_loss).

    Args:
      params: from `init_batched_rnn` (the vocabulary size is the input size I).
      encoded: <int>[N] the encoded text.
    Returns:
      (params, losses <float>[num_steps]), each loss taken before its step's update.
    """
    weight = params["i2h_weight"]
    vocab_size = weight.shape[1] - weight.shape[0]

    def body(params, step):
        x, y = get_batch(encoded, step, seq_length, batch_size, vocab_size, weight.dtype)
        loss, grads = jax.value_and_grad(batched_rnn_loss)(params, x, y)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

    return jax.lax.scan(body, params, start_step + jnp.arange(num_steps))

