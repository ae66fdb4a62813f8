"""TensorBoard event files for a run: the scalars of metrics.jsonl and samples as text.

`TensorBoardWriter` writes through tensorboardX (the optional extra `jaxrnn[tensorboard]`; no
TensorFlow). `jaxrnn.metrics.MetricsWriter` forwards every record to it when a run has
`Config.tensorboard`, and `jaxrnn.loop.run_loop` hands it the samples it prints. Tags:

  train/loss, train/grad_norm, train/param_norm, train/lr, train/chars_per_s
  val/loss, val/bpc                         (from the evaluation lines)
  samples, final_sample                     (text, in a fenced block: shown as written)

The step of every event is the run's global step. A resumed run continues in a new event
file that begins with TensorBoard's purge marker (`purge_step`: the first step after the
checkpoint it resumed from), so events an interrupted attempt logged after that checkpoint
are dropped by TensorBoard rather than shown twice; a run that starts from step 0 removes
the event files an earlier attempt left instead.
"""

from __future__ import annotations

import glob
import os
import time

from jaxrnn.errors import UserError

# metrics.jsonl key -> TensorBoard tag
SCALAR_TAGS = {"loss": "train/loss", "grad_norm": "train/grad_norm",
               "param_norm": "train/param_norm", "lr": "train/lr",
               "chars_per_s": "train/chars_per_s", "val_loss": "val/loss", "val_bpc": "val/bpc"}
EVENT_FILES = "events.out.tfevents.*"


def summary_writer_class():
    """tensorboardX.SummaryWriter, or a UserError that says how to install it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise UserError("tensorboard needs the tensorboardX package (it needs no TensorFlow): "
                        "pip install tensorboardX", fields=("tensorboard",)) from None
    return SummaryWriter


def as_markdown(text: str) -> str:
    """`text` as a fenced code block: TensorBoard renders text summaries as Markdown, which
    would fold a sample's line breaks and read its `*` and `#` as formatting."""
    return f"```\n{text}\n```"


class TensorBoardWriter:
    """Event files in `logdir` (created), opened by `begin` (or by the first write)."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._summary_writer = summary_writer_class()  # fails now, before any training
        self._writer = None

    def begin(self, step: int) -> None:
        """Opens a new event file for a run that continues after `step` (0: a fresh start).

        Step 0: no earlier event belongs to this run, so event files left in `logdir` (a run
        killed before its first checkpoint, or one started over) are removed. Later steps:
        the file starts with purge_step = step + 1, the marker that makes TensorBoard drop
        earlier files' events of steps after the checkpoint.
        """
        self.close()
        os.makedirs(self.logdir, exist_ok=True)
        if step == 0:
            for path in glob.glob(os.path.join(self.logdir, EVENT_FILES)):
                os.unlink(path)
        self._open(purge_step=step + 1 if step > 0 else None)

    def _open(self, purge_step: int | None) -> None:
        # tensorboardX names a file by the second and the host and opens it with "wb"; the
        # nanoseconds keep two files opened within one second apart and in creation order
        # (TensorBoard reads a folder's files sorted by name, and a purge marker must come
        # after the events it drops).
        self._writer = self._summary_writer(self.logdir, purge_step=purge_step,
                                            filename_suffix=f".{time.time_ns()}")

    def _ensure_open(self):
        if self._writer is None:
            os.makedirs(self.logdir, exist_ok=True)
            self._open(purge_step=None)
        return self._writer

    def write(self, record: dict) -> None:
        """The scalars of one metrics.jsonl record at its "step" (None values are skipped:
        JSON's null for a non-finite value)."""
        writer = self._ensure_open()
        for key, tag in SCALAR_TAGS.items():
            if record.get(key) is not None:
                writer.add_scalar(tag, float(record[key]), global_step=int(record["step"]))

    def write_text(self, tag: str, text: str, step: int) -> None:
        """`text` (e.g. a sample) under `tag` at `step`, shown verbatim."""
        self._ensure_open().add_text(tag, as_markdown(text), global_step=int(step))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_text_once(logdir: str, tag: str, text: str, step: int) -> None:
    """Appends one text event to the run's TensorBoard folder in a file of its own (e.g. the
    final sample, drawn after the run loop has finished)."""
    writer = TensorBoardWriter(logdir)
    try:
        writer.write_text(tag, text, step)
    finally:
        writer.close()
