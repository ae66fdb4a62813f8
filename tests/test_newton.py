"""The Newton solvers of `jaxrnn.newton` (impl="deer" | "quasi-deer" | "elk" | "quasi-elk").

1. Forward parity: every method, for gru / lstm / rnn_tanh, two layers, bidirectional, random
   hx, with and without lengths, gives the (output, h_n) of impl="reference" and of torch
   (nn.GRU / LSTM / RNN through pack_padded_sequence) to 1e-9 in float64; float32 loosely.
   The default run covers each cell x method once, lengths alternating so that every method
   and every cell runs both with and without lengths; `-m slow` runs the full product.
2. Gradients through the fixed point against torch.autograd (params, x, hx) in float64, both
   adjoints (dense scan, sequential scan) on both gated cells, with and without lengths
   (two layers, bidirectional; one layer for ELK, whose dense filter is slow to compile).
3. The pieces: analytic Jacobian diagonals against jacfwd, the Kalman-filter ELK step
   against the causal Levenberg-Marquardt problem solved densely, the initial guesses.
4. Diagnostics: iterations <= T, residual < tol; a tiny max_iters falls back (counted) and is
   still exact, or with fallback=False says it did not converge and warns; quasi-DEER needs
   more iterations than DEER; on large recurrent weights (W_hh x 5) DEER vs ELK.

The largest differences and the iteration counts seen are written to the terminal at the
end of the module.
"""

from __future__ import annotations

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxrnn import Recurrent, cells, newton, run_direction
from jaxrnn.errors import JaxrnnWarning
from jaxrnn.fast import input_slab
from torch_baselines.convert import params_to_state_dict, to_torch
from torch_baselines.packed import PackedRecurrent

CELLS = ("gru", "lstm", "rnn_tanh")
METHODS = newton.METHODS
STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE = 16, 3, 3, 4
LENGTHS = [STEPS, 7, 1]  # the longest, a middle one and a single step
TOL = {"float64": 1e-9, "float32": 5e-5}  # float32: the solver stops at residual 1e-5

