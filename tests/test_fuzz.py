"""Property tests (hypothesis): vocabulary, padding helpers, the stream batcher, and that any
bytes given as a text or a checkpoint give a clear UserError and nothing else."""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxrnn
from jaxrnn import checkpoint as ckpt_lib
from jaxrnn import data as data_lib
from jaxrnn.errors import UserError

FEW = settings(max_examples=40, deadline=None)


# ---------------------------------------------------------------------------- vocabulary


@FEW
@given(st.text(min_size=1))
def test_vocab_round_trips_any_unicode_text(text):
    vocab = data_lib.Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert data_lib.Vocab.from_json(vocab.to_json()) == vocab
    with tempfile.TemporaryDirectory() as d:
        vocab.save(os.path.join(d, "vocab.json"))
        assert data_lib.Vocab.load(os.path.join(d, "vocab.json")) == vocab


@FEW
@given(st.text(min_size=1), st.text())
def test_vocab_skips_or_lists_unknown_characters(known, text):
    vocab = data_lib.Vocab.from_text(known)
    unknown = sorted(set(text) - set(known))
    kept = "".join(c for c in text if c in set(known))
    assert vocab.decode(vocab.encode(text, skip_unknown=True)) == kept
    if unknown:
        try:
            vocab.encode(text)
            raise AssertionError("unknown characters were accepted")
        except UserError as e:
            assert f"{len(unknown)} character(s) not in the vocabulary" in str(e)


# ---------------------------------------------------------------------------- padding helpers


@st.composite
def sequences(draw):
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    features = draw(st.sampled_from([(), (2,), (1, 3)]))  # few shapes: each one compiles
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [rng.standard_normal((n, *features)).astype(np.float32) for n in lengths]


@settings(max_examples=25, deadline=None)
@given(sequences(), st.booleans(), st.sampled_from([0.0, -1.0]))
def test_padding_helpers_match_numpy(seqs, batch_first, padding_value):
    padded, lengths = jaxrnn.pad_sequences(seqs, batch_first, padding_value)
    max_len, batch = max(len(s) for s in seqs), len(seqs)
    want = np.full((max_len, batch, *seqs[0].shape[1:]), padding_value, np.float32)
    for b, s in enumerate(seqs):
        want[: len(s), b] = s
    time_major = np.swapaxes(np.asarray(padded), 0, 1) if batch_first else np.asarray(padded)
    np.testing.assert_array_equal(time_major, want)
    np.testing.assert_array_equal(lengths, [len(s) for s in seqs])

    mask = np.asarray(jaxrnn.sequence_mask(lengths, max_len + 2))  # [B, T + 2]
    np.testing.assert_array_equal(mask, np.arange(max_len + 2)[None, :] < lengths[:, None])

    last = np.asarray(jaxrnn.last_valid(padded, lengths, batch_first))
    np.testing.assert_array_equal(last, np.stack([s[-1] for s in seqs]))


# ---------------------------------------------------------------------------- stream batches


@st.composite
def stream_layouts(draw):
    batch_size = draw(st.integers(1, 6))
    seq_len = draw(st.integers(1, 12))
    num_tokens = draw(st.integers((seq_len + 1) * batch_size, 200))
    return num_tokens, batch_size, seq_len


def epoch_of_batches(tokens, batch_size, seq_len, steps):
    batches = [data_lib.stream_batch(tokens, step, batch_size, seq_len) for step in steps]
    return [np.stack([np.asarray(b[i]) for b in batches]) for i in range(3)]


