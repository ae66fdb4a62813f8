"""Parallel-in-time evaluation of any recurrent cell by Newton's method.

The whole state sequence s_1..s_T of a layer, s_t = f(s_{t-1}, x_t) with s_0 = carry0, is the
root of the block-triangular system

    r_t(s) = s_t - f(s_{t-1}, x_t) = 0,      t = 1..T.

Each method iterates on a guess of the whole sequence at once. An iteration is parallel over
time (f and its Jacobian at every step, batched over T and B) plus a linear recurrence solved
by `jax.lax.associative_scan` (depth O(log T)):

  "deer"        Newton (Lim et al., ICLR 2024): linearise f at the guess s^(i),
                  s_t = J_t s_{t-1} + (f(s^(i)_{t-1}, x_t) - J_t s^(i)_{t-1}),
                  J_t = df/ds at s^(i)_{t-1}, dense D x D (the scan multiplies matrices:
                  O(T D^3) work). The system is triangular, so s_1..s_i are exact after i
                  iterations: exact after T iterations in exact arithmetic, quadratic
                  convergence near the solution. Nothing bounds the iterates on the way:
                  products of large Jacobians overflow (the "divergence" ELK cures).
  "quasi-deer"  the same with J_t replaced by its diagonal (Gonzalez et al., NeurIPS 2024):
                  O(T D) scan; linear convergence; still exact after T iterations.
  "elk"         damped Newton (Gonzalez et al.): the steps after the converged front f (the
                  first step whose residual is not below tol) are Levenberg-Marquardt steps
                  with damping lam, computed as the filtered mean of a linear-Gaussian
                  state-space model by a parallel Kalman filter (`damped_step`); the front and
                  everything before it take the Newton step, so ELK keeps DEER's guarantee.
                  lam is a trust region adapted per example: it shrinks (x lambda_down, to 0:
                  pure DEER) after a step that decreased the residual from f on, and grows
                  (x lambda_up) after one that did not; a non-finite candidate is kept only up
                  to its own converged front.
  "quasi-elk"   the same with diagonal Jacobians: D independent scalar Kalman filters.

Where DEER's undamped tail is garbage (or overflows) ELK keeps it bounded and meaningful: on
a GRU with W_hh x 5 (T=512, float64) DEER took 116 iterations and ELK 10;
`tests/test_newton.py` and `scripts/newton_convergence.py` measure it. On chaotic dynamics
(positive Lyapunov exponent, e.g. a tanh RNN with W_hh x 5) no method beats the sequential
scan: every one needs about T iterations, and ELK only keeps the iterates finite.

Costs per iteration: one evaluation of f and its Jacobian at every step (dense: D forward-mode
JVPs by `jax.jacfwd`; the quasi methods use the built-in cells' analytic diagonals,
O(G H^2) a step, and diag(jacfwd) for any other cell), and the scan: DEER O(T D^3), ELK about
5x that (a D x D inverse and ~8 products per combination; its scan also compiles slowly, a
few seconds per layer and direction on a CPU), the quasi methods O(T D).

The answer is never unconverged silently. The loop (`lax.while_loop`, fixed shapes, jit-able)
stops when every example's residual max_t,d |r_t| / (1 + |f_t|) is below `SolverOptions.tol`,
or after `max_iters` (default T). Not converged by then: with `fallback=True` (the default)
the layer is recomputed by the sequential scan (`engine.run_direction`'s semantics) and the
fallback is counted (`fallback_count()`, and `SolveInfo.fell_back` from `diagnostics`); with
`fallback=False` the last iterate is returned, `SolveInfo.converged` is False, and (with
`warn=True`) a `JaxrnnWarning` is raised from the device by a host callback.

Gradients are those of the fixed point, not of the iterations: a `jax.custom_vjp` whose
backward pass solves the adjoint recurrence mu_{t-1} = J_t^T mu_t + (dy_t/ds_{t-1})^T ybar_t
(mu_T = the cotangent of carry_T) with the Jacobians at the solution, then takes the
cotangents of params, slab and carry0 from one batched VJP of the step. The adjoint
recurrence is either one reverse associative scan over the dense transposed Jacobians
(`adjoint="dense"`: O(T D^3) work, depth O(log T)) or a sequential reverse scan of
per-step VJPs (`"sequential"`: O(T G H^2) work, depth T, no D x D matrix). The default
("auto") is dense for deer / elk and sequential for the quasi methods. Both are exact: a
quasi method approximates only its forward iteration, never the gradient.

Masks (lengths): a masked step is the identity transition (carry kept, output zero), whose
Jacobian is the identity; `reverse` flips time, solves forward and flips the outputs back,
so the reverse direction starts at each sequence's own last element, as in
`jaxrnn.engine.run_direction`.

`diagnostics(rnn, params, x, ...)` runs a `Recurrent`'s layers through the same solves and
returns, per layer and direction, the iterations, final residual, converged and fell_back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import cells as cells_lib
from jaxrnn import engine as engine_lib
from jaxrnn.errors import JaxrnnWarning

METHODS = ("deer", "quasi-deer", "elk", "quasi-elk")
INITS = ("zeros", "carry0", "inputs")
ADJOINTS = ("auto", "dense", "sequential")

# Default residual tolerances by dtype (relative: |r| / (1 + |f|)); Newton's quadratic
# convergence usually ends far below them.
DEFAULT_TOL = {"float64": 1e-11, "float32": 1e-5}
DEFAULT_TOL_OTHER = 1e-2  # float16 / bfloat16
assert METHODS == engine_lib.NEWTON_METHODS, "the engine dispatches these names here"


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """How the Newton solvers iterate (`Recurrent(solver=SolverOptions(...))`).

    Attributes:
      max_iters: the most iterations (linear solves); 0 means T, the bound after which every
        method here is exact in exact arithmetic (each iteration fixes at least one more
        step).
      tol: residual tolerance on max_t,d |s_t - f(s_{t-1})| / (1 + |f(s_{t-1})|); None picks
        by dtype (`DEFAULT_TOL`: 1e-11 float64, 1e-5 float32, 1e-2 otherwise).
      init: the initial guess of the state sequence: "zeros"; "carry0" (the initial state at
        every step); "inputs" (f(0, x_t) at every step, f(carry0, x_1) at the first: one
        Jacobi sweep from zeros).
      fallback: not converged after max_iters -> run the sequential scan instead (exact) and
        count it (`fallback_count`, `SolveInfo.fell_back`). False: return the last iterate
        with `SolveInfo.converged` False (see `warn`).
      warn: with fallback=False, raise a `JaxrnnWarning` (from the device, by a host
        callback) when a solve ends unconverged.
      lambda_init: ELK's initial damping lam of the steps after the converged front (0: start
        with the DEER step). Damping costs a few iterations on easy problems and saves many
        on hard ones. Measured on GRUs (H=8, float64): at W_hh x 1, T=64, DEER took 4
        iterations and ELK 6 with lambda_init 0.1 (1.0: 8, 0: 4); at W_hh x 5, T=512, DEER
        took 116 and ELK 10 (1.0: 12, 0: 109, lam growing from lambda_min too slowly).
      lambda_up: factor on lam after a step that did not decrease the residual (> 1).
      lambda_down: factor on lam after a step that did (in (0, 1)).
      lambda_min: lam shrinking below it becomes 0 (pure Newton steps); lam growing from 0
        restarts at lambda_min.
      lambda_max: the cap on lam.
      adjoint: the backward pass: "dense" (reverse associative scan over the D x D
        Jacobians), "sequential" (reverse scan of VJPs, no D x D matrix), or "auto" (dense
        for deer / elk, sequential for the quasi methods).
    """

    max_iters: int = 0
    tol: float | None = None
    init: str = "zeros"
    fallback: bool = True
    warn: bool = True
    lambda_init: float = 0.1
    lambda_up: float = 4.0
    lambda_down: float = 0.25
    lambda_min: float = 1e-6
    lambda_max: float = 1e12
    adjoint: str = "auto"

    def __post_init__(self):
        if not isinstance(self.max_iters, (int, np.integer)) or self.max_iters < 0:
            raise ValueError(f"max_iters must be 0 (T) or a positive integer, got "
                             f"{self.max_iters!r}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be positive or None, got {self.tol!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"adjoint must be one of {ADJOINTS}, got {self.adjoint!r}")
        if not self.lambda_init >= 0:
            raise ValueError(f"lambda_init must be >= 0, got {self.lambda_init!r}")
        if not self.lambda_up > 1:
            raise ValueError(f"lambda_up must be > 1, got {self.lambda_up!r}")
        if not 0 < self.lambda_down < 1:
            raise ValueError(f"lambda_down must be in (0, 1), got {self.lambda_down!r}")
        if not 0 < self.lambda_min <= self.lambda_max:
            raise ValueError(f"need 0 < lambda_min <= lambda_max, got {self.lambda_min!r}, "
                             f"{self.lambda_max!r}")

    def tolerance(self, dtype) -> float:
        """The residual tolerance for arrays of `dtype`."""
        if self.tol is not None:
            return float(self.tol)
        return DEFAULT_TOL.get(jnp.dtype(dtype).name, DEFAULT_TOL_OTHER)

    def iterations(self, steps: int) -> int:
        return self.max_iters or steps

    def dense_adjoint(self, method: str) -> bool:
        if self.adjoint == "auto":
            return not method.startswith("quasi")
        return self.adjoint == "dense"


class SolveInfo(NamedTuple):
    """What one solve (one direction of one layer) did.

    iterations: iterations run (linear solves).
    residual: the final iterate's residual, max over the batch (before any fallback).
    converged: residual < tol for every example.
    fell_back: not converged, so recomputed by the sequential scan (the answer is exact).
    nonfinite: iterations whose iterate (DEER) or candidate (ELK) was not finite anywhere:
      plain Newton diverging.
    raised: ELK: steps after which lam grew (the residual from the front on did not
      decrease), summed over the batch; 0 for DEER.
    """

    iterations: Any
    residual: Any
    converged: Any
    fell_back: Any
    nonfinite: Any
    raised: Any


# ------------------------------------------------------------------- fallbacks, counted


_FALLBACKS = [0]
_COUNTER_LOCK = threading.Lock()


def fallback_count() -> int:
    """How many solves fell back to the sequential scan since import (or the last reset).

    Counted on the host by a callback inside the fallback branch, so it counts executions,
    not traces. (Under `jax.vmap` of a whole solve the branch becomes a select that always
    runs, and the count is then not meaningful; `diagnostics` is exact either way.)
    """
    return _FALLBACKS[0]


def reset_fallback_count() -> None:
    with _COUNTER_LOCK:
        _FALLBACKS[0] = 0


def _count_fallback():
    with _COUNTER_LOCK:
        _FALLBACKS[0] += 1


def _warn_unconverged(residual, iterations):
    warnings.warn(JaxrnnWarning(
        f"Newton solve not converged after {int(iterations)} iterations (residual "
        f"{float(residual):.3g}) and fallback=False: returning the last iterate"),
        stacklevel=2)


# ------------------------------------------------------------------- the step function


class _Layout(NamedTuple):
    """How a carry pytree of [..., H_i] leaves packs into one state vector [..., D]."""

    treedef: Any
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, carry):
        leaves, treedef = jax.tree.flatten(carry)
        return cls(treedef, tuple(int(leaf.shape[-1]) for leaf in leaves))

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def pack(self, carry):
        leaves = jax.tree.leaves(carry)
        return leaves[0] if len(leaves) == 1 else jnp.concatenate(leaves, axis=-1)

    def unpack(self, state):
        if len(self.sizes) == 1:
            return jax.tree.unflatten(self.treedef, [state])
        cuts = np.cumsum(self.sizes)[:-1].tolist()
        return jax.tree.unflatten(self.treedef, jnp.split(state, cuts, axis=-1))


def _make_step(cell: cells_lib.Cell, layout: _Layout):
    """step(params, s_prev [D], slab_t [G*H], m <bool>[]) -> (s_t [D], y_t [H]) for ONE
    example: the cell's recurrence, the identity (and a zero output) where m is False."""

    def step(params, s_prev, slab_t, m):
        carry, y = cell.recur(params, layout.unpack(s_prev), cell.unslab(slab_t))
        s_new = layout.pack(carry)
        return jnp.where(m, s_new, s_prev), jnp.where(m, y, jnp.zeros_like(y))

    return step


