"""Sample text from a trained run: python scripts/sample.py DIR --prime TEXT --length N [flags].

The console script `jaxrnn-sample` is the same command; see `jaxrnn.cli.sample_main` (or --help).
"""

from jaxrnn.cli import sample_main

if __name__ == "__main__":
    sample_main()
