"""Crash-safe, pickle-free checkpoints.

Format: one msgpack file (flax.serialization: arrays as raw bytes with dtype and shape; no
code is ever loaded, unlike pickle), holding
  {"format": "jaxrnn-checkpoint", "version": 1, "config": JSON, "vocab": JSON,
   "step": int, "state": {step, params, opt_state, carry, rng, skipped, halted_at},
   "best_val": float, "metrics": JSON list, "elapsed_s": float}
in that order: a file that does not start with the "format" entry is told apart as foreign
(a PNG, random bytes) from one of ours that is truncated.
msgpack through flax needs no extra dependency, round-trips every pytree that optax builds,
and reads on any platform (a GPU checkpoint loads on a CPU: arrays are stored as host bytes).

Writes are atomic: a temporary file in the same folder, fsync, rename, fsync of the folder. A
`kill -9` at any moment leaves the previous checkpoint or the new one, never a torn file.
A run directory holds `ckpt-<step>.msgpack` (the last K), `last.msgpack` (a hard link to the
newest) and `best.msgpack`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings

import jax
import numpy as np
from flax import serialization

from jaxrnn.errors import JaxrnnWarning, UserError
from jaxrnn.fileio import atomic_write, fsync_dir

FORMAT = "jaxrnn-checkpoint"
VERSION = 1
_STEP_FILE = re.compile(r"ckpt-(\d+)\.msgpack$")


def _link_atomic(target: str, link: str) -> None:
    """Points `link` at the same file as `target` (a hard link), replacing it atomically."""
    directory = os.path.dirname(os.path.abspath(link))
    tmp = os.path.join(directory, f".tmp-link-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.link(target, tmp)
    except OSError:  # file systems without hard links: copy
        with open(target, "rb") as f:
            atomic_write(link, f.read())
        return
    os.replace(tmp, link)
    fsync_dir(directory)


def to_bytes(*, config_json: str, vocab_json: str, step: int, state, best_val: float,
             metrics: list, elapsed_s: float) -> bytes:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config_json,
        "vocab": vocab_json,
        "step": int(step),
        "state": serialization.to_state_dict(jax.device_get(state)),
        "best_val": float(best_val),
        "metrics": json.dumps(metrics),
        "elapsed_s": float(elapsed_s),
    }
    # in_place keeps the insertion order, so every file starts with the "format" header.
    return serialization.msgpack_serialize(payload, in_place=True)


# The first bytes of every checkpoint: a msgpack map whose first entry is "format": FORMAT
# (to_bytes writes it first), so a file can be told apart from a foreign one before parsing.
_HEADER = serialization.msgpack_serialize({"format": FORMAT})[1:]
_FIELDS = ("format", "version", "config", "vocab", "step", "state", "best_val", "metrics",
           "elapsed_s")


def read(path: str) -> dict:
    """Reads a checkpoint file; errors name the file and what is wrong with it."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; give a checkpoint file such as "
                        f"{os.path.join(path, 'last.msgpack')}")
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise UserError(f"checkpoint {path} is empty (0 bytes)")
    if len(raw) <= len(_HEADER) and _HEADER.startswith(raw[1:]):
        raise UserError(f"checkpoint {path} is truncated ({len(raw)} bytes)")
    ours = _HEADER in raw[:3 + len(_HEADER)]  # the map's length takes 1 to 3 bytes
    foreign = UserError(f"{path} is not a jaxrnn checkpoint (it starts with {raw[:8]!r}, not "
                        f"the '{FORMAT}' header)")
    try:
        payload = serialization.msgpack_restore(raw)
    except Exception as e:  # msgpack raises several types for torn or foreign bytes
        if not ours:
            raise foreign from None
        raise UserError(f"checkpoint {path} is truncated or corrupt ({len(raw)} bytes; "
                        f"{type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise foreign
    if payload.get("version") != VERSION:
        raise UserError(f"checkpoint {path} has format version {payload.get('version')}; this "
                        f"jaxrnn reads version {VERSION} only")
    missing = [k for k in _FIELDS if k not in payload]
    if missing:
        raise UserError(f"checkpoint {path} is corrupt: it lacks {', '.join(missing)}")
    # config, vocab and metrics are JSON text: a damaged byte there is named here, not left
    # to fail later in whoever parses them
    for field in ("config", "vocab", "metrics"):
        try:
            value = json.loads(payload[field])
        except (TypeError, ValueError) as e:
            raise UserError(f"checkpoint {path} is corrupt: its {field} is not JSON "
                            f"({type(e).__name__}: {e})") from None
        if field == "metrics":
            payload["metrics"] = value
    return payload


def restore_state(template, restored: dict, path: str):
    """Fills `template` (a state pytree) with `restored` arrays, checking every shape.

    Raises UserError naming each parameter whose shape or presence differs.
    """
    want = serialization.to_state_dict(template)
    problems = []

    def compare(a, b, where):
        if isinstance(a, dict):
            if not isinstance(b, dict):
                problems.append(f"{where}: expected a group, found an array")
                return
            for k in sorted(set(a) | set(b)):
                if k not in b:
                    problems.append(f"{where}/{k}: missing in checkpoint")
                elif k not in a:
                    problems.append(f"{where}/{k}: unexpected in checkpoint")
                else:
                    compare(a[k], b[k], f"{where}/{k}")
        elif np.shape(a) != np.shape(b):
            problems.append(f"{where}: model has shape {np.shape(a)}, checkpoint has "
                            f"{np.shape(b)}")

    compare(want, restored, "")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)"
                                          if len(problems) > 8 else "")
        raise UserError(f"checkpoint {path} does not fit this model: {shown}")
    return serialization.from_state_dict(template, restored)


