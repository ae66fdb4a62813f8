"""Parity of `jaxrnn.Recurrent` with real PyTorch (the reference is never jaxrnn itself).

Same weights in both frameworks (converted with `torch_baselines.convert`); compared: output,
h_n (and c_n), and the gradients of a random weighted sum of output and final states with
respect to x, hx and every parameter (torch.autograd as reference). float64 to 1e-10 absolute,
float32 to 1e-5 relative to each array's scale.

The flag matrix (mode x layers x lengths x bidirectional x batch_first x bias x hx) has 768
cells, and each costs a JIT compile of a gradient (about a second). The default run is a
pairwise design: each mode x lengths kind twice in float64 (32 cases), the other factors chosen
greedily so that every pair of values of any two factors appears (`test_design_covers_every_pair`
checks it), plus 8 float32 cases that cover every value of every factor. `test_full_product`
(marked slow) runs all 768 cells in both dtypes.

The largest differences seen are collected in `MAX_DIFF` and written to the terminal at the end
of the module (float64: absolute; float32: relative to each array's scale, max(1, max|ref|)).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxrnn
from jaxrnn import Recurrent, last_valid, pad_sequences
from torch_baselines.convert import (expected_shapes, from_torch, params_from_state_dict,
                                     params_to_state_dict, to_torch)
from torch_baselines.packed import (PackedGRU, PackedLSTM, PackedRecurrent, PackedRNN,
                                    tutorial_part4)

MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
LAYERS = (1, 2, 3)
LENGTH_KINDS = ("none", "equal", "unsorted", "with_1_and_T")
FLAGS = ("bidirectional", "batch_first", "bias", "with_hx")

STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE = 6, 4, 3, 4
LENGTHS = {"none": None, "equal": [STEPS] * BATCH, "unsorted": [3, 5, 2, 4],
           "with_1_and_T": [4, 1, STEPS, 2]}
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}

MAX_DIFF: dict[str, dict[str, float]] = {"float64": {}, "float32": {}}


@pytest.fixture(scope="module", autouse=True)
def report_max_diff(request):
    """Writes the largest differences seen to the terminal when the module is done."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for dtype, diffs in MAX_DIFF.items():
            if diffs:
                worst = max(diffs, key=diffs.get)
                print(f"\n[parity] {dtype}: largest diff {diffs[worst]:.3g} ({worst}); "
                      + ", ".join(f"{k}={v:.2g}" for k, v in sorted(diffs.items())))


def _record(dtype: str, name: str, diff: float) -> None:
    MAX_DIFF[dtype][name] = max(MAX_DIFF[dtype].get(name, 0.0), diff)


# ------------------------------------------------------------------------- the design


LEVELS = {"mode": MODES, "num_layers": LAYERS, "lengths": LENGTH_KINDS,
          **{flag: (False, True) for flag in FLAGS}}


def _combinations(case: dict, size: int) -> set:
    """The `size`-way (factor, value) combinations one case covers."""
    return set(itertools.combinations(sorted(case.items()), size))


def pairwise_design(bases: list[dict], complete: bool = True) -> list[dict]:
    """Completes each partial case in `bases` greedily: every pair of values, then triples.

    The factors a base leaves open get the values that cover the most (factor, value) pairs
    not yet covered, then the most triples (so the values keep rotating once the pairs are in).
    With `complete`, rows are then appended, fully open, until every pair is covered.
    """
    rows, pairs, triples = [], set(), set()

    def add(base):
        nonlocal pairs, triples
        free = [name for name in LEVELS if name not in base]
        candidates = [{**base, **dict(zip(free, values))}
                      for values in itertools.product(*(LEVELS[name] for name in free))]
        row = max(candidates, key=lambda c: (len(_combinations(c, 2) - pairs),
                                             len(_combinations(c, 3) - triples)))
        rows.append({name: row[name] for name in LEVELS})
        pairs |= _combinations(row, 2)
        triples |= _combinations(row, 3)

    for base in bases:
        add(base)
    while complete and not EVERY_PAIR <= pairs:
        add({})
    return rows


def full_product() -> list[dict]:
    return [dict(zip(LEVELS, values)) for values in itertools.product(*LEVELS.values())]


def case_id(case: dict) -> str:
    return "-".join([case["mode"], f"L{case['num_layers']}", case["lengths"]]
                    + [flag if case[flag] else f"no_{flag}" for flag in FLAGS])


