"""The tutorial port (jaxrnn.tutorial) against independent references.

Parts 1-2 (RNN, LSTM): a plain-NumPy float64 forward written from the equations with a
hand-derived BPTT backward; the backward is checked by central finite differences, then JAX's
loss and gradients are checked against it. Part 3 (batched RNN): the torch module of
torch_baselines.tutorial and the JAX port train side by side from the same weights on the same
batches. Part 1's autograd original (torch_baselines.autograd_tutorial) gives the same loss.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import tutorial as T

VOCAB, HIDDEN, STEPS = 7, 5, T.SEQ_LENGTH


# ============================================================================ NumPy reference


def np_softmax(o):
    e = np.exp(o - np.max(o))
    return e / np.sum(e)


def _softmax_nll_backward(p, y, eps):
    """d(-log(p_y + eps))/do for p = softmax(o): (p_y / (p_y + eps)) * (p - onehot(y))."""
    do = p.copy()
    do[y] -= 1.0
    return do * (p[y] / (p[y] + eps))


def np_rnn_loss_and_grads(params, inputs, targets, eps=0.0, with_grads=True):
    """Part 1 forward as a Python loop, and its BPTT backward by hand."""
    U, W, V, b_h, b_o = (params[k] for k in T.RNN_PARAM_NAMES)
    hs = {-1: np.zeros(W.shape[0])}
    ps = {}
    loss = 0.0
    for t, x in enumerate(inputs):
        hs[t] = np.tanh(U[:, x] + W @ hs[t - 1] + b_h)
        ps[t] = np_softmax(V @ hs[t] + b_o)
        loss -= np.log(ps[t][targets[t]] + eps)
    if not with_grads:
        return loss, None
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dh_next = np.zeros(W.shape[0])
    for t in reversed(range(len(inputs))):
        do = _softmax_nll_backward(ps[t], targets[t], eps)
        grads["V"] += np.outer(do, hs[t])
        grads["b_o"] += do
        da = (V.T @ do + dh_next) * (1.0 - hs[t] ** 2)
        grads["U"][:, inputs[t]] += da
        grads["W"] += np.outer(da, hs[t - 1])
        grads["b_h"] += da
        dh_next = W.T @ da
    return loss, grads


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_lstm_loss_and_grads(params, inputs, targets, eps=0.0, with_grads=True):
    """Part 2 forward as a Python loop, and its BPTT backward by hand."""
    P = params
    hidden = P["W_i"].shape[0]
    h, c = {-1: np.zeros(hidden)}, {-1: np.zeros(hidden)}
    gates, ps = {}, {}
    loss = 0.0
    for t, x in enumerate(inputs):
        z = {g: P[f"U_{g}"][:, x] + P[f"W_{g}"] @ h[t - 1] + P[f"b_{g}"] for g in "ifoc"}
        i, f, o = np_sigmoid(z["i"]), np_sigmoid(z["f"]), np_sigmoid(z["o"])
        c_tilde = np.tanh(z["c"])
        c[t] = f * c[t - 1] + i * c_tilde
        h[t] = o * np.tanh(c[t])
        gates[t] = (i, f, o, c_tilde)
        ps[t] = np_softmax(P["V"] @ h[t] + P["b"])
        loss -= np.log(ps[t][targets[t]] + eps)
    if not with_grads:
        return loss, None
    grads = {k: np.zeros_like(v) for k, v in P.items()}
    dh_next, dc_next = np.zeros(hidden), np.zeros(hidden)
    for t in reversed(range(len(inputs))):
        i, f, o, c_tilde = gates[t]
        dlogits = _softmax_nll_backward(ps[t], targets[t], eps)
        grads["V"] += np.outer(dlogits, h[t])
        grads["b"] += dlogits
        dh = P["V"].T @ dlogits + dh_next
        tanh_c = np.tanh(c[t])
        dc = dh * o * (1.0 - tanh_c ** 2) + dc_next
        dz = {"i": dc * c_tilde * i * (1.0 - i),
              "f": dc * c[t - 1] * f * (1.0 - f),
              "o": dh * tanh_c * o * (1.0 - o),
              "c": dc * i * (1.0 - c_tilde ** 2)}
        dh_next = np.zeros(hidden)
        for g in "ifoc":
            grads[f"U_{g}"][:, inputs[t]] += dz[g]
            grads[f"W_{g}"] += np.outer(dz[g], h[t - 1])
            grads[f"b_{g}"] += dz[g]
            dh_next += P[f"W_{g}"].T @ dz[g]
        dc_next = dc * f
    return loss, grads


def finite_difference_grads(loss_fn, params, step):
    """Five-point central differences of loss_fn(params), every element of every parameter.

    f'(x) ~ (-f(x+2s) + 8 f(x+s) - 8 f(x-s) + f(x-2s)) / 12s has O(s^4) truncation error, so a
    step large enough to keep float64 rounding small (~1e-16 * loss / s) is still accurate.
    """
    grads = {}
    for name, value in params.items():
        grad = np.zeros_like(value)
        shifted = {k: v.copy() for k, v in params.items()}
        for index in np.ndindex(value.shape):
            losses = []
            for k in (2, 1, -1, -2):
                shifted[name][index] = value[index] + k * step
                losses.append(loss_fn(shifted))
            shifted[name][index] = value[index]
            grad[index] = (-losses[0] + 8 * losses[1] - 8 * losses[2] + losses[3]) / (12 * step)
        grads[name] = grad
    return grads


def np_params(names_shapes, scale, seed):
    rng = np.random.RandomState(seed)
    return {k: rng.randn(*shape) * scale for k, shape in names_shapes.items()}


def rnn_shapes(vocab=VOCAB, hidden=HIDDEN):
    return {"U": (hidden, vocab), "W": (hidden, hidden), "V": (vocab, hidden),
            "b_h": (hidden,), "b_o": (vocab,)}


def lstm_shapes(vocab=VOCAB, hidden=HIDDEN):
    shapes = {}
    for g in "ifoc":
        shapes.update({f"U_{g}": (hidden, vocab), f"W_{g}": (hidden, hidden), f"b_{g}": (hidden,)})
    shapes.update(V=(vocab, hidden), b=(vocab,))
    return shapes


def chunk(seed=0, vocab=VOCAB, steps=STEPS):
    ids = np.random.RandomState(seed).randint(0, vocab, steps + 1)
    return ids[:-1], ids[1:]


MODELS = {
    "rnn": (rnn_shapes, np_rnn_loss_and_grads, T.rnn_loss),
    "lstm": (lstm_shapes, np_lstm_loss_and_grads, T.lstm_loss),
}
# scale 0.01 is the tutorial's init; 0.5 puts the cells in their nonlinear range.
CASES = [(m, s, f) for m in MODELS for s in (0.01, 0.5) for f in (False, True)]
# The finite-difference sweep (4 losses per parameter element) checks the hand-written backward,
# whose formula does not depend on the scale, in two cases per model. Not at the tutorial's
# 0.01: there some LSTM gradients (W_f) have norm ~1e-6, below what differences of a loss of ~50
# resolve in float64 (rounding ~1e-16 * 50 / step); the JAX-vs-NumPy test covers 0.01.
FD_CASES = [("rnn", 0.1, True, 1e-3), ("rnn", 0.5, False, 1e-4),
            ("lstm", 0.1, True, 1e-3), ("lstm", 0.5, False, 1e-4)]


@functools.cache
def value_and_grad(loss_fn):
    """A jitted value_and_grad(loss_fn)(params, inputs, targets, faithful), one per loss: the
    tests share its compilations (same shapes), which keeps the file fast."""
    return jax.jit(jax.value_and_grad(loss_fn), static_argnums=3)


# ============================================================================ Parts 1-2


def test_init_names_shapes_and_scale():
    rnn = T.init_rnn(jax.random.key(0), 40, 30)
    assert set(rnn) == set(T.RNN_PARAM_NAMES)
    assert {k: v.shape for k, v in rnn.items()} == rnn_shapes(40, 30)
    lstm = T.init_lstm(jax.random.key(0), 40, 30)
    assert set(lstm) == set(T.LSTM_PARAM_NAMES)
    assert {k: v.shape for k, v in lstm.items()} == lstm_shapes(40, 30)
    for params in (rnn, lstm):
        values = np.concatenate([np.ravel(v) for v in params.values()])
        assert values.dtype == np.float32
        assert 0.009 < values.std() < 0.011 and abs(values.mean()) < 0.001
    batched = T.init_batched_rnn(jax.random.key(0), 40, 30, 20)
    assert {k: v.shape for k, v in batched.items()} == {
        "i2h_weight": (30, 70), "i2h_bias": (30,), "h2o_weight": (20, 30), "h2o_bias": (20,)}
    assert float(jnp.max(jnp.abs(batched["i2h_weight"]))) <= 1 / 70 ** 0.5


@pytest.mark.parametrize("model,scale,faithful,step", FD_CASES)
def test_numpy_backward_matches_finite_differences(model, scale, faithful, step):
    shapes, loss_and_grads, _ = MODELS[model]
    params = np_params(shapes(), scale, seed=1)
    inputs, targets = chunk(seed=2)
    eps = T.FAITHFUL_EPS if faithful else 0.0
    _, grads = loss_and_grads(params, inputs, targets, eps)
    numeric = finite_difference_grads(
        lambda p: loss_and_grads(p, inputs, targets, eps, with_grads=False)[0], params, step)
    for name in params:
        error = np.linalg.norm(numeric[name] - grads[name]) / np.linalg.norm(grads[name])
        assert error < 1e-6, (name, error)


@pytest.mark.parametrize("model,scale,faithful", CASES)
def test_loss_and_grads_match_numpy(x64, model, scale, faithful):
    shapes, loss_and_grads, loss_fn = MODELS[model]
    params = np_params(shapes(), scale, seed=3)
    inputs, targets = chunk(seed=4)
    eps = T.FAITHFUL_EPS if faithful else 0.0
    want_loss, want_grads = loss_and_grads(params, inputs, targets, eps)
    loss, grads = value_and_grad(loss_fn)(
        {k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(inputs),
        jnp.asarray(targets), faithful)
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12, atol=1e-10)
    for name in params:
        np.testing.assert_allclose(np.asarray(grads[name]), want_grads[name], rtol=1e-10,
                                   atol=1e-12, err_msg=name)


def test_faithful_loss_differs_from_exact_by_the_epsilon(x64):
    params = T.init_rnn(jax.random.key(0), VOCAB, HIDDEN, jnp.float64)
    inputs, targets = map(jnp.asarray, chunk())
    exact, _ = value_and_grad(T.rnn_loss)(params, inputs, targets, False)
    faithful, _ = value_and_grad(T.rnn_loss)(params, inputs, targets, True)
    # p ~ 1/V everywhere at init: each of T terms shrinks by about log(1 + V * eps).
    np.testing.assert_allclose(float(exact - faithful), STEPS * VOCAB * 1e-6, rtol=1e-2)


def test_autograd_original_matches_jax_port(x64):
    pytest.importorskip("autograd")
    from torch_baselines import autograd_tutorial as original

    params = original.init_params(VOCAB, HIDDEN, seed=5)
    for key in params:  # a larger scale than the tutorial's, so the test sees the nonlinearity
        params[key] = params[key] * 30.0
    inputs, targets = chunk(seed=6)
    jax_params = {k: jnp.asarray(v) for k, v in params.items()}
    for eps, faithful in ((original.EPS, True), (0.0, False)):
        want = original.loss(params, list(inputs), list(targets), eps)
        got, _ = value_and_grad(T.rnn_loss)(jax_params, jnp.asarray(inputs),
                                            jnp.asarray(targets), faithful)
        np.testing.assert_allclose(float(got), want, rtol=1e-12, atol=1e-10)
    # One training step (autograd.grad, clip, SGD) equals the JAX step.
    stepped = original.train_step(params, list(inputs), list(targets))
    jax_stepped, _ = T.train_step(T.rnn_loss, jax_params, jnp.asarray(inputs),
                                  jnp.asarray(targets), 0.01, 5.0, True)
    for k in params:
        np.testing.assert_allclose(np.asarray(jax_stepped[k]), stepped[k], rtol=0, atol=1e-12)


def test_sgd_clip_update_clips_elementwise():
    params = {"a": jnp.array([1.0, 1.0, 1.0]), "b": jnp.array([[2.0]])}
    grads = {"a": jnp.array([-100.0, 0.5, 7.0]), "b": jnp.array([[-3.0]])}
    new = T.sgd_clip_update(params, grads, 0.1, 5.0)
    np.testing.assert_allclose(new["a"], [1.5, 0.95, 0.5], rtol=1e-6)
    np.testing.assert_allclose(new["b"], [[2.3]], rtol=1e-6)


def test_chunks_are_the_tutorials():
    data = jnp.arange(103)
    inputs, targets = T.chunks(data, 4)
    np.testing.assert_array_equal(inputs, np.arange(100).reshape(4, 25))
    np.testing.assert_array_equal(targets, np.arange(1, 101).reshape(4, 25))
    inputs, targets = T.chunks(data, 2, start_chunk=2)
    np.testing.assert_array_equal(inputs[0], np.arange(50, 75))
    with pytest.raises(ValueError, match="at least 101"):
        T.chunks(jnp.arange(100), 4)


def encode(text):
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return chars, np.array([index[c] for c in text], dtype=np.int32)


def test_train_online_lowers_the_loss(small_text):
    chars, data = encode(small_text)
    num_chunks = (len(data) - 1) // T.SEQ_LENGTH
    params = T.init_rnn(jax.random.key(0), len(chars), 64)
    losses = []
    for _ in range(3):  # three passes over the text
        params, epoch_losses = T.train_online(T.rnn_loss, params, data, num_chunks)
        losses.append(np.asarray(epoch_losses))
    losses = np.concatenate(losses)
    assert np.all(np.isfinite(losses))
    assert losses[:20].mean() > 1.5 * losses[-20:].mean(), (losses[:20].mean(),
                                                            losses[-20:].mean())


@pytest.mark.parametrize("model", ["rnn", "lstm"])
def test_train_online_scan_equals_python_loop(x64, small_text, model):
    chars, data = encode(small_text)
    init, loss_fn = (T.init_rnn, T.rnn_loss) if model == "rnn" else (T.init_lstm, T.lstm_loss)
    params = init(jax.random.key(1), len(chars), 16, jnp.float64, scale=0.3)
    scanned, scan_losses = T.train_online(loss_fn, params, data, 12, faithful=True)
    inputs, targets = T.chunks(data, 12)
    looped, loop_losses = params, []
    for k in range(12):
        looped, loss = T.train_step(loss_fn, looped, inputs[k], targets[k], 0.01, 5.0, True)
        loop_losses.append(float(loss))
    np.testing.assert_array_equal(np.asarray(scan_losses), np.array(loop_losses))
    for k in params:
        np.testing.assert_array_equal(np.asarray(scanned[k]), np.asarray(looped[k]), err_msg=k)


def test_train_tutorial_is_train_online_in_blocks(x64, small_text):
    chars, data = encode(small_text)
    params = T.init_rnn(jax.random.key(2), len(chars), 16, jnp.float64, scale=0.3)
    logged = []
    trained, losses, samples = T.train_tutorial(
        T.rnn_loss, "rnn", params, data, 12, jax.random.key(3), chars.index("a"),
        sample_every=5, sample_length=30, faithful=True, log=lambda *a: logged.append(a))
    whole, whole_losses = T.train_online(T.rnn_loss, params, data, 12, faithful=True)
    np.testing.assert_allclose(np.asarray(losses), np.asarray(whole_losses), rtol=1e-13)
    for k in params:
        np.testing.assert_allclose(np.asarray(trained[k]), np.asarray(whole[k]), rtol=1e-13)
    assert [s for s, _ in samples] == [5, 10, 12] == [a[0] for a in logged]
    assert all(ids.shape == (30,) for _, ids in samples)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_tutorial_lm_is_the_port_batched(x64, kind):
    model = T.TutorialLM(kind, VOCAB, HIDDEN, dtype="float64")
    params = model.init(jax.random.key(0))
    params = {k: 50.0 * v for k, v in params.items()}  # out of the nearly linear range
    forward = T.rnn_forward if kind == "rnn" else T.lstm_forward
    loss_fn = T.rnn_loss if kind == "rnn" else T.lstm_loss
    chunks = [chunk(seed) for seed in (10, 11)]
    tokens = jnp.asarray(np.stack([c[0] for c in chunks]))            # (2, T)
    logits, state = model.apply(params, model.zero_state(2), tokens)   # (2, T, V)
    assert logits.shape == (2, STEPS, VOCAB)
    for b, (inputs, targets) in enumerate(chunks):
        want_logits, want_state = forward(params, jnp.asarray(inputs))
        np.testing.assert_allclose(logits[b], want_logits, rtol=1e-13, atol=1e-13)
        jax.tree.map(lambda got, want: np.testing.assert_allclose(got[b], want, rtol=1e-13),
                     state, want_state)
        nll = -jnp.sum(jnp.take_along_axis(T.log_probs(logits[b]), jnp.asarray(targets)[:, None],
                                           axis=1))
        want_loss, _ = value_and_grad(loss_fn)(params, jnp.asarray(inputs),
                                               jnp.asarray(targets), False)
        np.testing.assert_allclose(float(nll), float(want_loss), rtol=1e-13)
    # Stepping one character at a time gives the same logits and final state.
    stepped_state = model.zero_state(2)
    for t in range(STEPS):
        stepped_state, step_logits = model.step(params, stepped_state, tokens[:, t])
        np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-12, atol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), stepped_state, state)


# ============================================================================ sampling


def test_sample_is_reproducible():
    params = T.init_lstm(jax.random.key(0), 11, 8, scale=0.5)
    first = T.sample(params, "lstm", jax.random.key(7), 3, 50)
    again = T.sample(params, "lstm", jax.random.key(7), 3, 50)
    other = T.sample(params, "lstm", jax.random.key(8), 3, 50)
    assert first.shape == (50,) and first.dtype == jnp.int32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert 0 <= int(first.min()) and int(first.max()) < 11


def test_sample_follows_a_deterministic_model():
    # h = tanh(10 * onehot(x)), logits = 100 * h rolled by one: the next character is x + 1
    # with probability ~1, so even random sampling gives an exact sequence.
    vocab = 6
    params = {"U": 10.0 * jnp.eye(vocab), "W": jnp.zeros((vocab, vocab)),
              "V": 100.0 * jnp.roll(jnp.eye(vocab), 1, axis=0),
              "b_h": jnp.zeros(vocab), "b_o": jnp.zeros(vocab)}
    ids = T.sample(params, "rnn", jax.random.key(0), 2, 9)
    np.testing.assert_array_equal(ids, [(2 + k) % vocab for k in range(1, 10)])


def np_greedy(step, state, params, start_id, length):
    ids, x = [], start_id
    for _ in range(length):
        state, logits = step(params, state, x)
        x = int(np.argmax(logits))
        ids.append(x)
    return ids


def np_rnn_step(P, h, x):
    h = np.tanh(P["U"][:, x] + P["W"] @ h + P["b_h"])
    return h, P["V"] @ h + P["b_o"]


def np_lstm_step(P, carry, x):
    h, c = carry
    z = {g: P[f"U_{g}"][:, x] + P[f"W_{g}"] @ h + P[f"b_{g}"] for g in "ifoc"}
    c = np_sigmoid(z["f"]) * c + np_sigmoid(z["i"]) * np.tanh(z["c"])
    h = np_sigmoid(z["o"]) * np.tanh(c)
    return (h, c), P["V"] @ h + P["b"]


# Scales and seeds picked so the greedy path visits many characters, not a short cycle.
@pytest.mark.parametrize("model,scale,seed", [("rnn", 0.8, 5), ("lstm", 3.0, 3)])
def test_greedy_sample_matches_a_numpy_loop(x64, model, scale, seed):
    shapes = rnn_shapes(13, 9) if model == "rnn" else lstm_shapes(13, 9)
    params = np_params(shapes, scale, seed)
    zero = np.zeros(9)
    state, step = (zero, np_rnn_step) if model == "rnn" else ((zero, zero), np_lstm_step)
    want = np_greedy(step, state, params, 4, 60)
    got = T.sample({k: jnp.asarray(v) for k, v in params.items()}, model, jax.random.key(0), 4,
                   60, greedy=True)
    assert got.tolist() == want
    assert len(set(want[30:])) >= 4  # not a fixed point or a short cycle


# ============================================================================ Part 3


try:
    import torch

    from torch_baselines import tutorial as torch_tutorial
except ImportError:  # Parts 1-2 need no torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@pytest.fixture(autouse=True)
def _torch_one_thread():
    """One torch thread: the tutorial's tiny per-step ops run ~5x faster than with threads
    that contend for this machine's 2 cores (other test files may run beside this one)."""
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@needs_torch
def test_get_batch_matches_torch(small_text):
    chars, data = encode(small_text)
    seq_length, batch_size = 25, 4
    steps_per_epoch = ((len(data) - 1) // seq_length) // batch_size
    for step in (0, 1, 7, steps_per_epoch - 1, steps_per_epoch, 3 * steps_per_epoch + 5):
        x, y = T.get_batch(data, step, seq_length, batch_size, len(chars))
        tx, ty = torch_tutorial.get_batch(data, step, seq_length, batch_size, len(chars))
        assert x.shape == (seq_length, batch_size, len(chars)) and y.shape == (25, 4)
        np.testing.assert_array_equal(np.asarray(x), tx.numpy())
        np.testing.assert_array_equal(np.asarray(y), ty.numpy())
    # The layout, spelled out: column b of step s is window (s mod S) * B + b.
    x, y = T.get_batch(jnp.arange(100), 2, 3, 4, 100)   # 33 windows, S = 8
    np.testing.assert_array_equal(np.argmax(np.asarray(x), -1)[:, 1], [27, 28, 29])
    np.testing.assert_array_equal(np.asarray(y)[:, 1], [28, 29, 30])
    x, _ = T.get_batch(jnp.arange(100), 8, 3, 4, 100)
    np.testing.assert_array_equal(np.argmax(np.asarray(x), -1)[0], [0, 3, 6, 9])


@needs_torch
def test_vocab_and_encode_are_sorted():
    vocab = torch_tutorial.build_vocab("hello world")
    assert vocab == [" ", "d", "e", "h", "l", "o", "r", "w"]
    np.testing.assert_array_equal(torch_tutorial.encode("hold", vocab), [3, 5, 4, 1])


def _torch_rnn(params, dtype):
    weight = np.asarray(params["i2h_weight"])
    hidden, total = weight.shape
    output = np.asarray(params["h2o_weight"]).shape[0]
    module = torch_tutorial.RNN(total - hidden, hidden, output).to(dtype)
    return torch_tutorial.load_numpy_params(module, params)


def _train_side_by_side(small_text, dtype, torch_dtype, num_steps=100):
    chars, data = encode(small_text)
    params = T.init_batched_rnn(jax.random.key(4), len(chars), 16, len(chars), dtype)
    module = _torch_rnn(params, torch_dtype)
    torch_losses = torch_tutorial.train(module, data, num_steps, 25, 4, lr=0.001)
    trained, losses = T.train_batched(params, data, num_steps, 25, 4, lr=0.001)
    return torch_losses, np.asarray(losses), torch_tutorial.params_to_numpy(module), trained


@needs_torch
def test_batched_rnn_trains_like_torch_float64(x64, small_text):
    torch_losses, losses, torch_params, params = _train_side_by_side(
        small_text, jnp.float64, torch.float64)
    assert losses.dtype == np.float64
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-10)
    for k, v in torch_params.items():
        np.testing.assert_allclose(np.asarray(params[k]), v, rtol=0, atol=1e-10, err_msg=k)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


