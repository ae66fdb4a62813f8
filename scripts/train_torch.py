"""Train the PyTorch twin of jaxrnn's character model: the baseline for scripts/train.py.

  python scripts/train_torch.py --data PATH --workdir DIR [--preset NAME] [--cell lstm|gru|rnn]
      [--hidden-size N] [--num-layers L] [--dropout P] [--seq-len T] [--batch-size B]
      [--optimizer adam|rmsprop|sgd] [--lr LR] [--steps S | --minutes M] [--eval-every N]
      [--seed S] [--init-weights jaxrnn|torch] ...  (every Config field is a flag)

The same flags, text, batches, schedule and metrics.jsonl lines as scripts/train.py (see
torch_baselines.charlm.train_torch), so `scripts/compare_runs.py DIR_JAX DIR_TORCH` can put
the two runs side by side. It does not checkpoint or resume: every run starts over in DIR.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrnn.config import add_config_flags, add_text_flags, config_from_args  # noqa: E402
from jaxrnn.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_text_flags(parser)
    parser.add_argument("--workdir", required=True, help="run directory (written over)")
    parser.add_argument("--init-weights", choices=("jaxrnn", "torch"), default="jaxrnn",
                        help="initial weights: jaxrnn's for the same seed (converted), or "
                             "torch's own initialisation")
    add_config_flags(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    print(f"config ({args.preset} preset + flags):\n{config.to_json()}", flush=True)

    import torch

    from torch_baselines.charlm import train_torch

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


if __name__ == "__main__":
    main()
