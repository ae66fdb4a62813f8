"""The fused CPU LSTM kernel (`jaxrnn.kernels`, the `kernel` of `jaxrnn.cells.LSTM`).

1. Against torch.nn.LSTM in float64 (outputs, final states, every gradient), two layers,
   bidirectional, with the hidden units split in uneven parts (`kernel_parts`); the compiled
   program is checked to contain the kernel's custom calls, so the comparison is of the
   kernel, not a fallback.
2. Against the pure-JAX reference scan (impl="reference") in float32, at T = 1 and with more
   parts than units would normally allow, and through a jitted training-style gradient.
3. impl="fast" compiles without the custom calls and gives the same numbers; when the build
   fails, impl="auto" warns once naming the reason and runs the pure-JAX layers (every cell),
   and impl="kernel" is an error that names it.
4. The instruction set: isa="no-avx512" builds the GEMM's AVX2 path (row tile 4) and gives the
   same numbers; an isa asked for after the library is loaded is an error.

The GRU and Elman RNN kernels: tests/test_kernels_gru_rnn.py; lengths and jax.vmap:
tests/test_kernels_masked.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxrnn import Recurrent, cells, kernels

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or shutil.which(os.environ.get("CXX") or "c++") is None
    or jax.default_backend() != "cpu",
    reason="the kernels are built on Linux with a C++ compiler, and run on the CPU backend")

TOLERANCE_64 = 1e-10


def _max_abs_diff(a, b) -> float:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(leaves_a, leaves_b))


def _lowered_text(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


def test_kernel_builds_here():
    kernel = cells.LSTM.kernel
    assert isinstance(kernel, kernels.Kernel)
    assert kernel.unavailable_reason(np.float32) is None, kernel.unavailable_reason()
    assert kernel.unavailable_reason(np.float64) is None
    assert "not bfloat16" in kernel.unavailable_reason(jnp.bfloat16)
    assert kernels.unavailable_reason() is None
    assert Recurrent("lstm", 3, 4).plan.unmasked == "kernel"  # what impl="auto" runs here


@pytest.mark.parametrize("parts", [0, 3])
def test_matches_torch_lstm_float64(x64, parts):
    steps, batch, input_size, hidden, layers = 6, 3, 5, 10, 2
    torch.manual_seed(1)
    module = torch.nn.LSTM(input_size, hidden, layers, bidirectional=True).double()
    state = {n: jnp.asarray(p.detach().numpy()) for n, p in module.named_parameters()}
    params = [[{name: state[f"{name}_l{layer}" + ("_reverse" if d else "")]
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
               for d in range(2)] for layer in range(layers)]
    rnn = Recurrent("lstm", input_size, hidden, layers, bidirectional=True, impl="kernel",
                    kernel_parts=parts)  # 3: units split 3, 3, 4
    assert rnn.plan.unmasked == "kernel" and rnn.plan.kernel_parts == parts

    rng = np.random.default_rng(2)
    x = rng.standard_normal((steps, batch, input_size))
    h0, c0 = rng.standard_normal((2, 2 * layers, batch, hidden))
    out_weight = rng.standard_normal((steps, batch, 2 * hidden))

    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    t_out, (t_h, t_c) = module(tx, (th0, tc0))
    t_loss = torch.sum(torch.tensor(out_weight) * t_out * t_out) + torch.sum(
        torch.tanh(t_h)) + torch.sum(torch.sin(2 * t_c))
    t_loss.backward()

    def loss(params, x, h0, c0):
        out, (h, c) = rnn.apply(params, x, (h0, c0))
        return (jnp.sum(out_weight * out * out) + jnp.sum(jnp.tanh(h))
                + jnp.sum(jnp.sin(2 * c))), (out, h, c)

    args = (params, jnp.asarray(x), jnp.asarray(h0), jnp.asarray(c0))
    grad_fn = jax.value_and_grad(loss, (0, 1, 2, 3), has_aux=True)
    text = _lowered_text(grad_fn, *args)
    assert "jaxrnn_lstm_forward_f64" in text and "jaxrnn_lstm_backward_f64" in text
    (value, (out, h, c)), (d_params, d_x, d_h0, d_c0) = jax.jit(grad_fn)(*args)

    assert abs(float(value) - t_loss.item()) < TOLERANCE_64
    assert _max_abs_diff((out, h, c), (t_out.detach(), t_h.detach(), t_c.detach())) \
        < TOLERANCE_64
    assert _max_abs_diff((d_x, d_h0, d_c0), (tx.grad, th0.grad, tc0.grad)) < TOLERANCE_64
    grads = {n: p.grad.numpy() for n, p in module.named_parameters()}
    for layer in range(layers):
        for d in range(2):
            for name, value in d_params[layer][d].items():
                key = f"{name}_l{layer}" + ("_reverse" if d else "")
                assert _max_abs_diff(value, grads[key]) < TOLERANCE_64, key


@pytest.mark.parametrize("steps, hidden, parts", [(1, 7, 0), (9, 40, 0), (9, 40, 5), (4, 3, 8)])
def test_matches_reference_float32(steps, hidden, parts):
    """float32 against the pure-JAX scan; 8 parts of 3 units means 3 parts of one unit."""
    batch, input_size = 4, 6
    kernel = Recurrent("lstm", input_size, hidden, 1, bidirectional=True, impl="kernel",
                       kernel_parts=parts)
    reference = Recurrent("lstm", input_size, hidden, 1, bidirectional=True, impl="reference")
    params = kernel.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((steps, batch, input_size)), jnp.float32)

    def loss(rnn):
        def value(params, x):
            out, (h, c) = rnn.apply(params, x)
            return jnp.sum(out * out) + jnp.sum(h * c), out
        return jax.jit(jax.value_and_grad(value, (0, 1), has_aux=True))

    assert "jaxrnn_lstm_backward_f32" in _lowered_text(
        jax.value_and_grad(lambda p, x: jnp.sum(kernel.apply(p, x)[0]), (0, 1)), params, x)
    got, want = loss(kernel)(params, x), loss(reference)(params, x)
    assert _max_abs_diff(got, want) < 2e-5


def test_impl_fast_compiles_without_the_kernel():
    """impl="fast" is the pure-JAX custom-VJP layer: no custom call, the kernel's numbers."""
    kernel = Recurrent("lstm", 5, 20, 2, impl="kernel")
    pure = Recurrent("lstm", 5, 20, 2, impl="fast")
    assert (kernel.plan.unmasked, pure.plan.unmasked) == ("kernel", "fast")
    params = kernel.init(jax.random.PRNGKey(3))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((7, 2, 5)), jnp.float32)

    def outputs_and_grads(rnn):
        def loss(p, x):
            out, (h, c) = rnn.apply(p, x)
            return jnp.sum(out * out) + jnp.sum(h * c), out
        return jax.value_and_grad(loss, (0, 1), has_aux=True)

    with_kernel_text = _lowered_text(outputs_and_grads(kernel), params, x)
    assert "jaxrnn_lstm_forward_f32" in with_kernel_text
    assert "jaxrnn_lstm_backward_f32" in with_kernel_text
    assert "jaxrnn_lstm" not in _lowered_text(outputs_and_grads(pure), params, x)
    with_kernel = jax.jit(outputs_and_grads(kernel))(params, x)
    without = jax.jit(outputs_and_grads(pure))(params, x)
    assert _max_abs_diff(with_kernel, without) < 1e-5