def _over_time_and_batch(fn):
    """Maps fn(params, a, b, c) over leading [T, B] axes of a, b, c."""
    return jax.vmap(jax.vmap(fn, in_axes=(None, 0, 0, 0)), in_axes=(None, 0, 0, 0))


def _shift(states, s0):
    """[T, B, D] states s_1..s_T -> s_0..s_{T-1}."""
    return jnp.concatenate([s0[None], states[:-1]], axis=0)


# -- diagonal Jacobians of the built-in cells (quasi methods): O(G H^2) per step instead of
#    the O(G H^3) of forming the dense Jacobian; any other cell takes diag(jacfwd).


def _sigmoid_diag(gate, w_diag):
    return gate * (1.0 - gate) * w_diag


def _gate_diag(weight_hh, gate, hidden):
    return jnp.diagonal(weight_hh[gate * hidden:(gate + 1) * hidden])


def _elman_diag(relu):
    def diag(params, h, xp):
        w = params["weight_hh"]
        a = xp + cells_lib.matmul_transposed(h, w)
        slope = (a > 0).astype(a.dtype) if relu else 1.0 - jnp.tanh(a) ** 2
        return slope * jnp.diagonal(w)

    return diag


def _gru_diag(params, h, xp):
    xr, xz, xn = xp
    w = params["weight_hh"]
    hidden = h.shape[-1]
    hr, hz, hn = jnp.split(cells_lib.matmul_transposed(h, w), 3, axis=-1)
    if "bias_hh" in params:
        hn = hn + params["bias_hh"][2 * hidden:]
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    dr = _sigmoid_diag(r, _gate_diag(w, 0, hidden))
    dz = _sigmoid_diag(z, _gate_diag(w, 1, hidden))
    dn = (1.0 - n * n) * (dr * hn + r * _gate_diag(w, 2, hidden))
    return (1.0 - z) * dn + z + (h - n) * dz


