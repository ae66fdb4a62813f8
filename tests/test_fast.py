"""The custom-VJP layers of `jaxrnn.fast` against two references.

1. `jaxrnn.engine.run_direction` (the plain scan, differentiated by JAX) for every built-in
   cell, forward and reverse, with and without bias: outputs, final carry, and the gradients
   of a loss over outputs *and* final carry with respect to xs, carry0 and every parameter.
2. `torch.nn.LSTM / GRU / RNN` (an independent implementation, torch.autograd gradients)
   through `Recurrent(impl="fast")`, two layers, bidirectional, with random initial states.

Both in float64 to 1e-10; then float32 loosely, and the compositions training uses
(jit of grad, vmap, grad of the final carry alone, recompilation-free reuse).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxrnn import Recurrent, cells, fast, run_direction

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")
# (mode, bias) pairs: both for the gated cells; the two Elman cells share one implementation
# (only the activation differs), so each takes one of the bias settings.
MODE_BIAS = [("lstm", True), ("lstm", False), ("gru", True), ("gru", False),
             ("rnn_tanh", True), ("rnn_relu", False)]
STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE = 7, 3, 5, 4
TOLERANCE_64 = 1e-10


def _max_abs_diff(a, b) -> float:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        assert x.shape == y.shape, (x.shape, y.shape)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(leaves_a, leaves_b))


def _problem(mode, bias, dtype, seed=0):
    """Random params, inputs, initial carry and loss weights for one direction.

    Drawn with numpy: eager jax.random would compile a dozen tiny programs per call.
    """
    rng = np.random.default_rng(seed)
    gates_hidden = cells.NUM_GATES[mode] * HIDDEN_SIZE
    shapes = {"weight_ih": (gates_hidden, INPUT_SIZE), "weight_hh": (gates_hidden, HIDDEN_SIZE)}
    if bias:
        shapes.update(bias_ih=(gates_hidden,), bias_hh=(gates_hidden,))
    bound = HIDDEN_SIZE ** -0.5
    params = {name: jnp.asarray(rng.uniform(-bound, bound, shape), dtype)
              for name, shape in shapes.items()}
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
    xs = normal(STEPS, BATCH, INPUT_SIZE)
    h0, c0 = normal(BATCH, HIDDEN_SIZE), normal(BATCH, HIDDEN_SIZE)
    carry0 = (h0, c0) if mode == "lstm" else h0
    out_weight = normal(STEPS, BATCH, HIDDEN_SIZE)
    return params, xs, carry0, out_weight


def _loss(layer, out_weight):
    """A loss that reaches every output and every final-carry leaf with distinct weights."""

    def loss(params, xs, carry0):
        ys, carry_t = layer(params, xs, carry0)
        value = jnp.sum(out_weight * ys * ys)
        for k, leaf in enumerate(jax.tree.leaves(carry_t)):
            value = value + jnp.sum(jnp.sin(leaf * (k + 1.5)))
        return value

    return loss


def _jit_reference(fn):
    """jit for the reference side only: its XLA optimisation level does not matter to the
    comparison, and level 0 compiles about 1.5x faster (the fast side keeps the default)."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def _reference(mode, reverse):
    return lambda p, xs, c: run_direction(cells.get_cell(mode), p, xs, c, reverse=reverse)


def _fast(mode, reverse, unroll=1):
    return lambda p, xs, c: fast.LAYERS[mode](p, xs, c, reverse, unroll=unroll)


# ---------------------------------------------------------------- 1. against run_direction


@pytest.mark.parametrize("mode, bias", MODE_BIAS)
def test_matches_run_direction_float64(x64, mode, bias):
    """Both directions in one jitted call (fewer compiles); reverse also runs with unroll=2."""
    params, xs, carry0, out_weight = _problem(mode, bias, jnp.float64)

    def outputs_and_grads(make_layer, jit):
        def both(*args):
            results = []
            for reverse, unroll in ((False, 1), (True, 2)):
                layer = make_layer(reverse, unroll)
                grads = jax.grad(_loss(layer, out_weight), (0, 1, 2))(*args)
                results.append((layer(*args), grads))
            return results
        return jit(both)(params, xs, carry0)

    want = outputs_and_grads(lambda reverse, unroll: _reference(mode, reverse), _jit_reference)
    got = outputs_and_grads(lambda reverse, unroll: _fast(mode, reverse, unroll), jax.jit)
    for (want_out, want_grads), (got_out, got_grads) in zip(want, got):
        assert got_out[0].dtype == jnp.float64
        assert _max_abs_diff(want_out, got_out) < TOLERANCE_64
        assert set(got_grads[0]) == set(params)  # a gradient for every parameter
        assert _max_abs_diff(want_grads, got_grads) < TOLERANCE_64


