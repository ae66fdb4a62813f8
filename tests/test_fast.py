"""The custom-VJP recurrences of `jaxrnn.fast` (impl="fast") against two references, and
layer 0 fed its input slab (`Recurrent.apply(projected0=...)`, `jaxrnn.model`'s gathers).

1. `jaxrnn.engine.run_direction` (the plain scan, differentiated by JAX) for every built-in
   cell, forward and reverse, with and without bias: outputs, final carry, and the gradients
   of a loss over outputs *and* final carry with respect to xs, carry0 and every parameter.
   The fast side is the cell's own `fast` on `fast.input_slab(...)`, as the engine runs it.
2. `torch.nn.LSTM / GRU / RNN` (an independent implementation, torch.autograd gradients)
   through `Recurrent(impl="fast")`, two layers, bidirectional, with random initial states.
   impl="fast" is pure JAX (never the fused kernel, which tests/test_kernels.py covers).
3. Layer 0's slab: `jaxrnn.model.embedding_slab` / `one_hot_slab` against a float64 NumPy
   projection (value and VJP); `Recurrent.apply(projected0=...)` (impl "fast" and
   "reference") and `CharLM.apply` (gathered or not) against torch, every gradient included.

All in float64 to 1e-10; then float32 loosely, and the compositions training uses
(jit of grad, vmap, grad of the final carry alone, recompilation-free reuse).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxrnn import Cell, Recurrent, cells, fast, run_direction
from jaxrnn import model as model_lib
from jaxrnn.model import CharLM

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
    """The cell's fast recurrence on its slab, exactly as Recurrent(impl="fast") runs it."""
    cell = cells.get_cell(mode)
    return lambda p, xs, c: cell.fast(p, fast.input_slab(p, xs, cell.slab_bias(p)), c,
                                      reverse, unroll)


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


def _torch_module(mode, bias, num_layers, bidirectional, input_size=INPUT_SIZE):
    kwargs = dict(num_layers=num_layers, bias=bias, bidirectional=bidirectional)
    if mode == "lstm":
        module = torch.nn.LSTM(input_size, HIDDEN_SIZE, **kwargs)
    elif mode == "gru":
        module = torch.nn.GRU(input_size, HIDDEN_SIZE, **kwargs)
    else:
        module = torch.nn.RNN(input_size, HIDDEN_SIZE, nonlinearity=mode[4:], **kwargs)
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
def test_fast_and_auto_run_a_custom_vjp_layer_without_lengths(mode):
    """impl="fast" is the pure-JAX custom-VJP recurrence (never the fused kernel's custom
    call); impl="auto" runs a custom-VJP layer too (the fast one or, for the CPU LSTM, the
    kernel's) without lengths; with them, impl="reference" traces the masked scan (no
    custom-VJP layer, no kernel call)."""
    params = [[_problem(mode, True, jnp.float32)[0]]]
    x = jnp.ones((STEPS, BATCH, INPUT_SIZE))
    fast_rnn = Recurrent(mode, INPUT_SIZE, HIDDEN_SIZE, impl="fast")
    assert fast_rnn.plan.unmasked == "fast"
    text = str(jax.make_jaxpr(fast_rnn.apply)(params, x))
    assert "custom_vjp_call" in text and "ffi_call" not in text
    rnn = Recurrent(mode, INPUT_SIZE, HIDDEN_SIZE, impl="auto")
    assert "custom_vjp_call" in str(jax.make_jaxpr(rnn.apply)(params, x))
    reference = Recurrent(mode, INPUT_SIZE, HIDDEN_SIZE, impl="reference")
    with_lengths = jax.make_jaxpr(
        lambda p, x: reference.apply(p, x, lengths=jnp.full((BATCH,), 3)))
    text = str(with_lengths(params, x))
    assert "custom_vjp_call" not in text and "ffi_call" not in text


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
    """A jitted SGD step through Recurrent(impl="auto") (the kernel where it runs) and
    impl="fast" (pure JAX) vs impl="reference", 2 steps."""
    rnn = {impl: Recurrent("lstm", INPUT_SIZE, HIDDEN_SIZE, num_layers=2, impl=impl)
           for impl in ("auto", "fast", "reference")}
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
    assert traces == ["auto", "fast", "reference"]  # each step traced (compiled) once
    assert _max_abs_diff(results["auto"], results["reference"]) < 1e-5
    assert _max_abs_diff(results["fast"], results["reference"]) < 1e-5




