"""minGRU and minLSTM (`jaxrnn.mincells`): the parallel-in-time form (an associative scan) and
the sequential reference scan against an independent NumPy float64 loop written from the
paper's equations, with the engine's lengths / hx / bidirectional / layers semantics; their
gradients; float32 over 65,536 steps; sampling; the errors; and CharLM end to end.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells
from jaxrnn import mincells
from jaxrnn.engine import Recurrent
from jaxrnn.names import CELL_NAMES, NUM_GATES, TORCH_CELLS

MODES = ("mingru", "minlstm")


# ------------------------------------------------------------------ the NumPy reference


def np_sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # no overflow for large |v|


def np_g(v):
    return np.where(v >= 0, v + 0.5, np_sigmoid(v))


def np_cell(mode, p, h, x):
    """One step for one example, from the equations: h [H], x [I] -> h [H]."""
    a = p["weight_ih"] @ x
    if "bias_ih" in p:
        a = a + p["bias_ih"]
    hidden = h.shape[0]
    h_tilde = a[:hidden]
    if mode == "mingru":
        z = np_sigmoid(a[hidden:2 * hidden])
        return (1.0 - z) * h + z * np_g(h_tilde)
    f = np_sigmoid(a[hidden:2 * hidden])
    i = np_sigmoid(a[2 * hidden:3 * hidden])
    return f / (f + i) * h + i / (f + i) * np_g(h_tilde)


def np_recurrent(mode, params, x, hx=None, lengths=None, bidirectional=False):
    """The network as torch's packed-sequence semantics say, one sequence at a time.

    x <float64>[T, B, I] time-major; hx [L*D, B, H] or None; lengths [B] or None.
    Returns (output [T, B, D*H], h_n [L*D, B, H]).
    """
    steps, batch, _ = x.shape
    num_dirs = 2 if bidirectional else 1
    hidden = params[0][0]["weight_ih"].shape[0] // NUM_GATES[mode]
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    layer_input = np.asarray(x, np.float64)
    finals = []
    for layer, directions in enumerate(params):
        outputs = []
        for d, p in enumerate(directions):
            p = {k: np.asarray(v, np.float64) for k, v in p.items()}
            out = np.zeros((steps, batch, hidden))
            h_n = np.zeros((batch, hidden))
            for b in range(batch):
                h = (np.zeros(hidden) if hx is None
                     else np.asarray(hx[layer * num_dirs + d, b], np.float64))
                order = range(lengths[b]) if d == 0 else reversed(range(lengths[b]))
                for t in order:
                    h = np_cell(mode, p, h, layer_input[t, b])
                    out[t, b] = h
                h_n[b] = h
            outputs.append(out)
            finals.append(h_n)
        layer_input = np.concatenate(outputs, axis=-1)
    return layer_input, np.stack(finals)


def np_direction_batched(mode, p, x, h):
    """One unmasked forward direction vectorised over the batch (the long-sequence check):
    x [T, B, I], h [B, H] -> (ys [T, B, H], h_T)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    hidden = h.shape[-1]
    a_all = x @ p["weight_ih"].T + p.get("bias_ih", 0.0)
    ys = np.empty(x.shape[:2] + (hidden,))
    for t in range(x.shape[0]):
        a = a_all[t]
        h_tilde = a[:, :hidden]
        if mode == "mingru":
            z = np_sigmoid(a[:, hidden:])
            h = (1.0 - z) * h + z * np_g(h_tilde)
        else:
            f = np_sigmoid(a[:, hidden:2 * hidden])
            i = np_sigmoid(a[:, 2 * hidden:])
            h = f / (f + i) * h + i / (f + i) * np_g(h_tilde)
        ys[t] = h
    return ys, h


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def random_lengths(rng, batch, steps):
    """Unsorted lengths in 1..T holding 1 and T (for batch >= 2)."""
    lengths = rng.integers(1, steps + 1, batch)
    lengths[0], lengths[-1] = 1, steps
    return rng.permutation(lengths)


def scaled_params(rnn, key, scale, dtype):
    """rnn.init's params times `scale` (saturating gates when > 1)."""
    return jax.tree.map(lambda a: a * scale, rnn.init(key, dtype))


# ------------------------------------------------------------------ registration