def test_gradient_of_final_carry_alone(x64, mode="lstm"):
    """Outputs unused: their cotangent is zero; only the final state carries gradient."""
    params, xs, carry0, _ = _problem(mode, True, jnp.float64, seed=2)

    def loss(layer):
        return lambda p, x, c: sum(jnp.sum(s ** 3) for s in jax.tree.leaves(layer(p, x, c)[1]))

    want = _jit_reference(jax.grad(loss(_reference(mode, False)), (0, 1, 2)))(params, xs, carry0)
    got = jax.jit(jax.grad(loss(_fast(mode, False)), (0, 1, 2)))(params, xs, carry0)
    assert _max_abs_diff(want, got) < TOLERANCE_64


# ---------------------------------------------------------------- 2. against PyTorch


def _torch_module(mode, bias, num_layers, bidirectional):
    kwargs = dict(num_layers=num_layers, bias=bias, bidirectional=bidirectional)
    if mode == "lstm":
        module = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, **kwargs)
    elif mode == "gru":
        module = torch.nn.GRU(INPUT_SIZE, HIDDEN_SIZE, **kwargs)
    else:
        module = torch.nn.RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity=mode[4:], **kwargs)
    return module.double()


def _torch_key(name, layer, direction):
    return f"{name}_l{layer}" + ("_reverse" if direction == 1 else "")


def _params_from_torch(module, num_layers, num_directions):
    """PyTorch state_dict -> jaxrnn params (same layout: a rename)."""
    state = {name: jnp.asarray(p.detach().numpy()) for name, p in module.named_parameters()}
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return [[{name: state[_torch_key(name, layer, d)] for name in names
              if _torch_key(name, layer, d) in state}
             for d in range(num_directions)]
            for layer in range(num_layers)]


@pytest.mark.parametrize("mode, bias", MODE_BIAS)
def test_matches_torch_two_layer_bidirectional_float64(x64, mode, bias):
    num_layers, num_directions = 2, 2
    torch.manual_seed(0)
    module = _torch_module(mode, bias, num_layers, True)
    rnn = Recurrent(mode, INPUT_SIZE, HIDDEN_SIZE, num_layers, bias=bias, bidirectional=True,
                    impl="fast")
    params = _params_from_torch(module, num_layers, num_directions)
    rnn.check_params(params)

    rng = np.random.default_rng(0)
    state_shape = (num_layers * num_directions, BATCH, HIDDEN_SIZE)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    h0 = rng.standard_normal(state_shape)
    c0 = rng.standard_normal(state_shape)
    out_weight = rng.standard_normal((STEPS, BATCH, num_directions * HIDDEN_SIZE))
    state_weight = rng.standard_normal(state_shape)

    # PyTorch: outputs, final states and torch.autograd gradients.
    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0, requires_grad=True)
    tc0 = torch.tensor(c0, requires_grad=True)
    t_out, t_state = module(tx, (th0, tc0) if mode == "lstm" else th0)
    t_states = t_state if mode == "lstm" else (t_state,)
    t_loss = (torch.sum(torch.tensor(out_weight) * t_out * t_out)
              + sum(torch.sum(torch.tensor(state_weight) * (k + 1) * torch.tanh(s))
                    for k, s in enumerate(t_states)))
    t_loss.backward()

    def loss(params, x, hx):
        out, state = rnn.apply(params, x, hx)
        states = state if mode == "lstm" else (state,)
        value = jnp.sum(out_weight * out * out)
        for k, s in enumerate(states):
            value = value + jnp.sum(state_weight * (k + 1) * jnp.tanh(s))
        return value, (out, states)

    hx = (jnp.asarray(h0), jnp.asarray(c0)) if mode == "lstm" else jnp.asarray(h0)
    (value, (out, states)), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(
        params, jnp.asarray(x), hx)

    assert abs(float(value) - t_loss.item()) < TOLERANCE_64
    assert _max_abs_diff(out, t_out.detach().numpy()) < TOLERANCE_64
    assert _max_abs_diff(states, tuple(s.detach().numpy() for s in t_states)) < TOLERANCE_64
    d_params, d_x, d_hx = grads
    assert _max_abs_diff(d_x, tx.grad.numpy()) < TOLERANCE_64
    t_dhx = (th0.grad.numpy(), tc0.grad.numpy()) if mode == "lstm" else th0.grad.numpy()
    assert _max_abs_diff(d_hx, t_dhx) < TOLERANCE_64
    t_grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    for layer in range(num_layers):
        for d in range(num_directions):
            assert len(d_params[layer][d]) == (4 if bias else 2)
            for name, value in d_params[layer][d].items():
                diff = _max_abs_diff(value, t_grads[_torch_key(name, layer, d)])
                assert diff < TOLERANCE_64, (_torch_key(name, layer, d), diff)


