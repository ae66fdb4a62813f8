"""Train a character language model.

  python scripts/train.py --data PATH --workdir DIR [--preset NAME] [--cell lstm|gru|rnn]
      [--hidden-size N] [--num-layers L] [--dropout P] [--seq-len T] [--batch-size B]
      [--optimizer adam|rmsprop|sgd] [--lr LR] [--steps S | --minutes M] [--eval-every N]
      [--sample-every N] [--seed S] ...   (every field of jaxrnn.config.Config is a flag)

Running the same command again on the same DIR resumes from its last checkpoint.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrnn.config import add_config_flags, add_text_flags, config_from_args  # noqa: E402
from jaxrnn import compile_cache  # noqa: E402
from jaxrnn.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_text_flags(parser)
    parser.add_argument("--workdir", required=True, help="run directory (created; resumed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a workdir that holds another run")
    parser.add_argument("--init-from", help="start from the parameters of this checkpoint")
    add_config_flags(parser)
    compile_cache.add_flag(parser)
    args = parser.parse_args(argv)
    compile_cache.enable(args.compile_cache)
    config = config_from_args(args)
    print(f"config ({args.preset} preset + flags):\n{config.to_json()}", flush=True)

    from jaxrnn.rundir import load_run
    from jaxrnn.sampling import sample_text
    from jaxrnn.train import train_and_evaluate

    result = train_and_evaluate(config, args.data, args.workdir, overwrite=args.overwrite,
                                init_from=args.init_from, encoding=args.encoding,
                                errors=args.errors, progress=not args.no_progress)
    if result.interrupted:
        return
    print(f"trained {int(result.state.step)} steps at {result.chars_per_s:,.0f} chars/s")
    if result.val is not None:
        print(f"validation loss: {result.val['loss_nats']:.4f} nats/char "
              f"({result.val['bits_per_char']:.4f} bits/char) over {result.val['chars']:,} "
              f"characters; best {result.best_val:.4f}")
    if args.final_sample:
        _, vocab, model, params = load_run(args.workdir, "best")
        prime = config.sample_prime if not vocab.unknown(config.sample_prime) else vocab.chars[0]
        text = sample_text(model, params, vocab, prime=prime, length=args.final_sample,
                           seed=config.seed)
        print(f"--- {args.final_sample}-character sample (best checkpoint) ---\n{text}")


if __name__ == "__main__":
    main()
