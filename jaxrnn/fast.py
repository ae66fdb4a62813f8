"""Fast recurrences: hand-written backward passes for the built-in cells.

The built-in cells (`jaxrnn.cells`) carry these as their `fast` recurrence (unmasked layers),
and the wrappers of their fused CPU kernels (`*_kernel`, masked and unmasked: the section
"fused kernels" below); `jaxrnn.Recurrent` runs them when its `impl` says so. They
compute what `jaxrnn.engine.run_direction` computes (tests/test_fast.py checks both against
torch.nn.LSTM / GRU / RNN to 1e-10 in float64), faster on CPU. One direction of one layer is

  slab = xs @ W_ih^T + b                    one GEMM over all T*B rows (`input_slab`); JAX's
                                            autodiff gives dW_ih, db and dxs as GEMMs too
  ys, carry_T = recurrence(W_hh, slab, ..)  a `jax.custom_vjp` scan

What the custom VJP does, and why (numbers in scripts/profile_engine.py, docs/CPU_PROFILE_NOTES.md):
  forward   the slab is split per gate *before* the loop: slicing a [B, G*H] slab of it
            inside the body is about 2x slower on XLA:CPU. Under `grad` the loop stacks h,
            c and the activated gates; without `grad` it stacks only h. Stacking the gates
            beat recomputing them after the loop with one GEMM by 10-13% of a layer's
            forward+backward (LSTM at W2, W3 and W4 sizes).
  backward  every factor of the gate derivatives that does not depend on the incoming
            gradient is computed before the loop, vectorised over T*B, so the body is one
            [B, G*H] x [G*H, H] matmul and a few multiplies; it stacks only dh (and dc), the
            gate gradients da are rebuilt from them after the loop, and
            dW_hh = sum_t da_t^T h_{t-1} is one GEMM.
  GEMMs     the big ones are written on [T*B, K] matrices (`_matmul_all`, `_outer_sum`).

Notation (PyTorch's, see jaxrnn.cells): a = the gates' pre-activations; h_{t-1} is the state
the step at t reads (h_{t+1} when running in reverse); G = 4 (LSTM), 3 (GRU), 1 (Elman).

The recurrences take the slab, not xs, so that a caller holding token ids can hand layer 0 a
slab gathered from a projected embedding table (`Recurrent.apply(projected0=...)`).

`jax.custom_vjp` is reverse-mode only: `grad`, `vjp`, `jit` and `vmap` compose with these
layers; `jax.jvp` and forward-over-reverse Hessians do not (use impl="reference" for those).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrnn import kernels

# The default `lax.scan` unroll of both loops (`Recurrent(unroll=...)` sets it). unroll=2 and
# 4 were no faster than 1 at W2 / W3 / W4 / W5 (scripts/profile_engine.py; within noise, u4
# often 5-15% slower) and compile longer.
UNROLL = 1


# ------------------------------------------------------------------------------- helpers


def _split(slab, num_gates):
    """[..., G*H] -> tuple of G arrays [..., H]."""
    return tuple(jnp.split(slab, num_gates, axis=-1))


def _row(vector, ndim):
    """Reshapes a [N] vector to broadcast over ndim-1 leading dims (rank promotion is off)."""
    return vector.reshape((1,) * (ndim - 1) + vector.shape)


def _project(xs, weight_ih, bias):
    """xs [T, B, I] -> [T, B, G*H] = xs @ W_ih^T + bias (bias [G*H] or None)."""
    slab = _matmul_all(xs, weight_ih.T)
    return slab if bias is None else slab + _row(bias, 3)


def _tiled_times(x, k):
    """[x, x, .., x] * k for x [..., H], k [..., G*H]: a broadcast, not a concatenate, so that
    XLA:CPU fuses it with the multiply (a concatenate runs as its own op inside a loop)."""
    hidden = x.shape[-1]
    shape = k.shape[:-1] + (k.shape[-1] // hidden, hidden)
    return (jnp.expand_dims(x, -2) * k.reshape(shape)).reshape(k.shape)


def _previous(states, first, reverse):
    """The state each step reads: [first, s_0, .., s_{T-2}] (reversed time: [s_1, .., first])."""
    if reverse:
        return jnp.concatenate([states[1:], first[None]], axis=0)
    return jnp.concatenate([first[None], states[:-1]], axis=0)


def _final(states, reverse):
    return states[0] if reverse else states[-1]


# The big GEMMs are written on [T*B, K] matrices. For sum_t da_t^T h_t, `jnp.einsum` over
# (t, b) makes XLA:CPU copy both operands into a transposed layout first: 1.5x slower for that
# GEMM alone at W3 sizes, though within noise for a whole layer's forward+backward.


def _matmul_all(a, b):
    """[T, B, K] @ [K, N] -> [T, B, N], one GEMM over all T*B rows."""
    steps, batch, k = a.shape
    return (a.reshape(steps * batch, k) @ b).reshape(steps, batch, b.shape[-1])


def _outer_sum(da, inputs):
    """sum_t da_t^T @ inputs_t: [T, B, G] x [T, B, K] -> [G, K], one GEMM."""
    return da.reshape(-1, da.shape[-1]).T @ inputs.reshape(-1, inputs.shape[-1])


# ------------------------------------------------------------------------------- LSTM


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def lstm_recurrence(weight_hh, slab, h0, c0, reverse=False, unroll=UNROLL):
    """The serial part of one LSTM direction.

    Args:
      weight_hh: <float>[4H, H], PyTorch layout (gates i, f, g, o).
      slab: <float>[T, B, 4H], x_t @ W_ih^T + b_ih + b_hh for every step.
      h0, c0: <float>[B, H].
      reverse: run from t = T-1 down to 0 (outputs stay in time order).
      unroll: `lax.scan` unroll.

    Returns:
      (hs <float>[T, B, H], h_T, c_T).
    """
    (h_t, c_t), hs = _lstm_scan(weight_hh, slab, h0, c0, reverse, unroll, stack_all=False)
    return hs, h_t, c_t


def _lstm_scan(weight_hh, slab, h0, c0, reverse, unroll, stack_all):
    """The forward loop; stacks h, and with stack_all also c and the gates (for the VJP)."""
    w_t = weight_hh.T  # [H, 4H]
    # Per gate, outside the loop: slicing a [B, 4H] slab of the input inside the body is
    # about 2x slower on XLA:CPU (docs/CPU_PROFILE_NOTES.md).
    x_gates = _split(slab, 4)

    def body(carry, x):
        h, c = carry
        a_i, a_f, a_g, a_o = _split(h @ w_t, 4)
        i = jax.nn.sigmoid(x[0] + a_i)
        f = jax.nn.sigmoid(x[1] + a_f)
        g = jnp.tanh(x[2] + a_g)
        o = jax.nn.sigmoid(x[3] + a_o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        # Stacking the gates here beat recomputing them after the loop with one GEMM
        # (10-13% of a layer's forward+backward at W2, W3 and W4).
        return (h, c), ((h, c, i, f, g, o) if stack_all else h)

    return jax.lax.scan(body, (h0, c0), x_gates, reverse=reverse, unroll=unroll)


def _lstm_fwd(weight_hh, slab, h0, c0, reverse, unroll):
    (h_t, c_t), stacked = _lstm_scan(weight_hh, slab, h0, c0, reverse, unroll, stack_all=True)
    hs = stacked[0]
    return (hs, h_t, c_t), (weight_hh, h0, c0, stacked)


def _lstm_bwd(reverse, unroll, residuals, cotangents):
    weight_hh, h0, c0, (hs, cs, i, f, g, o) = residuals
    d_hs, d_h_last, d_c_last = cotangents
    c_prev = _previous(cs, c0, reverse)
    tanh_c = jnp.tanh(cs)
    # Everything that does not depend on the incoming gradient is folded outside the loop:
    #   dc_t = dc + dh o (1 - tanh(c)^2)
    #   da_i = dc_t g i (1-i),  da_f = dc_t c_prev f (1-f),  da_g = dc_t i (1-g^2),
    #   da_o = dh tanh(c) o (1-o);   dc_prev = dc_t f;   dh_prev = da @ W_hh
    coef_dc = o * (1.0 - tanh_c * tanh_c)
    # [T, B, 4H]: da = [dc, dc, dc, dh] * coefs, one fused multiply in the loop body
    coefs = jnp.concatenate([g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g),
                             tanh_c * o * (1.0 - o)], axis=-1)

    def gate_grads(dh, dc, k):
        # [dc, dc, dc, dh] * k as one elementwise fusion: a select between broadcasts, not
        # a concatenate (which XLA:CPU runs as its own op inside the loop)
        shape = dh.shape[:-1] + (4, dh.shape[-1])
        is_o = (jnp.arange(4) == 3).reshape((1,) * (dh.ndim - 1) + (4, 1))
        both = jnp.where(is_o, jnp.expand_dims(dh, -2), jnp.expand_dims(dc, -2))
        return (jnp.broadcast_to(both, shape) * k.reshape(shape)).reshape(k.shape)

    def body(carry, step):
        dh, dc = carry
        dy, k_dc, k, f_t = step
        dh = dh + dy
        dc = dc + dh * k_dc
        da = gate_grads(dh, dc, k)  # [B, 4H]
        return (da @ weight_hh, dc * f_t), (dh, dc)

    # The loop stacks dh and dc ([B, H] each) rather than da ([B, 4H]) and da is rebuilt
    # after it: 5 MB less peak memory at W2, which brings a 2-layer W2 step under glibc's
    # 32 MiB mmap threshold (no fresh pages, no page faults per call): -25% CPU time there.
    (dh0, dc0), (dhs, dcs) = jax.lax.scan(
        body, (d_h_last, d_c_last), (d_hs, coef_dc, coefs, f), reverse=not reverse,
        unroll=unroll)
    da = gate_grads(dhs, dcs, coefs)  # [T, B, 4H]
    d_weight_hh = _outer_sum(da, _previous(hs, h0, reverse))
    return d_weight_hh, da, dh0, dc0


lstm_recurrence.defvjp(_lstm_fwd, _lstm_bwd)




# ------------------------------------------------------------------------------- GRU


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def gru_recurrence(weight_hh, bias_hn, slab, h0, reverse=False, unroll=UNROLL):
    """The serial part of one GRU direction (PyTorch semantics: b_hn inside r * (...)).

    Args:
      weight_hh: <float>[3H, H] (gates r, z, n).
      bias_hn: <float>[H], or None for a layer without bias.
      slab: <float>[T, B, 3H], x_t @ W_ih^T + b_ih + [b_hr, b_hz, 0].
      h0: <float>[B, H].

    Returns:
      (hs <float>[T, B, H], h_T).
    """
    h_t, hs = _gru_scan(weight_hh, bias_hn, slab, h0, reverse, unroll, stack_all=False)
    return hs, h_t


def _gru_scan(weight_hh, bias_hn, slab, h0, reverse, unroll, stack_all):
    """The forward loop; stacks h, and with stack_all also r, z, n and W_hn h + b_hn."""
    w_t = weight_hh.T  # [H, 3H]
    x_gates = _split(slab, 3)

    def body(h, x):
        a_r, a_z, a_n = _split(h @ w_t, 3)
        if bias_hn is not None:
            a_n = a_n + _row(bias_hn, 2)
        r = jax.nn.sigmoid(x[0] + a_r)
        z = jax.nn.sigmoid(x[1] + a_z)
        n = jnp.tanh(x[2] + r * a_n)
        h = n + z * (h - n)  # (1 - z) n + z h
        return h, ((h, r, z, n, a_n) if stack_all else h)

    return jax.lax.scan(body, h0, x_gates, reverse=reverse, unroll=unroll)


def _gru_fwd(weight_hh, bias_hn, slab, h0, reverse, unroll):
    h_t, stacked = _gru_scan(weight_hh, bias_hn, slab, h0, reverse, unroll, stack_all=True)
    return (stacked[0], h_t), (weight_hh, bias_hn, h0, stacked)


def _gru_bwd(reverse, unroll, residuals, cotangents):
    weight_hh, bias_hn, h0, (hs, r, z, n, a_n) = residuals
    d_hs, d_h_last = cotangents
    h_prev = _previous(hs, h0, reverse)
    # With h = n + z (h_prev - n) and dh the total gradient into h_t:
    #   dn_pre = dh (1-z)(1-n^2),  dz_pre = dh (h_prev - n) z (1-z),  dr_pre = dn_pre a_n r (1-r)
    #   d(W_hn h + b_hn) = dn_pre r,  dh_prev = dh z + [dr_pre, dz_pre, dn_pre r] @ W_hh
    coef_n = (1.0 - z) * (1.0 - n * n)
    coef_h = jnp.concatenate([coef_n * a_n * r * (1.0 - r), (h_prev - n) * z * (1.0 - z),
                              coef_n * r], axis=-1)  # [T, B, 3H]

    def body(dh, step):
        dy, k_h, z_t = step
        dh = dh + dy
        da_h = _tiled_times(dh, k_h)  # [B, 3H]
        return dh * z_t + da_h @ weight_hh, dh

    dh0, dh_total = jax.lax.scan(body, d_h_last, (d_hs, coef_h, z), reverse=not reverse,
                                 unroll=unroll)
    da_h = _tiled_times(dh_total, coef_h)
    hidden = coef_n.shape[-1]
    d_weight_hh = _outer_sum(da_h, h_prev)
    d_slab = jnp.concatenate([da_h[..., :2 * hidden], dh_total * coef_n], axis=-1)
    d_bias_hn = None if bias_hn is None else jnp.sum(da_h[..., 2 * hidden:], axis=(0, 1))
    return d_weight_hh, d_bias_hn, d_slab, dh0


gru_recurrence.defvjp(_gru_fwd, _gru_bwd)


# ------------------------------------------------------------------------------- Elman RNN


def _make_rnn_recurrence(activation, derivative_from_output):
    """custom_vjp recurrence for h' = activation(slab_t + h @ W_hh^T)."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def recurrence(weight_hh, slab, h0, reverse=False, unroll=UNROLL):
        hs = forward(weight_hh, slab, h0, reverse, unroll)
        return hs, _final(hs, reverse)

    def forward(weight_hh, slab, h0, reverse, unroll):
        w_t = weight_hh.T

        def body(h, x):
            h = activation(x + h @ w_t)
            return h, h

        return jax.lax.scan(body, h0, slab, reverse=reverse, unroll=unroll)[1]

    def fwd(weight_hh, slab, h0, reverse, unroll):
        hs = forward(weight_hh, slab, h0, reverse, unroll)
        return (hs, _final(hs, reverse)), (weight_hh, h0, hs)

    def bwd(reverse, unroll, residuals, cotangents):
        weight_hh, h0, hs = residuals
        d_hs, d_h_last = cotangents
        coef = derivative_from_output(hs)  # activation'(a_t), from h_t = activation(a_t)

        def body(dh, step):
            dy, k = step
            da = (dh + dy) * k
            return da @ weight_hh, da

        dh0, da = jax.lax.scan(body, d_h_last, (d_hs, coef), reverse=not reverse, unroll=unroll)
        return _outer_sum(da, _previous(hs, h0, reverse)), da, dh0

    recurrence.defvjp(fwd, bwd)
    return recurrence


