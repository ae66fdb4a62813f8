"""Benchmark jaxrnn against its peers on the workloads of docs/WORKLOADS.md, side by side.

  jaxrnn-bench [--workloads W1,W2,W3,W4,W5,S1]
      [--peers jaxrnn,jaxrnn-default,torch,torch-loop,flax,autograd,jax-cudnn]
      [--repeat N] [--budget SECONDS] [--json PATH] [--text PATH] [--quick] [--no-bracket]
      [--steps-per-call K] [--torch-threads N] [--device auto|cpu|gpu] [--tf32 on|off]

Each peer runs in its own process. Prints a table (chars/s median [min-max] over the timed
repetitions, ratio to torch, compile time, % of this machine's float32 matmul peak, peak RSS,
the correctness check) and, with --json, writes the records (after every workload, so a run
cut short keeps what it measured). On a GPU (--device auto finds one) torch is cuDNN, JAX runs
on the GPU, and jax-cudnn (jax.experimental.rnn's cuDNN LSTM) joins the LSTM workloads. The
full default run takes about 10-15 minutes on 2 cores. Method: benchmarks/__init__.py and
BENCHMARKS.md. `python scripts/bench.py` is the same command.
"""

import argparse
import json
import sys

from benchmarks import run as bench
from benchmarks import workloads as wl


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", type=_list, default=list(wl.WORKLOAD_IDS),
                        help=f"comma-separated, from {','.join(wl.WORKLOAD_IDS)} (default: all)")
    parser.add_argument("--peers", type=_list, default=None,
                        help=f"comma-separated, from {','.join(bench.PEERS)} (default: all "
                             "that apply; jax-cudnn on a GPU only)")
    parser.add_argument("--repeat", type=int, default=bench.DEFAULT_REPEAT,
                        help="at most this many timed repetitions per peer "
                             f"(default: {bench.DEFAULT_REPEAT})")
    parser.add_argument("--budget", type=float, default=bench.DEFAULT_BUDGET_S,
                        help="seconds of timed repetitions per peer; fewer repetitions when "
                             f"they take longer, never fewer than {wl.MIN_REPS} "
                             f"(default: {bench.DEFAULT_BUDGET_S:g})")
    parser.add_argument("--json", help="write the records to this file (a JSON list)")
    parser.add_argument("--text", help="tiny-shakespeare (default: $JAXRNN_TINYSHAKESPEARE, "
                                       "else data/tinyshakespeare.txt, else synthetic tokens)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny blocks, no warm-up; the figures mean nothing")
    parser.add_argument("--no-bracket", dest="bracket", action="store_false",
                        help="run torch once per workload, not before and after the others")
    parser.add_argument("--steps-per-call", type=int,
                        help="the jaxrnn peer's training steps per jitted call (K) on every "
                             "workload, instead of its tuned ones (for sweeping K)")
    parser.add_argument("--torch-threads", type=int,
                        help="torch's threads (default: the number of cores, as "
                             "docs/WORKLOADS.md defines)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where the peers run (default: the GPU if JAX or torch sees one)")
    parser.add_argument("--tf32", choices=("on", "off"), default="on",
                        help="on a GPU: float32 matmuls in TF32 on every side (on: speed "
                             "runs, the default) or in full float32 (off: parity runs)")
    parser.add_argument("--timeout", type=float, default=bench.DEFAULT_TIMEOUT_S,
                        help="seconds before one peer's process is abandoned")
    args = parser.parse_args(argv)
    for name in ("repeat", "steps_per_call", "torch_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    def save(records):
        if args.json:
            with open(args.json, "w") as f:
                json.dump(records, f, indent=1)

    try:
        records = bench.run_benchmarks(args.workloads, args.peers, repeat=args.repeat,
                                       budget_s=args.budget, quick=args.quick, text=args.text,
                                       bracket_torch=args.bracket,
                                       steps_per_call=args.steps_per_call,
                                       torch_threads=args.torch_threads,
                                       timeout_s=args.timeout, device=args.device,
                                       tf32=args.tf32 == "on", on_workload=save)
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
    failed = [f"{r['workload']}/{r['peer']}" for r in records if not r["ok"]]
    if failed:
        print(f"\nFAILED the correctness check or crashed: {', '.join(failed)}")
        sys.exit(1)

