"""Evaluate a trained run on a whole text file, with the state carried across windows.

  python scripts/evaluate.py DIR --data PATH [--skip-unknown] [--checkpoint best|last|PATH]

Prints one JSON line: {"loss_nats": ..., "bits_per_char": ..., "chars": ...}.
"""

import argparse
import json
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
    parser.add_argument("--data", required=True, help="the text file to evaluate on")
    parser.add_argument("--skip-unknown", action="store_true",
                        help="drop characters the vocabulary does not hold (and count them)")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a file")
    parser.add_argument("--batch-size", type=int, default=None, help="parallel streams")
    parser.add_argument("--encoding", default="utf-8")
    parser.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"])
    compile_cache.add_flag(parser)
    args = parser.parse_args(argv)
    compile_cache.enable(args.compile_cache)

    from jaxrnn.data import read_text
    from jaxrnn.evaluate import evaluate_text

    text = read_text(args.data, args.encoding, args.errors)
    print(json.dumps(evaluate_text(args.workdir, text, skip_unknown=args.skip_unknown,
                                   checkpoint=args.checkpoint, batch_size=args.batch_size,
                                   what=args.data)))


if __name__ == "__main__":
    main()
