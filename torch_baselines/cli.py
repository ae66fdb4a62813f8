"""The command line of the PyTorch side: the mains of two console scripts.

  jaxrnn-parity         parity_main         (python scripts/parity.py)
  jaxrnn-train-torch    train_torch_main    (python scripts/train_torch.py)

Their flags are jaxrnn-train's (jaxrnn.cli: every config field is a flag), and a UserError is
one line naming the flag, exit code 2 (jaxrnn.cli.cli_main).
"""

from __future__ import annotations

import itertools
import json
import os
import sys

from jaxrnn.cli import (add_config_flags, add_text_flags, cli_main, config_from_args,
                        config_overrides, make_parser, set_x64, write_final_sample)
from jaxrnn.names import TORCH_CELLS

OPTIMIZERS = ("adam", "rmsprop", "sgd")
CLIPS = ("none", "elementwise", "norm")
ROW = "{cell:>8} {optimizer:>8} {clip:>11} {dtype:>8} {max_abs_loss_diff:>12.3e} " \
      "{max_abs_param_diff:>12.3e} {clipped_steps:>8} {last_loss:>9.4f} {verdict:>5}"
HEADER = f"{'cell':>8} {'optim':>8} {'clip':>11} {'dtype':>8} {'max|dloss|':>12} " \
         f"{'max|dparam|':>12} {'clipped':>8} {'loss':>9} {'ok':>5}"


@cli_main
def parity_main(argv=None):
    """Train jaxrnn and PyTorch side by side from equal weights on equal batches; compare losses.

      jaxrnn-parity [--cell rnn_tanh|rnn_relu|lstm|gru] [--num-layers L]
          [--optimizer sgd|adam|rmsprop] [--clip none|elementwise|norm] [--dtype float64|float32]
          [--steps N] [--seed S] [--data PATH] [--report-every N] [--threshold X]
          [--argmax-sample N] [--sensitivity] [--init-in jax|torch] [--all] [--preset NAME]
          [any config flag]

    The JAX side is jaxrnn's own training code (Trainer.jit_train_chunk: train_step in a lax.scan,
    batches from get_batch); the torch side is torch_baselines.training.TorchTrainer on the same
    batches (streams: state carried, reset at epoch start), dropout 0. Without --preset the model
    is small (torch_baselines.parity.PARITY_BASE) and lr / clip value default per optimiser and
    clip mode; every field of jaxrnn.config.Config is a flag. Without --data the text is
    tiny-shakespeare if this machine has it, else a built-in text; the first line says which.

    Prints a line every --report-every steps (step, JAX loss, torch loss, |difference|) and ends
    with one JSON line of figures. --sensitivity adds self_sensitivity: how far jaxrnn's own loss
    moves when its initial weights move by at most one ulp, the floor for any cross-framework
    agreement (see torch_baselines.parity.run_parity). --all runs every cell x optimiser x clip
    mode (those not given on the command line) and prints one row and one JSON line per
    combination, then a summary JSON line. Exits with 1 when a loss difference exceeds the
    threshold (default 1e-9 in float64, 1e-4 in float32) or greedy samples differ.
    """
    parser = make_parser(parity_main, usage="%(prog)s [--all] [--data PATH] [flags]")
    parser.group("data").add_argument("--data", metavar="PATH",
                                      help="a UTF-8 text file (default: see above)")
    parity = parser.group("parity")
    parity.add_argument("--all", action="store_true",
                        help="every cell x optimiser x clip mode not given as a flag")
    parity.add_argument("--threshold", type=float, default=None,
                        help="largest allowed |loss difference| (default by dtype)")
    parity.add_argument("--argmax-sample", type=int, default=0, metavar="N",
                        help="also sample N characters greedily in both; must be identical")
    parity.add_argument("--sensitivity", action="store_true",
                        help="also train jaxrnn from weights moved by <= 1 ulp and report how "
                             "far its own loss moves (self_sensitivity)")
    parity.add_argument("--init-in", choices=("jax", "torch"), default="jax",
                        help="the framework that makes the initial weights")
    parser.group("output").add_argument("--report-every", type=int, default=0, metavar="N",
                                        help="print a line every N steps (default: steps / 10)")
    add_config_flags(parser)
    parser.set_defaults(preset=None)
    args = parser.parse_args(argv)

    import torch

    from torch_baselines import parity

    torch.set_num_threads(1)  # numbers, not speed: keep torch off XLA's threads
    text, source = parity.parity_corpus(args.data)
    print(f"text: {source}", flush=True)
    given = config_overrides(args)
    sys.exit(_parity_all(args, given, text, source) if args.all else
             _parity_one(args, given, text, source))


