"""A custom cell (examples/peephole_lstm.py) gets layers, directions, lengths and dropout.

The reference is an independent plain-numpy float64 loop of the peephole equations, one example
and one time step at a time; jaxrnn only supplies the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from examples.peephole_lstm import PEEPHOLE_LSTM


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_peephole_lstm(params, xs, lengths, h0, c0, bidirectional):
    """The peephole LSTM network in numpy, float64.

    Args:
      params: list over layers of lists over directions of dicts of numpy arrays.
      xs: [T, B, I]; lengths: [B]; h0, c0: [L*D, B, H].
    Returns:
      (output [T, B, D*H] zero past each length, h_n [L*D, B, H], c_n [L*D, B, H]).
    """
    steps, batch = xs.shape[:2]
    num_directions = 2 if bidirectional else 1
    hidden_size = h0.shape[-1]
    h_n, c_n = np.zeros_like(h0), np.zeros_like(c0)
    layer_input = xs
    for layer, directions in enumerate(params):
        layer_output = np.zeros((steps, batch, num_directions * hidden_size))
        for d, p in enumerate(directions):
            index = layer * num_directions + d
            bias = p.get("bias_ih", 0.0) + p.get("bias_hh", 0.0)
            for b in range(batch):
                h, c = h0[index, b], c0[index, b]
                times = range(lengths[b]) if d == 0 else range(lengths[b] - 1, -1, -1)
                for t in times:
                    z = p["weight_ih"] @ layer_input[t, b] + p["weight_hh"] @ h + bias
                    z_i, z_f, z_g, z_o = np.split(z, 4)
                    i = _sigmoid(z_i + p["peephole_i"] * c)
                    f = _sigmoid(z_f + p["peephole_f"] * c)
                    g = np.tanh(z_g)
                    c = f * c + i * g
                    o = _sigmoid(z_o + p["peephole_o"] * c)
                    h = o * np.tanh(c)
                    layer_output[t, b, d * hidden_size:(d + 1) * hidden_size] = h
                h_n[index, b], c_n[index, b] = h, c
        layer_input = layer_output
    return layer_input, h_n, c_n


def _random_params(rnn, seed, dtype=np.float32):
    """numpy params of the cell's structure (so the reference never calls jax)."""
    shapes = jax.eval_shape(lambda: rnn.init(jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.uniform(-0.6, 0.6, s.shape).astype(dtype), shapes)


@pytest.mark.parametrize("num_layers,bidirectional,bias,batch_first", [
    (2, True, True, False), (1, False, False, True)])
def test_matches_numpy_loop(num_layers, bidirectional, bias, batch_first, x64):
    rnn = jaxrnn.Recurrent(PEEPHOLE_LSTM, input_size=3, hidden_size=5, num_layers=num_layers,
                           bias=bias, bidirectional=bidirectional, batch_first=batch_first)
    params = _random_params(rnn, seed=0, dtype=np.float64)
    assert set(params[0][0]) == ({"weight_ih", "weight_hh", "peephole_i", "peephole_f",
                                  "peephole_o"} | ({"bias_ih", "bias_hh"} if bias else set()))
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((7, 4, 3))  # [T, B, I]
    lengths = np.array([5, 7, 1, 3])
    state_shape = (num_layers * rnn.num_directions, 4, 5)
    h0, c0 = rng.standard_normal(state_shape), rng.standard_normal(state_shape)

    x_in = xs.swapaxes(0, 1) if batch_first else xs
    output, (h_n, c_n) = jax.jit(rnn.apply)(params, x_in, (h0, c0), lengths)
    want_output, want_h_n, want_c_n = numpy_peephole_lstm(params, xs, lengths, h0, c0,
                                                          bidirectional)
    if batch_first:
        want_output = want_output.swapaxes(0, 1)
    assert output.dtype == jnp.float64
    np.testing.assert_allclose(output, want_output, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n, want_h_n, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_n, want_c_n, rtol=0, atol=1e-12)

    # Without lengths: every sequence runs the full T.
    output, (h_n, c_n) = jax.jit(rnn.apply)(params, x_in, (h0, c0))
    want_output, want_h_n, want_c_n = numpy_peephole_lstm(params, xs, np.full(4, 7), h0, c0,
                                                          bidirectional)
    np.testing.assert_allclose(h_n, want_h_n, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_n, want_c_n, rtol=0, atol=1e-12)


def test_peepholes_matter():
    """Zero peepholes give the built-in LSTM; non-zero ones change the result."""
    rnn = jaxrnn.Recurrent(PEEPHOLE_LSTM, input_size=3, hidden_size=5)
    lstm = jaxrnn.Recurrent("lstm", input_size=3, hidden_size=5)
    params = _random_params(rnn, seed=2)
    x = np.random.default_rng(3).standard_normal((6, 2, 3)).astype(np.float32)
    plain = [{k: v for k, v in params[0][0].items() if not k.startswith("peephole")}]
    zero_peepholes = [[dict(params[0][0], peephole_i=np.zeros(5, np.float32),
                            peephole_f=np.zeros(5, np.float32),
                            peephole_o=np.zeros(5, np.float32))]]
    want = jax.jit(lstm.apply)([plain], x)[0]
    apply = jax.jit(rnn.apply)
    np.testing.assert_allclose(apply(zero_peepholes, x)[0], want, rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(apply(params, x)[0] - want)) > 1e-3


def test_dropout_between_layers_only():
    rnn = jaxrnn.Recurrent(PEEPHOLE_LSTM, input_size=3, hidden_size=6, num_layers=2,
                           bidirectional=True, dropout=0.5)
    params = _random_params(rnn, seed=4)
    x = np.random.default_rng(5).standard_normal((5, 3, 3)).astype(np.float32)
    lengths = np.array([5, 2, 4])
    apply = jax.jit(rnn.apply)
    output, (h_n, c_n) = apply(params, x, lengths=lengths)
    dropped, (h_drop, c_drop) = apply(params, x, lengths=lengths, key=jax.random.key(0))
    # Layer 1 (states 0 and 1: both directions) runs before any dropout; layer 2 sees it.
    np.testing.assert_array_equal(h_drop[:2], h_n[:2])
    np.testing.assert_array_equal(c_drop[:2], c_n[:2])
    assert np.max(np.abs(h_drop[2:] - h_n[2:])) > 1e-3
    assert np.max(np.abs(dropped - output)) > 1e-3
    assert np.all(np.asarray(dropped)[2:, 1] == 0)  # padding stays zero

    single = jaxrnn.Recurrent(PEEPHOLE_LSTM, input_size=3, hidden_size=6, dropout=0.5,
                              bidirectional=True)
    single_apply = jax.jit(single.apply)
    np.testing.assert_array_equal(single_apply(params[:1], x, key=jax.random.key(0))[0],
                                  single_apply(params[:1], x)[0])


def _regression_task(seed=6, batch=16, steps=8):
    """Inputs [T, B, 2] of uneven lengths; the target is the mean of each valid sequence."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (steps, batch, 2)).astype(np.float32)
    lengths = rng.integers(1, steps + 1, batch)
    mask = np.arange(steps)[:, None] < lengths[None, :]  # [T, B]
    target = (x * mask[:, :, None]).sum(0) / lengths[:, None]  # [B, 2]
    return x, lengths, target.astype(np.float32)


def test_gradient_is_finite_and_training_lowers_the_loss():
    rnn = jaxrnn.Recurrent(PEEPHOLE_LSTM, input_size=2, hidden_size=8, num_layers=2,
                           bidirectional=True, dropout=0.1)
    head_key, cell_key = jax.random.split(jax.random.key(0))
    params = {"rnn": rnn.init(cell_key),
              "head": 0.1 * jax.random.normal(head_key, (2 * 8, 2))}
    x, lengths, target = _regression_task()

    def loss_fn(params, key):
        _, (h_n, _) = rnn.apply(params["rnn"], x, lengths=lengths, key=key)  # [L*2, B, H]
        # The last layer's final states: forward at t = length-1, reverse at t = 0. (The
        # reverse output at length-1 would be its first step, which sees no recurrence.)
        encoding = jnp.concatenate([h_n[-2], h_n[-1]], axis=-1)  # [B, 2H]
        prediction = encoding @ params["head"]  # [B, 2]
        return jnp.mean((prediction - target) ** 2)

    optimizer = optax.adam(3e-2)

    @jax.jit
    def train_step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state = optimizer.init(params)
    losses = []
    for step in range(40):
        params, opt_state, loss, grads = train_step(params, opt_state,
                                                    jax.random.fold_in(jax.random.key(1), step))
        if step == 0:
            for path, g in jax.tree_util.tree_leaves_with_path(grads):
                assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
            peephole_grads = [d[name] for layer in grads["rnn"] for d in layer
                              for name in ("peephole_i", "peephole_f", "peephole_o")]
            assert all(np.any(g != 0) for g in peephole_grads)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
