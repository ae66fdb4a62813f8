"""Plot two runs' loss curves side by side: against step, and against training wall time.

  python scripts/compare_runs.py DIR_JAX DIR_TORCH -o out.png [--labels jaxrnn torch]

Each DIR holds the metrics.jsonl that scripts/train.py or scripts/train_torch.py writes. Left
panel: training loss (lines) and validation loss (open markers) against step; right panel: the same
against elapsed_s, the training time (evaluation excluded) at that step. A validation point's
time is interpolated from the training lines around its step. Also prints, per run, the last
training and validation loss and the median chars/s.
"""

import argparse
import json
import os
import sys

import numpy as np


def read_metrics(workdir: str):
    """-> (train [(step, loss, elapsed_s, chars_per_s)], val [(step, val_loss)]) of a run."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"error: no metrics.jsonl in {workdir}")
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [(m["step"], m["loss"], m["elapsed_s"], m["chars_per_s"])
             for m in records if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in records if "val_loss" in m]
    return train, val


def plot_runs(workdirs, labels, out_path: str) -> list[dict]:
    """Writes the two-panel figure to `out_path`; returns one summary dict per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    summaries = []
    for index, (workdir, label) in enumerate(zip(workdirs, labels)):
        color, line, marker = f"C{index}", ("-", "--")[index % 2], ("o", "s")[index % 2]
        train, val = read_metrics(workdir)
        steps = np.array([t[0] for t in train], float)
        losses = np.array([t[1] for t in train], float)
        times = np.array([t[2] for t in train], float)
        if len(train):
            by_step.plot(steps, losses, line, color=color, label=f"{label} train")
            by_time.plot(times, losses, line, color=color, label=f"{label} train")
        if val:
            val_steps = np.array([v[0] for v in val], float)
            val_losses = np.array([v[1] for v in val], float)
            by_step.plot(val_steps, val_losses, marker, color=color, mfc="none",
                         label=f"{label} val")
            if len(train):
                # the time of step 0 is 0; between logged steps, linear in the step
                val_times = np.interp(val_steps, np.r_[0.0, steps], np.r_[0.0, times])
                by_time.plot(val_times, val_losses, marker, color=color, mfc="none",
                             label=f"{label} val")
        summaries.append({
            "run": label, "workdir": workdir,
            "last_step": int(steps[-1]) if len(train) else 0,
            "last_loss": float(losses[-1]) if len(train) else None,
            "last_val_loss": float(val[-1][1]) if val else None,
            "train_s": float(times[-1]) if len(train) else None,
            "median_chars_per_s": float(np.median([t[3] for t in train])) if train else None})
    by_step.set_xlabel("step")
    by_time.set_xlabel("training time (s)")
    for ax in (by_step, by_time):
        ax.set_ylabel("loss (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return summaries


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs=2, metavar="DIR", help="two run directories")
    parser.add_argument("-o", "--output", required=True, help="the PNG to write")
    parser.add_argument("--labels", nargs=2, default=None,
                        help="legend labels (default: the directory names)")
    args = parser.parse_args(argv)
    labels = args.labels or [os.path.basename(os.path.normpath(d)) for d in args.workdirs]
    for summary in plot_runs(args.workdirs, labels, args.output):
        print(json.dumps(summary))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