def test_registered_everywhere():
    assert set(MODES) <= set(CELL_NAMES) and NUM_GATES["mingru"] == 2 and NUM_GATES["minlstm"] == 3
    assert not set(MODES) & set(TORCH_CELLS)
    assert tuple(cells.CELLS) == CELL_NAMES
    assert cells.CELLS["mingru"] is cells.MINGRU is mincells.MINGRU
    assert cells.CELLS["minlstm"] is cells.MINLSTM is mincells.MINLSTM
    for mode in MODES:
        cell = cells.get_cell(mode)
        assert cell.takes_slab and cell.parallel is not None and cell.fast is None
        for impl, lengths in (("auto", False), ("auto", True), ("parallel", True)):
            rnn = Recurrent(mode, 3, 4, impl=impl)
            assert rnn.plan.unmasked == "parallel"
            assert rnn.plan.for_call(rnn.cell, jnp.float32, lengths) == "parallel"
        rnn = Recurrent(mode, 3, 4, impl="reference")
        assert rnn.plan.for_call(rnn.cell, jnp.float32, True) == "reference"
        params = Recurrent(mode, 3, 4, num_layers=2, bidirectional=True).init(jax.random.key(0))
        g = NUM_GATES[mode]
        assert jax.tree.map(jnp.shape, params[1][1]) == {"weight_ih": (g * 4, 8),
                                                         "bias_ih": (g * 4,)}
        bound = 1 / 2  # U(±1/sqrt(H)), H = 4
        assert all(float(jnp.max(jnp.abs(a))) <= bound for a in jax.tree.leaves(params))
        no_bias = Recurrent(mode, 3, 4, bias=False).init(jax.random.key(0))
        assert set(no_bias[0][0]) == {"weight_ih"}


# ------------------------------------------------------------------ parity, float64

# (steps, batch, num_layers, bidirectional, lengths, hx, batch_first, bias, weight scale)
CONFIGS = {
    "T1": (1, 3, 1, False, False, None, False, True, 1.0),
    "T7-bi-2layers-lengths-hxneg-bf": (7, 5, 2, True, True, "negative", True, True, 1.0),
    "T7-nobias-lengths-hxpos": (7, 4, 1, False, True, "positive", False, False, 3.0),
    "T7-bi-hxmixed-saturating": (7, 3, 1, True, False, "mixed", False, True, 8.0),
    "T512-bi-2layers-lengths-hxmixed": (512, 4, 2, True, True, "mixed", False, True, 1.5),
}


def make_hx(kind, rng, shape):
    if kind is None:
        return None
    magnitude = rng.uniform(0.5, 3.0, shape)
    if kind == "positive":
        return magnitude
    if kind == "negative":
        return -magnitude
    return magnitude * rng.choice([-1.0, 1.0], shape)


