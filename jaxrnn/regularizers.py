"""The regularisers of recurrent language models: their masks and where they are applied.

Every mask here is a boolean "keep" array drawn from a key, and every regulariser is a
function of its keep mask, so a test can regenerate a mask from the same key and check the
arithmetic against its own reference. Dropped entries are zero, kept ones are scaled by
1 / (1 - p) (inverted dropout), so the expectation is the deterministic evaluation path:
nothing here runs without a key, except zoneout's expectation.

  weight drop        DropConnect on each layer's and direction's weight_hh, one mask per
  (Merity et al.     call (a training step), applied to the params before the time loop, so
  2018, AWD-LSTM)    every impl, the fused kernel included, runs the dropped weights.
                     `weight_drop_keep`, `drop_weight_hh`, `weight_drop`.
  locked dropout     one mask per sequence shared over time: x [T, B, F] * m [1, B, F]
  (Gal & Ghahramani  (`locked_keep`, `locked_dropout`).
  2016)
  embedding dropout  whole rows (token types) of the embedding table dropped: every
                     occurrence of a dropped token reads zeros (`row_keep`, `drop_rows`).
  zoneout            each unit of each carry array (h, and c of an LSTM, with independent
  (Krueger et al.    masks of the same rate p) keeps its previous value with probability p:
  2017)              s_t = d_t ⊙ s_{t-1} + (1 - d_t) ⊙ cell(s_{t-1}, x_t), d_t ~ Bernoulli(p);
                     at evaluation s_t = p s_{t-1} + (1 - p) cell(s_{t-1}, x_t). The LSTM's h'
                     reads tanh of the cell's own c' (before c is zoned out), as the paper's.
                     Per-step masks live inside the recurrence, so zoneout runs on the
                     reference scan (`zoneout_direction`, `zoneout_expected_step`).

How `jaxrnn.Recurrent` derives its keys (the off path draws nothing new): with zoneout > 0,
`key, zone_key = split(key)` first, and direction `index = layer * D + d` draws its zoneout
masks from `fold_in(zone_key, index)`; then, as without it, each layer but the last splits
`key, sub = split(key)` and drops its output with `sub` (locked: `locked_dropout`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _scaled_where(keep, x, rate):
    """x / (1 - rate) where keep, else 0 (keep broadcasts against x)."""
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


# ------------------------------------------------------------------------ weight drop


def weight_drop_keep(key, rnn_params, rate):
    """One <bool>[G*H, H] keep mask (probability 1 - rate) per layer and direction of
    `Recurrent` params (a list over layers of lists over directions), from split(key, L*D)."""
    shapes = [[p["weight_hh"].shape for p in layer] for layer in rnn_params]
    keys = iter(jax.random.split(key, sum(len(layer) for layer in shapes)))
    return [[jax.random.bernoulli(next(keys), 1.0 - rate, shape) for shape in layer]
            for layer in shapes]


def drop_weight_hh(rnn_params, keep, rate):
    """The params with each weight_hh replaced by weight_hh * keep / (1 - rate)."""
    return [[{**p, "weight_hh": _scaled_where(k, p["weight_hh"], rate)}
             for p, k in zip(layer, layer_keep)] for layer, layer_keep in zip(rnn_params, keep)]


def weight_drop(key, rnn_params, rate):
    """DropConnect on every weight_hh of `Recurrent` params (see the module docstring)."""
    return drop_weight_hh(rnn_params, weight_drop_keep(key, rnn_params, rate), rate)


# ------------------------------------------------------------------------ locked dropout


def locked_keep(key, shape, rate):
    """<bool>[B, F] (`shape`): the keep mask of locked dropout, one per sequence."""
    return jax.random.bernoulli(key, 1.0 - rate, tuple(shape))


def locked_dropout(key, x, rate):
    """Variational dropout of time-major x <float>[T, B, F]: one mask per sequence, the same
    at every step (the drop-in for `jaxrnn.engine.dropout`)."""
    keep = locked_keep(key, x.shape[1:], rate)
    return _scaled_where(keep[None], x, rate)


# ------------------------------------------------------------------------ embedding dropout


def row_keep(key, num_rows, rate):
    """<bool>[V]: which rows (token types) of an embedding table are kept."""
    return jax.random.bernoulli(key, 1.0 - rate, (num_rows,))


def drop_rows(table, keep, rate):
    """<float>[V, E] table with the rows keep marks False zeroed, the others scaled."""
    return _scaled_where(keep[:, None], table, rate)


# ------------------------------------------------------------------------ zoneout


def zoneout_keep(key, carry0, steps, rate):
    """Zoneout's masks: a pytree like carry0 ([B, H] leaves) of <bool>[T, B, H], True where a
    unit keeps its previous value (probability `rate`); one key per leaf, split(key, leaves)."""
    leaves, treedef = jax.tree.flatten(carry0)
    keys = jax.random.split(key, len(leaves))
    masks = [jax.random.bernoulli(k, rate, (steps,) + leaf.shape) for k, leaf in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, masks)


def _zone(new, old, keep_previous, rate):
    """The zoned-out carry: where(keep_previous, old, new) per leaf, or, with no mask
    (evaluation), the expectation rate * old + (1 - rate) * new."""
    if keep_previous is None:
        return jax.tree.map(lambda n, o: rate * o + (1.0 - rate) * n, new, old)
    return jax.tree.map(lambda k, n, o: jnp.where(k, o, n), keep_previous, new, old)


def zoneout_direction(cell, params, xs, carry0, *, rate, key=None, reverse=False, mask=None,
                      unroll=1, slab=None):
    """One direction of one layer with zoneout, on the engine's reference scan
    (`jaxrnn.engine.run_direction`: the same arguments, lengths and slab).

    key: draws the training masks (`zoneout_keep(key, carry0, T, rate)`); None runs the
    expectation. The output at each step is the zoned-out carry's first array (h), which is
    every built-in cell's output.
    """
    from jaxrnn.cells import Cell  # noqa: PLC0415 (the engine imports this module)
    from jaxrnn.engine import run_direction  # noqa: PLC0415

    if slab is not None:
        projected, inner = cell.unslab(slab), cell.recur
    elif cell.project is not None:
        projected, inner = cell.project(params, xs), cell.recur
    else:
        projected, inner = xs, cell.step
    steps = jax.tree.leaves(projected)[0].shape[0]
    keep_previous = None if key is None else zoneout_keep(key, carry0, steps, rate)

    def recur(p, carry, inputs):
        xp, keep_t = inputs
        new, _ = inner(p, carry, xp)
        new = _zone(new, carry, keep_t, rate)
        return new, jax.tree.leaves(new)[0]

    zoned = Cell(f"{cell.name}+zoneout", cell.init, recur, cell.zero_carry, recur=recur,
                 unslab=lambda pair: pair, carry_size=cell.carry_size)
    return run_direction(zoned, params, None, carry0, reverse=reverse, mask=mask,
                         unroll=unroll, slab=(projected, keep_previous))


def zoneout_expected_step(step, rate):
    """A cell's `step` with zoneout's evaluation rule: (params, carry, x) -> (carry, h)."""

    def zoned_step(params, carry, x):
        new, _ = step(params, carry, x)
        new = _zone(new, carry, None, rate)
        return new, jax.tree.leaves(new)[0]

    return zoned_step


def check_zoneout_impl(zoneout, impl):
    """Raises ValueError unless `impl` can run zoneout (> 0): "auto" or "reference"."""
    if zoneout > 0 and impl not in ("auto", "reference"):
        raise ValueError(f"impl={impl!r} cannot run zoneout={zoneout}: zoneout draws a mask "
                         f"per step inside the recurrence, which only the reference scan "
                         f"takes; use impl='auto' or 'reference'")

