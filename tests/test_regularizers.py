"""The regularisers and the layer-normalised cells (docs/REGULARIZERS.md).

Every computation is checked against a plain NumPy float64 loop written from the equations
(layer-normalised LSTM and GRU, zoneout, weight drop, locked and embedding dropout, tied
heads), with the training masks regenerated from the same keys by the documented chain; the
masks' statistics are checked on their own; the off path is checked to be today's
computation (the same random draws, the same numbers); evaluation is deterministic and
agrees with step-by-step sampling.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, cli, regularizers
from jaxrnn.config import Config
from jaxrnn.engine import Recurrent, dropout, run_direction
from jaxrnn.errors import UserError
from jaxrnn.model import CharLM
from jaxrnn.names import CELL_NAMES, NORM_CELLS, NUM_GATES, TORCH_CELLS

T, B, I, H, V = 6, 3, 4, 5, 7
LENGTHS = np.array([6, 2, 4])

# ------------------------------------------------------------------ the NumPy reference


def np_sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def np_ln(a, num_gates, gain, bias):
    """γ ⊙ (a - mean) / sqrt(var + 1e-5) + β over each gate's block of H units."""
    blocks = a.reshape(a.shape[:-1] + (num_gates, -1))
    mean = blocks.mean(-1, keepdims=True)
    var = ((blocks - mean) ** 2).mean(-1, keepdims=True)
    out = ((blocks - mean) / np.sqrt(var + 1e-5)).reshape(a.shape) * gain
    return out if bias is None else out + bias


def np_lstm_ln(p, carry, x):
    h, c = carry
    a = (np_ln(x @ p["weight_ih"].T, 4, p["gain_ih"], p.get("bias_ih"))
         + np_ln(h @ p["weight_hh"].T, 4, p["gain_hh"], p.get("bias_hh")))
    a_i, a_f, a_g, a_o = np.split(a, 4, axis=-1)
    c = np_sigmoid(a_f) * c + np_sigmoid(a_i) * np.tanh(a_g)
    h = np_sigmoid(a_o) * np.tanh(np_ln(c, 1, p["gain_c"], p.get("bias_c")))
    return (h, c)


def np_gru_ln(p, carry, x):
    (h,) = carry
    u_r, u_z, u_n = np.split(np_ln(x @ p["weight_ih"].T, 3, p["gain_ih"], p.get("bias_ih")), 3, -1)
    v_r, v_z, v_n = np.split(np_ln(h @ p["weight_hh"].T, 3, p["gain_hh"], p.get("bias_hh")), 3, -1)
    r, z = np_sigmoid(u_r + v_r), np_sigmoid(u_z + v_z)
    n = np.tanh(u_n + r * v_n)
    return ((1.0 - z) * n + z * h,)


def np_lstm(p, carry, x):
    """PyTorch's LSTM (gates i, f, g, o)."""
    h, c = carry
    a = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    a_i, a_f, a_g, a_o = np.split(a, 4, axis=-1)
    c = np_sigmoid(a_f) * c + np_sigmoid(a_i) * np.tanh(a_g)
    return (np_sigmoid(a_o) * np.tanh(c), c)


def np_gru(p, carry, x):
    """PyTorch's GRU (gates r, z, n; b_hn inside r * (...))."""
    (h,) = carry
    x_r, x_z, x_n = np.split(x @ p["weight_ih"].T + p["bias_ih"], 3, -1)
    h_r, h_z, h_n = np.split(h @ p["weight_hh"].T + p["bias_hh"], 3, -1)
    r, z = np_sigmoid(x_r + h_r), np_sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * h_n)
    return ((1.0 - z) * n + z * h,)


NP_CELLS = {"lstm_ln": np_lstm_ln, "gru_ln": np_gru_ln, "lstm": np_lstm, "gru": np_gru}
CARRY_SIZE = {"lstm_ln": 2, "gru_ln": 1, "lstm": 2, "gru": 1}


