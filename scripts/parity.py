"""Train jaxrnn and PyTorch side by side from equal weights on equal batches; compare the losses.

  python scripts/parity.py [--cell lstm|gru|rnn|rnn_relu] [--num-layers L]
      [--optimizer sgd|adam|rmsprop] [--clip none|elementwise|norm] [--dtype float64|float32]
      [--steps N] [--seed S] [--data PATH] [--report-every N] [--threshold X]
      [--argmax-sample N] [--sensitivity] [--init-in jax|torch] [--all] [--preset NAME]
      [any config flag]

The JAX side is jaxrnn's own training code (Trainer.jit_train_chunk: train_step in a lax.scan,
batches from get_batch); the torch side is torch_baselines.charlm.TorchTrainer on the same
batches (streams: state carried, reset at epoch start), dropout 0. Without --preset the model
is small (torch_baselines.charlm.PARITY_BASE) and lr / clip value default per optimiser and
clip mode; every field of jaxrnn.config.Config is a flag. Without --data the text is
tiny-shakespeare if this machine has it, else a built-in text; the first line says which.

Prints a line every --report-every steps (step, JAX loss, torch loss, |difference|) and ends
with one JSON line of figures. --sensitivity adds self_sensitivity: how far jaxrnn's own loss
moves when its initial weights move by at most one ulp, the floor for any cross-framework
agreement (see torch_baselines.charlm.run_parity). --all runs every cell x optimiser x clip mode (those not given
on the command line) and prints one row and one JSON line per combination, then a summary
JSON line. Exits with 1 when a loss difference exceeds the threshold (default 1e-9 in
float64, 1e-4 in float32) or greedy samples differ.
"""

import argparse
import dataclasses
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrnn.config import CELLS, Config, add_config_flags  # noqa: E402
from jaxrnn.errors import cli_main  # noqa: E402

OPTIMIZERS = ("adam", "rmsprop", "sgd")
CLIPS = ("none", "elementwise", "norm")
ROW = "{cell:>8} {optimizer:>8} {clip:>11} {dtype:>8} {max_abs_loss_diff:>12.3e} " \
      "{max_abs_param_diff:>12.3e} {clipped_steps:>8} {last_loss:>9.4f} {verdict:>5}"
HEADER = f"{'cell':>8} {'optim':>8} {'clip':>11} {'dtype':>8} {'max|dloss|':>12} " \
         f"{'max|dparam|':>12} {'clipped':>8} {'loss':>9} {'ok':>5}"


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a UTF-8 text file (default: see above)")
    parser.add_argument("--report-every", type=int, default=0,
                        help="print a line every N steps (default: steps / 10)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="largest allowed |loss difference| (default by dtype)")
    parser.add_argument("--argmax-sample", type=int, default=0, metavar="N",
                        help="also sample N characters greedily in both; must be identical")
    parser.add_argument("--sensitivity", action="store_true",
                        help="also train jaxrnn from weights moved by <= 1 ulp and report how "
                             "far its own loss moves (self_sensitivity)")
    parser.add_argument("--init-in", choices=("jax", "torch"), default="jax",
                        help="the framework that makes the initial weights")
    parser.add_argument("--all", action="store_true",
                        help="every cell x optimiser x clip mode not given as a flag")
    add_config_flags(parser)
    parser.set_defaults(preset=None)
    args = parser.parse_args(argv)

    import torch

    from torch_baselines import charlm

    torch.set_num_threads(1)  # numbers, not speed: keep torch off XLA's threads
    text, source = charlm.parity_corpus(args.data)
    print(f"text: {source}", flush=True)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
             if getattr(args, f.name) is not None}
    if not args.all:
        config = charlm.parity_config(args.preset, **given)
        result = charlm.run_parity(config, text, init_in=args.init_in,
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
        sys.exit(0 if result.summary["passed"] else 1)

    axes = {"cell": CELLS, "optimizer": OPTIMIZERS, "clip": CLIPS}
    axes = {name: [given.pop(name)] if name in given else values
            for name, values in axes.items()}
    print(HEADER + (f" {'self-sens.':>12}" if args.sensitivity else ""), flush=True)
    summaries = []
    for cell, optimizer, clip in itertools.product(*axes.values()):
        config = charlm.parity_config(args.preset, cell=cell, optimizer=optimizer, clip=clip,
                                      **given)
        result = charlm.run_parity(config, text, init_in=args.init_in,
                                   argmax_sample=args.argmax_sample, threshold=args.threshold,
                                   sensitivity=args.sensitivity)
        summary = result.summary
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
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
