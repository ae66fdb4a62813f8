"""Evaluate a trained run on a whole text: python scripts/evaluate.py DIR --data PATH [flags].

The console script `jaxrnn-evaluate` is the same command; see `jaxrnn.cli.evaluate_main` (or --help).
"""

from jaxrnn.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