def np_direction(mode, p, x, lengths, reverse, zone_keep=None, zone_rate=0.0):
    """One direction with packed-sequence semantics and zoneout, from the equations.

    zone_keep: per carry array <bool>[T, B, H] (True: keep the previous value), or None: the
    expectation zone_rate * old + (1 - zone_rate) * new (zone_rate 0: no zoneout)."""
    steps, batch, _ = x.shape
    hidden = p["weight_hh"].shape[-1]
    carry = tuple(np.zeros((batch, hidden)) for _ in range(CARRY_SIZE[mode]))
    ys = np.zeros((steps, batch, hidden))
    for t in (reversed(range(steps)) if reverse else range(steps)):
        new = NP_CELLS[mode](p, carry, x[t])
        if zone_keep is not None:
            new = tuple(np.where(k[t], old, n) for k, n, old in zip(zone_keep, new, carry))
        else:
            new = tuple(zone_rate * old + (1.0 - zone_rate) * n for n, old in zip(new, carry))
        valid = (t < lengths)[:, None]
        carry = tuple(np.where(valid, n, old) for n, old in zip(new, carry))
        ys[t] = np.where(valid, new[0], 0.0)
    return ys, carry


def np_network(mode, params, x, lengths, zone_keep=None, zone_rate=0.0, between_keep=None,
               dropout_rate=0.0):
    """Layers and directions; between_keep[layer] <bool>[B, D*H] is the locked dropout mask
    after each layer but the last. Returns (output [T, B, D*H], finals [L*D] of carries)."""
    layer_input = x
    finals = []
    for layer, directions in enumerate(params):
        outputs = []
        for d, p in enumerate(directions):
            index = layer * len(directions) + d
            ys, carry = np_direction(mode, p, layer_input, lengths, d == 1,
                                     None if zone_keep is None else zone_keep[index], zone_rate)
            outputs.append(ys)
            finals.append(carry)
        layer_input = np.concatenate(outputs, -1)
        if between_keep is not None and layer < len(params) - 1:
            layer_input = np.where(between_keep[layer][None], layer_input / (1 - dropout_rate), 0)
    return layer_input, finals