rnn_tanh_recurrence = _make_rnn_recurrence(jnp.tanh, lambda h: 1.0 - h * h)
rnn_relu_recurrence = _make_rnn_recurrence(
    jax.nn.relu, lambda h: (h > 0).astype(h.dtype))


# ------------------------------------------------------------------------------- fused kernels
#
# The same recurrences by the fused CPU kernels (`jaxrnn.kernels`): each loop, forward and
# backward, is one custom call, and the backward's gate derivatives are computed inside its
# loop, so no [T, B, G*H] factors are held. They take lengths <int32>[B] (`kernels.full_lengths`
# without padding): a padded step keeps the carry, and the states they return are the carried
# ones (the wrappers below zero the outputs at padded steps). So the state each step reads is
# `_previous(hs, h0)` with or without padding, and dW_hh = sum_t da_t^T h_{t-1} is one GEMM
# here, da being zero at padded steps. No unroll; `parts` splits the hidden units (0: one part
# per thread). CPU only.


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def lstm_recurrence_kernel(weight_hh, slab, h0, c0, lengths, reverse=False, parts=0):
    """`lstm_recurrence` by the fused kernel, over lengths <int32>[B]: (hs, h_T, c_T)."""
    hs, _, _, h_t, c_t = kernels.lstm_forward(weight_hh, slab, h0, c0, lengths, reverse, parts)
    return hs, h_t, c_t