def test_failed_build_warns_and_falls_back(tmp_path):
    """A missing compiler and an empty cache: impl="auto" warns once with the reason and runs
    the pure-JAX layers (correct results); impl="kernel" is a ValueError naming the failure."""
    code = (
        "import warnings, jax, jax.numpy as jnp\n"
        "from jaxrnn import Recurrent\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    rnn = Recurrent('lstm', 3, 4, impl='auto')\n"
        "    again = Recurrent('lstm', 3, 4, 2, impl='auto')\n"
        "    others = [Recurrent(m, 3, 4, impl='auto') for m in ('gru', 'rnn_tanh', 'rnn_relu')]\n"
        "    p = rnn.init(jax.random.PRNGKey(0)); x = jnp.ones((5, 2, 3))\n"
        "    y = jax.jit(lambda p, x: rnn.apply(p, x)[0])(p, x)\n"
        "assert rnn.plan.unmasked == 'fast' and again.plan.unmasked == 'fast', rnn.plan\n"
        "assert all(o.plan.unmasked == 'fast' for o in others)\n"
        "assert rnn.plan.for_call(rnn.cell, jnp.float32, True) == 'reference'\n"
        "ref = Recurrent('lstm', 3, 4, impl='reference').apply(p, x)[0]\n"
        "assert float(jnp.max(jnp.abs(y - ref))) < 1e-5\n"
        "print([str(w.message) for w in caught if 'kernels' in str(w.message)])\n"
        "try:\n"
        "    Recurrent('lstm', 3, 4, impl='kernel')\n"
        "except ValueError as error:\n"
        "    print('ValueError:', error)\n")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
               JAXRNN_KERNEL_CACHE=str(tmp_path / "cache"))
    env.pop("JAXRNN_CPU_KERNELS", None)  # read by the CLI only, never by the library
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    warned, _, error = done.stdout.partition("ValueError: ")
    assert "fused CPU kernels are unavailable (no C++ compiler" in warned
    assert warned.count("unavailable") == 1  # one warning, for the first network only
    assert error.startswith("impl='kernel' cannot run: the lstm_cpu kernel could not be "
                            "built: no C++ compiler"), done.stdout
    assert "no-such-compiler" in error


