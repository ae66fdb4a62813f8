"""Training: one step changes every parameter, loss goes down, one compile, exact resume."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import data as data_lib
from jaxrnn.config import preset
from jaxrnn.train import Trainer, train_and_evaluate


def tiny_config(**overrides):
    base = dict(hidden_size=32, num_layers=2, embedding_size=16, dropout=0.1, seq_len=16,
                batch_size=8, steps=60, steps_per_call=5, log_every=5, eval_every=30,
                checkpoint_every=30, warmup_steps=5, eval_batch_size=8)
    return preset("default", **{**base, **overrides})


def make_trainer(text, **overrides):
    config = tiny_config(**overrides)
    vocab = data_lib.Vocab.from_text(text)
    tokens = vocab.encode(text)
    return config, vocab, tokens, Trainer.create(config, len(vocab), len(tokens))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_one_step_changes_every_parameter(small_text, cell):
    _, _, tokens, trainer = make_trainer(small_text, cell=cell)
    state = trainer.init_state()
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = trainer.jit_train_chunk(state, jnp.asarray(tokens), 1)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
    assert all(jax.tree.leaves(changed)), changed
    assert int(state.step) == 1 and np.isfinite(metrics["loss"]).all()


def test_training_lowers_the_loss(small_text):
    _, _, tokens, trainer = make_trainer(small_text, steps=300, dropout=0.0, lr=1e-2)
    state = trainer.init_state()
    start = trainer.evaluate(state.params, tokens)["loss_nats"]
    state, metrics = trainer.jit_train_chunk(state, jnp.asarray(tokens), 300)
    end = trainer.evaluate(state.params, tokens)["loss_nats"]
    assert end < 0.5 * start, (start, end)
    assert metrics["loss"][-20:].mean() < metrics["loss"][:20].mean() - 1.0


def test_train_chunk_compiles_once(small_text):
    _, _, tokens, trainer = make_trainer(small_text)
    traces = []

    @jax.jit
    def counted(state, tokens):
        traces.append(1)
        return trainer.train_chunk(state, tokens, 3)

    state = trainer.init_state()
    state, _ = counted(state, jnp.asarray(tokens))
    state, _ = counted(state, jnp.asarray(tokens))
    assert len(traces) == 1
    # The library's own jitted chunk keeps its cache across calls too.
    fn = trainer.jit_train_chunk
    state, _ = fn(state, jnp.asarray(tokens), 5)
    size = fn._cache_size()
    state, _ = fn(state, jnp.asarray(tokens), 5)
    assert fn._cache_size() == size


def test_streams_carry_state_across_windows(small_text):
    """With carry_state the second window sees the first window's final state."""
    _, _, tokens, trainer = make_trainer(small_text, dropout=0.0)
    state = trainer.init_state()
    batch0 = trainer.get_batch(jnp.asarray(tokens), state.step, state.rng)
    _, carry = trainer.model.apply(state.params, state.carry, batch0[0])
    state1, _ = trainer.jit_train_chunk(state, jnp.asarray(tokens), 1)
    # The updated state holds the forward state of window 0 under the *old* params.
    np.testing.assert_allclose(np.asarray(state1.carry[0]), np.asarray(carry[0]), atol=1e-6)


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(small_text, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(small_text)
    # A constant schedule, so that the first half may be run as its own 20-step run.
    config = tiny_config(steps=40, checkpoint_every=10, eval_every=20, schedule="constant")
    full = train_and_evaluate(config, str(path), str(tmp_path / "full"), progress=False)
    half = dataclasses.replace(config, steps=20)
    train_and_evaluate(half, str(path), str(tmp_path / "split"), progress=False)
    resumed = train_and_evaluate(config, str(path), str(tmp_path / "split"), progress=False)
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def losses(workdir):
        import json
        lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        return [(m["step"], m.get("loss"), m.get("val_loss")) for m in lines]

    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    assert full.val == resumed.val


def test_cosine_run_refuses_a_different_step_count(small_text, tmp_path):
    from jaxrnn.errors import UserError

    path = tmp_path / "text.txt"
    path.write_text(small_text)
    config = tiny_config(steps=5, eval_every=5, checkpoint_every=5)
    train_and_evaluate(config, str(path), str(tmp_path / "run"), progress=False)
    with pytest.raises(UserError, match=r"steps: 5 -> 10"):
        train_and_evaluate(dataclasses.replace(config, steps=10), str(path),
                           str(tmp_path / "run"), progress=False)


def test_a_run_directory_of_the_old_layout_resumes(small_text, tmp_path):
    """Run directories written before the cells' names were unified and the tutorial's option
    got its section say cell "rnn" and a flat faithful_log_softmax: they load and resume."""
    import json

    from jaxrnn.config import Config, config_diff

    path = tmp_path / "text.txt"
    path.write_text(small_text)
    config = tiny_config(cell="rnn_tanh", steps=10, eval_every=5, checkpoint_every=5,
                         schedule="constant")
    train_and_evaluate(dataclasses.replace(config, steps=5), str(path), str(tmp_path / "run"),
                       progress=False)
    config_path = tmp_path / "run" / "config.json"
    old = json.loads(config_path.read_text())
    old["cell"] = "rnn"
    old["faithful_log_softmax"] = old.pop("tutorial")["faithful_log_softmax"]
    config_path.write_text(json.dumps(old))
    assert Config.from_dict(old) == dataclasses.replace(config, steps=5)
    assert config_diff(Config.from_dict(old), config) == {}
    result = train_and_evaluate(config, str(path), str(tmp_path / "run"), progress=False)
    assert int(result.state.step) == 10
    assert json.loads(config_path.read_text())["cell"] == "rnn_tanh"


def test_a_different_text_with_the_same_vocabulary_is_refused(small_text, tmp_path):
    """corpus.json records the text's sha256: resuming on another text (here the same
    characters in another order, so the vocabulary alone cannot tell) is refused, and a run
    directory without corpus.json (written before it existed) resumes and gets one."""
    import json

    from jaxrnn.errors import UserError

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(small_text)
    second.write_text(small_text[::-1])
    config = tiny_config(steps=10, eval_every=5, checkpoint_every=5, schedule="constant")
    run = tmp_path / "run"
    train_and_evaluate(dataclasses.replace(config, steps=5), str(first), str(run),
                       progress=False)
    recorded = json.loads((run / "corpus.json").read_text())
    assert recorded["bytes"] == first.stat().st_size
    with pytest.raises(UserError, match="trained on a different text") as refused:
        train_and_evaluate(config, str(second), str(run), progress=False)
    assert set(refused.value.fields) >= {"workdir", "overwrite"}
    (run / "corpus.json").unlink()  # as a run directory of the old layout
    result = train_and_evaluate(config, str(first), str(run), progress=False)
    assert int(result.state.step) == 10
    assert json.loads((run / "corpus.json").read_text()) == recorded
