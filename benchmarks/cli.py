"""Benchmark jaxrnn against its peers on the workloads of docs/WORKLOADS.md, side by side.

  jaxrnn-bench [--workloads W1,W2,W3,W4,W5,S1,W6,W6p,W7,W8]
      [--peers jaxrnn,jaxrnn-default,jaxrnn-sequential,torch,torch-loop,torch-mingru,flax,
               autograd,jax-cudnn,torch-packed,torch-padded,jaxrnn-unmasked]
      [--repeat N] [--budget SECONDS] [--json PATH] [--plot PNG] [--text PATH] [--quick]
      [--no-bracket]
      [--steps-per-call K] [--torch-threads N] [--device auto|cpu|gpu] [--tf32 on|off]
      [--w7-grid default|full] [--w7-cells gru,lstm] [--w7-hidden 8,32] [--w7-seq-lens 1024]
      [--w7-impls reference,auto,deer,...] [--w7-budget S] [--w7-total-budget S]
      [--w7-max-iters N]

Each peer runs in its own process. Prints a table (chars/s median [min-max] over the timed
repetitions, ratio to torch, compile time, % of this machine's float32 matmul peak, peak RSS,
the correctness check) and, with --json, writes the records (after every workload, so a run
cut short keeps what it measured). On a GPU (--device auto finds one) torch is cuDNN, JAX runs
on the GPU, and jax-cudnn (jax.experimental.rnn's cuDNN LSTM) joins the LSTM workloads. The
full default run (W1-W5, S1) takes about 10-15 minutes on 2 cores. W6 (minGRU over long
windows: W6-256 ... W6-16384) and W7 (GRU / LSTM layers by every impl, the Newton solvers
among them: ms per call and iterations) run only when named in --workloads; W7's default grid
is a subset that takes about 10 minutes (--w7-grid full: the whole grid, for hours). W8 (a
sweep of 8 W2 members in one program against the 8 one after another, jaxrnn and torch:
benchmarks/sweep_workload.py) also runs only when named, with its own three peers. So does
W6p (a sequence classifier over variable lengths, LSTM and GRU: W6p-lstm, W6p-gru;
benchmarks/peers_packed.py), with torch-packed, torch-padded, flax, jaxrnn and
jaxrnn-unmasked: `--workloads W6p --peers jaxrnn,torch-packed` runs just those two.
--plot PNG draws the side-by-side chart (chars/s per workload and peer, ratios to torch:
benchmarks/plot.py); `jaxrnn-bench --from-json results.json --plot bench.png` prints the
table and draws the chart of a saved run without running anything.
Method: benchmarks/__init__.py and BENCHMARKS.md. `python scripts/bench.py` is the same
command.
"""

import argparse
import json
import os
import sys