@FEW
@given(stream_layouts())
def test_stream_batches_cover_each_stream_once_per_epoch_in_order(layout):
    num_tokens, batch_size, seq_len = layout
    shape = data_lib.StreamLayout(num_tokens, batch_size, seq_len)
    windows = shape.windows_per_epoch
    # Each token is its own position. A numpy corpus makes the gather numpy's, which raises on
    # an index out of range (a device gather would clamp it) and compiles nothing per shape.
    tokens = np.arange(num_tokens, dtype=np.int32)
    inputs, targets, starts = epoch_of_batches(tokens, batch_size, seq_len,
                                               range(windows + 1))  # an epoch and one more
    assert inputs.shape == targets.shape == (windows + 1, batch_size, seq_len)

    np.testing.assert_array_equal(targets, inputs + 1)  # targets: inputs shifted by one
    # Consecutive windows continue each stream ...
    np.testing.assert_array_equal(inputs[1:windows, :, 0], inputs[:windows - 1, :, -1] + 1)
    # ... which is contiguous and starts where the previous one's share ends.
    epoch = inputs[:windows].transpose(1, 0, 2).reshape(batch_size, windows * seq_len)
    starts_of_streams = np.arange(batch_size) * shape.stream_len
    np.testing.assert_array_equal(
        epoch, starts_of_streams[:, None] + np.arange(windows * seq_len)[None, :])
    # Every character is an input at most once per epoch; those never seen are the tail that
    # does not fill a window: less than seq_len per stream, and fewer than batch_size at the end.
    seen = epoch.reshape(-1)
    assert len(np.unique(seen)) == len(seen)
    assert num_tokens - len(seen) <= batch_size * seq_len
    # The epoch wraps around, and its first window resets the carried state.
    np.testing.assert_array_equal(inputs[windows], inputs[0])
    np.testing.assert_array_equal(starts, [True] + [False] * (windows - 1) + [True])


def test_stream_batch_on_the_device_with_a_traced_step_is_the_same():
    num_tokens, batch_size, seq_len = 97, 3, 5
    tokens = np.arange(num_tokens, dtype=np.int32)
    on_device = jax.jit(data_lib.stream_batch, static_argnums=(2, 3))
    steps = range(2 * data_lib.StreamLayout(num_tokens, batch_size, seq_len).windows_per_epoch)
    got = epoch_of_batches(jnp.asarray(tokens), batch_size, seq_len, steps)
    want = epoch_of_batches(tokens, batch_size, seq_len, steps)
    device = [np.stack([np.asarray(a) for a in batch]) for batch in
              zip(*[on_device(jnp.asarray(tokens), jnp.int32(s), batch_size, seq_len)
                    for s in steps])]
    for a, b, c in zip(got, want, device):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)


# ---------------------------------------------------------------------------- any bytes


@FEW
@given(st.binary(max_size=400), st.sampled_from(["strict", "replace", "ignore"]))
def test_any_bytes_as_text_give_text_or_a_user_error(raw, errors):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "corpus.txt")
        with open(path, "wb") as f:
            f.write(raw)
        try:
            text = data_lib.read_text(path, errors=errors)
        except UserError as e:
            assert path in str(e)
            return
        assert text and "\x00" not in text


def _a_checkpoint() -> bytes:
    state = {"params": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}}
    return ckpt_lib.to_bytes(config_json="{}", vocab_json='{"chars": ["a"]}', step=5,
                             state=state, best_val=1.0, metrics=[], elapsed_s=0.0)


GOOD = _a_checkpoint()


@FEW
@given(st.one_of(st.binary(max_size=300),
                 st.integers(0, len(GOOD) - 1).map(lambda n: GOOD[:n]),
                 st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)).map(
                     lambda p: GOOD[:p[0]] + bytes([p[1]]) + GOOD[p[0] + 1:])))
@example(raw=GOOD.replace(b"\xa7metrics\xa2[]", b"\xa7metrics\xa2\x00\x00"))  # metrics not JSON
def test_any_damaged_checkpoint_gives_a_user_error_naming_it(raw):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ckpt.msgpack")
        with open(path, "wb") as f:
            f.write(raw)
        try:
            ckpt_lib.read(path)  # a flipped byte inside an array still reads
        except UserError as e:
            assert path in str(e)