def run_parity(mode, steps, batch, num_layers, bidirectional, use_lengths, hx_kind,
               batch_first, bias, scale, *, seed=0, input_size=3, hidden_size=5):
    """Returns the largest differences {parallel vs numpy, reference vs numpy, parallel vs
    reference} over output and h_n."""
    rng = np.random.default_rng(seed)
    kwargs = dict(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                  bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    parallel = Recurrent(mode, impl="auto", **kwargs)
    reference = Recurrent(mode, impl="reference", **kwargs)
    assert parallel.plan.unmasked == "parallel"
    params = scaled_params(parallel, jax.random.key(seed), scale, jnp.float64)
    x = rng.standard_normal((steps, batch, input_size)) * 2.0
    lengths = random_lengths(rng, batch, steps) if use_lengths else None
    num_dirs = 2 if bidirectional else 1
    hx = make_hx(hx_kind, rng, (num_layers * num_dirs, batch, hidden_size))
    want_out, want_h = np_recurrent(mode, params, x, hx, lengths, bidirectional)

    x_in = np.swapaxes(x, 0, 1) if batch_first else x
    args = (jnp.asarray(x_in), None if hx is None else jnp.asarray(hx))
    lengths_in = None if lengths is None else jnp.asarray(lengths)
    results = {}
    for name, rnn in (("parallel", parallel), ("reference", reference)):
        out, h_n = jax.jit(rnn.apply)(params, *args, lengths_in)
        out = np.asarray(out)
        if batch_first:
            out = np.swapaxes(out, 0, 1)
        assert out.dtype == np.float64 and out.shape == want_out.shape
        results[name] = (out, np.asarray(h_n))
    if lengths is not None:  # padding is exactly zero
        pad = np.arange(steps)[:, None] >= lengths[None, :]
        assert np.all(results["parallel"][0][pad] == 0.0)
    diffs = {}
    for a, b in (("parallel", "numpy"), ("reference", "numpy"), ("parallel", "reference")):
        got_a = results[a]
        got_b = (want_out, want_h) if b == "numpy" else results[b]
        diffs[f"{a} vs {b}"] = max(max_diff(got_a[0], got_b[0]), max_diff(got_a[1], got_b[1]))
    return diffs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_parity_float64(x64, mode, config):
    diffs = run_parity(mode, *CONFIGS[config])
    assert max(diffs.values()) < 1e-10, diffs


@pytest.mark.parametrize("mode", ["mingru", pytest.param("minlstm", marks=pytest.mark.slow)])
def test_parity_float64_long(x64, mode):
    """T = 4096, one config: bidirectional, lengths (1 and T among them), hx."""
    diffs = run_parity(mode, 4096, 3, 1, True, True, "mixed", False, True, 1.5, seed=1)
    assert max(diffs.values()) < 1e-10, diffs


def test_minlstm_saturated_gates_stay_finite():
    """f and i both underflow to 0 in float32 (a_f = a_i = -200): f / (f + i) would be 0/0;
    the cell's f' = σ(log f - log i) gives the limit 1/2 where log f = log i."""
    hidden = 2
    slab = jnp.concatenate([jnp.full((4, 1, hidden), 1.0), jnp.full((4, 1, 2 * hidden), -200.0)],
                           axis=-1)
    h0 = jnp.ones((1, hidden), jnp.float32)
    ys, h_t = cells.MINLSTM.parallel({}, slab, h0, False, None)
    assert np.all(np.isfinite(ys))
    want = 1.5 + (1.0 - 1.5) * 0.5**4  # h = 0.5 h + 0.5 g(1), g(1) = 1.5, four steps
    np.testing.assert_allclose(np.asarray(h_t), want, rtol=1e-6)


# ------------------------------------------------------------------ gradients


# default: one masked and one unmasked case; the slow run has every mode x lengths x layers
GRADIENT_CASES = [("mingru", True, 1), ("minlstm", False, 1)] + [
    pytest.param(mode, use_lengths, 2, marks=pytest.mark.slow)
    for mode in MODES for use_lengths in (True, False)]


@pytest.mark.parametrize("mode,use_lengths,num_layers", GRADIENT_CASES)
def test_gradients_parallel_equal_reference(x64, mode, use_lengths, num_layers):
    """Gradients w.r.t. params, x and hx (bidirectional, saturating weights): parallel vs
    sequential to 1e-9."""
    rng = np.random.default_rng(3)
    steps, batch, input_size, hidden_size = 19, 4, 3, 5
    kwargs = dict(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                  bidirectional=True)
    parallel, reference = (Recurrent(mode, impl=impl, **kwargs) for impl in ("auto", "reference"))
    params = scaled_params(parallel, jax.random.key(2), 2.0, jnp.float64)
    x = jnp.asarray(rng.standard_normal((steps, batch, input_size)))
    hx = jnp.asarray(make_hx("mixed", rng, (2 * num_layers, batch, hidden_size)))
    out_cot = jnp.asarray(rng.standard_normal((steps, batch, 2 * hidden_size)))
    h_cot = jnp.asarray(rng.standard_normal((2 * num_layers, batch, hidden_size)))
    lengths = jnp.asarray(random_lengths(rng, batch, steps)) if use_lengths else None

    def value_and_grads(rnn):
        def f(params, x, hx):
            out, h_n = rnn.apply(params, x, hx, lengths)
            return jnp.sum(out * out_cot) + jnp.sum(h_n * h_cot)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(params, x, hx)

    value_p, grads_p = value_and_grads(parallel)
    value_r, grads_r = value_and_grads(reference)
    assert abs(float(value_p - value_r)) < 1e-10
    leaves_p, leaves_r = jax.tree.leaves(grads_p), jax.tree.leaves(grads_r)
    assert len(leaves_p) == len(leaves_r) == 2 * num_layers * 2 + 2  # W, b per direction; x, hx
    worst = max(max_diff(a, b) for a, b in zip(leaves_p, leaves_r))
    assert worst < 1e-9, worst
    assert all(np.all(np.isfinite(g)) for g in leaves_p)
    assert float(jnp.max(jnp.abs(grads_p[2]))) > 0  # hx reaches the loss


# ------------------------------------------------------------------ float32, long


def long_float32_errors(mode, steps=65_536):
    """float32 parallel and reference at T = steps (B=2, H=8, bidirectional, one layer) vs the
    float64 NumPy loop on the same (float32) weights and inputs: the error of each relative
    to the answer's largest magnitude, max |got - want| / max |want|, over outputs and final
    states (elementwise relative error is ill-posed where a mixed-sign h_0 decays through 0)."""
    batch, input_size, hidden_size = 2, 4, 8
    rng = np.random.default_rng(7)
    rnn = Recurrent(mode, input_size, hidden_size, bidirectional=True)
    assert rnn.plan.unmasked == "parallel"
    params = rnn.init(jax.random.key(5), jnp.float32)
    x = rng.standard_normal((steps, batch, input_size)).astype(np.float32)
    hx = make_hx("mixed", rng, (2, batch, hidden_size)).astype(np.float32)
    want_out, want_h = [], []
    for d in range(2):
        xs = x if d == 0 else x[::-1]
        ys, h_t = np_direction_batched(mode, params[0][d], xs.astype(np.float64),
                                       hx[d].astype(np.float64))
        want_out.append(ys if d == 0 else ys[::-1])
        want_h.append(h_t)
    want_out, want_h = np.concatenate(want_out, -1), np.stack(want_h)
    errors = {}
    for impl in ("auto", "reference"):
        r = Recurrent(mode, input_size, hidden_size, bidirectional=True, impl=impl)
        out, h_n = jax.jit(r.apply)(params, jnp.asarray(x), jnp.asarray(hx))
        out, h_n = np.asarray(out), np.asarray(h_n)
        assert out.dtype == np.float32 and np.all(np.isfinite(out)) and np.all(np.isfinite(h_n))
        errors[impl] = max(max_diff(out, want_out) / float(np.max(np.abs(want_out))),
                           max_diff(h_n, want_h) / float(np.max(np.abs(want_h))))
    return errors


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_float32_65536_steps(mode):
    errors = long_float32_errors(mode)
    assert max(errors.values()) < 1e-4, errors


@pytest.mark.parametrize("mode", MODES)
def test_float32_4096_steps(mode):
    """The same at T = 4096, in the default run."""
    errors = long_float32_errors(mode, steps=4096)
    assert max(errors.values()) < 1e-4, errors


# ------------------------------------------------------------------ step, errors


@pytest.mark.parametrize("mode", MODES)
def test_step_equals_apply(x64, mode):
    rng = np.random.default_rng(11)
    steps, batch = 6, 3
    rnn = Recurrent(mode, 3, 4, num_layers=2)
    params = scaled_params(rnn, jax.random.key(1), 2.0, jnp.float64)
    x = jnp.asarray(rng.standard_normal((steps, batch, 3)))
    hx = jnp.asarray(make_hx("mixed", rng, (2, batch, 4)))
    out, h_n = rnn.apply(params, x, hx)
    state, ys = hx, []
    for t in range(steps):
        state, y = rnn.step(params, state, x[t])
        ys.append(y)
    np.testing.assert_allclose(np.stack(ys), out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(state, h_n, rtol=0, atol=1e-12)


def zero_params(rnn):
    """Zeros of rnn.init's structure, without running init (cheap)."""
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                        jax.eval_shape(rnn.init, jax.random.key(0)))


@pytest.mark.parametrize("mode", MODES)
def test_errors(mode):
    rnn = Recurrent(mode, 3, 4)
    params = zero_params(rnn)
    x = jnp.zeros((5, 2, 3))
    with_hh = [[dict(params[0][0], weight_hh=jnp.zeros((NUM_GATES[mode] * 4, 4)))]]
    with pytest.raises(ValueError, match=r"params\[0\]\[0\] must have keys \['bias_ih', "
                                         r"'weight_ih'\], got \['bias_ih', 'weight_hh', "
                                         r"'weight_ih'\]"):
        rnn.apply(with_hh, x)
    with pytest.raises(ValueError, match=r"must have keys \['bias_ih', 'weight_ih'\]"):
        rnn.check_params(zero_params(Recurrent("lstm", 3, 4, impl="reference")))
    with pytest.raises(ValueError, match=r"must have keys \['weight_ih'\]"):
        Recurrent(mode, 3, 4, bias=False).check_params(params)
    with pytest.raises(ValueError, match=r"'weight_ih'\] must have shape \(.*, 3\)"):
        rnn.check_params(zero_params(Recurrent(mode, 2, 4)))
    with pytest.raises(ValueError, match=r"impl='fast'.*no fast recurrence"):
        Recurrent(mode, 3, 4, impl="fast")
    with pytest.raises(ValueError, match=r"impl='kernel'.*no fused kernel"):
        Recurrent(mode, 3, 4, impl="kernel")
    with pytest.raises(ValueError, match=r"impl='parallel': cell 'lstm' has no parallel"):
        Recurrent("lstm", 3, 4, impl="parallel")


@pytest.mark.parametrize("mode", MODES)
def test_conversion_to_torch_refused(mode):
    pytest.importorskip("torch")
    from torch_baselines import convert
    from jaxrnn.model import CharLM

    rnn = Recurrent(mode, 3, 4)
    params = zero_params(rnn)
    message = rf"mode '{mode}' has no PyTorch counterpart"
    with pytest.raises(ValueError, match=message):
        convert.expected_shapes(rnn)
    with pytest.raises(ValueError, match=message):
        convert.to_torch(rnn, params)
    with pytest.raises(ValueError, match=message):
        convert.params_from_state_dict(rnn, {"weight_ih_l0": np.zeros((8, 3))})
    with pytest.raises(ValueError, match=message):
        convert.params_to_state_dict(rnn, params)
    model = CharLM(10, cell=mode, hidden_size=4, num_layers=1)
    with pytest.raises(ValueError, match=message):
        convert.charlm_to_torch(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                             jax.eval_shape(model.init, jax.random.key(0))),
                                model)


