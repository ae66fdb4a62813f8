"""Data: vocabulary, splits, batches, and the prepare step."""

import hashlib
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import data as data_lib
from jaxrnn.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vocab_is_sorted_and_deterministic():
    text = "hello world, HELLO!"
    a, b = data_lib.Vocab.from_text(text), data_lib.Vocab.from_text(text[::-1])
    assert a == b
    assert list(a.chars) == sorted(set(text))


def test_vocab_json_round_trip_any_utf8(tmp_path):
    text = "naïve café — 日本語 🙂\n\t"
    vocab = data_lib.Vocab.from_text(text)
    vocab.save(tmp_path / "vocab.json")
    loaded = data_lib.Vocab.load(tmp_path / "vocab.json")
    assert loaded == vocab
    assert loaded.decode(loaded.encode(text)) == text


def test_encode_lists_unknown_characters():
    vocab = data_lib.Vocab.from_text("abc")
    with pytest.raises(UserError, match=r"'x', 'z'"):
        vocab.encode("abxcz")
    assert vocab.decode(vocab.encode("abxcz", skip_unknown=True)) == "abc"


def test_split_by_position():
    tokens = np.arange(100)
    train, val = data_lib.split_by_position(tokens, 0.1)
    assert list(train) == list(range(90)) and list(val) == list(range(90, 100))
    train, val = data_lib.split_by_position(tokens, 0.0)
    assert len(train) == 100 and len(val) == 0


def test_stream_batch_targets_are_inputs_shifted_and_streams_continue():
    tokens = jnp.arange(1000, dtype=jnp.int32)  # token value == position
    batch_size, seq_len = 4, 10
    layout = data_lib.StreamLayout(1000, batch_size, seq_len)
    x0, y0, start0 = data_lib.stream_batch(tokens, 0, batch_size, seq_len)
    x1, y1, start1 = data_lib.stream_batch(tokens, 1, batch_size, seq_len)
    np.testing.assert_array_equal(y0, x0 + 1)
    # Window 1 of stream b starts exactly where window 0 ended.
    np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)
    np.testing.assert_array_equal(x0[:, 0], np.arange(batch_size) * layout.stream_len)
    assert bool(start0) and not bool(start1)
    # The epoch wraps around and starts again at window 0.
    xw, _, startw = data_lib.stream_batch(tokens, layout.windows_per_epoch, batch_size, seq_len)
    np.testing.assert_array_equal(xw, x0)
    assert bool(startw)


def test_random_batch_targets_shifted():
    import jax
    tokens = jnp.arange(500, dtype=jnp.int32)
    x, y = data_lib.random_batch(tokens, jax.random.key(0), 8, 20)
    np.testing.assert_array_equal(y, x + 1)
    assert x.shape == (8, 20) and int(y.max()) < 500


def test_eval_windows_cover_every_prediction_once():
    tokens = np.arange(103, dtype=np.int32)
    inputs, targets, weights = data_lib.eval_windows(tokens, batch_size=4, seq_len=7)
    valid = weights > 0
    assert int(valid.sum()) == 102
    assert sorted(inputs[valid].tolist()) == list(range(102))
    np.testing.assert_array_equal(targets[valid], inputs[valid] + 1)


def test_too_short_text_names_sizes():
    with pytest.raises(UserError, match=r"has 50 characters.*needs at least 84"):
        data_lib.StreamLayout(50, 4, 20).check()


def test_prepare_from_local_copy_verifies_hash(tmp_path, monkeypatch):
    monkeypatch.delenv(data_lib.TINYSHAKESPEARE_ENV, raising=False)
    fake = tmp_path / "fake.txt"
    fake.write_text("not shakespeare")
    with pytest.raises(UserError, match="sha256"):
        data_lib.prepare_tinyshakespeare(str(tmp_path / "out"), str(fake), quiet=True)
    payload = b"pretend corpus"
    monkeypatch.setattr(data_lib, "TINYSHAKESPEARE_SHA256", hashlib.sha256(payload).hexdigest())
    good = tmp_path / "good.txt"
    good.write_bytes(payload)
    dest = data_lib.prepare_tinyshakespeare(str(tmp_path / "out"), str(good), quiet=True)
    assert open(dest, "rb").read() == payload


def test_prepare_without_network_or_copy_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != data_lib.TINYSHAKESPEARE_ENV}
    # An unroutable URL stands in for "no network".
    code = ("import sys; from jaxrnn import data; from jaxrnn.cli import cli_main\n"
            "cli_main(lambda: data.prepare_tinyshakespeare(sys.argv[1], "
            "url='http://127.0.0.1:9/input.txt', quiet=True))()")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "--from PATH" in proc.stderr and data_lib.TINYSHAKESPEARE_ENV in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.corpus
def test_full_corpus_hash_and_size():
    from tests.conftest import corpus_path

    path = corpus_path()
    if path is None:
        pytest.skip("tiny-shakespeare not prepared (make data)")
    text = data_lib.read_text(path)
    assert len(text) == 1_115_394
    assert data_lib.sha256_of(path) == data_lib.TINYSHAKESPEARE_SHA256
    assert len(data_lib.Vocab.from_text(text)) == 65