def _lstm_diag(params, carry, xp):
    h, c = carry
    xi, xf, xg, xo = xp
    w = params["weight_hh"]
    hidden = h.shape[-1]
    hi, hf, hg, ho = jnp.split(cells_lib.matmul_transposed(h, w), 4, axis=-1)
    i = jax.nn.sigmoid(xi + hi)
    f = jax.nn.sigmoid(xf + hf)
    g = jnp.tanh(xg + hg)
    o = jax.nn.sigmoid(xo + ho)
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    dc_dh = (_sigmoid_diag(f, _gate_diag(w, 1, hidden)) * c
             + _sigmoid_diag(i, _gate_diag(w, 0, hidden)) * g
             + i * (1.0 - g * g) * _gate_diag(w, 2, hidden))
    dh_dh = _sigmoid_diag(o, _gate_diag(w, 3, hidden)) * tc + o * (1.0 - tc * tc) * dc_dh
    return jnp.concatenate([dh_dh, f], axis=-1)  # [dh'/dh, dc'/dc]


def _builtin_diag(cell):
    """The analytic Jacobian diagonal of a built-in cell's `recur`, or None."""
    table = {cells_lib.GRU.recur: _gru_diag, cells_lib.LSTM.recur: _lstm_diag,
             cells_lib.RNN_TANH.recur: _elman_diag(False),
             cells_lib.RNN_RELU.recur: _elman_diag(True)}
    return table.get(cell.recur)