def to_np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def random_params(init, *args, seed=0):
    """Params of init(key, *args)'s shapes and dtypes, drawn by NumPy (no JAX init runs):
    gains U(0.5, 1.5), everything else U(-0.5, 0.5), so that no gain is 1 and no bias 0."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) if "gain" in str(path[-1])
                                    else rng.uniform(-0.5, 0.5, a.shape), a.dtype),
        jax.eval_shape(lambda key: init(key, *args), jax.random.key(0)))


def zone_masks(zone_key, rnn, lengths_batch, steps, dtype):
    """The zoneout masks Recurrent draws from its zone key, per direction index."""
    carry0 = jax.tree.map(lambda a: a[0], rnn.zero_state(lengths_batch, dtype))
    return [jax.tree.leaves(regularizers.zoneout_keep(jax.random.fold_in(zone_key, index),
                                                      carry0, steps, rnn.zoneout))
            for index in range(rnn.num_layers * rnn.num_directions)]


def binomial_ok(count, n, p, sigmas=5.0):
    """Whether count ~ Binomial(n, p) lies within `sigmas` standard deviations of n p."""
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


# ------------------------------------------------------------------ names, plans, errors


def test_norm_cells_are_registered_and_not_torch_cells():
    assert set(NORM_CELLS) <= set(CELL_NAMES) and not set(NORM_CELLS) & set(TORCH_CELLS)
    assert NUM_GATES["lstm_ln"] == 4 and NUM_GATES["gru_ln"] == 3
    assert tuple(cells.CELLS) == CELL_NAMES
    assert cells.CELLS["lstm_ln"] is cells.LSTM_LN and cells.CELLS["gru_ln"] is cells.GRU_LN
    assert all(cells.CELLS[name].takes_slab for name in NORM_CELLS)
    params = jax.jit(cells.LSTM_LN.init, static_argnums=(1, 2))(jax.random.key(0), 3, 2)
    # layer norm's gains start at 1 and its biases at 0
    assert set(params) == {"weight_ih", "weight_hh", "gain_ih", "gain_hh", "gain_c",
                           "bias_ih", "bias_hh", "bias_c"}
    assert all((np.asarray(params[n]) == 1).all() for n in ("gain_ih", "gain_hh", "gain_c"))
    assert all((np.asarray(params[n]) == 0).all() for n in ("bias_ih", "bias_hh", "bias_c"))


def test_plans_and_impl_errors():
    for mode in NORM_CELLS:
        assert Recurrent(mode, I, H).plan.unmasked == "reference"
        with pytest.raises(ValueError, match="no fused kernel"):
            Recurrent(mode, I, H, impl="kernel")
        with pytest.raises(ValueError, match="no fast recurrence"):
            Recurrent(mode, I, H, impl="fast")
    plan = Recurrent("lstm", I, H, zoneout=0.2).plan
    assert (plan.unmasked, plan.requested) == ("reference", "auto")
    assert Recurrent("mingru", I, H, zoneout=0.2).plan.unmasked == "reference"
    for impl in ("kernel", "fast", "parallel", "deer"):
        with pytest.raises(ValueError, match="cannot run zoneout"):
            Recurrent("lstm", I, H, zoneout=0.2, impl=impl)
    with pytest.raises(ValueError, match="zoneout must be in"):
        Recurrent("gru", I, H, zoneout=1.0)


@pytest.mark.parametrize("overrides, fields", [
    (dict(weight_drop=1.0), {"weight_drop"}),
    (dict(zoneout=-0.1), {"zoneout"}),
    (dict(embedding_dropout=0.1, embedding_size=0), {"embedding_dropout", "embedding_size"}),
    (dict(tie_weights=True, embedding_size=0), {"tie_weights", "embedding_size"}),
    (dict(weight_drop=0.1, cell="mingru"), {"weight_drop", "cell"}),
    (dict(zoneout=0.1, model="minlm", cell="mingru"), {"zoneout", "model"}),
])
def test_config_errors_name_the_fields(overrides, fields):
    with pytest.raises(UserError) as info:
        Config(**overrides)
    assert set(info.value.fields) == fields


def test_flags_and_old_config_files():
    parser = argparse.ArgumentParser()
    cli.add_config_flags(parser)
    args = parser.parse_args("--cell lstm_ln --weight-drop 0.3 --locked-dropout true "
                             "--embedding-dropout 0.1 --zoneout 0.05 --tie-weights yes".split())
    config = cli.config_from_args(args)
    assert (config.cell, config.weight_drop, config.locked_dropout, config.embedding_dropout,
            config.zoneout, config.tie_weights) == ("lstm_ln", 0.3, True, 0.1, 0.05, True)
    # a run directory's config.json from before these fields existed
    values = json.loads(Config().to_json())
    for name in ("weight_drop", "locked_dropout", "embedding_dropout", "zoneout", "tie_weights"):
        del values[name]
    assert Config.from_dict(values) == Config()


# ------------------------------------------------------------------ the off path


def test_off_path_is_todays_computation(monkeypatch):
    """Every option at its off value with dropout on: the same draws as before they existed
    (two dropout masks, from split(key) and the engine's split chain) and the same logits."""
    model = CharLM(V, "lstm", H, 2, embedding_size=4, dropout=0.3, impl="reference",
                   weight_drop=0.0, locked_dropout=False, embedding_dropout=0.0, zoneout=0.0,
                   tie_weights=False)
    params = random_params(model.init)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (B, T)), jnp.int32)
    key = jax.random.key(5)
    draws = []
    bernoulli = jax.random.bernoulli
    monkeypatch.setattr(jax.random, "bernoulli",
                        lambda *a, **k: draws.append(a[2] if len(a) > 2 else k["shape"])
                        or bernoulli(*a, **k))
    logits, state = model.apply(params, model.zero_state(B), tokens, key)
    assert draws == [(T, B, H), (T, B, H)]  # between the layers and before the head

    # today's CharLM.apply, written out from the engine's pieces
    rnn_key, head_key = jax.random.split(key)
    x = params["embedding"][tokens.T]
    zero = (jnp.zeros((B, H)), jnp.zeros((B, H)))
    ys, _ = run_direction(cells.LSTM, params["rnn"][0][0], x, zero)
    _, sub = jax.random.split(rnn_key)
    ys, _ = run_direction(cells.LSTM, params["rnn"][1][0], dropout(sub, ys, 0.3), zero)
    ys = dropout(head_key, ys, 0.3)
    expected = (cells.matmul_transposed(ys, params["head"]["weight"])
                + params["head"]["bias"][None, None])
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(jnp.swapaxes(expected, 0, 1)))