class CheckpointDir:
    """The checkpoints of one run directory: save, list, load the newest good one."""

    def __init__(self, workdir: str, keep: int = 3):
        self.workdir = workdir
        self.keep = keep

    @property
    def last_path(self):
        return os.path.join(self.workdir, "last.msgpack")

    @property
    def best_path(self):
        return os.path.join(self.workdir, "best.msgpack")

    def step_files(self) -> list[tuple[int, str]]:
        """(step, path) of every `ckpt-<step>.msgpack`, newest first."""
        found = []
        for path in glob.glob(os.path.join(self.workdir, "ckpt-*.msgpack")):
            m = _STEP_FILE.search(os.path.basename(path))
            if m:
                found.append((int(m.group(1)), path))
        return sorted(found, reverse=True)

    def save(self, step: int, payload: bytes, is_best: bool = False) -> str:
        path = os.path.join(self.workdir, f"ckpt-{step:09d}.msgpack")
        atomic_write(path, payload)
        _link_atomic(path, self.last_path)
        if is_best:
            _link_atomic(path, self.best_path)
        for _, old in self.step_files()[self.keep:]:
            os.unlink(old)
        return path

    def remove_partial_writes(self) -> None:
        """Deletes the temporary files of writes that a kill cut short (`.tmp-*`)."""
        for path in glob.glob(os.path.join(self.workdir, ".tmp-*")):
            os.unlink(path)

    def load_latest(self) -> tuple[dict, str] | None:
        """The newest readable checkpoint (last, then older ones with a warning), or None."""
        candidates = [self.last_path] if os.path.exists(self.last_path) else []
        candidates += [p for _, p in self.step_files()]
        errors, tried = [], []
        for path in candidates:
            if any(_same_file(path, other) for other in tried):  # last.msgpack is a hard link
                continue
            tried.append(path)
            try:
                payload = read(path)
            except UserError as e:
                errors.append(str(e))
                continue
            if errors:
                warnings.warn(f"{'; '.join(errors)}; falling back to {path} (step "
                              f"{payload['step']})", JaxrnnWarning, stacklevel=2)
            return payload, path
        if errors:
            raise UserError(f"no readable checkpoint in {self.workdir}: {'; '.join(errors)}; "
                            f"use --overwrite to start over")
        return None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