# ---------------------------------------------------------------- 3. how training uses it


@pytest.mark.parametrize("mode", MODES)
def test_auto_uses_fast_layer_without_lengths(mode):
    rnn = Recurrent(mode, INPUT_SIZE, HIDDEN_SIZE, impl="auto")
    params = [[_problem(mode, True, jnp.float32)[0]]]
    x = jnp.ones((STEPS, BATCH, INPUT_SIZE))
    assert "custom_vjp_call" in str(jax.make_jaxpr(rnn.apply)(params, x))
    with_lengths = jax.make_jaxpr(lambda p, x: rnn.apply(p, x, lengths=jnp.full((BATCH,), 3)))
    assert "custom_vjp_call" not in str(with_lengths(params, x))


def test_float32_close_to_reference(mode="gru"):
    """float32, loosely (LSTM in float32 is covered by the training-step test below)."""
    params, xs, carry0, out_weight = _problem(mode, True, jnp.float32, seed=3)
    reverse = True
    value_and_grads = lambda layer: jax.value_and_grad(_loss(layer, out_weight), (0, 1, 2))
    want = _jit_reference(value_and_grads(_reference(mode, reverse)))(params, xs, carry0)
    got = jax.jit(value_and_grads(_fast(mode, reverse)))(params, xs, carry0)
    assert jax.tree.leaves(got)[0].dtype == jnp.float32
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        scale = max(1.0, float(jnp.max(jnp.abs(w))))
        assert float(jnp.max(jnp.abs(w - g))) < 1e-5 * scale


def test_vmap_over_sequences_and_params(x64, mode="lstm"):
    """vmap of the layer (e.g. an ensemble or per-example gradients) and grad through vmap."""
    ensemble = 2
    problems = [_problem(mode, True, jnp.float64, seed=10 + k) for k in range(ensemble)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *problems)
    params, xs, carry0, out_weight = stacked

    def total(layer, jit):
        def loss(params, xs, carry0):
            per_member = jax.vmap(
                lambda p, x, c, w: _loss(layer, w)(p, x, c))(params, xs, carry0, out_weight)
            return jnp.sum(per_member)
        return jit(jax.grad(loss, (0, 1, 2)))

    want = total(_reference(mode, True), _jit_reference)(params, xs, carry0)
    got = total(_fast(mode, True), jax.jit)(params, xs, carry0)
    assert _max_abs_diff(want, got) < TOLERANCE_64


def test_training_step_compiles_once_and_matches_reference():
    """A jitted SGD step through Recurrent(impl="auto") vs impl="reference", 2 steps."""
    rnn = {impl: Recurrent("lstm", INPUT_SIZE, HIDDEN_SIZE, num_layers=2, impl=impl)
           for impl in ("auto", "reference")}
    layer0, x, _, target = _problem("lstm", True, jnp.float32, seed=4)
    layer1 = dict(_problem("lstm", True, jnp.float32, seed=5)[0],
                  weight_ih=jnp.asarray(np.random.default_rng(6).uniform(
                      -0.5, 0.5, (4 * HIDDEN_SIZE, HIDDEN_SIZE)), jnp.float32))
    params0 = [[layer0], [layer1]]
    traces = []

    def make_step(net):
        def step(params):
            traces.append(net.impl)

            def loss(p):
                out, (h_n, c_n) = net.apply(p, x)
                return jnp.mean((out - target) ** 2) + jnp.mean(c_n ** 2)

            value, grads = jax.value_and_grad(loss)(params)
            return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), value
        return jax.jit(step)

    results = {}
    for impl, net in rnn.items():
        step, params = make_step(net), params0
        for _ in range(2):
            params, value = step(params)
        results[impl] = (params, value)
    assert traces == ["auto", "reference"]  # each step traced (compiled) once
    assert _max_abs_diff(results["auto"], results["reference"]) < 1e-5