class _Funcs(NamedTuple):
    """The batched pieces of one problem (everything over [T, B])."""

    layout: _Layout
    step: Any      # (params, prev [T,B,D], slab, mask) -> (S [T,B,D], Y [T,B,H])
    jac: Any       # (params, prev, slab, mask) -> [T,B,D,D]
    diag: Any      # (params, prev, slab, mask) -> [T,B,D]
    step_one: Any  # the per-example step


def _funcs(cell, layout) -> _Funcs:
    step_one = _make_step(cell, layout)

    def jac_one(params, s_prev, slab_t, m):
        return jax.jacfwd(lambda s: step_one(params, s, slab_t, m)[0])(s_prev)

    analytic = _builtin_diag(cell)

    def diag_one(params, s_prev, slab_t, m):
        if analytic is None:
            d = jnp.diagonal(jac_one(params, s_prev, slab_t, m))
        else:
            d = analytic(params, layout.unpack(s_prev), cell.unslab(slab_t))
        return jnp.where(m, d, jnp.ones_like(d))

    return _Funcs(layout, _over_time_and_batch(step_one), _over_time_and_batch(jac_one),
                  _over_time_and_batch(diag_one), step_one)


# ------------------------------------------------------------------- linear recurrences


def _affine_dense(e1, e2):
    """(A1, b1) then (A2, b2): x -> A2 (A1 x + b1) + b2."""
    a1, b1 = e1
    a2, b2 = e2
    return a2 @ a1, jnp.einsum("...ij,...j->...i", a2, b1) + b2


def _affine_diag(e1, e2):
    a1, b1 = e1
    a2, b2 = e2
    return a2 * a1, a2 * b1 + b2


def linear_recurrence(a, b, *, dense: bool, reverse: bool = False):
    """x_t = a_t x_{t-1} + b_t (x_{-1} = 0) over axis 0, by an associative scan.

    a: <float>[T, ..., D, D] (dense) or [T, ..., D] (diagonal); b: [T, ..., D]. With
    `reverse`, x_t = a_t x_{t+1} + b_t from the end. Returns x [T, ..., D].
    """
    combine = _affine_dense if dense else _affine_diag
    return jax.lax.associative_scan(combine, (a, b), reverse=reverse)[1]


def _mv(a, x):
    return jnp.einsum("...ij,...j->...i", a, x)


def _mT(a):
    return jnp.swapaxes(a, -1, -2)


def _filter_dense(e1, e2):
    """The parallel Kalman filter's combination (Sarkka & Garcia-Fernandez 2021, Lemma 8)
    of an earlier element e1 = (A, b, C, eta, J) with a later e2."""
    a1, b1, c1, eta1, j1 = e1
    a2, b2, c2, eta2, j2 = e2
    eye = jnp.broadcast_to(jnp.eye(a1.shape[-1], dtype=a1.dtype), c1.shape)
    # (I + C1 J2)^-1; C1, J2 are symmetric PSD, so I + C1 J2 is similar to an SPD matrix
    # >= I: well conditioned, and its transpose (I + J2 C1)^-1 is the same inverse transposed.
    system = eye + c1 @ j2
    inv = jnp.linalg.inv(system.astype(jnp.promote_types(system.dtype, jnp.float32)))
    inv = inv.astype(system.dtype)  # (LAPACK has no half-precision inverse)
    a2m, inv_t = a2 @ inv, _mT(inv)
    a1t = _mT(a1)
    a = a2m @ a1
    b = _mv(a2m, b1 + _mv(c1, eta2)) + b2
    c = a2m @ c1 @ _mT(a2) + c2
    eta = _mv(a1t, _mv(inv_t, eta2 - _mv(j2, b1))) + eta1
    j = a1t @ (inv_t @ j2) @ a1 + j1
    return a, b, 0.5 * (c + _mT(c)), eta, 0.5 * (j + _mT(j))


def _filter_diag(e1, e2):
    """`_filter_dense` for diagonal elements (independent scalar filters per dimension)."""
    a1, b1, c1, eta1, j1 = e1
    a2, b2, c2, eta2, j2 = e2
    m = 1.0 / (1.0 + c1 * j2)
    return (a2 * m * a1, a2 * m * (b1 + c1 * eta2) + b2, a2 * a2 * m * c1 + c2,
            a1 * m * (eta2 - j2 * b1) + eta1, a1 * a1 * m * j2 + j1)


