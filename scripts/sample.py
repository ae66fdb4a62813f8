"""Sample text from a trained run.

  python scripts/sample.py DIR --prime TEXT --length N [--temperature T] [--top-k K]
      [--argmax] [--seed S] [--num N] [--checkpoint best|last|PATH]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrnn import compile_cache  # noqa: E402
from jaxrnn.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", help="a run directory written by scripts/train.py")
    parser.add_argument("--prime", default="\n", help="text to start from (default: newline)")
    parser.add_argument("--length", type=int, default=500, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="sample from the K likeliest (0: all)")
    parser.add_argument("--argmax", action="store_true", help="greedy: always the likeliest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num", type=int, default=1, help="samples, generated as one batch")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a file")
    compile_cache.add_flag(parser)
    args = parser.parse_args(argv)
    compile_cache.enable(args.compile_cache)

    from jaxrnn.rundir import load_run
    from jaxrnn.sampling import sample_text

    _, vocab, model, params = load_run(args.workdir, args.checkpoint)
    texts = sample_text(model, params, vocab, args.prime, args.length, num=args.num,
                        temperature=args.temperature, top_k=args.top_k, argmax=args.argmax,
                        seed=args.seed)
    for i, text in enumerate([texts] if args.num == 1 else texts):
        if args.num > 1:
            print(f"--- sample {i} ---")
        print(text)


if __name__ == "__main__":
    main()