# ------------------------------------------------------------------ mask statistics


def test_weight_drop_masks_keep_rate_and_independence():
    rnn = Recurrent("lstm", I, H, num_layers=2, bidirectional=True, impl="reference")
    params = random_params(rnn.init)
    rate, kept, total = 0.3, 0, 0
    for seed in range(20):
        keep = regularizers.weight_drop_keep(jax.random.key(seed), params, rate)
        masks = [np.asarray(k) for layer in keep for k in layer]
        assert all(m.shape == (4 * H, H) for m in masks) and len(masks) == 4
        assert len({m.tobytes() for m in masks}) == 4  # one mask per layer and direction
        kept += sum(m.sum() for m in masks)
        total += sum(m.size for m in masks)
    assert binomial_ok(kept, total, 1 - rate)
    dropped = regularizers.drop_weight_hh(params, keep, rate)
    w, k, d = (np.asarray(params[0][1]["weight_hh"]), masks[1],
               np.asarray(dropped[0][1]["weight_hh"]))
    np.testing.assert_allclose(d, np.where(k, w / (1 - rate), 0), rtol=1e-6, atol=0)
    assert all(np.array_equal(dropped[0][1][n], params[0][1][n]) for n in ("weight_ih", "bias_ih"))


def test_embedding_dropout_drops_whole_rows():
    table = jax.random.normal(jax.random.key(0), (50, 8))
    rate, dropped_rows = 0.25, 0
    for seed in range(20):
        out = np.asarray(regularizers.drop_rows(
            table, regularizers.row_keep(jax.random.key(seed), 50, rate), rate))
        zero_rows = (out == 0).all(-1)
        kept = ~zero_rows
        np.testing.assert_allclose(out[kept], np.asarray(table)[kept] / (1 - rate), rtol=1e-6)
        assert not (out[kept] == 0).any()
        dropped_rows += zero_rows.sum()
    assert binomial_ok(dropped_rows, 20 * 50, rate)


def test_locked_dropout_mask_is_constant_over_time():
    x = jnp.ones((T, 40, 30))
    rate = 0.4
    out = np.asarray(regularizers.locked_dropout(jax.random.key(1), x, rate))
    kept = out != 0
    assert (kept == kept[:1]).all()  # the same mask at every step
    assert binomial_ok(kept[0].sum(), kept[0].size, 1 - rate)
    np.testing.assert_allclose(out[kept], 1 / (1 - rate))


def test_zoneout_masks_rate_and_independent_h_c():
    rate = 0.3
    carry0 = (jnp.zeros((20, 16)), jnp.zeros((20, 16)))
    keep_h, keep_c = map(np.asarray, regularizers.zoneout_keep(jax.random.key(0), carry0, 50,
                                                              rate))
    n = keep_h.size
    assert binomial_ok(keep_h.sum(), n, rate) and binomial_ok(keep_c.sum(), n, rate)
    assert binomial_ok((keep_h & keep_c).sum(), n, rate * rate)  # drawn independently
    # (that the engine applies exactly these masks: the NumPy tests below)


# ------------------------------------------------------------------ NumPy float64 references