# ---------------------------------------------------------------- 4. layer 0 fed its slab

VOCAB_SIZE, EMBEDDING_SIZE = 6, 5
SLAB_MODES = ("lstm", "gru", "rnn_tanh")


def _numpy_slab_bias(mode, params):
    """The bias folded into layer 0's slab, in numpy: b_ih + b_hh (GRU: b_hn stays out)."""
    b_ih, b_hh = np.asarray(params["bias_ih"]), np.asarray(params["bias_hh"])
    if mode == "gru":
        b_hh = np.concatenate([b_hh[:2 * HIDDEN_SIZE], np.zeros(HIDDEN_SIZE)])
    return b_ih + b_hh


@pytest.mark.parametrize("mode", SLAB_MODES)
def test_layer0_slab_and_its_vjp_match_numpy_float64(x64, mode):
    """`embedding_slab` (with a table, and one-hot) and `one_hot_slab` against the float64
    NumPy projection table[ids] @ W_ih^T + bias and its hand-written VJP (the table's is a
    scatter-add); then a loss through the cell's fast recurrence gives the same value and
    gradients from the gathered slab as from projecting the looked-up inputs."""
    cell = cells.get_cell(mode)
    rng = np.random.default_rng(7)
    params, _, carry0, out_weight = _problem(mode, True, jnp.float64, seed=7)
    ids = rng.integers(0, VOCAB_SIZE, (STEPS, BATCH))
    table = rng.standard_normal((VOCAB_SIZE, INPUT_SIZE))
    one_hot_params = dict(params, weight_ih=jnp.asarray(
        rng.uniform(-0.5, 0.5, (cells.NUM_GATES[mode] * HIDDEN_SIZE, VOCAB_SIZE))))
    cotangent = rng.standard_normal((STEPS, BATCH, cells.NUM_GATES[mode] * HIDDEN_SIZE))
    builders = {
        "embedding_slab, table": (params, table, lambda p, t: model_lib.embedding_slab(
            cell, p, jnp.asarray(ids), t)),
        "embedding_slab, one-hot": (one_hot_params, None, lambda p, t: model_lib.embedding_slab(
            cell, p, jnp.asarray(ids))),
        "one_hot_slab": (one_hot_params, None, lambda p, t: model_lib.one_hot_slab(
            cell, p, jnp.asarray(ids))),
    }
    for name, (p, t, build) in builders.items():
        x = table[ids] if t is not None else np.eye(VOCAB_SIZE)[ids]  # [T, B, D]
        weight_ih = np.asarray(p["weight_ih"])
        want_slab = x @ weight_ih.T + _numpy_slab_bias(mode, p)
        def slab_and_vjp(p, t, cotangent, build=build):
            slab, vjp = jax.vjp(build, p, t)
            return slab, vjp(cotangent)

        slab, (d_params, d_table) = jax.jit(slab_and_vjp)(
            p, None if t is None else jnp.asarray(t), jnp.asarray(cotangent))
        assert _max_abs_diff(slab, want_slab) < TOLERANCE_64, name
        db = cotangent.sum(axis=(0, 1))
        want = {"weight_ih": np.einsum("tbg,tbi->gi", cotangent, x), "bias_ih": db,
                "bias_hh": db if mode != "gru" else np.concatenate(
                    [db[:2 * HIDDEN_SIZE], np.zeros(HIDDEN_SIZE)]),
                "weight_hh": np.zeros_like(np.asarray(p["weight_hh"]))}
        for key, value in want.items():
            assert _max_abs_diff(d_params[key], value) < TOLERANCE_64, (name, key)
        if t is not None:
            want_d_table = np.zeros_like(table)
            np.add.at(want_d_table, ids, cotangent @ weight_ih)
            assert _max_abs_diff(d_table, want_d_table) < TOLERANCE_64, name

    # through the fast recurrence: the gathered slab == the projection of table[ids]
    def loss(slab_fn):
        def value(params, table, carry0):
            slab = slab_fn(params, table)
            return _loss(lambda p, s, c: cell.fast(p, s, c, False, 1), out_weight)(
                params, slab, carry0)
        return jax.jit(jax.value_and_grad(value, (0, 1, 2)))

    for p, with_table in ((params, True), (one_hot_params, False)):
        def by_gather(params, table):
            return model_lib.embedding_slab(cell, params, jnp.asarray(ids),
                                            table if with_table else None)

        def by_projection(params, table):
            inputs = (table[jnp.asarray(ids)] if with_table
                      else jax.nn.one_hot(jnp.asarray(ids), VOCAB_SIZE, dtype=table.dtype))
            return fast.input_slab(params, inputs, cell.slab_bias(params))

        want = loss(by_projection)(p, jnp.asarray(table), carry0)
        got = loss(by_gather)(p, jnp.asarray(table), carry0)
        assert _max_abs_diff(want, got) < TOLERANCE_64


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mode, with_table", [(m, t) for m in SLAB_MODES for t in (True, False)])
def test_projected0_matches_torch_float64(x64, mode, with_table, bidirectional):
    """Recurrent.apply(projected0=...) with layer 0's slabs built by `embedding_slab` (from a
    table, or one-hot) and by `one_hot_slab`, impl "fast" and "reference", two layers, random
    initial states, against torch fed nn.Embedding-style rows (or one-hot rows): outputs,
    final states and every gradient (parameters, initial states, the table). The
    bidirectional networks are batch_first: projected0 stays time-major."""
    num_layers, num_directions = 2, 1 + bidirectional
    batch_first = bidirectional
    input_size = EMBEDDING_SIZE if with_table else VOCAB_SIZE
    torch.manual_seed(2)
    module = _torch_module(mode, True, num_layers, bidirectional, input_size)
    params = _params_from_torch(module, num_layers, num_directions)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, VOCAB_SIZE, (STEPS, BATCH))
    table = rng.standard_normal((VOCAB_SIZE, input_size))
    state_shape = (num_layers * num_directions, BATCH, HIDDEN_SIZE)
    h0, c0 = rng.standard_normal(state_shape), rng.standard_normal(state_shape)
    out_weight = rng.standard_normal((STEPS, BATCH, num_directions * HIDDEN_SIZE))

    t_table = torch.tensor(table, requires_grad=True)
    t_ids = torch.tensor(ids)
    t_x = (t_table[t_ids] if with_table
           else torch.nn.functional.one_hot(t_ids, VOCAB_SIZE).double())
    th0, tc0 = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    t_out, t_state = module(t_x, (th0, tc0) if mode == "lstm" else th0)
    t_states = t_state if mode == "lstm" else (t_state,)
    t_loss = torch.sum(torch.tensor(out_weight) * t_out * t_out) + sum(
        torch.sum((k + 1) * torch.tanh(s)) for k, s in enumerate(t_states))
    t_loss.backward()
    t_grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    t_dhx = (th0.grad.numpy(), tc0.grad.numpy()) if mode == "lstm" else th0.grad.numpy()

    jnp_ids = jnp.asarray(ids)
    builders = {"embedding_slab": lambda cell, p, t: model_lib.embedding_slab(
        cell, p, jnp_ids, t if with_table else None)}
    if not with_table:
        builders["one_hot_slab"] = lambda cell, p, t: model_lib.one_hot_slab(cell, p, jnp_ids)
    rnns = {impl: Recurrent(mode, input_size, HIDDEN_SIZE, num_layers,
                            bidirectional=bidirectional, batch_first=batch_first, impl=impl)
            for impl in ("fast", "reference")}
    assert rnns["fast"].plan.unmasked == "fast"

    def loss(rnn, builder):
        def value(params, table, hx):
            slabs = [builder(rnn.cell, p, table) for p in params[0]]
            out, state = rnn.apply(params, hx=hx, projected0=slabs)
            if batch_first:
                out = jnp.swapaxes(out, 0, 1)
            states = state if mode == "lstm" else (state,)
            return jnp.sum(out_weight * out * out) + sum(
                jnp.sum((k + 1) * jnp.tanh(s)) for k, s in enumerate(states)), (out, states)
        return jax.value_and_grad(value, (0, 1, 2), has_aux=True)

    hx = (jnp.asarray(h0), jnp.asarray(c0)) if mode == "lstm" else jnp.asarray(h0)
    args = (params, jnp.asarray(table), hx)
    fast_text = str(jax.make_jaxpr(lambda p, s: rnns["fast"].apply(p, projected0=s))(
        params, [builders["embedding_slab"](rnns["fast"].cell, p, table) for p in params[0]]))
    assert "custom_vjp_call" in fast_text and "ffi_call" not in fast_text  # the fast layer

    @jax.jit
    def every_way(params, table, hx):
        return {f"{impl} {name}": loss(rnn, builder)(params, table, hx)
                for impl, rnn in rnns.items() for name, builder in builders.items()}

    results = every_way(*args)
    assert len(results) == 2 * len(builders)
    for how, ((value, (out, states)), (d_params, d_table, d_hx)) in results.items():
        assert out.dtype == jnp.float64, how
        assert abs(float(value) - t_loss.item()) < TOLERANCE_64, how
        assert _max_abs_diff(out, t_out.detach().numpy()) < TOLERANCE_64, how
        assert _max_abs_diff(states, tuple(s.detach().numpy() for s in t_states)) \
            < TOLERANCE_64, how
        assert _max_abs_diff(d_hx, t_dhx) < TOLERANCE_64, how
        if with_table:
            assert _max_abs_diff(d_table, t_table.grad.numpy()) < TOLERANCE_64, how
        for layer in range(num_layers):
            for d in range(num_directions):
                assert len(d_params[layer][d]) == 4
                for name, grad in d_params[layer][d].items():
                    key = _torch_key(name, layer, d)
                    assert _max_abs_diff(grad, t_grads[key]) < TOLERANCE_64, (how, key)


