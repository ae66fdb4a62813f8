"""Reading a finished (or running) run directory back: config, vocabulary, model, params."""

from __future__ import annotations

import json
import os

import jax

from jaxrnn import checkpoint as ckpt_lib
from jaxrnn.config import Config
from jaxrnn.data import Vocab
from jaxrnn.errors import UserError
from jaxrnn.model import build_model


def load_run(workdir: str, which: str = "best"):
    """Returns (config, vocab, model, params) from `workdir`.

    which: "best", "last", or a path to a checkpoint file. "best" falls back to the newest
    good checkpoint when there is no best one yet.
    """
    if not os.path.isdir(workdir):
        raise UserError(f"no such run directory: {workdir}")
    checkpoints = ckpt_lib.CheckpointDir(workdir)
    if which == "best" and os.path.exists(checkpoints.best_path):
        payload, path = ckpt_lib.read(checkpoints.best_path), checkpoints.best_path
    elif which in ("best", "last"):
        found = checkpoints.load_latest()
        if found is None:
            raise UserError(f"{workdir} holds no checkpoint yet; train first "
                            f"(python scripts/train.py --workdir {workdir} ...)")
        payload, path = found
    else:
        payload, path = ckpt_lib.read(which), which
    config = Config.from_dict(json.loads(payload["config"]))
    vocab = Vocab.from_json(payload["vocab"])
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    model = build_model(config, len(vocab))
    template = {"params": model.init(jax.random.key(0))}
    params = ckpt_lib.restore_state(template, {"params": payload["state"]["params"]},
                                    path)["params"]
    return config, vocab, model, jax.device_put(params)