def damped_step(a, u, lam, *, dense: bool):
    """ELK's step: the causal Levenberg-Marquardt step, by a parallel Kalman filter.

    The step d_1..d_T (d_0 = 0; a_0 is ignored) of the linearised system
    d_t = a_t d_{t-1} + u_t is taken as the filtered mean of the linear-Gaussian state-space
    model  d_t = a_t d_{t-1} + u_t + w_t,  observed as  0 = d_t + v_t,  with
    w_t ~ N(0, I), v_t ~ N(0, I / lam_t) where lam_t > 0 and w_t = 0, no observation, where
    lam_t = 0. So d_t minimises, given d_1..d_{t-1}'s posterior,
        sum_{s<=t} ||d_s - a_s d_{s-1} - u_s||^2 + lam_s ||d_s||^2
    (Levenberg-Marquardt, trust radius ~ 1/sqrt(lam)); lam_t = 0 is the Newton (DEER) step
    there. Causal, as the public ELK code (the filter, not the smoother): a step where
    lam = 0 up to t is exact Newton up to t, so damping the steps after the converged front
    keeps DEER's one-more-exact-step-per-iteration guarantee. The filtered covariances are
    bounded by I / lam, so the damped steps never overflow however large prod a_t is.

    Args:
      a: <float>[T, B, D, D] (dense) or [T, B, D] (diagonal) Jacobians.
      u: <float>[T, B, D] (minus the residual).
      lam: <float>[B] or [T, B], >= 0.
    Returns:
      d <float>[T, B, D].
    """
    dtype = u.dtype
    lam = jnp.broadcast_to(lam, u.shape[:2])  # [T, B]
    gain = (lam / (1.0 + lam)).astype(dtype)  # Kalman gain P^- / (P^- + 1/lam), P^- = I
    keep = (1.0 / (1.0 + lam)).astype(dtype)  # 1 - gain
    noise = jnp.where(lam > 0, keep, 0.0).astype(dtype)  # the step's covariance (I - K) Q
    a = a.at[0].set(0.0)
    if dense:
        eye = jnp.broadcast_to(jnp.eye(u.shape[-1], dtype=dtype), a.shape)
        a_t = _mT(a)
        k3, k4 = gain[:, :, None], gain[:, :, None, None]
        r3, r4 = keep[:, :, None], keep[:, :, None, None]
        elems = (r4 * a, r3 * u, noise[:, :, None, None] * eye, -k3 * _mv(a_t, u),
                 k4 * (a_t @ a))
        return jax.lax.associative_scan(_filter_dense, elems)[1]
    k3, r3 = gain[:, :, None], keep[:, :, None]
    elems = (r3 * a, r3 * u, jnp.broadcast_to(noise[:, :, None], a.shape), -k3 * a * u,
             k3 * a * a)
    return jax.lax.associative_scan(_filter_diag, elems)[1]


# ------------------------------------------------------------------- the iterations


def _errors(states, fs):
    """Per step and example: max_d |s - f| / (1 + |f|) -> [T, B], inf where not finite."""
    err = jnp.abs(states - fs) / (1.0 + jnp.abs(fs))
    # Explicitly: XLA:CPU's max-reductions may drop NaNs, and a non-finite iterate must never
    # look converged.
    err = jnp.where(jnp.isfinite(states) & jnp.isfinite(fs), err, jnp.inf)
    return jnp.max(err, axis=2)


def _front(err, tol):
    """The first step of each example whose residual is not below tol (T if none): [B]."""
    bad = ~(err < tol)
    steps = err.shape[0]
    return jnp.where(jnp.any(bad, axis=0), jnp.argmax(bad, axis=0), steps)


def _residual(states, fs):
    """Per example: max_t,d |s - f| / (1 + |f|) -> [B] (inf if anything is not finite)."""
    return jnp.max(_errors(states, fs), axis=0)


def _initial_guess(funcs, params, slab, s0, mask, init):
    steps, batch = slab.shape[:2]
    shape = (steps, batch, funcs.layout.size)
    if init == "zeros":
        return jnp.zeros(shape, s0.dtype)
    if init == "carry0":
        return jnp.broadcast_to(s0[None], shape)
    return funcs.step(params, _shift(jnp.zeros(shape, s0.dtype), s0), slab, mask)[0]


def _newton_deer(funcs, params, slab, s0, mask, *, quasi, tol, max_iters, init):
    """DEER / quasi-DEER: returns (states, SolveInfo without fell_back)."""
    states = _initial_guess(funcs, params, slab, s0, mask, init)
    fs = funcs.step(params, _shift(states, s0), slab, mask)[0]
    zero = jnp.zeros((), jnp.int32)

    def cond(carry):
        it, _, _, res, _ = carry
        return (it < max_iters) & jnp.any(~(res < tol))

    def body(carry):
        it, states, fs, _, nonfinite = carry
        prev = _shift(states, s0)
        if quasi:
            a = funcs.diag(params, prev, slab, mask)
            b = fs - a * prev
        else:
            a = funcs.jac(params, prev, slab, mask)
            b = fs - _mv(a, prev)
        # x_1 = f(s_0) exactly: the first element carries no Jacobian.
        a, b = a.at[0].set(0.0), b.at[0].set(fs[0])
        states = linear_recurrence(a, b, dense=not quasi)
        fs = funcs.step(params, _shift(states, s0), slab, mask)[0]
        bad = jnp.any(~jnp.isfinite(states)).astype(jnp.int32)
        return it + 1, states, fs, _residual(states, fs), nonfinite + bad

    init_carry = (zero, states, fs, _residual(states, fs), zero)
    it, states, fs, res, nonfinite = jax.lax.while_loop(cond, body, init_carry)
    return states, res, it, nonfinite, zero


