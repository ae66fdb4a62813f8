"""`jaxrnn.Recurrent` on bad input, its dispatch, its tracing behaviour, and the packing helpers.

Bad input is a ValueError whose message names the problem. `impl` resolves to a `LayerPlan`
when the network is built, and a cell plugs its own fast recurrence in through `Cell.fast`
(checked against torch.nn.GRU). The jitted apply traces once per shape. `pad_sequences`,
`sequence_mask` and `last_valid` are checked on examples and, with hypothesis, on random
shapes and lengths against torch's pad_sequence and direct indexing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrnn import Cell, Recurrent, cells, fast, last_valid, pad_sequences, sequence_mask
from jaxrnn.engine import LayerPlan

PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


def _params(rnn: Recurrent):
    """Zero params of the right structure, without running jax.random (shapes only)."""
    shapes = jax.eval_shape(lambda: rnn.init(jax.random.key(0)))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,message", [
    (dict(mode="transformer"), r"mode must be one of \['gru', 'gru_ln', 'lstm', 'lstm_ln', "
                                    r"'mingru', 'minlstm', 'rnn_relu', 'rnn_tanh'\]"),
    (dict(hidden_size=0), r"hidden_size must be a positive integer, got 0"),
    (dict(input_size=-2), r"input_size must be a positive integer, got -2"),
    (dict(num_layers=0), r"num_layers must be a positive integer, got 0"),
    (dict(hidden_size=2.5), r"hidden_size must be a positive integer, got 2.5"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\), got -0.1"),
    (dict(impl="cuda"), r"impl must be one of 'auto', 'reference', 'fast', 'kernel', "
                        r"'parallel', 'deer', 'quasi-deer', 'elk', 'quasi-elk', got 'cuda'"),
    (dict(unroll=0), r"unroll must be a positive integer, got 0"),
    (dict(kernel_parts=-1), r"kernel_parts must be 0 or a positive integer, got -1"),
])
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recurrent(**{"mode": "lstm", "input_size": 3, "hidden_size": 4, **kwargs})


@pytest.fixture(scope="module")
def lstm():
    rnn = Recurrent("lstm", input_size=3, hidden_size=4, num_layers=2)
    return rnn, _params(rnn)


@pytest.mark.parametrize("lengths,message", [
    ([0, 5], r"lengths must be in 1..5 \(T\), got min 0 and max 5"),
    ([6, 2], r"lengths must be in 1..5 \(T\), got min 2 and max 6"),
    ([-1, 2], r"lengths must be in 1..5 \(T\), got min -1"),
    ([3, 3, 3], r"lengths must have shape \(2,\), got \(3,\)"),
    ([[3, 3]], r"lengths must have shape \(2,\), got \(1, 2\)"),
])
def test_bad_lengths(lstm, lengths, message):
    rnn, params = lstm
    with pytest.raises(ValueError, match=message):
        rnn.apply(params, jnp.zeros((5, 2, 3)), lengths=jnp.array(lengths))


def test_bad_x(lstm):
    rnn, params = lstm
    with pytest.raises(ValueError, match=r"x must have rank 3 \(T, B, input_size\), "
                                         r"got shape \(5, 3\)"):
        rnn.apply(params, jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"x must have rank 3"):
        rnn.apply(params, jnp.zeros((5, 2, 1, 3)))
    with pytest.raises(ValueError, match=r"x's last dimension must be input_size=3, "
                                         r"got shape \(5, 2, 4\)"):
        rnn.apply(params, jnp.zeros((5, 2, 4)))
    batch_first = Recurrent("lstm", input_size=3, hidden_size=4, num_layers=2, batch_first=True)
    with pytest.raises(ValueError, match=r"x must have rank 3 \(B, T, input_size\)"):
        batch_first.apply(params, jnp.zeros((5, 3)))


def test_bad_hx(lstm):
    rnn, params = lstm
    x = jnp.zeros((5, 2, 3))
    good = jnp.zeros((2, 2, 4))
    with pytest.raises(ValueError, match=r"hx must be a tuple of 2 arrays of shape \(2, 2, 4\) "
                                         r"for mode 'lstm'"):
        rnn.apply(params, x, hx=good)  # an LSTM needs (h_0, c_0)
    with pytest.raises(ValueError, match=r"hx must be a tuple of 2"):
        rnn.apply(params, x, hx=(good, good, good))
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 2, 4\) \(num_layers \* "
                                         r"num_directions, batch, hidden_size\), "
                                         r"got \(1, 2, 4\)"):
        rnn.apply(params, x, hx=(good, jnp.zeros((1, 2, 4))))
    gru = Recurrent("gru", input_size=3, hidden_size=4, bidirectional=True)
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 2, 4\).*got \(1, 2, 4\)"):
        gru.apply(_params(gru), x, hx=jnp.zeros((1, 2, 4)))


def test_bad_params(lstm):
    rnn, params = lstm
    x = jnp.zeros((5, 2, 3))
    with pytest.raises(ValueError, match=r"params must be a list of 2 layers, got 1"):
        rnn.apply(params[:1], x)
    with pytest.raises(ValueError, match=r"params must be a list of 2 layers, got dict"):
        rnn.apply(params[0][0], x)
    with pytest.raises(ValueError, match=r"params\[1\] must be a list of 1 direction dicts"):
        rnn.apply([params[0], params[1] * 2], x)
    missing = [params[0], [{k: v for k, v in params[1][0].items() if k != "bias_hh"}]]
    with pytest.raises(ValueError, match=r"params\[1\]\[0\] must have keys \['bias_hh', "
                                         r"'bias_ih', 'weight_hh', 'weight_ih'\], "
                                         r"got \['bias_ih', 'weight_hh', 'weight_ih'\]"):
        rnn.apply(missing, x)
    wrong = [[dict(params[0][0], weight_hh=jnp.zeros((16, 5)))], params[1]]
    with pytest.raises(ValueError, match=r"params\[0\]\[0\]\['weight_hh'\] must have shape "
                                         r"\(16, 4\), got \(16, 5\)"):
        rnn.apply(wrong, x)
    # Params of a network with another input size.
    other = Recurrent("lstm", input_size=5, hidden_size=4, num_layers=2)
    with pytest.raises(ValueError, match=r"params\[0\]\[0\]\['weight_ih'\] must have shape "
                                         r"\(16, 3\), got \(16, 5\)"):
        rnn.apply(_params(other), x)
    no_bias = Recurrent("lstm", input_size=3, hidden_size=4, num_layers=2, bias=False)
    with pytest.raises(ValueError, match=r"params\[0\]\[0\] must have keys "
                                         r"\['weight_hh', 'weight_ih'\]"):
        no_bias.apply(params, x)


def test_step_needs_unidirectional():
    rnn = Recurrent("gru", 3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="step\\(\\) needs a unidirectional network"):
        rnn.step(_params(rnn), rnn.zero_state(2), jnp.zeros((2, 3)))


# ---------------------------------------------------------------------------- dispatch

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")
# What the fused CPU LSTM kernel needs (jaxrnn.kernels): Linux, a C++ compiler, the CPU.
KERNEL_POSSIBLE = (sys.platform == "linux" and jax.default_backend() == "cpu"
                   and shutil.which(os.environ.get("CXX") or "c++") is not None)
needs_kernel = pytest.mark.skipif(not KERNEL_POSSIBLE, reason="no C++ compiler / not the CPU")

# A cell with only init / step / zero_carry: no project / recur, no fast, no kernel.
STEP_ONLY = Cell("step_only", cells.RNN_TANH.init, cells.RNN_TANH.step,
                 cells.RNN_TANH.zero_carry)


def _plan(mode, impl, **kwargs):
    return Recurrent(mode, input_size=3, hidden_size=4, impl=impl, **kwargs).plan


@pytest.mark.parametrize("mode", MODES)
def test_plan_of_each_impl(mode):
    """impl resolves when the network is built: reference and fast run what they name; auto
    takes the cell's fused kernel where it can run (here: CPU + compiler; every built-in cell
    has one), else the fast layer."""
    assert _plan(mode, "reference") == LayerPlan("reference", "reference", 1, 0)
    fast_plan = _plan(mode, "fast", unroll=3)
    assert (fast_plan.unmasked, fast_plan.requested, fast_plan.unroll) == ("fast", "fast", 3)
    auto = _plan(mode, "auto")
    assert auto.requested == "auto"
    kernel = cells.get_cell(mode).kernel
    assert auto.unmasked == ("kernel" if KERNEL_POSSIBLE else "fast"), \
        kernel.unavailable_reason()
    assert auto.fallback == "fast"  # for dtypes the kernel does not compute in
    if KERNEL_POSSIBLE:
        planned = _plan(mode, "kernel", kernel_parts=3)
        assert (planned.unmasked, planned.kernel_parts) == ("kernel", 3)
    # an unroll other than 1 asks for a scan: auto runs the fast layer then, not the kernel
    assert _plan(mode, "auto", unroll=2).unmasked == "fast"


def test_plan_of_a_custom_cell():
    assert _plan(STEP_ONLY, "auto").unmasked == "reference"
    assert _plan(STEP_ONLY, "reference").unmasked == "reference"
    with pytest.raises(ValueError, match=r"impl='fast': cell 'step_only' has no fast "
                                         r"recurrence"):
        _plan(STEP_ONLY, "fast")
    with pytest.raises(ValueError, match=r"impl='kernel': cell 'step_only' has no fused kernel"):
        _plan(STEP_ONLY, "kernel")


def test_kernel_has_no_unroll():
    with pytest.raises(ValueError, match=r"impl='kernel' has no scan to unroll; unroll=2 needs "
                                         r"impl='fast' or 'reference'"):
        _plan("lstm", "kernel", unroll=2)


@pytest.mark.parametrize("mode, impl", [("gru", "fast"), ("rnn_tanh", "fast"), ("lstm", "fast")])
def test_named_impl_with_lengths_is_an_error(mode, impl):
    rnn = Recurrent(mode, 3, 4, impl=impl)
    params = _params(rnn)
    x = jnp.ones((5, 2, 3))
    rnn.apply(params, x)  # runs without lengths
    with pytest.raises(ValueError, match=rf"impl='{impl}' runs layers without lengths only; "
                                         rf"use impl='auto' or 'reference' with lengths"):
        rnn.apply(params, x, lengths=jnp.array([5, 3]))


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_auto_with_lengths_runs_the_masked_kernel(mode):
    """With lengths, impl="auto" runs the cell's masked kernel where it can (a kernel call in
    the program, no scan), with the numbers of the masked reference scan (whose parity with
    torch's packed sequences tests/test_engine_parity.py and tests/test_kernels_masked.py
    check); without a kernel it traces the masked reference scan itself."""
    auto, reference = (Recurrent(mode, 3, 4, 2, bidirectional=True, impl=impl)
                       for impl in ("auto", "reference"))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype),
                          jax.eval_shape(auto.init, jax.random.key(0)))
    x = jnp.asarray(rng.standard_normal((5, 2, 3)), jnp.float32)
    lengths = jnp.array([5, 2])
    text = str(jax.make_jaxpr(lambda p, x: auto.apply(p, x, lengths=lengths))(params, x))
    if KERNEL_POSSIBLE:
        assert "ffi_call" in text and "scan" not in text
    else:
        assert "custom_vjp_call" not in text and "ffi_call" not in text
    got = jax.jit(lambda p, x: auto.apply(p, x, lengths=lengths))(params, x)
    want = jax.jit(lambda p, x: reference.apply(p, x, lengths=lengths))(params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got[0])[2:, 1] == 0)  # outputs past a sequence's end are zero


def _scan_unrolls(jaxpr_text):
    return [int(u) for u in re.findall(r"\bunroll=(\d+)", jaxpr_text)]


def test_unroll_reaches_the_fast_scans():
    """Recurrent(unroll=4) on an LSTM resolves to the fast layer (the kernel has no scan) and
    both of its loops, forward and backward, are scans with unroll=4."""
    rnn = Recurrent("lstm", 3, 4, unroll=4)
    assert rnn.plan.unmasked == "fast" and rnn.plan.unroll == 4
    params = _params(rnn)
    x = jnp.ones((6, 2, 3))
    forward = str(jax.make_jaxpr(rnn.apply)(params, x))
    assert "custom_vjp_call" in forward and _scan_unrolls(forward) == [4]
    backward = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(rnn.apply(p, x)[0])))(params))
    assert _scan_unrolls(backward) == [4, 4]
    plain = Recurrent("gru", 3, 4, impl="fast")
    assert set(_scan_unrolls(str(jax.make_jaxpr(plain.apply)(_params(plain), x)))) == {1}


def test_bfloat16_falls_back_from_the_kernel():
    """The kernel computes in float32 / float64 only: with a bfloat16 input, impl="auto" on an
    LSTM runs the fast layer (close to float32's numbers), impl="kernel" is an error."""
    rnn = Recurrent("lstm", 3, 4, 2)
    rng = np.random.default_rng(1)
    params32 = jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype),
                            jax.eval_shape(rnn.init, jax.random.key(0)))
    x32 = jnp.asarray(rng.standard_normal((5, 2, 3)), jnp.float32)
    params16, x16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), (params32, x32))
    assert rnn.plan.for_call(rnn.cell, jnp.bfloat16, False) == "fast"
    text = str(jax.make_jaxpr(rnn.apply)(params16, x16))
    assert "custom_vjp_call" in text and "ffi_call" not in text
    out, (h, c) = jax.jit(rnn.apply)(params16, x16)
    assert out.dtype == h.dtype == c.dtype == jnp.bfloat16
    want = Recurrent("lstm", 3, 4, 2, impl="reference").apply(params32, x32)
    # bfloat16 keeps 8 bits of mantissa: agreement to a few 1e-2
    assert max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - w)))
               for g, w in zip(jax.tree.leaves((out, h, c)), jax.tree.leaves(want))) < 5e-2
    if KERNEL_POSSIBLE:
        kernel = Recurrent("lstm", 3, 4, 2, impl="kernel")
        with pytest.raises(ValueError, match=r"impl='kernel' cannot run: the lstm_cpu kernel "
                                             r"computes in float32, float64, not bfloat16"):
            kernel.apply(params16, x16)