@needs_torch
def test_batched_rnn_trains_like_torch_float32(small_text):
    torch_losses, losses, torch_params, params = _train_side_by_side(
        small_text, jnp.float32, torch.float32)
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-4)
    for k, v in torch_params.items():
        np.testing.assert_allclose(np.asarray(params[k]), v, rtol=0, atol=1e-4, err_msg=k)


@needs_torch
def test_batched_rnn_loss_and_grads_match_torch(x64, small_text):
    chars, data = encode(small_text)
    params = T.init_batched_rnn(jax.random.key(5), len(chars), 12, len(chars), jnp.float64)
    module = _torch_rnn(params, torch.float64)
    x, y = T.get_batch(data, 3, 25, 6, len(chars), jnp.float64)
    loss, grads = jax.value_and_grad(T.batched_rnn_loss)(params, x, y)
    tx, ty = torch_tutorial.get_batch(data, 3, 25, 6, len(chars), dtype=torch.float64)
    torch_loss = torch_tutorial.batch_loss(module, tx, ty)
    torch_loss.backward()
    np.testing.assert_allclose(float(loss), torch_loss.item(), rtol=1e-12)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(np.asarray(grads[name.replace(".", "_")]), p.grad.numpy(),
                                   rtol=1e-10, atol=1e-12, err_msg=name)


@needs_torch
def test_batched_greedy_sample_matches_torch(x64):
    params = T.init_batched_rnn(jax.random.key(1), 10, 8, 10, jnp.float64)
    params = {k: 5.0 * v for k, v in params.items()}  # sharper, so the path is not a cycle
    module = _torch_rnn(params, torch.float64)
    want = torch_tutorial.sample_ids(module, 2, 40, greedy=True)
    got = T.sample(params, "batched_rnn", jax.random.key(0), 2, 40, greedy=True)
    assert got.tolist() == want
    assert len(set(want[20:])) >= 4


@needs_torch
def test_torch_sampler_is_reproducible_and_returns_characters():
    chars = list("abcdefg")
    module = torch_tutorial.RNN(7, 8, 7)
    text = torch_tutorial.sample(module, chars, "a", 50,
                                 generator=torch.Generator().manual_seed(0))
    again = torch_tutorial.sample(module, chars, "a", 50,
                                  generator=torch.Generator().manual_seed(0))
    assert len(text) == 50 and set(text) <= set(chars) and text == again