@pytest.mark.parametrize("cell, embedding_size, impl", [
    ("lstm", EMBEDDING_SIZE, "auto"), ("lstm", 0, "auto"), ("lstm", 0, "fast"),
    ("gru", 0, "auto"), ("rnn_tanh", EMBEDDING_SIZE, "reference")])
def test_charlm_with_and_without_gather_matches_torch_float64(x64, monkeypatch, cell,
                                                              embedding_size, impl):
    """CharLM.apply with layer 0's slab gathered (`embedding_slab`) and not (an embedding
    looked up and projected by the engine, or `one_hot_slab`), the thresholds of
    `jaxrnn.model` forced either way: the same logits, final state and gradients as each
    other and as `torch_baselines.convert.charlm_to_torch`'s TorchCharLM."""
    from torch_baselines.convert import charlm_state_dict, charlm_to_torch

    num_layers = 2
    model = CharLM(VOCAB_SIZE, cell, HIDDEN_SIZE, num_layers, embedding_size, dtype="float64",
                   impl=impl)
    assert model.rnn.plan.unmasked in ((impl,) if impl != "auto" else ("kernel", "fast"))
    rng = np.random.default_rng(5)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    params = jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.6, 0.6, s.shape), s.dtype),
                          shapes)
    tokens = rng.integers(0, VOCAB_SIZE, (BATCH, STEPS))
    state = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)),
                         model.zero_state(BATCH))
    logit_weight = rng.standard_normal((BATCH, STEPS, VOCAB_SIZE))

    module = charlm_to_torch(params, model)
    t_state = tuple(torch.tensor(np.asarray(s), requires_grad=True)
                    for s in jax.tree.leaves(state))
    t_logits, t_final = module(torch.tensor(tokens), t_state if cell == "lstm" else t_state[0])
    t_finals = t_final if cell == "lstm" else (t_final,)
    t_loss = torch.sum(torch.tensor(logit_weight) * t_logits) + sum(
        torch.sum((k + 1) * torch.tanh(s)) for k, s in enumerate(t_finals))
    t_loss.backward()
    t_grads = {name: p.grad.numpy() for name, p in module.named_parameters()}

    results = {}
    for gather in (True, False):
        monkeypatch.setattr(model_lib, "GATHER_MIN_TOKENS", 0 if gather else 10**9)
        monkeypatch.setattr(model_lib, "GATHER_MAX_SLAB", 10**9)
        x, slabs = model.input_slabs(params, jnp.asarray(tokens.T))
        if gather or not embedding_size:  # gathered, or one-hot by one GEMM: projected0
            assert x is None and len(slabs) == 1
        else:  # the looked-up embedding, projected by the engine
            assert slabs is None and x.shape == (STEPS, BATCH, embedding_size)

        def loss(params, state):  # a new function per setting: traced under this setting
            logits, final = model.apply(params, state, jnp.asarray(tokens))
            finals = jax.tree.leaves(final)
            return jnp.sum(logit_weight * logits) + sum(
                jnp.sum((k + 1) * jnp.tanh(s)) for k, s in enumerate(finals)), (logits, finals)

        results[gather] = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
            params, state)

    assert _max_abs_diff(results[True], results[False]) < TOLERANCE_64
    for gather, ((value, (logits, finals)), (d_params, d_state)) in results.items():
        assert logits.dtype == jnp.float64
        assert abs(float(value) - t_loss.item()) < TOLERANCE_64, gather
        assert _max_abs_diff(logits, t_logits.detach().numpy()) < TOLERANCE_64, gather
        assert _max_abs_diff(finals, [s.detach().numpy() for s in t_finals]) < TOLERANCE_64
        assert _max_abs_diff(d_state, [s.grad.numpy() for s in t_state]) < TOLERANCE_64
        flat = charlm_state_dict(d_params, model)  # TorchCharLM's keys
        assert set(flat) == set(t_grads)
        for key, grad in flat.items():
            assert _max_abs_diff(grad, t_grads[key]) < TOLERANCE_64, (gather, key)


