"""Text corpora for character language models: fetching, vocabulary, splits and batches.

The corpus lives on the device as one <int32>[N] array; the batch functions here are pure and
jittable, so the training step gathers its own batch and no Python runs per step.

Batch modes (both return inputs and targets <int32>[B, T], targets = inputs shifted by one):
  streams: char-rnn's. The training text is cut into B contiguous streams of equal length;
    window j of an epoch is [j*T, (j+1)*T) of every stream, so consecutive windows continue
    each stream and the hidden state is carried across batches (truncated BPTT). The state is
    reset when a new epoch starts (window 0).
  random: nanoGPT's. B windows at uniformly random offsets; no state is carried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.errors import UserError
from jaxrnn.fileio import atomic_write

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_ENV = "JAXRNN_TINYSHAKESPEARE"
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "data")


# ---------------------------------------------------------------------------- fetching


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_tinyshakespeare(data_dir: str = DEFAULT_DATA_DIR, from_path: str | None = None,
                            url: str = TINYSHAKESPEARE_URL, quiet: bool = False) -> str:
    """Puts a verified copy of tiny-shakespeare at `data_dir/tinyshakespeare.txt`.

    The source is, in order: `from_path`, the environment variable JAXRNN_TINYSHAKESPEARE,
    an already verified file in `data_dir`, then a download from char-rnn's repository.
    Every source is checked against the known sha256. Returns the path of the verified file.
    """
    dest = os.path.join(data_dir, "tinyshakespeare.txt")
    source = from_path or os.environ.get(TINYSHAKESPEARE_ENV)
    log = (lambda *a: None) if quiet else print
    if source:
        if not os.path.isfile(source):
            via = "from_path" if from_path else TINYSHAKESPEARE_ENV
            raise UserError(f"{via}: no such file: {source}",
                            fields=("from_path",) if from_path else ())
        _check_hash(source)
        if os.path.abspath(source) != os.path.abspath(dest):
            with open(source, "rb") as f:
                atomic_write(dest, f.read())
        log(f"tiny-shakespeare: verified {source} -> {dest}")
        return dest
    if os.path.isfile(dest) and sha256_of(dest) == TINYSHAKESPEARE_SHA256:
        log(f"tiny-shakespeare: {dest} is already there and verified")
        return dest
    log(f"tiny-shakespeare: downloading {url}")
    os.makedirs(data_dir, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise UserError(
            f"could not download tiny-shakespeare from {url} ({e}). With no network, get the "
            f"file (1,115,394 characters, sha256 {TINYSHAKESPEARE_SHA256[:16]}...) another way "
            f"and pass it with from_path=PATH or the environment variable "
            f"{TINYSHAKESPEARE_ENV}=PATH.", fields=("from_path",)) from None
    if hashlib.sha256(payload).hexdigest() != TINYSHAKESPEARE_SHA256:
        raise UserError(f"the file downloaded from {url} does not have the expected sha256 "
                        f"{TINYSHAKESPEARE_SHA256}; refusing to use it")
    atomic_write(dest, payload)
    log(f"tiny-shakespeare: wrote {dest}")
    return dest


def _check_hash(path):
    got = sha256_of(path)
    if got != TINYSHAKESPEARE_SHA256:
        raise UserError(f"{path} is not tiny-shakespeare: sha256 {got}, expected "
                        f"{TINYSHAKESPEARE_SHA256}. To train on your own text, pass it as "
                        f"the training text (data_path) instead.", fields=("data_path",))


# ---------------------------------------------------------------------------- reading text


# Characters that do not occur in text: C0/C1 controls other than \t \n \v \f \r, and the
# replacement character that errors="replace" puts for undecodable bytes.
_NOT_TEXT = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")
_MAX_NOT_TEXT_FRACTION = 0.1


def read_text(path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Reads a corpus with errors that name the problem (missing, empty, binary, bad UTF-8).

    A binary file (a NUL byte, or more than 10% control characters or undecodable bytes) is
    refused whatever `errors` says, so it never turns into a vocabulary of garbage.
    """
    if not os.path.exists(path):
        raise UserError(f"no such file: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; a corpus needs a text file")
    try:
        nul_encoded = "\x00".encode(encoding)
    except LookupError:
        raise UserError(f"unknown encoding {encoding!r}", fields=("encoding",)) from None
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise UserError(f"corpus is empty: {path}")
    nul = raw.find(b"\x00")
    if nul >= 0 and nul_encoded == b"\x00":  # ASCII-compatible: NUL is not text
        raise UserError(f"{path} looks like a binary file, not text (a NUL byte at byte offset "
                        f"{nul}); a corpus needs a text file")
    try:
        text = raw.decode(encoding, errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid {encoding}: byte offset {e.start} "
                        f"(0x{raw[e.start]:02x}) cannot be decoded. Pass the right encoding, or "
                        f"errors='replace' to substitute bad bytes.",
                        fields=("encoding", "errors")) from None
    if not text:
        raise UserError(f"corpus is empty: {path}")
    bad = _NOT_TEXT.findall(text)
    if len(bad) > _MAX_NOT_TEXT_FRACTION * len(text) or "\x00" in text:
        first = _NOT_TEXT.search(text).start()
        raise UserError(f"{path} looks like a binary file, not text: {len(bad)} of {len(text)} "
                        f"characters decoded as {encoding} are control characters or "
                        f"undecodable bytes (the first at character {first})")
    return text


# ---------------------------------------------------------------------------- vocabulary