@pytest.mark.parametrize("with_table", [True, False])
def test_embedding_slab_matches_projection_of_gathered_rows(x64, with_table):
    """Token ids -> layer-0 slab by gathering projected-table rows == projecting table[ids]."""
    mode, vocab_size = "lstm", 6
    params, _, carry0, out_weight = _problem(mode, True, jnp.float64, seed=7)
    rng = np.random.default_rng(7)
    ids = jnp.asarray(rng.integers(0, vocab_size, (STEPS, BATCH)))
    table = jnp.asarray(rng.standard_normal((vocab_size, INPUT_SIZE)))
    if not with_table:  # one-hot inputs: the input size is the vocabulary size
        params = dict(params, weight_ih=jnp.asarray(
            rng.uniform(-0.5, 0.5, (4 * HIDDEN_SIZE, vocab_size))))

    def loss(slab_fn):
        def value(params, table, carry0):
            slab = slab_fn(params, table)
            return _loss(lambda p, s, c: fast.run_slab(mode, p, s, c), out_weight)(
                params, slab, carry0)
        return jax.jit(jax.value_and_grad(value, (0, 1, 2)))

    def by_gather(params, table):
        return fast.embedding_slab(mode, params, ids, table if with_table else None)

    def by_projection(params, table):
        inputs = table[ids] if with_table else jax.nn.one_hot(ids, vocab_size, dtype=table.dtype)
        return fast.project(mode, params, inputs)

    want = loss(by_projection)(params, table, carry0)
    got = loss(by_gather)(params, table, carry0)
    assert _max_abs_diff(want, got) < TOLERANCE_64


@pytest.mark.parametrize("gather", [True, False])
@pytest.mark.parametrize("mode, with_table", [("lstm", True), ("lstm", False), ("gru", False),
                                              ("rnn_tanh", True)])
def test_apply_tokens_matches_torch_float64(x64, monkeypatch, mode, with_table, gather):
    """Recurrent.apply_tokens (layer 0 gathers the projected table, or for few tokens projects
    the rows) against torch fed nn.Embedding / one-hot rows: outputs, final states and every
    gradient, the table's too."""
    monkeypatch.setattr(fast, "GATHER_MIN_TOKENS", 0 if gather else 10**9)
    monkeypatch.setattr(fast, "GATHER_MAX_SLAB", 10**9)
    num_layers, vocab_size = 2, 6
    input_size = INPUT_SIZE if with_table else vocab_size
    torch.manual_seed(1)
    kwargs = dict(num_layers=num_layers)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(mode, torch.nn.RNN)(
        input_size, HIDDEN_SIZE, **kwargs).double()
    rng = np.random.default_rng(3)
    ids = rng.integers(0, vocab_size, (STEPS, BATCH))
    table = rng.standard_normal((vocab_size, input_size))
    out_weight = rng.standard_normal((STEPS, BATCH, HIDDEN_SIZE))

    t_table = torch.tensor(table, requires_grad=True)
    t_ids = torch.tensor(ids)
    t_x = (t_table[t_ids] if with_table
           else torch.nn.functional.one_hot(t_ids, vocab_size).double())
    t_out, t_state = module(t_x)
    t_states = t_state if mode == "lstm" else (t_state,)
    t_loss = torch.sum(torch.tensor(out_weight) * t_out * t_out) + sum(
        torch.sum(torch.tanh(s)) for s in t_states)
    t_loss.backward()

    rnn = Recurrent(mode, input_size, HIDDEN_SIZE, num_layers, impl="fast")
    params = _params_from_torch(module, num_layers, 1)

    def loss(params, table):
        out, state = rnn.apply_tokens(params, jnp.asarray(ids), table if with_table else None,
                                      dtype=jnp.float64)
        states = state if mode == "lstm" else (state,)
        return jnp.sum(out_weight * out * out) + sum(jnp.sum(jnp.tanh(s)) for s in states), out

    (value, out), (d_params, d_table) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        params, jnp.asarray(table))
    assert abs(float(value) - t_loss.item()) < TOLERANCE_64
    assert _max_abs_diff(out, t_out.detach().numpy()) < TOLERANCE_64
    if with_table:
        assert _max_abs_diff(d_table, t_table.grad.numpy()) < TOLERANCE_64
    t_grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    for layer in range(num_layers):
        for name, grad in d_params[layer][0].items():
            assert _max_abs_diff(grad, t_grads[_torch_key(name, layer, 0)]) < TOLERANCE_64


def test_apply_tokens_falls_back_to_apply():
    """impl="reference" (or no token layer registered) runs apply on the gathered inputs."""
    rnn = Recurrent("gru", 6, HIDDEN_SIZE, 1, impl="reference", batch_first=True)
    params = rnn.init(jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 6, (BATCH, STEPS)))
    out, h_n = rnn.apply_tokens(params, ids)
    want_out, want_h = rnn.apply(params, jax.nn.one_hot(ids, 6))
    assert out.shape == (BATCH, STEPS, HIDDEN_SIZE)
    assert _max_abs_diff((out, h_n), (want_out, want_h)) < 1e-6
    with pytest.raises(ValueError, match="table must have shape"):
        rnn.apply_tokens(params, ids, jnp.zeros((6, 3)))