def test_isa_is_asked_for_before_the_library_loads():
    assert kernels.load_library() is None  # loaded here for the machine's own isa
    assert kernels.loaded_isa() == "native"
    assert kernels.load_library(isa="native") is None
    with pytest.raises(ValueError, match=r"isa must be one of 'native', 'no-avx512', got 'sse'"):
        kernels.load_library(isa="sse")
    with pytest.raises(ValueError, match=r"already loaded for isa='native' in this process; "
                                         r"isa='no-avx512' must be asked for before any kernel"):
        kernels.load_library(isa="no-avx512")
    tile = kernels.gemm_row_tile()
    assert tile == (8 if "avx512f" in kernels._cpu_flags().split() else 4)


@pytest.mark.slow
def test_no_avx512_build_gives_the_same_numbers(tmp_path):
    """A fresh process built with isa="no-avx512" (its own library in the cache) runs the
    4-row GEMM tile and matches the reference scan in float32, GRU and LSTM."""
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from jaxrnn import Recurrent, kernels\n"
        "assert kernels.load_library(isa='no-avx512') is None, kernels.unavailable_reason()\n"
        "print('tile', kernels.gemm_row_tile())\n"
        "for mode in ('lstm', 'gru'):\n"
        "    k, r = (Recurrent(mode, 3, 20, impl=i) for i in ('kernel', 'reference'))\n"
        "    p = k.init(jax.random.key(0))\n"
        "    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 9, 3)), jnp.float32)\n"
        "    f = lambda rnn: jax.grad(lambda p: jnp.sum(rnn.apply(p, x)[0] ** 2))(p)\n"
        "    d = max(float(jnp.max(jnp.abs(a - b))) for a, b in\n"
        "            zip(jax.tree.leaves(f(k)), jax.tree.leaves(f(r))))\n"
        "    assert d < 2e-5, (mode, d)\n")
    env = dict(os.environ, JAXRNN_KERNEL_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    assert "tile 4" in done.stdout
    assert [p.name.startswith("cpu_kernels-no-avx512-") for p in tmp_path.glob("*.so")] == [True]