def test_a_custom_cell_plugs_in_its_fast_recurrence(x64):
    """A cell of its own with `fast=` (here the built-in GRU's fields without its kernel, under
    another name, its fast recurrence wrapped to count traces) is run by impl="fast" and "auto" exactly as the
    built-ins are, and matches torch.nn.GRU in float64 (outputs, state, every gradient)."""
    calls = []

    def counting_fast(params, slab, carry0, reverse, unroll):
        calls.append((reverse, unroll))  # runs while tracing
        return fast.gru_fast(params, slab, carry0, reverse, unroll)

    my_gru = dataclasses.replace(cells.GRU, name="my_gru", fast=counting_fast, kernel=None)
    assert _plan(my_gru, "auto").unmasked == "fast"
    rnn = Recurrent(my_gru, 3, 4, 2, bidirectional=True, impl="fast", unroll=2)
    torch.manual_seed(0)
    module = torch.nn.GRU(3, 4, 2, bidirectional=True).double()
    state = {n: jnp.asarray(p.detach().numpy()) for n, p in module.named_parameters()}
    params = [[{name: state[f"{name}_l{layer}" + ("_reverse" if d else "")]
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
               for d in range(2)] for layer in range(2)]
    rng = np.random.default_rng(2)
    x, h0 = rng.standard_normal((6, 3, 3)), rng.standard_normal((4, 3, 4))
    out_weight = rng.standard_normal((6, 3, 8))

    tx, th0 = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    t_out, t_h = module(tx, th0)
    t_loss = torch.sum(torch.tensor(out_weight) * t_out * t_out) + torch.sum(torch.tanh(t_h))
    t_loss.backward()

    def loss(params, x, h0):
        out, h = rnn.apply(params, x, h0)
        return jnp.sum(out_weight * out * out) + jnp.sum(jnp.tanh(h)), (out, h)

    (value, (out, h)), (d_params, d_x, d_h0) = jax.jit(
        jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(params, jnp.asarray(x),
                                                          jnp.asarray(h0))
    # traced once per direction of each layer, with the network's unroll
    assert calls == [(False, 2), (True, 2), (False, 2), (True, 2)]
    tolerance = 1e-10
    assert abs(float(value) - t_loss.item()) < tolerance
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=tolerance)
    np.testing.assert_allclose(h, t_h.detach().numpy(), rtol=0, atol=tolerance)
    np.testing.assert_allclose(d_x, tx.grad.numpy(), rtol=0, atol=tolerance)
    np.testing.assert_allclose(d_h0, th0.grad.numpy(), rtol=0, atol=tolerance)
    grads = {n: p.grad.numpy() for n, p in module.named_parameters()}
    for layer in range(2):
        for d in range(2):
            for name, grad in d_params[layer][d].items():
                key = f"{name}_l{layer}" + ("_reverse" if d else "")
                np.testing.assert_allclose(grad, grads[key], rtol=0, atol=tolerance,
                                           err_msg=key)
    # the same network on the built-in GRU: the same program, bit for bit
    builtin = Recurrent("gru", 3, 4, 2, bidirectional=True, impl="fast", unroll=2)
    np.testing.assert_array_equal(jax.jit(builtin.apply)(params, jnp.asarray(x))[0],
                                  jax.jit(rnn.apply)(params, jnp.asarray(x))[0])


# ---------------------------------------------------------------------------- tracing


def test_jitted_apply_traces_once_per_shape():
    rnn = Recurrent("lstm", input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    params = _params(rnn)
    traces = []

    @jax.jit
    def run(params, x, lengths):
        traces.append(x.shape)  # runs only while tracing
        output, (h_n, c_n) = rnn.apply(params, x, lengths=lengths)
        return output.sum() + h_n.sum() + c_n.sum()

    x = np.ones((5, 2, 3), np.float32)
    run(params, x, jnp.array([5, 2]))
    run(params, x * 2, jnp.array([1, 4]))  # new values, same shapes: no retrace
    run(jax.tree.map(lambda a: a + 1, params), x, jnp.array([3, 3]))
    assert traces == [(5, 2, 3)]
    run(params, np.ones((6, 2, 3), np.float32), jnp.array([6, 1]))  # a new T: one more
    assert traces == [(5, 2, 3), (6, 2, 3)]


def test_equal_configurations_share_one_trace():
    """Recurrent is a frozen dataclass: two equal ones hit the same jit cache as static args."""
    traces = []

    def run(rnn, params, x):
        traces.append(rnn)
        return rnn.apply(params, x)[0]

    run = jax.jit(run, static_argnums=0)
    first = Recurrent("gru", input_size=3, hidden_size=4)
    second = Recurrent("gru", input_size=3, hidden_size=4)
    params = _params(first)
    run(first, params, jnp.ones((4, 2, 3)))
    run(second, params, jnp.ones((4, 2, 3)))
    assert len(traces) == 1
    run(Recurrent("gru", input_size=3, hidden_size=4, num_layers=1, bias=True, unroll=2),
        params, jnp.ones((4, 2, 3)))
    assert len(traces) == 2


# ---------------------------------------------------------------------------- packing helpers


def test_pad_sequences_example():
    seqs = [np.arange(8.0).reshape(4, 2), np.array([[8.0, 9.0]]), np.ones((2, 2))]
    padded, lengths = pad_sequences(seqs)
    assert padded.shape == (4, 3, 2) and padded.dtype == jnp.float32
    np.testing.assert_array_equal(lengths, [4, 1, 2])
    assert lengths.dtype == jnp.int32
    np.testing.assert_array_equal(padded[:, 0], seqs[0])
    np.testing.assert_array_equal(padded[:, 1], [[8, 9], [0, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(padded[:, 2], [[1, 1], [1, 1], [0, 0], [0, 0]])

    padded_bf, _ = pad_sequences(seqs, batch_first=True, padding_value=-1.0)
    assert padded_bf.shape == (3, 4, 2)
    np.testing.assert_array_equal(padded_bf[1], [[8, 9], [-1, -1], [-1, -1], [-1, -1]])

    ids, lengths = pad_sequences([np.array([3, 1, 4]), np.array([1, 5])])  # token ids
    assert ids.dtype == jnp.int32 and ids.shape == (3, 2)
    np.testing.assert_array_equal(ids[:, 1], [1, 5, 0])


def test_pad_sequences_bad_input():
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_sequences([])
    with pytest.raises(ValueError, match=r"sequence 1 is empty; every length must be at least 1"):
        pad_sequences([np.ones((2, 3)), np.ones((0, 3))])
    with pytest.raises(ValueError, match=r"sequence 1 has shape \(2, 4\); every sequence must "
                                         r"be \[T_i, \*\(3,\)\]"):
        pad_sequences([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(ValueError, match=r"sequence 0 has shape \(\)"):
        pad_sequences([np.float32(1.0)])


def test_sequence_mask_and_last_valid_example():
    mask = sequence_mask(jnp.array([3, 1, 4]), 4)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert mask.dtype == jnp.bool_

    output = jnp.arange(24.0).reshape(4, 3, 2)  # [T, B, F]
    lengths = jnp.array([3, 1, 4])
    np.testing.assert_array_equal(last_valid(output, lengths),
                                  [output[2, 0], output[0, 1], output[3, 2]])
    np.testing.assert_array_equal(
        last_valid(jnp.swapaxes(output, 0, 1), lengths, batch_first=True),
        last_valid(output, lengths))


@st.composite
def _sequences(draw):
    """A list of 1..5 arrays [T_i, *F] with T_i in 1..6 and a shared feature shape F."""
    feature_shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))
    dtype = draw(st.sampled_from([np.float32, np.int32]))
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    elements = st.integers(-100, 100)
    return [draw(hnp.arrays(dtype, (length,) + feature_shape, elements=elements))
            for length in lengths]


@PROPERTY_SETTINGS
@given(seqs=_sequences(), batch_first=st.booleans(), padding_value=st.sampled_from([0, -7]))
def test_pad_sequences_matches_torch(seqs, batch_first, padding_value):
    padded, lengths = pad_sequences(seqs, batch_first=batch_first, padding_value=padding_value)
    want = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(s) for s in seqs],
                                           batch_first=batch_first,
                                           padding_value=padding_value)
    assert padded.dtype == seqs[0].dtype
    np.testing.assert_array_equal(padded, want.numpy())
    np.testing.assert_array_equal(lengths, [len(s) for s in seqs])


@PROPERTY_SETTINGS
@given(data=st.data())
def test_sequence_mask_and_last_valid_properties(data):
    steps = data.draw(st.integers(1, 6), label="T")
    batch = data.draw(st.integers(1, 4), label="B")
    features = data.draw(st.integers(1, 3), label="F")
    lengths = np.array(data.draw(st.lists(st.integers(1, steps), min_size=batch,
                                          max_size=batch), label="lengths"))
    batch_first = data.draw(st.booleans(), label="batch_first")
    output = np.random.default_rng(steps * 100 + batch).standard_normal(
        (steps, batch, features)).astype(np.float32)

    mask = np.asarray(sequence_mask(lengths, steps))
    assert mask.shape == (batch, steps)
    for b in range(batch):
        np.testing.assert_array_equal(mask[b], np.arange(steps) < lengths[b])

    given_output = output.swapaxes(0, 1) if batch_first else output
    last = np.asarray(last_valid(given_output, lengths, batch_first=batch_first))
    assert last.shape == (batch, features)
    for b in range(batch):
        np.testing.assert_array_equal(last[b], output[lengths[b] - 1, b])
