"""metrics.jsonl: one JSON object per line, always valid JSON; and loss.png drawn from it.

Training lines are {"step", "loss", "grad_norm", "param_norm", "lr", "skipped", "elapsed_s",
"chars_per_s"}, evaluation lines {"step", "val_loss", "val_bpc"}. JSON has no NaN or
infinity: a value that is not finite (a step skipped as non-finite) is written as null.
With `tensorboard`, the writer also forwards every record and the loop's samples to
TensorBoard event files in tensorboard/ beside metrics.jsonl (`jaxrnn.tensorboard`).
"""

from __future__ import annotations

import json
import math
import os

from jaxrnn.fileio import atomic_write


def json_float(value) -> float | None:
    """A finite float, or None."""
    value = float(value)
    return value if math.isfinite(value) else None


def _clean(record: dict) -> dict:
    return {k: json_float(v) if isinstance(v, float) else v for k, v in record.items()}


def read_metrics(path: str, up_to_step: int | None = None) -> list[dict]:
    """The records of a metrics file (those of steps <= up_to_step, if given)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [m for m in records if up_to_step is None or m["step"] <= up_to_step]


def tensorboard_dir(metrics_path: str) -> str:
    """The TensorBoard folder of the run whose metrics file is `metrics_path`."""
    return os.path.join(os.path.dirname(os.path.abspath(metrics_path)), "tensorboard")


class MetricsWriter:
    """Appends records to a metrics.jsonl file, one flushed line each; with `tensorboard`,
    also to TensorBoard event files in `tensorboard_dir(path)` (a UserError here if
    tensorboardX is not installed)."""

    def __init__(self, path: str, tensorboard: bool = False):
        self.path = path
        self.tensorboard = None
        if tensorboard:
            from jaxrnn.tensorboard import TensorBoardWriter

            self.tensorboard = TensorBoardWriter(tensorboard_dir(path))

    def begin(self, step: int) -> None:
        """The run continues after `step` (0: a fresh start); see TensorBoardWriter.begin."""
        if self.tensorboard is not None:
            self.tensorboard.begin(step)

    def reset(self, records: list[dict]) -> None:
        """Rewrites the file to hold exactly `records` (atomically)."""
        atomic_write(self.path, "".join(json.dumps(_clean(m), allow_nan=False) + "\n"
                                        for m in records).encode())

    def write(self, record: dict) -> None:
        record = _clean(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def write_text(self, tag: str, text: str, step: int) -> None:
        """A text (a sample) at `step`: to TensorBoard only (metrics.jsonl holds numbers)."""
        if self.tensorboard is not None:
            self.tensorboard.write_text(tag, text, step)

    def flush(self) -> None:
        """Puts what TensorBoard's writer holds in memory on disk (metrics.jsonl always is)."""
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def records(self, up_to_step: int | None = None) -> list[dict]:
        return read_metrics(self.path, up_to_step)


def plot_losses(metrics_path: str, out_path: str) -> None:
    """loss.png: training and validation loss against steps (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(m["step"], m["loss"]) for m in records if m.get("loss") is not None]
    val = [(m["step"], m["val_loss"]) for m in records if "val_loss" in m]
    if not train and not val:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_path)