from benchmarks import run as bench
from benchmarks import workloads as wl
from jaxrnn.cli import HelpFormatter


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _ints(text: str) -> list[int]:
    """'8,32' -> [8, 32]; a k suffix is 1024 ('16k' -> 16384, as W7's T)."""
    out = []
    for item in _list(text):
        scale = 1024 if item[-1:] in ("k", "K") else 1
        digits = item[:-1] if scale > 1 else item
        if not digits.isdigit():
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        out.append(int(digits) * scale)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                     usage="%(prog)s [--workloads W1,...] [--peers P,...] "
                                           "[--json PATH] [--plot PNG] [flags]")
    what = parser.add_argument_group("workloads and peers", "what runs, and where")
    what.add_argument("--workloads", type=_list, default=list(wl.DEFAULT_WORKLOADS),
                      metavar="W1,W2,...",
                      help=f"comma-separated, from {','.join(wl.WORKLOAD_IDS)} or single ids "
                           f"(W6-1024) (default: {','.join(wl.DEFAULT_WORKLOADS)})")
    what.add_argument("--peers", type=_list, default=None, metavar="P1,P2,...",
                      help=f"comma-separated, from {','.join(bench.PEERS)} (default: all "
                           "that apply; jax-cudnn on a GPU only)")
    what.add_argument("--text", metavar="PATH",
                      help="tiny-shakespeare (default: $JAXRNN_TINYSHAKESPEARE, else "
                           "data/tinyshakespeare.txt, else synthetic tokens)")
    what.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                      help="where the peers run (default: the GPU if JAX or torch sees one)")
    what.add_argument("--tf32", choices=("on", "off"), default="on",
                      help="on a GPU: float32 matmuls in TF32 on every side (on: speed "
                           "runs, the default) or in full float32 (off: parity runs)")
    what.add_argument("--steps-per-call", type=int, metavar="K",
                      help="the jaxrnn peer's training steps per jitted call (K) on every "
                           "workload, instead of its tuned ones (for sweeping K)")
    what.add_argument("--torch-threads", type=int, metavar="N",
                      help="torch's threads (default: the number of cores, as "
                           "docs/WORKLOADS.md defines)")
    timing = parser.add_argument_group("timing", "how long each peer is measured")
    timing.add_argument("--repeat", type=int, default=bench.DEFAULT_REPEAT, metavar="N",
                        help="at most this many timed repetitions per peer "
                             f"(default: {bench.DEFAULT_REPEAT})")
    timing.add_argument("--budget", type=float, default=bench.DEFAULT_BUDGET_S,
                        metavar="SECONDS",
                        help="seconds of timed repetitions per peer; fewer repetitions when "
                             f"they take longer, never fewer than {wl.MIN_REPS} "
                             f"(default: {bench.DEFAULT_BUDGET_S:g})")
    timing.add_argument("--timeout", type=float, default=bench.DEFAULT_TIMEOUT_S,
                        metavar="SECONDS", help="seconds before one peer's process is abandoned")
    timing.add_argument("--quick", action="store_true",
                        help="smoke test: tiny blocks, no warm-up; the figures mean nothing")
    timing.add_argument("--no-bracket", dest="bracket", action="store_false",
                        help="run torch once per workload, not before and after the others")
    output = parser.add_argument_group("output", "where the results go")
    output.add_argument("--json", metavar="PATH",
                        help="write the records to this file (a JSON list)")
    output.add_argument("--plot", metavar="PNG",
                        help="draw chars/s per workload and peer and the ratios to torch into "
                             "this image (benchmarks/plot.py; .png, .svg or .pdf)")
    output.add_argument("--from-json", metavar="PATH",
                        help="run nothing: print the table of, and --plot, the records a "
                             "run saved with --json")
    layers = parser.add_argument_group(
        "W7", "the layer workload's grid and budgets (docs/WORKLOADS.md); --quick: H 8, T 256")
    layers.add_argument("--w7-grid", choices=("default", "full"),
                        help="default: H 8,32 and T 1024,16384, 30 s per measurement, 600 s in "
                             "all (about 10 minutes on 2 cores); full: H 8,32,128 and T "
                             "1024,16384,65536, 120 s per measurement, no total")
    layers.add_argument("--w7-cells", type=_list, help=f"from {','.join(wl.LAYERS.cells)}")
    layers.add_argument("--w7-hidden", type=_ints, help="hidden sizes, instead of the grid's")
    layers.add_argument("--w7-seq-lens", type=_ints,
                        help="sequence lengths (1024 or 1k), instead of the grid's")
    layers.add_argument("--w7-impls", type=_list,
                        help=f"from {','.join(wl.LAYERS.impls)} (default: all; the reference "
                             "always runs first, the others are checked against it)")
    layers.add_argument("--w7-budget", type=float,
                        help="seconds per measurement: one estimated to take longer is skipped "
                             "and recorded with its estimate")
    layers.add_argument("--w7-total-budget", type=float,
                        help="seconds for all of W7 (0: no total); what is left after it "
                             "is skipped")
    layers.add_argument("--w7-max-iters", type=int,
                        help=f"the Newton solvers' most iterations before they fall back to the "
                             f"sequential scan (default {wl.LAYERS.max_iters})")
    args = parser.parse_args(argv)
    for name in ("repeat", "steps_per_call", "torch_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        parser.error(f"--plot {args.plot}: its folder does not exist")  # before, not after
    if args.from_json:
        return show_saved(parser, args.from_json, args.plot)
    def save(records):
        if args.json:
            with open(args.json, "w") as f:
                json.dump(records, f, indent=1)

    layer_options = dict(grid=args.w7_grid, cells=args.w7_cells, hidden_sizes=args.w7_hidden,
                         seq_lens=args.w7_seq_lens, impls=args.w7_impls,
                         budget_s=args.w7_budget, total_budget_s=args.w7_total_budget,
                         max_iters=args.w7_max_iters)
    try:
        bench.layer_options(layer_options, args.quick)  # option errors before anything runs
        records = bench.run_benchmarks(args.workloads, args.peers, repeat=args.repeat,
                                       budget_s=args.budget, quick=args.quick, text=args.text,
                                       bracket_torch=args.bracket,
                                       steps_per_call=args.steps_per_call,
                                       torch_threads=args.torch_threads,
                                       timeout_s=args.timeout, device=args.device,
                                       tf32=args.tf32 == "on", layers=layer_options,
                                       on_workload=save)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print()
    print(bench.format_table(records))
    print()
    print(bench.format_notes(records))
    if args.quick:
        print("\n--quick: tiny blocks and no warm-up; these figures are a smoke test only")
    if args.json:
        save(records)
        print(f"\nwrote {len(records)} records to {args.json}")
    if args.plot:
        draw(parser, records, args.plot)
    failed = [f"{r['workload']}/{r['peer']}" for r in records if not r["ok"]]
    if failed:
        print(f"\nFAILED the correctness check or crashed: {', '.join(failed)}")
        sys.exit(1)



def draw(parser, records: list[dict], out_path: str) -> None:
    from benchmarks.plot import save_plot

    try:
        save_plot(records, out_path)
    except ValueError as e:
        parser.error(f"--plot: {e}")
    print(f"\ndrew the chart into {out_path}")


def show_saved(parser, path: str, plot: str | None) -> None:
    """--from-json: the table (and --plot's chart) of a saved run's records."""
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, ValueError) as e:
        parser.error(f"--from-json {path}: {e}")
    if not isinstance(records, list) or not all(isinstance(r, dict) and "workload" in r
                                                and "peer" in r for r in records):
        parser.error(f"--from-json {path}: not the records of jaxrnn-bench --json (a JSON list "
                     f"of objects with workload and peer)")
    print(bench.format_table(records))
    if plot:
        draw(parser, records, plot)