@pytest.mark.parametrize("mode, bias", [
    pytest.param("lstm_ln", False, marks=pytest.mark.slow), ("gru_ln", True)])
def test_norm_cells_match_numpy(x64, mode, bias):
    """(lstm_ln with biases: the CharLM test below.)"""
    rnn = Recurrent(mode, I, H, num_layers=2, bidirectional=True, bias=bias)
    params = random_params(rnn.init, jnp.float64)
    x = np.random.default_rng(1).standard_normal((T, B, I))
    apply = jax.jit(rnn.apply)
    out, h_n = apply(params, jnp.asarray(x), lengths=jnp.asarray(LENGTHS))
    want, finals = np_network(mode, to_np(params), x, LENGTHS)
    np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=1e-10)
    for i, leaf in enumerate(jax.tree.leaves(h_n) if CARRY_SIZE[mode] == 2 else [h_n]):
        np.testing.assert_allclose(np.asarray(leaf), np.stack([f[i] for f in finals]),
                                   rtol=0, atol=1e-10)
    # unmasked, layer 0 fed its precomputed slab (CharLM's gather path)
    want, _ = np_network(mode, to_np(params), x, np.full(B, T))
    slabs = [jnp.asarray(x) @ p["weight_ih"].T for p in params[0]]
    out, _ = jax.jit(lambda p, s: rnn.apply(p, projected0=s))(params, slabs)
    np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", [pytest.param("lstm", marks=pytest.mark.slow), "gru_ln"])
def test_zoneout_and_locked_dropout_match_numpy(x64, mode):
    """Training masks regenerated by the documented key chain, lengths, two directions."""
    rnn = Recurrent(mode, I, H, num_layers=2, bidirectional=True, dropout=0.4,
                    locked_dropout=True, zoneout=0.3)
    params = random_params(rnn.init, jnp.float64)
    x = np.random.default_rng(1).standard_normal((T, B, I))
    key = jax.random.key(7)
    apply = jax.jit(rnn.apply)
    out, _ = apply(params, jnp.asarray(x), lengths=jnp.asarray(LENGTHS), key=key)
    key, zone_key = jax.random.split(key)
    zone = zone_masks(zone_key, rnn, B, T, jnp.float64)
    _, sub = jax.random.split(key)
    between = [np.asarray(regularizers.locked_keep(sub, (B, 2 * H), 0.4))]
    want, _ = np_network(mode, to_np(params), x, LENGTHS, zone_keep=to_np(zone),
                         between_keep=between, dropout_rate=0.4)
    np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=1e-10)
    if mode == "lstm":  # evaluation: no masks, zoneout's expectation (also the CharLM test's)
        out, _ = apply(params, jnp.asarray(x), lengths=jnp.asarray(LENGTHS))
        want, _ = np_network(mode, to_np(params), x, LENGTHS, zone_rate=0.3)
        np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("embedding_size", [  # tied directly, and through [H -> E]
    pytest.param(H, marks=pytest.mark.slow), 3])
