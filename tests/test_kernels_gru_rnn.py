"""The fused CPU kernels of the GRU and the Elman RNN (`jaxrnn.kernels`, gru_cpu.cc, rnn_cpu.cc).

1. Against torch.nn.GRU / torch.nn.RNN (tanh, relu) in float64 to 1e-10: outputs, final
   states and every gradient (inputs, hx, all weights and biases), two layers, bidirectional,
   an odd batch and the hidden units split in uneven parts over the threads (`kernel_parts`).
   The compiled program is checked to hold the kernels' custom calls and no loop, so what is
   compared is the kernel, not a fallback.
2. Against the pure-JAX fast layers in float32 (a bias-free GRU, T = 1, more parts than units).

`check_against_torch` is shared with tests/test_kernels_masked.py (lengths).
"""

from __future__ import annotations

import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxrnn import Recurrent, cells, kernels
from torch_baselines.convert import params_from_state_dict, params_to_state_dict

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or shutil.which(os.environ.get("CXX") or "c++") is None
    or jax.default_backend() != "cpu",
    reason="the kernels are built on Linux with a C++ compiler, and run on the CPU backend")

TOLERANCE_64 = 1e-10
TORCH_MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN,
                 "rnn_relu": torch.nn.RNN}
TARGETS = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn_tanh", "rnn_relu": "rnn_relu"}


def _torch_module(mode, input_size, hidden, layers, bias, seed):
    torch.manual_seed(seed)
    kwargs = {"nonlinearity": mode[4:]} if mode.startswith("rnn") else {}
    return TORCH_MODULES[mode](input_size, hidden, layers, bias=bias, bidirectional=True,
                               **kwargs).double()


def _torch_run(module, x, hx, lengths, weights):
    """Loss, outputs and every gradient from torch.autograd; with lengths through
    pack_padded_sequence(enforce_sorted=False) -> module -> pad_packed_sequence."""
    x_t = torch.tensor(x, requires_grad=True)
    hx_t = tuple(torch.tensor(h, requires_grad=True) for h in hx)
    state_in = hx_t if len(hx_t) == 2 else hx_t[0]
    module.zero_grad()
    if lengths is None:
        output, state = module(x_t, state_in)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.tensor(lengths),
                                                         enforce_sorted=False)
        output, state = module(packed, state_in)
        output, _ = torch.nn.utils.rnn.pad_packed_sequence(output, total_length=x.shape[0])
    states = state if isinstance(state, tuple) else (state,)
    # a loss that is not linear in the outputs, so every second-order path is exercised
    loss = (torch.sum(torch.tensor(weights[0]) * output * output)
            + sum(torch.sum(torch.tanh(s * torch.tensor(w))) for s, w in zip(states, weights[1:])))
    loss.backward()
    grads = {f"grad_{k}": p.grad.numpy() for k, p in module.named_parameters()}
    return {"loss": loss.item(), "output": output.detach().numpy(),
            "states": [s.detach().numpy() for s in states], "grad_x": x_t.grad.numpy(),
            "grad_hx": [h.grad.numpy() for h in hx_t], **grads}


def _jax_run(rnn, params, x, hx, lengths, weights):
    """The same quantities from jaxrnn (jit of value_and_grad), and the lowered program."""
    lstm = rnn.mode == "lstm"

    def loss_fn(params, x, hx):
        output, state = rnn.apply(params, x, hx if lstm else hx[0], lengths)
        states = state if lstm else (state,)
        loss = (jnp.sum(weights[0] * output * output)
                + sum(jnp.sum(jnp.tanh(s * w)) for s, w in zip(states, weights[1:])))
        return loss, (output, states)

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
    args = (params, jnp.asarray(x), tuple(jnp.asarray(h) for h in hx))
    text = grad_fn.lower(*args).as_text()
    (loss, (output, states)), (d_params, d_x, d_hx) = grad_fn(*args)
    grads = {f"grad_{k}": v for k, v in params_to_state_dict(rnn, d_params).items()}
    return text, {"loss": float(loss), "output": np.asarray(output),
                  "states": [np.asarray(s) for s in states], "grad_x": np.asarray(d_x),
                  "grad_hx": [np.asarray(h) for h in d_hx], **grads}


