"""model="minlm" (jaxrnn.minlm.MinLM): minGRU / minLSTM residual blocks.

Checked: causality; step-by-step decoding equal to `apply` (float64, 1e-10) with and without
the causal conv; windows chained through the state equal to one long window (the conv's
window carried); the conv against NumPy; a jitted Trainer step that learns; a whole
`train_and_evaluate` run read back by `load_run` and sampled; config and flag handling.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cli
from jaxrnn.config import Config, MinLMOptions, preset
from jaxrnn.errors import UserError
from jaxrnn.minlm import MinLM, causal_conv
from jaxrnn.models import build_model

CELLS = ("mingru", "minlstm")
VOCAB = 11


def tiny(cell="mingru", conv_size=4, dtype="float64", **kw):
    fields = dict(dim=8, num_blocks=2, expansion=1.5, conv_size=conv_size, mlp_mult=2)
    return MinLM(VOCAB, cell, **{**fields, **kw}, dtype=dtype)


# jitted once per model (a frozen dataclass, so equal models share their compiled code)
_apply = jax.jit(lambda model, *args: model.apply(*args), static_argnums=0)
_step = jax.jit(lambda model, *args: model.step(*args), static_argnums=0)


def random_tokens(seed, batch, steps):
    return jax.random.randint(jax.random.key(seed), (batch, steps), 0, VOCAB)


def max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("cell", CELLS)
def test_causal(x64, cell):
    model = tiny(cell)
    params = model.init(jax.random.key(0))
    tokens = random_tokens(1, 3, 9)
    later = tokens.at[:, 6].set((tokens[:, 6] + 1) % VOCAB)  # perturb position 6 only
    a, _ = _apply(model, params, model.zero_state(3), tokens)
    b, _ = _apply(model, params, model.zero_state(3), later)
    assert max_diff(a[:, :6], b[:, :6]) < 1e-12  # nothing before 6 sees it
    assert float(jnp.min(jnp.max(jnp.abs(a[:, 6:] - b[:, 6:]), axis=-1))) > 1e-6  # 6.. do


@pytest.mark.parametrize("conv_size", [0, 4])
@pytest.mark.parametrize("cell", CELLS)
def test_step_equals_apply(x64, cell, conv_size):
    """Decoding one token at a time from zero_state gives apply's logits at every position
    and its final state (LayerNorm in the conv-less case, RMSNorm else)."""
    model = tiny(cell, conv_size, norm="rms" if conv_size else "layer")
    params = model.init(jax.random.key(0))
    tokens = random_tokens(2, 3, 9)
    logits, final = _apply(model, params, model.zero_state(3), tokens)
    state, stepped = model.zero_state(3), []
    for t in range(tokens.shape[1]):
        state, out = _step(model, params, state, tokens[:, t])
        stepped.append(out)
    assert logits.shape == (3, 9, VOCAB) and logits.dtype == jnp.float64
    assert max_diff(jnp.stack(stepped, axis=1), logits) < 1e-10
    assert max_diff(state, final) < 1e-10  # conv windows and minRNN states


@pytest.mark.parametrize("cell", CELLS)
def test_windows_chain_through_the_state(x64, cell):
    """apply(w1) then apply(w2) from its state == apply(w1 + w2): the minRNN's h and the
    conv's last K-1 inputs both carried (a window shorter than K-1 too)."""
    model = tiny(cell, conv_size=4)
    params = model.init(jax.random.key(0))
    tokens = random_tokens(2, 3, 9)
    whole, final = _apply(model, params, model.zero_state(3), tokens)
    state, parts = model.zero_state(3), []
    for start, stop in ((0, 5), (5, 7), (7, 9)):  # windows of 2 < K-1 = 3 positions too
        logits, state = _apply(model, params, state, tokens[:, start:stop])
        parts.append(logits)
    assert max_diff(jnp.concatenate(parts, axis=1), whole) < 1e-10
    assert max_diff(state, final) < 1e-10
    assert state[0]["conv"].shape == (3, 3, 8) and state[0]["rnn"].shape == (1, 3, 12)


def numpy_causal_conv(weight, bias, window, x):
    """Per channel and batch row: np.convolve of the flipped filter over [window; x]."""
    full = np.concatenate([window, x], axis=0)  # [K-1+T, B, D]
    taps, (_, batch, dim) = weight.shape[0], x.shape
    out = np.empty_like(x)
    for b in range(batch):
        for c in range(dim):
            out[:, b, c] = np.convolve(full[:, b, c], weight[::-1, c], mode="valid") + bias[c]
    return out, full[-(taps - 1):]


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_conv_against_numpy(x64, steps):
    rng = np.random.default_rng(0)
    taps, batch, dim = 4, 2, 5
    weight, bias = rng.normal(size=(taps, dim)), rng.normal(size=dim)
    window, x = rng.normal(size=(taps - 1, batch, dim)), rng.normal(size=(steps, batch, dim))
    y, new_window = causal_conv({"weight": jnp.asarray(weight), "bias": jnp.asarray(bias)},
                                jnp.asarray(window), jnp.asarray(x))
    want_y, want_window = numpy_causal_conv(weight, bias, window, x)
    np.testing.assert_allclose(np.asarray(y), want_y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(new_window), want_window, rtol=0, atol=0)
    # output t sees inputs t-K+1..t only: y[t] from x[t] is weight[K-1] (the current tap)
    grad = jax.jacobian(lambda v: causal_conv({"weight": jnp.asarray(weight),
                                               "bias": jnp.asarray(bias)},
                                              jnp.asarray(window), v)[0])(jnp.asarray(x))
    for t in range(steps):
        for s in range(steps):
            want = weight[taps - 1 - (t - s)] if 0 <= t - s < taps else np.zeros(dim)
            np.testing.assert_array_equal(np.asarray(grad[t, 0, :, s, 0, :]), np.diag(want))