def test_projected0_errors():
    rnn = Recurrent("lstm", INPUT_SIZE, HIDDEN_SIZE, bidirectional=True)
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                          jax.eval_shape(rnn.init, jax.random.key(0)))
    width = 4 * HIDDEN_SIZE
    slab = jnp.zeros((STEPS, BATCH, width))
    x = jnp.zeros((STEPS, BATCH, INPUT_SIZE))
    out, _ = rnn.apply(params, projected0=[slab, slab])  # the good case runs
    assert out.shape == (STEPS, BATCH, 2 * HIDDEN_SIZE)

    with pytest.raises(ValueError, match=r"give exactly one of x and projected0"):
        rnn.apply(params, x, projected0=[slab, slab])
    with pytest.raises(ValueError, match=r"give exactly one of x and projected0"):
        rnn.apply(params)
    with pytest.raises(ValueError, match=r"projected0 must be a list of 2 arrays, one per "
                                         r"direction"):
        rnn.apply(params, projected0=[slab])
    with pytest.raises(ValueError, match=r"projected0 must be a list of 2 arrays"):
        rnn.apply(params, projected0=slab)
    with pytest.raises(ValueError, match=rf"projected0 must hold arrays of shape \(T, B, "
                                         rf"{width}\) \(num_gates \* hidden_size\)"):
        rnn.apply(params, projected0=[slab[..., :-1], slab[..., :-1]])
    with pytest.raises(ValueError, match=r"projected0 must hold arrays of shape"):
        rnn.apply(params, projected0=[slab, slab[1:]])  # directions disagree on T
    with pytest.raises(ValueError, match=r"projected0 must hold arrays of shape"):
        rnn.apply(params, projected0=[slab[0], slab[0]])  # rank 2
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 2, 4\)"):
        rnn.apply(params, projected0=[slab[:, :2], slab[:, :2]], hx=rnn.zero_state(BATCH))

    # a cell without slab support (no num_gates / slab_bias / unslab): x only
    step_only = Cell("step_only", cells.RNN_TANH.init, cells.RNN_TANH.step,
                     cells.RNN_TANH.zero_carry)
    assert not step_only.takes_slab
    assert all(cell.takes_slab for cell in cells.CELLS.values())
    custom = Recurrent(step_only, INPUT_SIZE, HIDDEN_SIZE)
    custom_params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 jax.eval_shape(custom.init, jax.random.key(0)))
    assert custom.apply(custom_params, x)[0].shape == (STEPS, BATCH, HIDDEN_SIZE)
    with pytest.raises(ValueError, match=r"cell 'step_only' takes no projected0"):
        custom.apply(custom_params, projected0=[jnp.zeros((STEPS, BATCH, HIDDEN_SIZE))])
