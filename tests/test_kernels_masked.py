"""The fused CPU kernels with lengths (variable-length batches), all three cell families.

1. Against pack_padded_sequence(enforce_sorted=False) -> torch.nn.LSTM / GRU / RNN ->
   pad_packed_sequence in float64 to 1e-10, over random unsorted lengths that include 1 and T:
   outputs (zero at padding), each sequence's final states, every gradient; two bidirectional
   layers, so the reverse direction starts at each sequence's own last element. The program is
   checked to run the kernels and no scan: impl="kernel" and "auto" take lengths now.
2. Against the engine's masked reference scan (impl="reference") in float32.
3. Under jax.vmap over the members of a sweep (different weights per member): one custom call
   per loop, not a loop of calls, and each member's results.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import Recurrent
from tests.test_kernels_gru_rnn import (assert_runs_the_kernel, check_against_torch,
                                        pytestmark)  # noqa: F401 (the same skip)

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _lengths(rng, steps, batch):
    """Random unsorted lengths in 1..T with both 1 and T among them."""
    lengths = rng.integers(1, steps + 1, size=batch)
    lengths[rng.choice(batch, 2, replace=False)] = [1, steps]
    return lengths


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_matches_torch_packed_float64(mode, x64):
    lengths = _lengths(np.random.default_rng(1), 7, 5)
    text = check_against_torch(mode, parts=3, lengths=lengths, steps=7, batch=5)
    assert_runs_the_kernel(text, mode)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("parts", [0, 4])
@pytest.mark.parametrize("mode", MODES)
def test_matches_torch_packed_float64_matrix(mode, parts, seed, x64):
    lengths = _lengths(np.random.default_rng(seed), 9, 6)
    text = check_against_torch(mode, parts=parts, lengths=lengths, steps=9, batch=6,
                               hidden=9, seed=seed, bias=seed == 2)
    assert_runs_the_kernel(text, mode)


def test_auto_with_lengths_runs_the_kernel(x64):
    """impl="auto" with lengths: the masked kernel (not the reference scan), torch's numbers."""
    rnn = Recurrent("rnn_relu", 3, 4)
    assert rnn.plan.for_call(rnn.cell, jnp.float64, True) == "kernel"
    lengths = _lengths(np.random.default_rng(4), 5, 4)
    text = check_against_torch("rnn_relu", parts=0, lengths=lengths, steps=5, batch=4,
                               hidden=4, layers=1, impl="auto")
    assert_runs_the_kernel(text, "rnn_relu")


@pytest.mark.parametrize("mode", ["rnn_tanh"] + [pytest.param(m, marks=pytest.mark.slow)
                                                  for m in ("lstm", "gru", "rnn_relu")])
def test_matches_the_masked_reference_float32(mode):
    steps, batch = 6, 5
    kernel, reference = (Recurrent(mode, 3, 6, 1, bidirectional=True, impl=impl,
                                   kernel_parts=4) for impl in ("kernel", "reference"))
    params = kernel.init(jax.random.key(1))
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((steps, batch, 3)), jnp.float32)
    lengths = jnp.asarray(_lengths(rng, steps, batch))

    def grads(rnn):
        def value(params, x):
            out, h = rnn.apply(params, x, lengths=lengths)
            return jnp.sum(out * out) + sum(jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(h)), \
                (out, h)
        return jax.jit(jax.value_and_grad(value, (0, 1), has_aux=True))

    got, want = grads(kernel)(params, x), grads(reference)(params, x)
    assert max(float(jnp.max(jnp.abs(g - w)))
               for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))) < 2e-5
    out = np.asarray(got[0][1][0])
    assert np.all(out[np.arange(steps)[:, None] >= np.asarray(lengths)[None, :]] == 0.0)


@pytest.mark.parametrize("mode", ["lstm"] + [pytest.param(m, marks=pytest.mark.slow)
                                              for m in ("gru", "rnn_relu")])
def test_vmap_over_members_is_one_call_per_loop(mode, x64):
    """A sweep's members (own weights each, shared inputs and lengths): jax.vmap of the loss and
    its gradient lowers to one forward and one backward custom call per direction (the kernel
    loops over the members), no scan and no loop of calls, and gives each member's results."""
    members, steps, batch = 3, 5, 3
    rnn = Recurrent(mode, 3, 5, 1, bidirectional=True, impl="kernel", kernel_parts=2)
    params = jax.vmap(lambda key: rnn.init(key, jnp.float64))(
        jax.random.split(jax.random.key(2), members))
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((steps, batch, 3)))
    lengths = jnp.asarray([5, 1, 3])

    def loss(params, x):
        out, h = rnn.apply(params, x, lengths=lengths)
        return jnp.sum(out * jnp.sin(out)) + sum(jnp.sum(s * s) for s in jax.tree.leaves(h))

    swept = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1)), in_axes=(0, None)))
    text = swept.lower(params, x).as_text()
    for kind in ("forward", "backward"):  # two directions: two calls of each, batched
        assert text.count(f"@jaxrnn_{mode}_{kind}_f64(") == 2, kind
    assert "stablehlo.while" not in text
    got = swept(params, x)
    single = jax.jit(jax.value_and_grad(loss, (0, 1)))
    for m in range(members):
        want = single(jax.tree.map(lambda a: a[m], params), x)
        mine = jax.tree.map(lambda a: a[m], got)
        assert max(float(jnp.max(jnp.abs(g - w)))
                   for g, w in zip(jax.tree.leaves(mine), jax.tree.leaves(want))) < 1e-12