def check_against_torch(mode, *, parts, lengths=None, bias=True, steps=6, batch=5,
                        input_size=4, hidden=10, layers=2, seed=0, impl="kernel"):
    """jaxrnn's kernel layers (impl) vs the torch module in float64 (x64 on): every output and
    gradient to 1e-10; returns the lowered program's text."""
    module = _torch_module(mode, input_size, hidden, layers, bias, seed)
    rnn = Recurrent(mode, input_size, hidden, layers, bias=bias, bidirectional=True,
                    impl=impl, kernel_parts=parts)
    params = params_from_state_dict(rnn, module.state_dict())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps, batch, input_size))
    num_states = 2 if mode == "lstm" else 1
    hx = tuple(rng.standard_normal((2 * layers, batch, hidden)) for _ in range(num_states))
    weights = [rng.standard_normal((steps, batch, 2 * hidden))] + [
        rng.standard_normal((2 * layers, batch, hidden)) for _ in range(num_states)]

    want = _torch_run(module, x, hx, lengths, weights)
    text, got = _jax_run(rnn, params, x, hx, None if lengths is None else jnp.asarray(lengths),
                         weights)
    assert sorted(got) == sorted(want)
    for name in want:
        diff = max(float(np.max(np.abs(np.asarray(g) - np.asarray(w))))
                   for g, w in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])))
        assert diff < TOLERANCE_64, f"{mode} {name} differs by {diff:.3g}"
    if lengths is not None:  # padding is zero, as pad_packed_sequence gives it
        padded = np.arange(steps)[:, None] >= np.asarray(lengths)[None, :]
        assert np.all(got["output"][padded] == 0.0)
    return text


def assert_runs_the_kernel(text, mode, dtype="f64"):
    """The lowered program holds the kernel's forward and backward calls and no scan loop."""
    family = TARGETS[mode]
    assert f"jaxrnn_{family}_forward_{dtype}" in text, "the kernel's forward is not called"
    assert f"jaxrnn_{family}_backward_{dtype}" in text, "the kernel's backward is not called"
    assert "stablehlo.while" not in text, "a scan loop runs: not (only) the kernel"


def test_every_builtin_cell_has_a_kernel_here():
    for mode in ("gru", "rnn_tanh", "rnn_relu"):
        kernel = cells.get_cell(mode).kernel
        assert isinstance(kernel, kernels.Kernel) and kernel.takes_lengths
        assert kernel.unavailable_reason(np.float64) is None, kernel.unavailable_reason()
        assert "not bfloat16" in kernel.unavailable_reason(jnp.bfloat16)
        assert Recurrent(mode, 3, 4).plan.unmasked == "kernel"  # what impl="auto" runs here


@pytest.mark.parametrize("mode", ["gru", "rnn_tanh", "rnn_relu"])
def test_matches_torch_float64(mode, x64):
    """Hidden 10 in 3 parts (3, 3, 4 units), batch 5: uneven splits; two bidirectional layers."""
    assert_runs_the_kernel(check_against_torch(mode, parts=3), mode)


@pytest.mark.slow
@pytest.mark.parametrize("parts", [0, 1, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", ["gru", "rnn_tanh", "rnn_relu"])
def test_matches_torch_float64_matrix(mode, bias, parts, x64):
    text = check_against_torch(mode, parts=parts, bias=bias, hidden=9, batch=3, seed=parts + 1)
    assert_runs_the_kernel(text, mode)


@pytest.mark.parametrize("mode, steps, hidden, parts, bias", [
    ("gru", 7, 5, 8, True),
    pytest.param("gru", 1, 7, 0, False, marks=pytest.mark.slow),
    pytest.param("rnn_tanh", 5, 6, 4, True, marks=pytest.mark.slow),
    pytest.param("rnn_relu", 3, 5, 2, False, marks=pytest.mark.slow)])
def test_matches_the_fast_layers_float32(mode, steps, hidden, parts, bias):
    """float32 against the pure-JAX custom-VJP layers; 8 parts of 5 units are 5 of one."""
    kernel, fast = (Recurrent(mode, 3, hidden, 1, bias=bias, bidirectional=True, impl=impl,
                              kernel_parts=parts) for impl in ("kernel", "fast"))
    params = kernel.init(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((steps, 4, 3)), jnp.float32)

    def grads(rnn):
        def value(params, x):
            out, h = rnn.apply(params, x)
            return jnp.sum(out * out) + jnp.sum(jnp.sin(h)), out
        return jax.value_and_grad(value, (0, 1), has_aux=True)

    text = jax.jit(grads(kernel)).lower(params, x).as_text()
    assert_runs_the_kernel(text, mode, "f32")
    got, want = jax.jit(grads(kernel))(params, x), jax.jit(grads(fast))(params, x)
    assert max(float(jnp.max(jnp.abs(g - w)))
               for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))) < 2e-5