def _newton_elk(funcs, params, slab, s0, mask, *, quasi, tol, max_iters, init, options):
    """ELK / quasi-ELK: damped (Levenberg-Marquardt) steps after the converged front.

    Each iteration: the front f (first step with residual >= tol) and everything before it
    take the Newton step (exact there), the steps after it the Kalman-filter LM step with
    the example's lam. A finite candidate is the next guess; a non-finite one is kept only
    up to its own converged front (at least f + 1). lam then shrinks if the residual from f
    on (sum over t >= f of the squared relative residual) decreased, else it grows.

    Accepting a finite step only if that residual decreased (the textbook LM rule) was
    measured too, and was worse: the tail's residual is not monotone along a converging
    path, so strict acceptance threw away useful guesses (quasi-ELK on a GRU with W_hh x 5,
    T=512: 447 iterations against 269; accepting with a global smoother as the step: no
    convergence within T at all, because the smoother also moves the converged prefix).
    """
    steps = slab.shape[0]
    states = _initial_guess(funcs, params, slab, s0, mask, init)
    fs = funcs.step(params, _shift(states, s0), slab, mask)[0]
    zero = jnp.zeros((), jnp.int32)
    time = jnp.arange(steps)[:, None]  # [T, 1]

    def cond(carry):
        it, _, _, err, _, _, _ = carry
        return (it < max_iters) & jnp.any(~(err < tol))

    def body(carry):
        it, states, fs, err, lam, nonfinite, raised = carry
        prev = _shift(states, s0)
        a = (funcs.diag if quasi else funcs.jac)(params, prev, slab, mask)
        u = fs - states
        front = _front(err, tol)
        lam_t = jnp.where(time > front[None, :], lam[None, :], 0.0)  # [T, B]

        def newton():
            return linear_recurrence(a.at[0].set(0.0), u, dense=not quasi)

        def damped():
            return damped_step(a, u, lam_t, dense=not quasi)

        delta = jax.lax.cond(jnp.all(lam_t == 0), newton, damped)
        candidate = states + delta
        fs_c = funcs.step(params, _shift(candidate, s0), slab, mask)[0]
        err_c = _errors(candidate, fs_c)
        tail = time >= front[None, :]
        phi = jnp.sum(jnp.where(tail, err * err, 0.0), axis=0)
        phi_c = jnp.sum(jnp.where(tail, err_c * err_c, 0.0), axis=0)
        finite = jnp.all(jnp.isfinite(err_c), axis=0)
        active = front < steps  # [B]: not yet converged
        better = finite & (phi_c < phi)  # [B]: the trust region may grow
        # A finite candidate is the next guess; a non-finite one only up to its converged
        # front (at least one step further than this iteration's front).
        take = finite[None, :] | (time < _front(err_c, tol)[None, :])  # [T, B]
        took_prev = jnp.concatenate([jnp.ones_like(take[:1]), take[:-1]])
        states = jnp.where(take[:, :, None], candidate, states)
        fs = jnp.where(took_prev[:, :, None], fs_c, fs)  # f_t depends on s_{t-1} only
        err = _errors(states, fs)
        down = lam * options.lambda_down
        down = jnp.where(down < options.lambda_min, 0.0, down)
        up = jnp.clip(lam * options.lambda_up, options.lambda_min, options.lambda_max)
        lam = jnp.where(active, jnp.where(better, down, up), lam).astype(lam.dtype)
        nonfinite = nonfinite + jnp.any(~finite).astype(jnp.int32)
        raised = raised + jnp.sum(active & ~better).astype(jnp.int32)
        return it + 1, states, fs, err, lam, nonfinite, raised

    # lam in at least float32: lambda_max would overflow a float16
    lam0 = jnp.full((slab.shape[1],), options.lambda_init,
                    jnp.promote_types(slab.dtype, jnp.float32))
    init_carry = (zero, states, fs, _errors(states, fs), lam0, zero, zero)
    it, states, _, err, _, nonfinite, raised = jax.lax.while_loop(cond, body, init_carry)
    return states, jnp.max(err, axis=0), it, nonfinite, raised


def _sequential_states(funcs, params, slab, s0, mask):
    """The sequential scan (run_direction's semantics), returning every state."""
    step_b = jax.vmap(funcs.step_one, in_axes=(None, 0, 0, 0))

    def body(s, inputs):
        slab_t, m_t = inputs
        s_new, _ = step_b(params, s, slab_t, m_t)
        return s_new, s_new

    return jax.lax.scan(body, s0, (slab, mask))[1]


