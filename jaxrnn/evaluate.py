"""Evaluating a trained run on a text: the library side of scripts/evaluate.py."""

from __future__ import annotations

from jaxrnn import mesh as mesh_lib
from jaxrnn.errors import UserError
from jaxrnn.rundir import load_run
from jaxrnn.trainer import Trainer


def evaluate_text(workdir: str, text: str, *, skip_unknown=False, checkpoint="best",
                  batch_size: int | None = None, what="the text", impl: str = "auto",
                  mesh=None) -> dict:
    """Mean NLL per character of `text` under the run's model, state carried across windows.

    mesh: a `jaxrnn.mesh` data mesh to split the evaluation's streams over, or None.

    Returns {"loss_nats", "bits_per_char", "chars"} and, with skip_unknown, "skipped": the
    number of characters dropped because the vocabulary does not hold them.
    """
    config, vocab, model, params = load_run(workdir, checkpoint, impl)
    tokens = vocab.encode(text, skip_unknown=skip_unknown, what=what)
    if len(tokens) < 2:
        raise UserError(f"{what} has fewer than 2 known characters; nothing to evaluate")
    trainer = Trainer(config, model, None, None, len(tokens), mesh)
    if mesh is not None:
        params = mesh_lib.put(mesh_lib.to_host(params), mesh_lib.replicated(mesh))
    result = trainer.evaluate(params, tokens, batch_size)
    if skip_unknown:
        result["skipped"] = len(text) - len(tokens)
    return result