REPORT: dict[str, dict[str, float]] = {"float64": {}, "float32": {}}
NOTES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def report(request):
    """Writes the largest differences and the convergence notes at the end of the module."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for dtype, diffs in REPORT.items():
            if diffs:
                print(f"\n[newton] {dtype} largest diffs: "
                      + ", ".join(f"{k}={v:.2g}" for k, v in sorted(diffs.items())))
        for note in NOTES:
            print(f"[newton] {note}")


def _record(dtype, name, diff):
    REPORT[dtype][name] = max(REPORT[dtype].get(name, 0.0), diff)


def _max_diff(a, b) -> float:
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert pairs and len(jax.tree.leaves(a)) == len(jax.tree.leaves(b))
    for x, y in pairs:
        assert np.shape(x) == np.shape(y), (np.shape(x), np.shape(y))
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def _problem(mode, dtype, num_layers=2, bidirectional=True, seed=0, with_hx=True):
    """A Recurrent (reference impl), numpy-drawn params, x, hx and loss weights."""
    rng = np.random.default_rng(seed)
    rnn = Recurrent(mode, INPUT_SIZE, HIDDEN_SIZE, num_layers=num_layers,
                    bidirectional=bidirectional, impl="reference")
    shapes = jax.eval_shape(lambda: rnn.init(jax.random.key(0), jnp.dtype(dtype)))
    bound = HIDDEN_SIZE ** -0.5
    params = jax.tree.map(lambda s: jnp.asarray(rng.uniform(-bound, bound, s.shape), dtype),
                          shapes)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(dtype)
    state_shape = (num_layers * rnn.num_directions, BATCH, HIDDEN_SIZE)
    hx = None
    if with_hx:
        hx = tuple(rng.standard_normal(state_shape).astype(dtype) * 0.5
                   for _ in range(2 if mode == "lstm" else 1))
        hx = hx if mode == "lstm" else hx[0]
    weights = {"output": rng.standard_normal((STEPS, BATCH, rnn.num_directions * HIDDEN_SIZE)),
               "h_n": [rng.standard_normal(state_shape) for _ in range(2)]}
    return rnn, params, x, hx, weights


def _torch_forward(rnn, params, x, hx, lengths, weights=None):
    """(output, h_n) from torch through pack_padded_sequence, and the gradients of the
    weighted loss with respect to every parameter, x and hx if `weights`."""
    module = to_torch(rnn, params)
    x_t = torch.tensor(np.asarray(x), requires_grad=True)
    leaves = None if hx is None else [torch.tensor(np.asarray(h), requires_grad=True)
                                      for h in jax.tree.leaves(hx)]
    torch_hx = None if leaves is None else (tuple(leaves) if len(leaves) == 2 else leaves[0])
    output, state = PackedRecurrent(module)(x_t, None if lengths is None else
                                            torch.tensor(lengths), torch_hx)
    states = state if isinstance(state, tuple) else (state,)
    result = {"output": output.detach().numpy(),
              "h_n": tuple(s.detach().numpy() for s in states)}
    if weights is not None:
        loss = (output * torch.tensor(weights["output"])).sum() + sum(
            (s * torch.tensor(w)).sum() for s, w in zip(states, weights["h_n"]))
        loss.backward()
        result["grad_x"] = x_t.grad.numpy()
        result["grad_hx"] = tuple(h.grad.numpy() for h in leaves)
        result["grad_params"] = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return result


def _h_n_tuple(h_n):
    return tuple(np.asarray(a) for a in jax.tree.leaves(h_n))


def _check_forward(mode, method, with_lengths, dtype):
    rnn, params, x, hx, _ = _problem(mode, dtype)
    lengths = np.array(LENGTHS) if with_lengths else None
    diag = newton.diagnostics(rnn, params, x, hx, lengths, method=method)
    ref_output, ref_h_n = rnn.apply(params, x, hx, lengths)  # impl="reference"
    torch_ref = _torch_forward(rnn, params, x, hx, lengths)
    scale = 1.0 if dtype == "float64" else max(1.0, float(np.max(np.abs(ref_output))))
    for name, got, want in [("vs_reference", (diag.output, diag.h_n), (ref_output, ref_h_n)),
                            ("vs_torch", (np.asarray(diag.output), _h_n_tuple(diag.h_n)),
                             (torch_ref["output"], torch_ref["h_n"]))]:
        diff = _max_diff(got, want) / scale
        _record(dtype, f"{name}_{method}", diff)
        assert diff <= TOL[dtype], f"{mode} {method} lengths={with_lengths}: {name} {diff:.3g}"
    if with_lengths:  # padding is zero in the output, as pad_packed_sequence's
        mask = np.arange(STEPS)[:, None] < np.array(LENGTHS)[None, :]
        assert np.all(np.asarray(diag.output)[~mask] == 0.0)
    tol = newton.SolverOptions().tolerance(jnp.dtype(dtype))
    for info in diag.infos:
        assert info.converged and not info.fell_back, info
        assert info.iterations <= STEPS and info.residual < tol, info
    return diag


def _cases(full: bool):
    """(mode, method, with_lengths): each cell x method once, lengths alternating (every
    method and every cell both ways); `full`: every combination."""
    cases = []
    for i, mode in enumerate(CELLS):
        for j, method in enumerate(METHODS):
            if full:
                cases += [(mode, method, True), (mode, method, False)]
            else:
                cases.append((mode, method, (i + j) % 2 == 0))
    return cases


def _case_id(case):
    mode, method, with_lengths = case
    return f"{mode}-{method}-{'lengths' if with_lengths else 'no_lengths'}"


def test_design_covers_both_ways():
    cases = _cases(full=False)
    for method in METHODS:
        assert {c[2] for c in cases if c[1] == method} == {True, False}
    for mode in CELLS:
        assert {c[2] for c in cases if c[0] == mode} == {True, False}


@pytest.mark.parametrize("case", _cases(full=False), ids=_case_id)
def test_forward_matches_reference_and_torch(case, x64):
    _check_forward(*case, "float64")


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases(full=True), ids=_case_id)
def test_forward_full_product(case, x64):
    _check_forward(*case, "float64")


@pytest.mark.parametrize("case", [("lstm", "deer", True), ("gru", "quasi-elk", False)],
                         ids=_case_id)
def test_forward_float32(case):
    _check_forward(*case, "float32")


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases(full=True), ids=_case_id)
def test_forward_float32_full_product(case):
    _check_forward(*case, "float32")


# ------------------------------------------------------------------------ gradients


GRAD_CASES = [("gru", "deer", True, "auto"),          # dense adjoint
              ("gru", "quasi-deer", False, "auto"),   # sequential adjoint
              ("lstm", "elk", False, "sequential"),
              ("lstm", "quasi-elk", True, "dense")]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gradients_match_torch(case, x64):
    mode, method, with_lengths, adjoint = case
    num_layers = 1 if method.endswith("elk") else 2  # ELK's dense filter compiles slowly
    base, params, x, hx, weights = _problem(mode, "float64", num_layers=num_layers, seed=1)
    rnn = Recurrent(mode, INPUT_SIZE, HIDDEN_SIZE, num_layers=num_layers, bidirectional=True,
                    impl=method, solver=newton.SolverOptions(adjoint=adjoint))
    lengths = np.array(LENGTHS) if with_lengths else None

    def loss(params, x, hx):
        output, h_n = rnn.apply(params, x, hx, lengths)
        return jnp.sum(output * weights["output"]) + sum(
            jnp.sum(h * w) for h, w in zip(jax.tree.leaves(h_n), weights["h_n"]))

    grad_params, grad_x, grad_hx = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, hx)
    want = _torch_forward(base, params, x, hx, lengths, weights)
    diffs = {"grad_x": _max_diff(grad_x, want["grad_x"]),
             "grad_hx": _max_diff(tuple(jax.tree.leaves(grad_hx)), want["grad_hx"]),
             "grad_params": _max_diff(params_to_state_dict(base, grad_params),
                                      want["grad_params"])}
    for name, diff in diffs.items():
        _record("float64", f"{name}_{adjoint}_{method}", diff)
        assert diff <= TOL["float64"], f"{case}: {name} differs by {diff:.3g}"


# ------------------------------------------------------------------------ the pieces


@pytest.mark.parametrize("mode", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
def test_analytic_jacobian_diagonal(mode, x64):
    """The quasi methods' diagonals of the built-in cells equal diag(jacfwd), masked too."""
    cell = cells.get_cell(mode)
    rng = np.random.default_rng(2)
    params = cell.init(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, True, jnp.float64)
    params = jax.tree.map(lambda a: a * 2.0, params)  # leave the linear regions
    carry = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal((5,) + a.shape)),
                         cell.zero_carry(HIDDEN_SIZE, jnp.float64))
    layout = newton._Layout.of(carry)
    state = layout.pack(carry)
    slab = jnp.asarray(rng.standard_normal((5, cell.num_gates * HIDDEN_SIZE)))
    mask = jnp.array([True, True, False, True, True])
    funcs = newton._funcs(cell, layout)
    assert newton._builtin_diag(cell) is not None
    one = jax.vmap(funcs.step_one, in_axes=(None, 0, 0, 0))
    jac = jax.vmap(lambda s, x, m: jax.jacfwd(lambda v: funcs.step_one(params, v, x, m)[0])(s))(
        state, slab, mask)
    diag = jax.vmap(lambda s, x, m: funcs.diag(params, s[None, None], x[None, None],
                                               m[None, None])[0, 0])(state, slab, mask)
    np.testing.assert_allclose(diag, jnp.diagonal(jac, axis1=-2, axis2=-1), atol=1e-13)
    np.testing.assert_array_equal(diag[2], np.ones(layout.size))  # masked: the identity
    assert one(params, state, slab, mask)[0].shape == state.shape


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "diagonal"])
def test_damped_step_is_the_causal_lm_step(dense, x64):
    """ELK's filtered step d_t minimises the LM objective truncated at t: solved densely."""
    rng = np.random.default_rng(3)
    steps, batch, dim = 6, 2, 3
    a = rng.standard_normal((steps, batch, dim, dim) if dense else (steps, batch, dim)) * 2.0
    u = rng.standard_normal((steps, batch, dim))
    lam = rng.uniform(0.1, 3.0, (steps, batch))
    lam[:2, 0] = 0.0  # undamped (Newton) steps, as ELK's converged prefix
    got = np.asarray(newton.damped_step(jnp.asarray(a), jnp.asarray(u), jnp.asarray(lam),
                                        dense=dense))
    for b in range(batch):
        for t in range(steps):
            # min over d_1..d_t of sum_s ||d_s - a_s d_{s-1} - u_s||^2 + lam_s ||d_s||^2,
            # with d_s = a_s d_{s-1} + u_s exactly where lam_s = 0 (no process noise there).
            n = (t + 1) * dim
            rows, rhs = [], []
            for s in range(t + 1):
                row = np.zeros((dim, n))
                row[:, s * dim:(s + 1) * dim] = np.eye(dim)
                if s > 0:
                    a_s = a[s, b] if dense else np.diag(a[s, b])
                    row[:, (s - 1) * dim:s * dim] = -a_s
                weight = 1.0 if lam[s, b] > 0 else 1e8  # exact: a heavy penalty
                rows.append(weight * row)
                rhs.append(weight * u[s, b])
                if lam[s, b] > 0:
                    damp = np.zeros((dim, n))
                    damp[:, s * dim:(s + 1) * dim] = np.sqrt(lam[s, b]) * np.eye(dim)
                    rows.append(damp)
                    rhs.append(np.zeros(dim))
            solution = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0]
            np.testing.assert_allclose(got[t, b], solution[t * dim:], atol=1e-7)