def _forward(static, params, slab, s0, mask):
    """Solve, then the outputs at the solution: (ys, s_T, info), states."""
    cell, method, options, layout = static
    funcs = _funcs(cell, layout)
    steps = slab.shape[0]
    tol = options.tolerance(slab.dtype)
    max_iters = options.iterations(steps)
    quasi = method.startswith("quasi")
    if method.endswith("deer"):
        states, res, it, nonfinite, raised = _newton_deer(
            funcs, params, slab, s0, mask, quasi=quasi, tol=tol, max_iters=max_iters,
            init=options.init)
    else:
        states, res, it, nonfinite, raised = _newton_elk(
            funcs, params, slab, s0, mask, quasi=quasi, tol=tol, max_iters=max_iters,
            init=options.init, options=options)
    converged = jnp.all(res < tol)
    residual = jnp.max(res)
    if options.fallback:
        def sequential(_):
            jax.debug.callback(_count_fallback)
            return _sequential_states(funcs, params, slab, s0, mask)

        states = jax.lax.cond(converged, lambda s: s, sequential, states)
        fell_back = ~converged
    else:
        if options.warn:
            def warn(operands):
                jax.debug.callback(_warn_unconverged, *operands)

            jax.lax.cond(converged, lambda _: None, warn, (residual, it))
        fell_back = jnp.zeros((), bool)
    new_states, ys = funcs.step(params, _shift(states, s0), slab, mask)
    info = SolveInfo(it, residual, converged, fell_back, nonfinite, raised)
    return (ys, new_states[-1], info), states


# ------------------------------------------------------------------- the fixed point's VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fixed_point(static, params, slab, s0, mask):
    return _forward(static, params, slab, s0, mask)[0]


def _fixed_point_fwd(static, params, slab, s0, mask):
    out, states = _forward(static, params, slab, s0, mask)
    return out, (params, slab, s0, mask, states)


def _fixed_point_bwd(static, residuals, cotangents):
    cell, method, options, layout = static
    params, slab, s0, mask, states = residuals
    ys_bar, s_t_bar, _ = cotangents  # the info is not differentiable
    funcs = _funcs(cell, layout)
    prev = _shift(states, s0)

    def outputs(params, prev, slab):
        return funcs.step(params, prev, slab, mask)

    _, vjp_fn = jax.vjp(outputs, params, prev, slab)
    if options.dense_adjoint(method):
        # mu_t = dL/ds_t (total): mu_T = s_T_bar, mu_t = J_{t+1}^T mu_{t+1} + c_{t+1} with
        # c_t = (dy_t/ds_{t-1})^T ybar_t, one reverse scan over the transposed Jacobians.
        c = vjp_fn((jnp.zeros_like(states), ys_bar))[1]
        jac_t = _mT(funcs.jac(params, prev, slab, mask))
        a = jnp.concatenate([jac_t[1:], jnp.zeros_like(jac_t[:1])])
        b = jnp.concatenate([c[1:], s_t_bar[None]])
        mu = linear_recurrence(a, b, dense=True, reverse=True)
    else:
        step_b = jax.vmap(funcs.step_one, in_axes=(None, 0, 0, 0))

        def body(mu_t, inputs):
            prev_t, slab_t, m_t, ybar_t = inputs
            _, vjp_t = jax.vjp(lambda s: step_b(params, s, slab_t, m_t), prev_t)
            return vjp_t((mu_t, ybar_t))[0], mu_t

        _, mu = jax.lax.scan(body, s_t_bar, (prev, slab, mask, ys_bar), reverse=True)
    params_bar, prev_bar, slab_bar = vjp_fn((mu, ys_bar))
    return params_bar, slab_bar, prev_bar[0], None


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


# ------------------------------------------------------------------- entry points