def shrunk(**overrides):
    """The minlm preset at test sizes."""
    sizes = dict(dim=16, num_layers=2, expansion=1.5, conv_size=4, mlp_mult=2, seq_len=16,
                 batch_size=4, warmup_steps=3, steps_per_call=10, log_every=10,
                 eval_every=10, eval_batch_size=4, checkpoint_every=10, sample_length=20)
    return preset("minlm", **{**sizes, **overrides})


def test_trainer_step_learns():
    from jaxrnn.trainer import Trainer

    text = np.array([ord(c) - ord("a") for c in "abcdefg" * 200], np.int32)
    config = shrunk(steps=30, lr=1e-2, dropout=0.0)  # dropout: the next tests
    trainer = Trainer.create(config, 7, len(text))
    assert isinstance(trainer.model, MinLM) and trainer.model.cell == "mingru"
    state = trainer.init_state()
    losses = []
    for _ in range(3):
        state, metrics = trainer.jit_train_chunk(state, jnp.asarray(text), 10)
        losses.extend(np.asarray(metrics["loss"]).tolist())
    assert int(state.step) == 30 and np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    # the carried state is the model's, conv windows included
    assert jax.tree.structure(state.carry) == jax.tree.structure(
        trainer.model.zero_state(config.batch_size))


def test_dropout_needs_a_key():
    model = tiny("mingru", dtype="float32", dropout=0.5)
    params = model.init(jax.random.key(0))
    tokens, zero = random_tokens(5, 3, 9), model.zero_state(3)
    plain, _ = _apply(model, params, zero, tokens)
    again, _ = _apply(model, params, zero, tokens)
    dropped, _ = _apply(model, params, zero, tokens, jax.random.key(1))
    other, _ = _apply(model, params, zero, tokens, jax.random.key(2))
    assert max_diff(plain, again) == 0
    assert max_diff(plain, dropped) > 1e-3 and max_diff(dropped, other) > 1e-3


def test_train_and_evaluate_then_sample(tmp_path, small_text):
    from jaxrnn.rundir import load_run
    from jaxrnn.sampling import sample_text
    from jaxrnn.train import train_and_evaluate

    data = tmp_path / "text.txt"
    data.write_text(small_text)
    config = shrunk(steps=20, cell="minlstm")
    result = train_and_evaluate(config, str(data), str(tmp_path / "run"), progress=False,
                                log=lambda *a, **k: None)
    assert int(result.state.step) == 20 and np.isfinite(result.val["loss_nats"])
    for name in ("ckpt-000000020.msgpack", "last.msgpack", "best.msgpack", "config.json"):
        assert (tmp_path / "run" / name).exists(), name
    loaded, vocab, model, params = load_run(str(tmp_path / "run"), "last")
    assert loaded == config and isinstance(model, MinLM) and model.cell == "minlstm"
    text = sample_text(model, params, vocab, prime="the ", length=30, seed=1)
    assert text.startswith("the ") and len(text) == 34
    greedy = sample_text(model, params, vocab, prime="the ", length=30, argmax=True, num=2)
    assert greedy[0] == greedy[1]


def test_config():
    config = preset("minlm")
    assert config.model == "minlm" and config.cell in CELLS
    assert Config.from_dict(json.loads(config.to_json())) == config
    assert json.loads(config.to_json())["minlm"]["dim"] == config.minlm.dim
    model = build_model(config, 65)
    assert (model.dim, model.num_blocks, model.conv_size) == (
        config.minlm.dim, config.num_layers, config.minlm.conv_size)
    assert model.hidden_size == round(config.minlm.dim * config.minlm.expansion)
    # a section's fields at the top level, as flags give them
    assert preset("minlm", dim=32, norm="layer").minlm == MinLMOptions(
        **{**vars(config.minlm), "dim": 32, "norm": "layer"})
    # JAXRNN_CPU_KERNELS=off asks for "fast": the min cells run their parallel scan
    assert build_model(config, 65, impl="fast").rnn.plan.unmasked == "parallel"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_other_cells_are_refused(cell):
    config = preset("minlm", cell=cell)  # a valid Config: the cell is the model's business
    with pytest.raises(UserError) as e:
        build_model(config, 65)
    assert e.value.fields == ("cell",) and cell in str(e.value)


def test_char_rnn_init_is_refused():
    with pytest.raises(UserError) as e:
        build_model(preset("minlm", init="char-rnn"), 65)
    assert e.value.fields == ("init",)


@pytest.mark.parametrize("field, value", [("norm", "batch"), ("dim", 0), ("conv_size", -1),
                                          ("mlp_mult", 0), ("expansion", 0.0)])
def test_bad_options_name_their_field(field, value):
    with pytest.raises(UserError) as e:
        preset("minlm", **{field: value})
    assert e.value.fields == (field,)


def test_flags():
    parser = cli.make_parser(cli.train_main)
    cli.add_config_flags(parser)
    assert all(f in parser.format_help() for f in ("--dim", "--expansion", "--conv-size",
                                                     "--mlp-mult", "--norm"))
    args = parser.parse_args(["--preset", "minlm", "--dim", "48", "--conv-size", "0",
                              "--cell", "minlstm"])
    config = cli.config_from_args(args)
    assert (config.minlm.dim, config.minlm.conv_size, config.cell) == (48, 0, "minlstm")
    assert cli.flag_message("minlm.conv_size must be 0 or more", ["minlm.conv_size"]) == \
        "--conv-size must be 0 or more"