def test_linear_recurrence_against_a_loop(x64):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((9, 2, 3, 3)) * 0.7
    b = rng.standard_normal((9, 2, 3))
    for reverse in (False, True):
        got = newton.linear_recurrence(jnp.asarray(a), jnp.asarray(b), dense=True,
                                       reverse=reverse)
        x = np.zeros((2, 3))
        order = range(8, -1, -1) if reverse else range(9)
        for t in order:
            x = np.einsum("bij,bj->bi", a[t], x) + b[t]
            np.testing.assert_allclose(got[t], x, atol=1e-12)


@pytest.mark.parametrize("init", newton.INITS)
def test_initial_guesses(init, x64):
    rnn, params, x, hx, _ = _problem("gru", "float64", num_layers=1, bidirectional=True)
    lengths = np.array(LENGTHS)
    diag = newton.diagnostics(rnn, params, x, hx, lengths, method="quasi-deer",
                              options=newton.SolverOptions(init=init))
    ref = rnn.apply(params, x, hx, lengths)
    assert _max_diff((diag.output, diag.h_n), ref) < 1e-9
    assert diag.converged and diag.fallbacks == 0


def test_options_are_checked():
    for bad in [dict(max_iters=-1), dict(tol=0.0), dict(init="ones"), dict(adjoint="x"),
                dict(lambda_up=1.0), dict(lambda_down=1.0), dict(lambda_min=0.0),
                dict(lambda_init=-1.0)]:
        with pytest.raises(ValueError):
            newton.SolverOptions(**bad)
    assert newton.SolverOptions().tolerance(jnp.float32) == 1e-5
    with pytest.raises(ValueError, match="method"):
        newton.solve(cells.GRU, {}, jnp.zeros((2, 1, 3)), jnp.zeros((1, 1)), method="newton")
    with pytest.raises(ValueError, match="Newton impl"):
        newton.diagnostics(Recurrent("gru", 1, 1), None, jnp.zeros((2, 1, 1)))