def _lstm_kernel_fwd(weight_hh, slab, h0, c0, lengths, reverse, parts):
    hs, cs, gates, h_t, c_t = kernels.lstm_forward(weight_hh, slab, h0, c0, lengths, reverse,
                                                   parts)
    return (hs, h_t, c_t), (weight_hh, h0, c0, lengths, hs, cs, gates)


def _lstm_kernel_bwd(reverse, parts, residuals, cotangents):
    weight_hh, h0, c0, lengths, hs, cs, gates = residuals
    d_hs, d_h_last, d_c_last = cotangents
    da, dh0, dc0 = kernels.lstm_backward(weight_hh, gates, cs, c0, lengths, d_hs, d_h_last,
                                         d_c_last, reverse, parts)
    return _outer_sum(da, _previous(hs, h0, reverse)), da, dh0, dc0, None


lstm_recurrence_kernel.defvjp(_lstm_kernel_fwd, _lstm_kernel_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def gru_recurrence_kernel(weight_hh, bias_hn, slab, h0, lengths, reverse=False, parts=0):
    """`gru_recurrence` by the fused kernel, over lengths <int32>[B]: (hs, h_T)."""
    hs, _, _, h_t = kernels.gru_forward(weight_hh, _bias_or_zeros(bias_hn, h0), slab, h0,
                                        lengths, reverse, parts)
    return hs, h_t


def _bias_or_zeros(bias_hn, h0):
    return jnp.zeros(h0.shape[-1:], h0.dtype) if bias_hn is None else bias_hn


def _gru_kernel_fwd(weight_hh, bias_hn, slab, h0, lengths, reverse, parts):
    hs, gates, hn, h_t = kernels.gru_forward(weight_hh, _bias_or_zeros(bias_hn, h0), slab, h0,
                                             lengths, reverse, parts)
    return (hs, h_t), (weight_hh, bias_hn, h0, lengths, hs, gates, hn)


def _gru_kernel_bwd(reverse, parts, residuals, cotangents):
    weight_hh, bias_hn, h0, lengths, hs, gates, hn = residuals
    d_hs, d_h_last = cotangents
    # da: the gradient of [W_hr h + b_hr, W_hz h + b_hz, W_hn h + b_hn]; dn: of the n gate's
    # pre-activation x_n + r (W_hn h + b_hn), the slab's n columns
    da, dn, dh0 = kernels.gru_backward(weight_hh, gates, hn, hs, h0, lengths, d_hs, d_h_last,
                                       reverse, parts)
    hidden = h0.shape[-1]
    d_slab = jnp.concatenate([da[..., :2 * hidden], dn], axis=-1)
    d_bias_hn = None if bias_hn is None else jnp.sum(da[..., 2 * hidden:], axis=(0, 1))
    return _outer_sum(da, _previous(hs, h0, reverse)), d_bias_hn, d_slab, dh0, None


gru_recurrence_kernel.defvjp(_gru_kernel_fwd, _gru_kernel_bwd)


def _make_rnn_kernel(activation):
    """custom_vjp recurrence h' = activation(slab_t + h @ W_hh^T) by the fused kernel."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
    def recurrence(weight_hh, slab, h0, lengths, reverse=False, parts=0):
        return kernels.rnn_forward(activation, weight_hh, slab, h0, lengths, reverse, parts)

    def fwd(weight_hh, slab, h0, lengths, reverse, parts):
        hs, h_t = kernels.rnn_forward(activation, weight_hh, slab, h0, lengths, reverse, parts)
        return (hs, h_t), (weight_hh, h0, lengths, hs)

    def bwd(reverse, parts, residuals, cotangents):
        weight_hh, h0, lengths, hs = residuals
        d_hs, d_h_last = cotangents
        da, dh0 = kernels.rnn_backward(activation, weight_hh, hs, lengths, d_hs, d_h_last,
                                       reverse, parts)
        return _outer_sum(da, _previous(hs, h0, reverse)), da, dh0, None

    recurrence.defvjp(fwd, bwd)
    return recurrence


rnn_tanh_recurrence_kernel = _make_rnn_kernel("tanh")
rnn_relu_recurrence_kernel = _make_rnn_kernel("relu")


def _kernel_lengths(slab, lengths):
    """The lengths a kernel reads: <int32>[B], T for every sequence when there are none."""
    return kernels.full_lengths(slab) if lengths is None else lengths.astype(jnp.int32)


def _zero_padding(hs, lengths):
    """The outputs: the carried states hs [T, B, H] with zeros at padded steps."""
    if lengths is None:
        return hs
    valid = jnp.arange(hs.shape[0])[:, None] < lengths[None, :]  # [T, B]
    return jnp.where(valid[..., None], hs, jnp.zeros_like(hs))


# ------------------------------------------------------------------------------- per cell
#
# What the built-in cells carry (`jaxrnn.cells`): the bias folded into the slab, and the
# recurrence on the slab, `fn(params, slab, carry0, reverse, unroll) -> (ys, carry_T)`.


def input_slab(params, xs, bias):
    """<float>[T, B, I] -> the slab <float>[T, B, G*H] = xs @ W_ih^T + bias (bias [G*H] or
    None): one GEMM over all T*B rows."""
    return _project(xs, params["weight_ih"], bias)


def summed_bias(params):
    """The slab bias of the Elman RNN and the LSTM: b_ih + b_hh (None without bias)."""
    if "bias_ih" not in params:
        return None
    return params["bias_ih"] + params["bias_hh"]


def gru_slab_bias(params):
    """The GRU's slab bias: b_ih + [b_hr, b_hz, 0]; b_hn stays inside r * (W_hn h + b_hn)."""
    if "bias_ih" not in params:
        return None
    hidden = params["weight_hh"].shape[-1]
    b_hh = params["bias_hh"]
    return params["bias_ih"] + jnp.concatenate([b_hh[:2 * hidden],
                                                jnp.zeros_like(b_hh[2 * hidden:])])


def lstm_fast(params, slab, carry0, reverse=False, unroll=UNROLL):
    """One unmasked LSTM direction on its slab: (ys <float>[T, B, H], (h_T, c_T))."""
    h0, c0 = carry0
    hs, h_t, c_t = lstm_recurrence(params["weight_hh"], slab, h0, c0, reverse, unroll)
    return hs, (h_t, c_t)


def lstm_kernel(params, slab, carry0, reverse=False, parts=0, lengths=None):
    """`lstm_fast` by the fused CPU kernel; with lengths <int>[B], the masked semantics
    (zeros at padded steps, each sequence's own final carry)."""
    h0, c0 = carry0
    hs, h_t, c_t = lstm_recurrence_kernel(params["weight_hh"], slab, h0, c0,
                                          _kernel_lengths(slab, lengths), reverse, parts)
    return _zero_padding(hs, lengths), (h_t, c_t)


def gru_fast(params, slab, carry0, reverse=False, unroll=UNROLL):
    """One unmasked GRU direction on its slab (see `gru_slab_bias`): (ys, h_T)."""
    weight_hh = params["weight_hh"]
    bias_hn = params["bias_hh"][2 * weight_hh.shape[-1]:] if "bias_hh" in params else None
    return gru_recurrence(weight_hh, bias_hn, slab, carry0, reverse, unroll)


def rnn_tanh_fast(params, slab, carry0, reverse=False, unroll=UNROLL):
    """One unmasked tanh RNN direction on its slab: (ys, h_T)."""
    return rnn_tanh_recurrence(params["weight_hh"], slab, carry0, reverse, unroll)


def rnn_relu_fast(params, slab, carry0, reverse=False, unroll=UNROLL):
    """One unmasked ReLU RNN direction on its slab: (ys, h_T)."""
    return rnn_relu_recurrence(params["weight_hh"], slab, carry0, reverse, unroll)


def gru_kernel(params, slab, carry0, reverse=False, parts=0, lengths=None):
    """`gru_fast` by the fused CPU kernel (lengths: as `lstm_kernel`)."""
    weight_hh = params["weight_hh"]
    bias_hn = params["bias_hh"][2 * weight_hh.shape[-1]:] if "bias_hh" in params else None
    hs, h_t = gru_recurrence_kernel(weight_hh, bias_hn, slab, carry0,
                                    _kernel_lengths(slab, lengths), reverse, parts)
    return _zero_padding(hs, lengths), h_t


def _rnn_kernel(recurrence):
    def run(params, slab, carry0, reverse=False, parts=0, lengths=None):
        hs, h_t = recurrence(params["weight_hh"], slab, carry0, _kernel_lengths(slab, lengths),
                             reverse, parts)
        return _zero_padding(hs, lengths), h_t

    return run


rnn_tanh_kernel = _rnn_kernel(rnn_tanh_recurrence_kernel)
rnn_tanh_kernel.__doc__ = "`rnn_tanh_fast` by the fused CPU kernel (lengths: as `lstm_kernel`)."
rnn_relu_kernel = _rnn_kernel(rnn_relu_recurrence_kernel)
rnn_relu_kernel.__doc__ = "`rnn_relu_fast` by the fused CPU kernel (lengths: as `lstm_kernel`)."


LSTM_CPU_KERNEL = kernels.Kernel("lstm_cpu", lstm_kernel, load=kernels.load_library,
                                 takes_lengths=True)
GRU_CPU_KERNEL = kernels.Kernel("gru_cpu", gru_kernel, load=kernels.load_library,
                                takes_lengths=True)
RNN_TANH_CPU_KERNEL = kernels.Kernel("rnn_tanh_cpu", rnn_tanh_kernel, load=kernels.load_library,
                                     takes_lengths=True)
RNN_RELU_CPU_KERNEL = kernels.Kernel("rnn_relu_cpu", rnn_relu_kernel, load=kernels.load_library,
                                     takes_lengths=True)