def _parity_one(args, given: dict, text: str, source: str) -> int:
    """One parity run: a line every --report-every steps, then the JSON line. Exit code."""
    from torch_baselines import parity

    config = parity.parity_config(args.preset, **given)
    set_x64(config)
    result = parity.run_parity(config, text, init_in=args.init_in,
                               argmax_sample=args.argmax_sample, threshold=args.threshold,
                               sensitivity=args.sensitivity)
    every = args.report_every or max(1, config.steps // 10)
    print(f"{'step':>6} {'jax loss':>20} {'torch loss':>20} {'|diff|':>10}")
    for step, (a, b) in enumerate(zip(result.jax_losses, result.torch_losses), 1):
        if step % every == 0 or step in (1, config.steps):
            print(f"{step:>6} {a:>20.15f} {b:>20.15f} {abs(a - b):>10.2e}")
    if args.argmax_sample:
        print(f"greedy sample, identical in both: "
              f"{result.summary['argmax_sample_identical']}\n"
              f"{result.summary['argmax_sample']!r}")
    print(json.dumps({**result.summary, "data": source}), flush=True)
    return 0 if result.summary["passed"] else 1


def _parity_all(args, given: dict, text: str, source: str) -> int:
    """Every cell x optimiser x clip mode not given: a row and a JSON line each, then a
    summary line. Exit code."""
    from torch_baselines import parity

    axes = {"cell": TORCH_CELLS, "optimizer": OPTIMIZERS, "clip": CLIPS}
    axes = {name: [given.pop(name)] if name in given else values
            for name, values in axes.items()}
    print(HEADER + (f" {'self-sens.':>12}" if args.sensitivity else ""), flush=True)
    summaries = []
    for cell, optimizer, clip in itertools.product(*axes.values()):
        config = parity.parity_config(args.preset, cell=cell, optimizer=optimizer, clip=clip,
                                      **given)
        set_x64(config)
        summary = parity.run_parity(config, text, init_in=args.init_in,
                                    argmax_sample=args.argmax_sample, threshold=args.threshold,
                                    sensitivity=args.sensitivity).summary
        summaries.append(summary)
        print(ROW.format(**summary, verdict="ok" if summary["passed"] else "FAIL")
              + (f" {summary['self_sensitivity']:>12.3e}" if args.sensitivity else ""),
              flush=True)
        print(json.dumps({**summary, "data": source}), flush=True)
    failed = [f"{s['cell']}/{s['optimizer']}/{s['clip']}" for s in summaries if not s["passed"]]
    print(json.dumps({
        "combinations": len(summaries), "failed": failed,
        "max_abs_loss_diff": max(s["max_abs_loss_diff"] for s in summaries),
        "max_abs_param_diff": max(s["max_abs_param_diff"] for s in summaries),
        "steps": summaries[0]["steps"], "dtype": summaries[0]["dtype"],
        "threshold": summaries[0]["threshold"], "data": source}))
    return 1 if failed else 0


@cli_main
def train_torch_main(argv=None):
    """Train the PyTorch twin of jaxrnn's character model: the baseline for jaxrnn-train.

      jaxrnn-train-torch --data PATH --workdir DIR [--preset NAME]
          [--cell rnn_tanh|rnn_relu|lstm|gru]
          [--hidden-size N] [--num-layers L] [--dropout P] [--seq-len T] [--batch-size B]
          [--optimizer adam|rmsprop|sgd] [--lr LR] [--steps S | --minutes M] [--eval-every N]
          [--seed S] [--init-weights jaxrnn|torch] ...  (every Config field is a flag)

    The same flags, text, batches, schedule and metrics.jsonl lines as jaxrnn-train (see
    torch_baselines.training.train_torch), so `python scripts/compare_runs.py DIR_JAX DIR_TORCH`
    can put the two runs side by side. It does not checkpoint or resume: every run starts over
    in DIR.
    """
    parser = make_parser(train_torch_main, usage="%(prog)s --data PATH --workdir DIR [flags]")
    add_text_flags(parser)
    run = parser.group("run")
    run.add_argument("--workdir", required=True, metavar="DIR",
                     help="run directory (written over)")
    run.add_argument("--init-weights", choices=("jaxrnn", "torch"), default="jaxrnn",
                     help="initial weights: jaxrnn's for the same seed (converted), or "
                          "torch's own initialisation")
    add_config_flags(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    set_x64(config)
    print(f"config ({args.preset} preset + flags):\n{config.to_json()}", flush=True)

    import torch

    from torch_baselines.training import train_torch

    torch.set_num_threads(os.cpu_count())
    result = train_torch(config, args.data, args.workdir, init_weights=args.init_weights,
                         final_sample=args.final_sample, encoding=args.encoding,
                         errors=args.errors, progress=not args.no_progress)
    print(f"trained {result.steps} steps at {result.chars_per_s:,.0f} chars/s "
          f"(torch, {torch.get_num_threads()} threads)")
    if result.val is not None:
        print(f"validation loss: {result.val['loss_nats']:.4f} nats/char "
              f"({result.val['bits_per_char']:.4f} bits/char) over {result.val['chars']:,} "
              f"characters")
    if args.final_sample:
        print(f"--- {args.final_sample}-character sample (final weights) ---\n{result.sample}")
        if config.tensorboard:
            write_final_sample(args.workdir, result.sample, result.steps)