def test_charlm_with_every_option_matches_numpy(x64, embedding_size):
    model = CharLM(V, "lstm_ln", H, 2, embedding_size=embedding_size, dropout=0.3,
                   dtype="float64", impl="auto", weight_drop=0.4, locked_dropout=True,
                   embedding_dropout=0.3, zoneout=0.2, tie_weights=True)
    params = random_params(model.init)
    assert set(params["head"]) == ({"bias"} if embedding_size == H else {"bias", "projection"})
    tokens = np.random.default_rng(2).integers(0, V, (B, T))
    key = jax.random.key(11)
    apply = jax.jit(model.apply)
    logits, _ = apply(params, model.zero_state(B), jnp.asarray(tokens, jnp.int32), key)

    # the masks, by the chain CharLM.apply and Recurrent document
    key, sub = jax.random.split(key)
    weight_key, row_key = jax.random.split(sub)
    weight_keep = regularizers.weight_drop_keep(weight_key, params["rnn"], 0.4)
    rows = np.asarray(regularizers.row_keep(row_key, V, 0.3))
    rnn_key, head_key = jax.random.split(key)
    rnn_key, zone_key = jax.random.split(rnn_key)
    zone = to_np(zone_masks(zone_key, model.rnn, B, T, jnp.float64))
    _, sub = jax.random.split(rnn_key)
    between = [np.asarray(regularizers.locked_keep(sub, (B, H), 0.3))]
    head_keep = np.asarray(regularizers.locked_keep(head_key, (B, H), 0.3))

    p = to_np(params)
    for layer, layer_keep in zip(p["rnn"], weight_keep):
        for d, k in zip(layer, layer_keep):
            d["weight_hh"] = np.where(np.asarray(k), d["weight_hh"] / 0.6, 0.0)
    table = np.where(rows[:, None], p["embedding"] / 0.7, 0.0)
    hidden, _ = np_network("lstm_ln", p["rnn"], table[tokens.T], np.full(B, T),
                           zone_keep=zone, between_keep=between, dropout_rate=0.3)
    hidden = np.where(head_keep[None], hidden / 0.7, 0.0)
    if "projection" in p["head"]:
        hidden = hidden @ p["head"]["projection"].T
    want = hidden @ p["embedding"].T + p["head"]["bias"]  # the tied head: the whole table
    np.testing.assert_allclose(np.asarray(logits), want.transpose(1, 0, 2), rtol=0, atol=1e-10)

    # another key, other masks
    other, _ = apply(params, model.zero_state(B), jnp.asarray(tokens, jnp.int32),
                     jax.random.key(12))
    assert np.abs(np.asarray(other) - np.asarray(logits)).max() > 1e-3

    # evaluation (no key): the raw weights and table, zoneout's expectation, no dropout
    logits, _ = apply(params, model.zero_state(B), jnp.asarray(tokens, jnp.int32))
    hidden, _ = np_network("lstm_ln", to_np(params)["rnn"], p["embedding"][tokens.T],
                           np.full(B, T), zone_rate=0.2)
    if "projection" in p["head"]:
        hidden = hidden @ p["head"]["projection"].T
    want = hidden @ p["embedding"].T + p["head"]["bias"]
    np.testing.assert_allclose(np.asarray(logits), want.transpose(1, 0, 2), rtol=0, atol=1e-10)
    again, _ = apply(params, model.zero_state(B), jnp.asarray(tokens, jnp.int32))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(logits))
    # sampling's path: step by step (model.step) gives the same logits
    step = jax.jit(model.step)
    carry, stepped = model.zero_state(B), []
    for t in range(T):
        carry, out = step(params, carry, jnp.asarray(tokens[:, t], jnp.int32))
        stepped.append(np.asarray(out))
    np.testing.assert_allclose(np.stack(stepped, 1), np.asarray(logits), rtol=0, atol=1e-10)


# ------------------------------------------------------------------ training


@pytest.mark.slow
def test_training_steps_with_every_option():
    """A few jitted training steps of the real trainer: finite, and the loss goes down."""
    from jaxrnn.trainer import Trainer

    config = Config(cell="lstm_ln", hidden_size=16, num_layers=2, embedding_size=8,
                    dropout=0.2, weight_drop=0.3, locked_dropout=True, embedding_dropout=0.1,
                    zoneout=0.1, tie_weights=True, seq_len=10, batch_size=4, lr=1e-2,
                    warmup_steps=0, steps=20, steps_per_call=10)
    tokens = jnp.asarray(np.tile(np.arange(V), 40), jnp.int32)
    trainer = Trainer.create(config, V, tokens.size, impl="fast")
    assert trainer.model.rnn.plan.unmasked == "reference"
    state = trainer.init_state()
    state, first = trainer.jit_train_chunk(state, tokens, 10)
    state, second = trainer.jit_train_chunk(state, tokens, 10)
    losses = np.concatenate([np.asarray(first["loss"]), np.asarray(second["loss"])])
    assert np.isfinite(losses).all() and losses[-3:].mean() < losses[:3].mean()