EVERY_PAIR = set().union(*(_combinations(dict(zip(LEVELS, values)), 2)
                           for values in itertools.product(*LEVELS.values())))
# float64: every mode x lengths kind, twice (32 cases), covering every pair of values.
# float32: every mode with two lengths kinds, each lengths kind with two modes (8 cases),
# covering every single value (a pairwise float32 design would need 16 more compiles).
DESIGN = pairwise_design([{"mode": mode, "lengths": lengths}
                          for _ in range(2) for mode in MODES for lengths in LENGTH_KINDS])
FLOAT32_DESIGN = pairwise_design([{"mode": mode, "lengths": LENGTH_KINDS[(2 * i + j) % 4]}
                                  for i, mode in enumerate(MODES) for j in range(2)],
                                 complete=False)


def test_design_covers_every_pair():
    assert EVERY_PAIR <= set().union(*(_combinations(case, 2) for case in DESIGN))
    for name, values in LEVELS.items():
        assert {case[name] for case in FLOAT32_DESIGN} == set(values), name
    assert len({case_id(case) for case in DESIGN}) == len(DESIGN)
    assert {(c["mode"], c["lengths"]) for c in DESIGN} == set(
        itertools.product(MODES, LENGTH_KINDS))
    assert len(full_product()) == 768


# ------------------------------------------------------------------------- one comparison


def _make_case(case: dict, dtype: str, seed: int):
    """A torch module, converted (rnn, params), inputs and the loss weights, all in numpy."""
    torch.manual_seed(seed)
    module_class = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(case["mode"], torch.nn.RNN)
    kwargs = dict(num_layers=case["num_layers"], bias=case["bias"],
                  batch_first=case["batch_first"], bidirectional=case["bidirectional"])
    if module_class is torch.nn.RNN:
        kwargs["nonlinearity"] = case["mode"][len("rnn_"):]
    module = module_class(INPUT_SIZE, HIDDEN_SIZE, **kwargs)
    module = module.double() if dtype == "float64" else module.float()
    rnn, params = from_torch(module)
    assert rnn.mode == case["mode"]

    rng = np.random.default_rng(seed)
    x_shape = (BATCH, STEPS) if case["batch_first"] else (STEPS, BATCH)
    x = rng.standard_normal(x_shape + (INPUT_SIZE,)).astype(dtype)
    state_shape = (case["num_layers"] * rnn.num_directions, BATCH, HIDDEN_SIZE)
    num_states = 2 if case["mode"] == "lstm" else 1
    hx = None
    if case["with_hx"]:
        hx = tuple(rng.standard_normal(state_shape).astype(dtype) for _ in range(num_states))
    lengths = LENGTHS[case["lengths"]]
    lengths = None if lengths is None else np.array(lengths, np.int64)
    output_shape = x_shape + (rnn.num_directions * HIDDEN_SIZE,)
    weights = {"output": rng.standard_normal(output_shape).astype(dtype),
               "h_n": rng.standard_normal(state_shape).astype(dtype)}
    if num_states == 2:
        weights["c_n"] = rng.standard_normal(state_shape).astype(dtype)
    return module, rnn, params, x, hx, lengths, weights


def _torch_reference(module, x, hx, lengths, weights):
    """Outputs and gradients from torch.autograd, through pack -> module -> pad."""
    x_t = torch.tensor(x, requires_grad=True)
    hx_t = None if hx is None else tuple(torch.tensor(h, requires_grad=True) for h in hx)
    module.zero_grad()
    packed = PackedRecurrent(module)
    torch_hx = None if hx_t is None else (hx_t if len(hx_t) == 2 else hx_t[0])
    output, state = packed(x_t, None if lengths is None else torch.tensor(lengths), torch_hx)
    states = state if isinstance(state, tuple) else (state,)
    results = {"output": output, "h_n": states[0]}
    if len(states) == 2:
        results["c_n"] = states[1]
    loss = sum((value * torch.tensor(weights[name])).sum() for name, value in results.items())
    loss.backward()
    results = {name: value.detach().numpy() for name, value in results.items()}
    results["loss"] = loss.detach().numpy()
    results["grad_x"] = x_t.grad.numpy()
    if hx_t is not None:
        for name, h in zip(("h0", "c0"), hx_t):
            results[f"grad_{name}"] = h.grad.numpy()
    for key, param in module.named_parameters():
        results[f"grad_{key}"] = param.grad.numpy()
    return results