@dataclasses.dataclass(frozen=True)
class Vocab:
    """A character vocabulary: the sorted unique characters of a text (deterministic).

    The tutorial's `list(set(text))` changes order between runs; sorting fixes that.
    """

    chars: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        if not text:
            raise UserError("corpus is empty: cannot build a vocabulary")
        return cls(tuple(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.chars)}

    def unknown(self, text: str) -> list[str]:
        """The characters of `text` that this vocabulary does not hold, sorted."""
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str, skip_unknown: bool = False, what: str = "text") -> np.ndarray:
        """<int32>[len(text)]. Unknown characters raise UserError listing them (or are dropped)."""
        missing = self.unknown(text)
        if missing and not skip_unknown:
            raise UserError(f"{what} has {len(missing)} character(s) not in the vocabulary: "
                            f"{format_chars(missing)}")
        index = self.index
        if missing:
            return np.array([index[c] for c in text if c in index], np.int32)
        return np.array([index[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def to_json(self) -> str:
        return json.dumps({"chars": list(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, payload: str) -> "Vocab":
        chars = json.loads(payload)["chars"]
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise UserError("vocabulary JSON must hold a list of distinct single characters")
        return cls(tuple(chars))

    def save(self, path: str) -> None:
        atomic_write(path, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str) -> "Vocab":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


def format_chars(chars) -> str:
    """Readable list of characters: repr() shows newlines, tabs and control characters."""
    shown = ", ".join(repr(c) for c in list(chars)[:20])
    return shown + (f", ... ({len(chars)} in all)" if len(chars) > 20 else "")


# ---------------------------------------------------------------------------- splits


def split_by_position(tokens: np.ndarray, val_frac: float = 0.05):
    """Splits by position, char-rnn style: [train | val], the last `val_frac` of the tokens
    being the validation set. Returns (train, val)."""
    if not 0.0 <= val_frac < 1.0:
        raise UserError(f"val_frac must be in [0, 1); got {val_frac}", fields=("val_frac",))
    n_train = len(tokens) - int(round(len(tokens) * val_frac))
    return tokens[:n_train], tokens[n_train:]


# ---------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """How `streams` mode cuts N training tokens into B streams of windows of T."""

    num_tokens: int
    batch_size: int
    seq_len: int

    @property
    def stream_len(self) -> int:
        """Tokens per stream; each needs one extra token for the last target."""
        return (self.num_tokens - 1) // self.batch_size

    @property
    def windows_per_epoch(self) -> int:
        return self.stream_len // self.seq_len

    def check(self, what="training text", fields=()):
        """Raises a UserError naming batch_size, seq_len (and `fields`, the other fields that
        `what` names) when the text is too short for one window of every stream."""
        need = (self.seq_len + 1) * self.batch_size
        if self.windows_per_epoch < 1 or self.num_tokens < need:
            raise UserError(
                f"the {what} has {self.num_tokens} characters, but batch_size={self.batch_size} "
                f"x (seq_len={self.seq_len} + 1) needs at least {need}; use a smaller "
                f"batch_size or seq_len, or a longer text",
                fields=("batch_size", "seq_len", *fields))


def stream_batch(tokens, step, batch_size: int, seq_len: int):
    """Window `step mod windows_per_epoch` of char-rnn's streams; jittable (step may be traced).

    Args:
      tokens: <int32>[N] training text on the device.
      step: the global step (int or traced int).
    Returns:
      (inputs, targets, is_epoch_start): <int32>[B, T] twice, and <bool>[] that is True at the
      first window of an epoch (where the carried state must be reset).
    """
    layout = StreamLayout(tokens.shape[0], batch_size, seq_len)
    window = step % layout.windows_per_epoch
    starts = jnp.arange(batch_size) * layout.stream_len + window * seq_len  # [B]
    idx = starts[:, None] + jnp.arange(seq_len + 1)[None, :]  # [B, T+1]
    chunk = tokens[idx]
    return chunk[:, :-1], chunk[:, 1:], window == 0


def random_batch(tokens, key, batch_size: int, seq_len: int):
    """B windows at uniformly random offsets (nanoGPT); jittable. Returns (inputs, targets)."""
    starts = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - seq_len)
    idx = starts[:, None] + jnp.arange(seq_len + 1)[None, :]
    chunk = tokens[idx]
    return chunk[:, :-1], chunk[:, 1:]


def eval_windows(tokens: np.ndarray, batch_size: int, seq_len: int):
    """Lays out a whole text for evaluation with the state carried, covering every prediction.

    The N-1 predictions are cut into B contiguous streams of ceil((N-1)/B) tokens, padded at
    the end; windows of T continue each stream. Padding has weight 0, so the weighted mean is
    the exact per-character loss over the whole text.

    Returns numpy arrays (inputs, targets, weights), each [num_windows, B, T].
    """
    tokens = np.asarray(tokens, np.int32)
    num_predictions = len(tokens) - 1
    if num_predictions < 1:
        raise UserError(f"evaluation text needs at least 2 characters, got {len(tokens)}")
    batch_size = max(1, min(batch_size, num_predictions))
    stream_len = -(-num_predictions // batch_size)
    num_windows = -(-stream_len // seq_len)
    padded = num_windows * seq_len
    inputs = np.zeros((batch_size, padded), np.int32)
    targets = np.zeros((batch_size, padded), np.int32)
    weights = np.zeros((batch_size, padded), np.float32)
    for b in range(batch_size):
        lo = b * stream_len
        hi = min(lo + stream_len, num_predictions)
        if hi <= lo:
            continue
        inputs[b, : hi - lo] = tokens[lo:hi]
        targets[b, : hi - lo] = tokens[lo + 1:hi + 1]
        weights[b, : hi - lo] = 1.0

    def to_windows(a):
        return a.reshape(batch_size, num_windows, seq_len).transpose(1, 0, 2)

    return to_windows(inputs), to_windows(targets), to_windows(weights)
