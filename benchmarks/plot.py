"""The side-by-side chart of a benchmark run: `jaxrnn-bench --plot bench.png`.

Two panels over the training and sampling workloads (W7's layer records, in ms per call, are
left to its table): chars/s per workload and peer as grouped bars (median, with the min-max
of the timed repetitions as an error bar), and each peer's ratio to torch (medians; 1 is
torch's speed). An axis is logarithmic when its values span more than `LOG_SPREAD`. A peer
that failed its check or crashed gets an empty bar marked FAIL, a peer that did not run no
bar at all.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

LOG_SPREAD = 20.0  # max / min of an axis's values above which it is drawn on a log scale


@dataclasses.dataclass
class Chart:
    """What the chart draws: `values[key][i, j]` for workload i and peer j (NaN: no bar).

    keys: "median", "min", "max" (chars/s), "ratio" (to torch); `failed[i, j]` marks a peer
    that failed its check or crashed.
    """

    workloads: list[str]
    peers: list[str]
    values: dict[str, np.ndarray]
    failed: np.ndarray
    machine: str | None = None


def chart_data(records: list[dict]) -> Chart:
    """The speed records of a run (as `benchmarks.run.run_benchmarks` returns them, or the
    JSON --json wrote), workloads and peers in the order they ran."""
    records = [r for r in records if r.get("kind") != "layer"]
    workloads = list(dict.fromkeys(r["workload"] for r in records))
    peers = list(dict.fromkeys(r["peer"] for r in records))
    shape = (len(workloads), len(peers))
    values = {key: np.full(shape, np.nan) for key in ("median", "min", "max", "ratio")}
    failed = np.zeros(shape, bool)
    fields = {"median": "chars_per_s_median", "min": "chars_per_s_min",
              "max": "chars_per_s_max", "ratio": "ratio_to_torch"}
    for r in records:
        i, j = workloads.index(r["workload"]), peers.index(r["peer"])
        failed[i, j] = not r.get("ok", False)
        for key, field in fields.items():
            if r.get(field) is not None:
                values[key][i, j] = r[field]
    machine = next((r["machine"] for r in records if r.get("machine")), None)
    return Chart(workloads, peers, values, failed, machine)


def wants_log_scale(values: np.ndarray) -> bool:
    """Whether the positive finite `values` span more than LOG_SPREAD."""
    positive = values[np.isfinite(values) & (values > 0)]
    return positive.size > 0 and positive.max() / positive.min() > LOG_SPREAD


def _bars(ax, chart: Chart, key: str, errors: bool):
    """Grouped bars of `chart.values[key]`: one group per workload, one bar per peer."""
    n_peers = len(chart.peers)
    width = 0.8 / max(n_peers, 1)
    x = np.arange(len(chart.workloads))
    heights = chart.values[key]
    for j, peer in enumerate(chart.peers):
        offsets = x - 0.4 + width * (j + 0.5)
        column = heights[:, j]
        drawn = np.isfinite(column) & ~chart.failed[:, j] & (column > 0)
        yerr = None
        if errors:
            low = np.clip(column - chart.values["min"][:, j], 0, None)
            high = np.clip(chart.values["max"][:, j] - column, 0, None)
            yerr = np.nan_to_num(np.stack([low, high]))[:, drawn]
        ax.bar(offsets[drawn], column[drawn], width, label=peer, yerr=yerr, capsize=2,
               color=f"C{j}", gid=f"{key}:{peer}")
        for i in np.flatnonzero(chart.failed[:, j]):
            ax.text(offsets[i], 0.0, "FAIL", rotation=90, ha="center", va="bottom",
                    fontsize=7, color="red", transform=ax.get_xaxis_transform())
    ax.set_xticks(x, chart.workloads)
    if wants_log_scale(heights):
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def plot_chart(chart: Chart):
    """The matplotlib Figure of `chart` (two panels: chars/s, ratio to torch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(7.0, 1.2 * len(chart.workloads) * max(1, len(chart.peers)) / 3)
    fig, (speed, ratio) = plt.subplots(2, 1, figsize=(width, 8), sharex=True)
    _bars(speed, chart, "median", errors=True)
    speed.set_ylabel("chars/s (median, min-max)")
    speed.set_title("training and sampling speed" + (f" ({chart.machine})" if chart.machine
                                                      else ""), fontsize=9)
    speed.legend(fontsize=8, ncol=min(len(chart.peers), 5))
    _bars(ratio, chart, "ratio", errors=False)
    ratio.axhline(1.0, color="black", linewidth=0.8)
    ratio.set_ylabel("chars/s / torch's")
    ratio.set_xlabel("workload (docs/WORKLOADS.md)")
    fig.tight_layout()
    return fig


def save_plot(records: list[dict], out_path: str) -> str:
    """Draws the records' chart into `out_path` (PNG, SVG, PDF: by its suffix; written
    atomically). Returns `out_path`; a ValueError when there is nothing to draw."""
    import matplotlib.pyplot as plt

    chart = chart_data(records)
    if not chart.workloads:
        raise ValueError("no training or sampling records to plot (W7's layer records are "
                         "not drawn)")
    fig = plot_chart(chart)
    root, suffix = os.path.splitext(out_path)
    tmp = f"{root}.tmp{suffix or '.png'}"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path