def _jax_run(rnn, params, x, hx, lengths, weights):
    """The same quantities from jaxrnn, with jax.grad."""
    lstm = rnn.mode == "lstm"

    def loss_fn(params, x, hx):
        engine_hx = None if hx is None else (hx if lstm else hx[0])
        output, state = rnn.apply(params, x, engine_hx, lengths)
        states = state if lstm else (state,)
        results = {"output": output, "h_n": states[0]}
        if lstm:
            results["c_n"] = states[1]
        loss = sum(jnp.sum(value * weights[name]) for name, value in results.items())
        return loss, results

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
    (loss, results), (grad_params, grad_x, grad_hx) = grad_fn(params, x, hx)
    results = {name: np.asarray(value) for name, value in results.items()}
    results["loss"] = np.asarray(loss)
    results["grad_x"] = np.asarray(grad_x)
    if hx is not None:
        for name, g in zip(("h0", "c0"), grad_hx):
            results[f"grad_{name}"] = np.asarray(g)
    for key, value in params_to_state_dict(rnn, grad_params).items():
        results[f"grad_{key}"] = value
    return results


def check_parity(case: dict, dtype: str, seed: int = 0) -> None:
    module, rnn, params, x, hx, lengths, weights = _make_case(case, dtype, seed)
    reference = _torch_reference(module, x, hx, lengths, weights)
    ours = _jax_run(rnn, params, x, hx, lengths, weights)
    assert sorted(ours) == sorted(reference)
    for name, want in reference.items():
        got = ours[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert got.dtype == np.dtype(dtype), (name, got.dtype)
        diff = float(np.max(np.abs(got - want), initial=0.0))
        kind = "grad" if name.startswith("grad_") else name
        if dtype == "float64":
            _record(dtype, kind, diff)
            bound = TOLERANCE[dtype]
        else:  # relative to the array's scale
            scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
            _record(dtype, kind, diff / scale)
            bound = TOLERANCE[dtype] * scale
        assert diff <= bound, f"{case_id(case)} {dtype}: {name} differs by {diff:.3g} > {bound:.3g}"
    if lengths is not None:  # pad_packed_sequence zeroes padding; so must we
        mask = np.arange(STEPS)[None, :] < lengths[:, None]  # [B, T]
        output = ours["output"] if case["batch_first"] else ours["output"].swapaxes(0, 1)
        assert np.all(output[~mask] == 0.0)


@pytest.mark.parametrize("case", DESIGN, ids=case_id)
def test_parity_float64(case, x64):
    check_parity(case, "float64")


@pytest.mark.parametrize("case", FLOAT32_DESIGN, ids=case_id)
def test_parity_float32(case):
    check_parity(case, "float32")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", full_product(), ids=case_id)
def test_full_product(case, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    check_parity(case, dtype)


@pytest.mark.parametrize("make,kwargs", [
    (PackedRNN, dict(nonlinearity="relu", num_layers=2)),
    (PackedLSTM, dict(bidirectional=True, batch_first=True)),
    (PackedGRU, dict(num_layers=2, bidirectional=True)),
])
def test_packed_modules_equal_one_sequence_at_a_time(make, kwargs):
    """The torch baseline itself: packing == running each sequence alone, unpadded."""
    torch.manual_seed(0)
    packed = make(3, 4, **kwargs).double()
    batch_first = packed.rnn.batch_first
    lengths = [2, 5, 1, 4]
    sequences = [torch.randn(length, 3, dtype=torch.float64) for length in lengths]
    padded = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=batch_first)
    with torch.no_grad():
        output, state = packed(padded, torch.tensor(lengths))
        if not batch_first:
            output = output.transpose(0, 1)  # [B, T, D*H]
        assert output.shape == (4, 5, packed.rnn.hidden_size * (1 + packed.rnn.bidirectional))
        for b, sequence in enumerate(sequences):
            alone = sequence[None] if batch_first else sequence[:, None]
            want_output, want_state = packed.rnn(alone)
            want_output = want_output[0] if batch_first else want_output[:, 0]
            torch.testing.assert_close(output[b, : lengths[b]], want_output)
            assert torch.all(output[b, lengths[b]:] == 0)
            for got, want in zip(state if isinstance(state, tuple) else (state,),
                                 want_state if isinstance(want_state, tuple) else (want_state,)):
                torch.testing.assert_close(got[:, b], want[:, 0])


# ------------------------------------------------------------------------- the tutorial, Part 4


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tutorial_part4(dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    reference = tutorial_part4(dtype=getattr(torch, dtype))
    rnn = Recurrent("rnn_tanh", input_size=1, hidden_size=1)
    params = params_from_state_dict(rnn, {k: v for k, v in reference.items()
                                          if k.endswith("_l0")})
    sequences = [reference["inputs"][:length, b] for b, length in enumerate(reference["lengths"])]
    padded, lengths = pad_sequences(sequences)
    np.testing.assert_array_equal(padded, reference["inputs"])
    np.testing.assert_array_equal(lengths, reference["lengths"])

    output, h_n = rnn.apply(params, padded, lengths=lengths)
    last = last_valid(output, lengths)
    tolerance = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(output, reference["output"], rtol=0, atol=tolerance)
    np.testing.assert_allclose(h_n, reference["h_n"], rtol=0, atol=tolerance)
    np.testing.assert_allclose(last, reference["last_outputs"], rtol=0, atol=tolerance)
    np.testing.assert_array_equal(last, h_n[0])  # the last output *is* the final state
    assert np.all(np.asarray(output)[1:, 2] == 0) and np.all(np.asarray(output)[2:, 1] == 0)
    _record(dtype, "tutorial_part4", float(np.max(np.abs(np.asarray(output)
                                                         - reference["output"]))))


# ------------------------------------------------------------------------- engine vs a Python loop


def _random_params(rnn: Recurrent, seed: int = 0, dtype=jnp.float32):
    """Params of `rnn.init`'s structure drawn with numpy (eager jax.random compiles per shape)."""
    shapes = jax.eval_shape(lambda: rnn.init(jax.random.key(0), dtype))
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(rnn.hidden_size)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.uniform(-bound, bound, s.shape).astype(s.dtype)), shapes)


