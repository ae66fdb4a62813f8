"""A run directory: every path in it, the decision to resume, refuse or start over, and
reading a trained run back (config, vocabulary, model, params).

  config.json       the run's Config            vocab.json    the sorted characters
  corpus.json       the training text's sha256 and size (a different text is refused)
  metrics.jsonl     see jaxrnn.metrics          loss.png      drawn from metrics.jsonl
  ckpt-<step>.msgpack, last.msgpack, best.msgpack   see jaxrnn.checkpoint
"""

from __future__ import annotations

import json
import os

import jax

from jaxrnn import checkpoint as ckpt_lib
from jaxrnn.config import Config, config_diff
from jaxrnn.data import Vocab
from jaxrnn.errors import UserError
from jaxrnn.fileio import atomic_write
from jaxrnn.models import build_model


class RunDir:
    """The files of one run directory (see the module docstring)."""

    def __init__(self, path: str, keep_checkpoints: int = 3):
        self.path = path
        self.checkpoints = ckpt_lib.CheckpointDir(path, keep_checkpoints)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def config_path(self) -> str:
        return self._file("config.json")

    @property
    def vocab_path(self) -> str:
        return self._file("vocab.json")

    @property
    def corpus_path(self) -> str:
        return self._file("corpus.json")

    @property
    def metrics_path(self) -> str:
        return self._file("metrics.jsonl")

    @property
    def plot_path(self) -> str:
        return self._file("loss.png")

    def open(self, config: Config, corpus_sha256: str, *, overwrite: bool = False):
        """Decides what a run with `config` on a text of this sha256 does here.

        Returns the newest good checkpoint (payload, path) to resume from, or None to start
        fresh. Refuses (UserError) a folder holding a run with another config or another
        text, unless `overwrite` (then nothing is deleted yet: see `start_over`).
        """
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UserError(f"workdir {self.path} is a file, not a folder", fields=("workdir",))
        os.makedirs(self.path, exist_ok=True)
        if overwrite or not os.path.exists(self.config_path):
            return None
        try:
            with open(self.config_path) as f:
                old = Config.from_dict(json.load(f))
        except (ValueError, TypeError) as e:  # JSONDecodeError and UserError are ValueErrors
            raise UserError(f"{self.config_path} is unreadable ({e}); use overwrite to start "
                            f"over", fields=("overwrite",)) from None
        diff = config_diff(old, config)
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise UserError(f"{self.path} holds a run with a different config ({shown}); use "
                            f"another workdir, or overwrite to start over",
                            fields=("workdir", "overwrite"))
        recorded = self.corpus()
        if recorded is not None and recorded["sha256"] != corpus_sha256:
            raise UserError(f"{self.path} holds a run trained on a different text (sha256 "
                            f"{recorded['sha256'][:16]}..., {recorded['bytes']:,} bytes; this "
                            f"one is {corpus_sha256[:16]}...); use the same data, another "
                            f"workdir, or overwrite to start over",
                            fields=("data", "workdir", "overwrite"))
        return self.checkpoints.load_latest()

    def corpus(self) -> dict | None:
        """The recorded training text {"sha256", "bytes"}, or None (a run written before
        jaxrnn recorded it)."""
        if not os.path.exists(self.corpus_path):
            return None
        with open(self.corpus_path) as f:
            return json.load(f)

    def start_over(self, overwrite: bool) -> None:
        """Removes what killed writes left (`.tmp-*`) and, with `overwrite`, the old run's
        checkpoints and metrics: called once the new run's inputs are known to be good."""
        self.checkpoints.remove_partial_writes()
        if not overwrite:
            return
        for _, path in self.checkpoints.step_files():
            os.unlink(path)
        for path in (self.checkpoints.last_path, self.checkpoints.best_path, self.metrics_path):
            if os.path.exists(path):
                os.unlink(path)

    def write_header(self, config: Config, vocab: Vocab, corpus_sha256: str,
                     corpus_bytes: int) -> None:
        """config.json, vocab.json and corpus.json, each written atomically."""
        atomic_write(self.config_path, config.to_json().encode())
        vocab.save(self.vocab_path)
        atomic_write(self.corpus_path, json.dumps({"sha256": corpus_sha256,
                                                   "bytes": corpus_bytes}).encode())


# ---------------------------------------------------------------------------- reading back


def _read_checkpoint(workdir: str, which: str):
    if not os.path.isdir(workdir):
        raise UserError(f"no such run directory: {workdir}")
    checkpoints = ckpt_lib.CheckpointDir(workdir)
    if which == "best" and os.path.exists(checkpoints.best_path):
        return ckpt_lib.read(checkpoints.best_path), checkpoints.best_path
    if which in ("best", "last"):
        found = checkpoints.load_latest()
        if found is None:
            raise UserError(f"{workdir} holds no checkpoint yet; train first "
                            f"(jaxrnn-train --workdir {workdir} ...)")
        return found
    return ckpt_lib.read(which), which


def run_config(workdir: str, which: str = "best") -> Config:
    """The config of the checkpoint `load_run(workdir, which)` would read: entry points read
    it first to set jax_enable_x64 from its dtype before loading any arrays."""
    payload, _ = _read_checkpoint(workdir, which)
    return Config.from_dict(json.loads(payload["config"]))


def load_run(workdir: str, which: str = "best", impl: str = "auto"):
    """Returns (config, vocab, model, params) from `workdir`.

    which: "best", "last", or a path to a checkpoint file. "best" falls back to the newest
    good checkpoint when there is no best one yet. impl: the engine's implementation. A
    float64 run needs jax_enable_x64 on (the entry points turn it on from `run_config`).
    """
    payload, path = _read_checkpoint(workdir, which)
    config = Config.from_dict(json.loads(payload["config"]))
    vocab = Vocab.from_json(payload["vocab"])
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise UserError(f"{path} holds a float64 run; turn on jax_enable_x64 before loading "
                        f"it (jax.config.update('jax_enable_x64', True))")
    model = build_model(config, len(vocab), impl)
    template = {"params": model.init(jax.random.key(0))}
    params = ckpt_lib.restore_state(template, {"params": payload["state"]["params"]},
                                    path)["params"]
    return config, vocab, model, jax.device_put(params)