# ------------------------------------------------------------------------ diagnostics


def test_fallback_is_counted_and_exact(x64):
    rnn, params, x, hx, _ = _problem("lstm", "float64")  # 2 layers x 2 directions
    lengths = np.array(LENGTHS)
    ref = rnn.apply(params, x, hx, lengths)
    before = newton.fallback_count()
    options = newton.SolverOptions(max_iters=2)
    diag = newton.diagnostics(rnn, params, x, hx, lengths, method="quasi-deer",
                              options=options)
    jax.effects_barrier()
    assert diag.fallbacks == 4 and newton.fallback_count() - before == 4
    for info in diag.infos:
        assert info.fell_back and not info.converged and info.iterations == 2
    assert _max_diff((diag.output, diag.h_n), ref) < 1e-12

    # fallback=False: the last iterate, said to be unconverged, and a warning
    options = newton.SolverOptions(max_iters=2, fallback=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        diag = newton.diagnostics(rnn, params, x, hx, lengths, method="quasi-deer",
                                  options=options)
        jax.effects_barrier()
    assert any(issubclass(w.category, JaxrnnWarning) and "not converged" in str(w.message)
               for w in caught)
    assert not diag.converged and diag.fallbacks == 0
    assert all(not info.converged and info.residual > 1e-6 for info in diag.infos)
    assert _max_diff((diag.output, diag.h_n), ref) > 1e-6


def test_quasi_deer_needs_more_iterations_than_deer(x64):
    rnn, params, x, hx, _ = _problem("gru", "float64", num_layers=1, bidirectional=True)
    deer = newton.diagnostics(rnn, params, x, hx, method="deer")
    quasi = newton.diagnostics(rnn, params, x, hx, method="quasi-deer")
    its_deer = [i.iterations for i in deer.infos]
    its_quasi = [i.iterations for i in quasi.infos]
    NOTES.append(f"GRU H={HIDDEN_SIZE} T={STEPS}: DEER iterations {its_deer}, quasi-DEER "
                 f"{its_quasi}")
    assert all(q > d for d, q in zip(its_deer, its_quasi))
    assert all(i.converged for i in deer.infos + quasi.infos)


def _large_weights_problem(mode, dtype, steps, hidden, scale=5.0, seed=5):
    cell = cells.get_cell(mode)
    rng = np.random.default_rng(seed)
    params = cell.init(jax.random.key(seed), INPUT_SIZE, hidden, True, jnp.dtype(dtype))
    params = dict(params, weight_hh=params["weight_hh"] * scale)
    x = jnp.asarray(rng.standard_normal((steps, 2, INPUT_SIZE)), dtype)
    slab = input_slab(params, x, cell.slab_bias(params))
    carry0 = jax.tree.map(lambda a: jnp.zeros((2,) + a.shape, a.dtype),
                          cell.zero_carry(hidden, jnp.dtype(dtype)))
    return cell, params, slab, carry0


def _solve_info(cell, params, slab, carry0, method, options):
    fn = jax.jit(lambda p, s, c: newton.solve_with_info(cell, p, s, c, method=method,
                                                        options=options))
    ys, _, info = fn(params, slab, carry0)
    return ys, jax.device_get(info)


@pytest.mark.parametrize("dtype,scale", [
    ("float64", 5.0), pytest.param("float32", 10.0, marks=pytest.mark.slow)])
def test_large_recurrent_weights(dtype, scale, request):
    """A GRU with large recurrent weights, a stand-in for a trained model (W_hh x 5 in
    float64, x 10 in float32, T=128): DEER's undamped iterates crawl (float64: 20
    iterations against ELK's 10) or stall above the tolerance (float32: not converged after
    T iterations); ELK converges, never non-finite, to the sequential answer."""
    steps = 128
    if dtype == "float64":
        request.getfixturevalue("x64")
    cell, params, slab, carry0 = _large_weights_problem("gru", dtype, steps, hidden=8,
                                                        scale=scale)
    ref, _ = run_direction(cell, params, None, carry0, slab=slab)
    options = newton.SolverOptions(fallback=False, warn=False)
    results = {m: _solve_info(cell, params, slab, carry0, m, options) for m in ("deer", "elk")}
    deer, elk = results["deer"][1], results["elk"][1]
    NOTES.append(f"GRU H=8 W_hh x{scale:g} T={steps} {dtype}: DEER {int(deer.iterations)} "
                 f"iterations ({int(deer.nonfinite)} non-finite, converged "
                 f"{bool(deer.converged)}, max diff to the scan "
                 f"{_max_diff(results['deer'][0], ref):.2g}); ELK {int(elk.iterations)} "
                 f"({int(elk.nonfinite)} non-finite, lam raised {int(elk.raised)} times, "
                 f"converged {bool(elk.converged)}, max diff "
                 f"{_max_diff(results['elk'][0], ref):.2g})")
    assert bool(elk.converged) and int(elk.nonfinite) == 0
    assert _max_diff(results["elk"][0], ref) < (1e-9 if dtype == "float64" else 1e-5)
    if dtype == "float64":
        assert int(elk.iterations) < int(deer.iterations)
    else:  # the divergence ELK is for
        assert not bool(deer.converged) or int(deer.nonfinite) > 0