# ------------------------------------------------------------------ CharLM end to end


TEXT = "abcabdabcabe " * 60


def _reference_logits(model, params, tokens):
    """The CharLM by hand: embed (or one-hot), the reference engine, the head."""
    rnn = Recurrent(model.cell, model.embedding_size or model.vocab_size, model.hidden_size,
                    model.num_layers, impl="reference")
    x = (params["embedding"][tokens.T] if model.embedding_size
         else jax.nn.one_hot(tokens.T, model.vocab_size, dtype=params["head"]["weight"].dtype))
    hidden, state = rnn.apply(params["rnn"], x)
    logits = hidden @ params["head"]["weight"].T + params["head"]["bias"][None, None]
    return jnp.swapaxes(logits, 0, 1), state


@pytest.mark.parametrize("mode,embedding_size", [
    ("mingru", 0), ("minlstm", 6),
    pytest.param("mingru", 6, marks=pytest.mark.slow),
    pytest.param("minlstm", 0, marks=pytest.mark.slow)])
def test_charlm_apply_step_and_sampling(x64, mode, embedding_size):
    """CharLM.apply through each way layer 0 gets its input (one-hot GEMM or the engine's
    projection at 64 tokens, the gathered slab at 320) equals embedding / one-hot, then the
    reference engine, then the head; step equals apply; generate samples."""
    from jaxrnn.model import GATHER_MIN_TOKENS, CharLM
    from jaxrnn.sampling import generate

    vocab = sorted(set(TEXT))
    ids = np.array([vocab.index(c) for c in TEXT], np.int32)
    assert 4 * 16 < GATHER_MIN_TOKENS <= 8 * 40
    model = CharLM(len(vocab), cell=mode, hidden_size=8, num_layers=2,
                   embedding_size=embedding_size, dtype="float64")
    params = model.init(jax.random.key(0))
    # (4, 16): 64 tokens, engine-projected or one-hot GEMM; (8, 40): 320, the gather
    for batch, steps in ((4, 16), (8, 40)):
        tokens = jnp.asarray(ids[:batch * steps].reshape(batch, steps))
        logits, state = jax.jit(model.apply)(params, model.zero_state(batch), tokens)
        want_logits, want_state = _reference_logits(model, params, tokens)
        np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state, want_state, rtol=0, atol=1e-10)
    # step, one token at a time, equals apply
    state, step = model.zero_state(batch), jax.jit(model.step)
    for t in range(steps):
        state, step_logits = step(params, state, tokens[:, t])
        np.testing.assert_allclose(step_logits, logits[:, t], rtol=0, atol=1e-10)
    sample = generate(model, params, tokens[:2, :5], jax.random.key(1), 1.0, length=12)
    assert sample.shape == (2, 12) and int(sample.min()) >= 0
    assert int(sample.max()) < len(vocab)


@pytest.mark.parametrize("mode", MODES)
def test_charlm_training_loss_decreases(mode):
    from jaxrnn.config import Config
    from jaxrnn.trainer import Trainer

    vocab = sorted(set(TEXT))
    tokens = jnp.asarray([vocab.index(c) for c in TEXT], jnp.int32)
    config = Config(cell=mode, hidden_size=16, num_layers=1, embedding_size=8, dropout=0.1,
                    seq_len=16, batch_size=8, lr=1e-2, schedule="constant", steps=20)
    trainer = Trainer.create(config, len(vocab), len(tokens))
    assert trainer.model.rnn.plan.unmasked == "parallel"
    state, metrics = trainer.jit_train_chunk(trainer.init_state(), tokens, 20)
    losses = np.asarray(metrics["loss"])
    assert np.all(np.isfinite(losses)) and int(state.step) == 20
    assert losses[-3:].mean() < 0.75 * losses[:3].mean(), losses

