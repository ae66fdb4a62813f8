"""Evaluating a trained run on a text: the library side of scripts/evaluate.py."""

from __future__ import annotations

from jaxrnn.errors import UserError
from jaxrnn.rundir import load_run
from jaxrnn.trainer import Trainer


def evaluate_text(workdir: str, text: str, *, skip_unknown=False, checkpoint="best",
                  batch_size: int | None = None, what="the text", impl: str = "auto") -> dict:
    """Mean NLL per character of `text` under the run's model, state carried across windows.

    Returns {"loss_nats", "bits_per_char", "chars"} and, with skip_unknown, "skipped": the
    number of characters dropped because the vocabulary does not hold them.
    """
    config, vocab, model, params = load_run(workdir, checkpoint, impl)
    tokens = vocab.encode(text, skip_unknown=skip_unknown, what=what)
    if len(tokens) < 2:
        raise UserError(f"{what} has fewer than 2 known characters; nothing to evaluate")
    trainer = Trainer(config, model, None, None, len(tokens))
    result = trainer.evaluate(params, tokens, batch_size)
    if skip_unknown:
        result["skipped"] = len(text) - len(tokens)
    return result