def solve_with_info(cell: cells_lib.Cell, params, slab, carry0, *, reverse=False, mask=None,
                    method="deer", options: SolverOptions | None = None):
    """One direction of one layer by a Newton method; (ys, carry_T, SolveInfo).

    Args:
      cell: a cell with `Cell.takes_slab` (every built-in cell).
      params: the cell's parameter dict.
      slab: <float>[T, B, G*H], x @ W_ih^T + cell.slab_bias(params).
      carry0: the initial carry, a pytree of <float>[B, H] arrays.
      reverse: run from t = T-1 down to 0 (outputs stay in time order).
      mask: optional <bool>[T, B]; False marks padding (identity step, zero output).
      method: "deer", "quasi-deer", "elk" or "quasi-elk".
      options: `SolverOptions` (None: the defaults).

    Returns:
      (ys <float>[T, B, H], carry_T, info): what `engine.run_direction` returns, and
      `SolveInfo`. Differentiable in params, slab and carry0 (through the fixed point).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    options = SolverOptions() if options is None else options
    if not isinstance(options, SolverOptions):
        raise ValueError(f"options must be a jaxrnn.newton.SolverOptions, got "
                         f"{type(options).__name__}")
    if not cell.takes_slab:
        raise ValueError(f"cell {cell.name!r} needs num_gates, slab_bias, unslab and recur "
                         f"for the Newton solvers")
    slab = jnp.asarray(slab)
    steps, batch = slab.shape[:2]
    if mask is None:
        mask = jnp.ones((steps, batch), bool)
    mask = jnp.asarray(mask, bool)
    if reverse:
        slab, mask = slab[::-1], mask[::-1]
    if steps == 0:  # nothing to solve
        ys, carry_t = engine_lib.run_direction(cell, params, None, carry0, mask=mask, slab=slab)
        zero = jnp.zeros((), jnp.int32)
        return ys, carry_t, SolveInfo(zero, jnp.zeros((), slab.dtype), jnp.ones((), bool),
                                      jnp.zeros((), bool), zero, zero)
    layout = _Layout.of(carry0)
    s0 = layout.pack(carry0).astype(slab.dtype)
    static = (cell, method, options, layout)
    ys, s_t, info = _fixed_point(static, params, slab, s0, mask)
    if reverse:
        ys = ys[::-1]
    return ys, layout.unpack(s_t), info


_RECORDERS: list[list] = []  # `diagnostics` collects each solve's info while it traces


def solve(cell: cells_lib.Cell, params, slab, carry0, *, reverse=False, mask=None,
          method="deer", options: SolverOptions | None = None):
    """`solve_with_info` without the info: (ys, carry_T), what `Recurrent` runs for
    impl="deer" | "quasi-deer" | "elk" | "quasi-elk"."""
    ys, carry_t, info = solve_with_info(cell, params, slab, carry0, reverse=reverse, mask=mask,
                                        method=method, options=options)
    if _RECORDERS:
        _RECORDERS[-1].append(info)
    return ys, carry_t


@contextlib.contextmanager
def _recording():
    infos: list = []
    _RECORDERS.append(infos)
    try:
        yield infos
    finally:
        _RECORDERS.pop()


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """What `diagnostics` returns.

    layers: layers[l][d] is the `SolveInfo` (Python numbers) of layer l, direction d.
    output, h_n: what `Recurrent.apply` returned on the same call.
    """

    layers: list
    output: Any
    h_n: Any

    @property
    def infos(self) -> list[SolveInfo]:
        return [info for layer in self.layers for info in layer]

    @property
    def converged(self) -> bool:
        return all(info.converged for info in self.infos)

    @property
    def fallbacks(self) -> int:
        return sum(int(info.fell_back) for info in self.infos)

    @property
    def iterations(self) -> int:
        return max(info.iterations for info in self.infos)

    def table(self) -> str:
        rows = ["layer dir  iters  residual   converged  fell_back  nonfinite  raised"]
        for l, layer in enumerate(self.layers):
            for d, i in enumerate(layer):
                rows.append(f"{l:5d} {d:3d} {i.iterations:6d}  {i.residual:9.2e}  "
                            f"{str(i.converged):9s}  {str(i.fell_back):9s}  "
                            f"{i.nonfinite:9d}  {i.raised:6d}")
        return "\n".join(rows)


@functools.partial(jax.jit, static_argnums=0)
def _traced_apply(rnn, params, x, hx, lengths, projected0):
    with _recording() as infos:
        output, h_n = rnn.apply(params, x, hx, lengths, projected0=projected0)
    return output, h_n, list(infos)


def _python(info: SolveInfo) -> SolveInfo:
    return SolveInfo(int(info.iterations), float(info.residual), bool(info.converged),
                     bool(info.fell_back), int(info.nonfinite), int(info.raised))


def diagnostics(rnn, params, x=None, hx=None, lengths=None, *, projected0=None,
                method: str | None = None, options: SolverOptions | None = None) -> Diagnostics:
    """Runs `rnn.apply` (jitted) through the Newton solves and reports each of them.

    Args:
      rnn: a `jaxrnn.Recurrent`; `method` / `options` override its impl / solver (so one
        network can be checked under every method).
      params, x, hx, lengths, projected0: as for `Recurrent.apply`.

    Returns:
      `Diagnostics`: per layer and direction a `SolveInfo` (iterations, residual,
      converged, fell_back, nonfinite, raised), and the output and h_n of the call.
    """
    if method is not None:
        rnn = dataclasses.replace(rnn, impl=method)
    if options is not None:
        rnn = dataclasses.replace(rnn, solver=options)
    if rnn.impl not in METHODS:
        raise ValueError(f"diagnostics needs a Newton impl ({', '.join(METHODS)}), got "
                         f"impl={rnn.impl!r}; pass method=")
    if lengths is not None:
        lengths = np.asarray(lengths)
        steps = (np.shape(projected0[0])[0] if x is None
                 else np.shape(x)[1 if rnn.batch_first else 0])
        if lengths.size and (lengths.min() < 1 or lengths.max() > steps):
            raise ValueError(f"lengths must be in 1..{steps} (T), got min {lengths.min()} and "
                             f"max {lengths.max()}")
    if projected0 is not None:
        projected0 = list(projected0)
    output, h_n, infos = _traced_apply(rnn, params, x, hx, lengths, projected0)
    infos = [_python(info) for info in jax.device_get(infos)]
    per = rnn.num_directions
    layers = [infos[layer * per:(layer + 1) * per] for layer in range(rnn.num_layers)]
    return Diagnostics(layers, output, h_n)


__all__ = ["METHODS", "SolverOptions", "SolveInfo", "Diagnostics", "solve", "solve_with_info",
           "diagnostics", "fallback_count", "reset_fallback_count", "linear_recurrence",
           "damped_step"]