def _normal(seed, shape, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def _python_loop(cell, params, xs, lengths, hx, num_layers, bidirectional):
    """The network stepped one example and one step at a time (no scan, no vmap, no masks)."""
    step = jax.jit(cell.step)  # compiled once per layer shape; the loop itself is Python
    steps, batch = xs.shape[:2]
    num_directions = 2 if bidirectional else 1
    hidden_size = params[0][0]["weight_hh"].shape[1]
    outputs = np.zeros((steps, batch, num_directions * hidden_size))
    finals = np.zeros((len(jax.tree.leaves(hx)), num_layers * num_directions, batch,
                       hidden_size))
    for b in range(batch):
        layer_input = [xs[t, b] for t in range(lengths[b])]
        for layer in range(num_layers):
            per_direction = []
            for d in range(num_directions):
                index = layer * num_directions + d
                carry = jax.tree.map(lambda a: a[index, b], hx)
                order = range(lengths[b]) if d == 0 else reversed(range(lengths[b]))
                ys, carries = [None] * lengths[b], []
                for t in order:
                    carry, ys[t] = step(params[layer][d], carry, layer_input[t])
                    carries.append(carry)
                # The final carry is the carry at the sequence's own last step.
                finals[:, index, b] = np.stack(jax.tree.leaves(carries[-1]))
                per_direction.append(ys)
            layer_input = [np.concatenate([ys[t] for ys in per_direction])
                           for t in range(lengths[b])]
        outputs[: lengths[b], b] = np.stack(layer_input)
    return outputs, list(finals)


@pytest.mark.parametrize("mode,num_layers,bidirectional", [
    ("rnn_tanh", 2, True), ("rnn_relu", 1, False), ("lstm", 2, True), ("gru", 2, False)])
def test_engine_matches_python_loop(mode, num_layers, bidirectional, x64):
    rnn = Recurrent(mode, input_size=3, hidden_size=5, num_layers=num_layers,
                    bidirectional=bidirectional)
    params = _random_params(rnn, 1, jnp.float64)
    xs = _normal(2, (7, 4, 3), np.float64)
    lengths = np.array([5, 7, 1, 3])
    hx = jax.tree.map(lambda a: _normal(3, a.shape, np.float64), rnn.zero_state(4, jnp.float64))
    output, h_n = jax.jit(rnn.apply)(params, xs, hx, lengths)
    want_output, want_h_n = _python_loop(rnn.cell, params, np.asarray(xs), lengths,
                                         jax.tree.map(np.asarray, hx), num_layers,
                                         bidirectional)
    np.testing.assert_allclose(output, want_output, rtol=0, atol=1e-12)
    for got, want in zip(jax.tree.leaves(h_n), want_h_n):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------- dropout


def _identity_probe(rate, hidden_size=32):
    """Two relu layers, the second passing its input through: output = dropped layer-1 output.

    Layer 2 has weight_ih = I and no recurrence, so with a key its output is exactly
    relu(dropout(y1)) = dropout(y1) (y1 >= 0 after relu), which exposes the dropout mask.
    """
    rnn = Recurrent("rnn_relu", input_size=3, hidden_size=hidden_size, num_layers=2,
                    dropout=rate, bias=False)
    params = _random_params(rnn)
    params[1][0] = {"weight_ih": jnp.eye(hidden_size),
                    "weight_hh": jnp.zeros((hidden_size, hidden_size))}
    return rnn, params


def test_dropout_mask_statistics_and_scale():
    rate = 0.3
    rnn, params = _identity_probe(rate)
    x = _normal(1, (8, 16, 3))
    apply = jax.jit(rnn.apply)
    first_layer, _ = jax.jit(Recurrent("rnn_relu", 3, 32, bias=False).apply)([params[0]], x)
    evaluated, _ = apply(params, x)
    np.testing.assert_allclose(evaluated, first_layer, rtol=1e-6, atol=1e-7)

    dropped, _ = apply(params, x, key=jax.random.key(2))
    positive = np.asarray(first_layer) > 1e-3
    kept = np.asarray(dropped)[positive] != 0
    assert abs((1 - kept.mean()) - rate) < 0.04, f"dropped fraction {1 - kept.mean():.3f}"
    # Kept values are scaled by exactly 1/(1-p) (not 1/(1-p)^2: the last layer gets no dropout).
    ratio = np.asarray(dropped)[positive][kept] / np.asarray(first_layer)[positive][kept]
    np.testing.assert_allclose(ratio, 1.0 / (1.0 - rate), rtol=1e-5)

    again, _ = apply(params, x, key=jax.random.key(2))
    other, _ = apply(params, x, key=jax.random.key(3))
    np.testing.assert_array_equal(again, dropped)
    assert not np.array_equal(other, dropped)


def test_dropout_off_is_deterministic_and_equals_eval():
    rnn = Recurrent("lstm", 3, 4, num_layers=2, dropout=0.0)
    params = _random_params(rnn)
    x = _normal(1, (5, 2, 3))
    apply = jax.jit(rnn.apply)
    evaluated = apply(params, x)
    for seed in (0, 1):
        trained = apply(params, x, key=jax.random.key(seed))
        for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(evaluated)):
            np.testing.assert_array_equal(a, b)
    # dropout > 0 without a key is evaluation: the same as dropout = 0.
    with_rate = Recurrent("lstm", 3, 4, num_layers=2, dropout=0.5)
    for a, b in zip(jax.tree.leaves(jax.jit(with_rate.apply)(params, x)),
                    jax.tree.leaves(evaluated)):
        np.testing.assert_array_equal(a, b)


def test_dropout_single_layer_changes_nothing():
    rnn = Recurrent("gru", 3, 4, num_layers=1, dropout=0.5, bidirectional=True)
    params = _random_params(rnn)
    x = _normal(1, (5, 2, 3))
    apply = jax.jit(rnn.apply)
    for a, b in zip(jax.tree.leaves(apply(params, x, key=jax.random.key(7))),
                    jax.tree.leaves(apply(params, x))):
        np.testing.assert_array_equal(a, b)


def test_dropout_only_between_layers():
    """A 2-layer LSTM with dropout == layer 2 run on the dropped layer-1 output."""
    rate, hidden_size = 0.4, 8
    x = _normal(1, (6, 5, 3))
    lengths = jnp.array([6, 2, 4, 1, 5])
    key = jax.random.key(11)
    # The mask for this key and shape, read off the identity probe.
    probe, probe_params = _identity_probe(rate, hidden_size)
    probe_params[0][0] = {"weight_ih": jnp.ones((hidden_size, 3)),
                          "weight_hh": jnp.zeros((hidden_size, hidden_size))}
    # Layer 1 outputs relu(3) = 3 everywhere, so the probe's zeros are exactly the dropped units.
    probe_output, _ = jax.jit(probe.apply)(probe_params, jnp.ones((6, 5, 3)), key=key)
    mask = np.asarray(probe_output) != 0

    rnn = Recurrent("lstm", 3, hidden_size, num_layers=2, dropout=rate)
    params = _random_params(rnn)
    output, (h_n, c_n) = jax.jit(rnn.apply)(params, x, lengths=lengths, key=key)

    layer1 = Recurrent("lstm", 3, hidden_size)
    layer2 = Recurrent("lstm", hidden_size, hidden_size)
    y1, (h1, c1) = jax.jit(layer1.apply)([params[0]], x, lengths=lengths)
    dropped = jnp.where(mask, y1 / (1 - rate), 0.0)
    y2, (h2, c2) = jax.jit(layer2.apply)([params[1]], dropped, lengths=lengths)
    np.testing.assert_allclose(output, y2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_n, jnp.concatenate([h1, h2]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c_n, jnp.concatenate([c1, c2]), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("module_class,kwargs", [
    (torch.nn.RNN, dict(nonlinearity="tanh")),
    (torch.nn.RNN, dict(nonlinearity="relu", num_layers=2, bidirectional=True, bias=False)),
    (torch.nn.LSTM, dict(num_layers=3, batch_first=True, dropout=0.25)),
    (torch.nn.LSTM, dict(bidirectional=True, bias=False)),
    (torch.nn.GRU, dict(num_layers=2, bidirectional=True, batch_first=True, dropout=0.5)),
])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_conversion_round_trip(module_class, kwargs, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    torch.manual_seed(0)
    module = module_class(3, 5, **kwargs).to(getattr(torch, dtype))
    rnn, params = from_torch(module)
    assert all(leaf.dtype == jnp.dtype(dtype) for leaf in jax.tree.leaves(params))
    rnn.check_params(params)
    back = to_torch(rnn, params)
    assert type(back) is module_class
    for attribute in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                      "dropout", "bidirectional", "nonlinearity"):
        assert getattr(back, attribute, None) == getattr(module, attribute, None), attribute
    original, converted = module.state_dict(), back.state_dict()
    assert list(converted) == list(original)
    for key in original:
        assert converted[key].dtype == original[key].dtype
        assert torch.equal(converted[key], original[key]), key
    # And the other way round: identical jax arrays.
    _, params_again = from_torch(back)
    for a, b in zip(jax.tree.leaves(params_again), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_conversion_float64_needs_x64_or_dtype():
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on globally")
    module = torch.nn.GRU(2, 3).double()
    with pytest.raises(ValueError, match="jax_enable_x64 is off"):
        from_torch(module)
    _, params = from_torch(module, dtype=jnp.float32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_conversion_refuses_projection_and_other_modules():
    with pytest.raises(ValueError, match="proj_size=2"):
        from_torch(torch.nn.LSTM(3, 5, proj_size=2))
    with pytest.raises(ValueError, match="nn.RNN, nn.LSTM or nn.GRU"):
        from_torch(torch.nn.Linear(3, 5))
    with pytest.raises(ValueError, match="built-in modes"):
        to_torch(Recurrent(dataclasses.replace(jaxrnn.LSTM, name="custom"), 2, 3), [])


def test_conversion_names_bad_keys_and_shapes():
    rnn = Recurrent("lstm", input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    state = {k: v.clone() for k, v in torch.nn.LSTM(3, 5, num_layers=2,
                                                     bidirectional=True).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(rnn)

    bad = dict(state, weight_hh_l1_reverse=torch.zeros(20, 4))
    with pytest.raises(ValueError, match=r"'weight_hh_l1_reverse' must have shape "
                                         r"\(20, 5\), got \(20, 4\)"):
        params_from_state_dict(rnn, bad)
    missing = {k: v for k, v in state.items() if k != "bias_ih_l0"}
    with pytest.raises(ValueError, match=r"missing keys \['bias_ih_l0'\]"):
        params_from_state_dict(rnn, missing)
    extra = dict(state, weight_hr_l0=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"unexpected keys \['weight_hr_l0'\]"):
        params_from_state_dict(rnn, extra)
    # A module with other sizes loaded into this configuration.
    with pytest.raises(ValueError, match=r"'weight_ih_l0' must have shape \(20, 3\), "
                                         r"got \(20, 4\)"):
        params_from_state_dict(rnn, torch.nn.LSTM(4, 5, num_layers=2,
                                                  bidirectional=True).state_dict())

    params = params_from_state_dict(rnn, state)
    params[1][0]["weight_ih"] = jnp.zeros((20, 7))
    with pytest.raises(ValueError, match=r"'weight_ih_l1' must have shape \(20, 10\), "
                                         r"got \(20, 7\)"):
        to_torch(rnn, params)
    with pytest.raises(ValueError, match="params must be a list of 2 layers, got 1"):
        to_torch(rnn, params[:1])
