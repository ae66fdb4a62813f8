"""Train a character language model: python scripts/train.py --data PATH --workdir DIR [flags].

The console script `jaxrnn-train` is the same command; see `jaxrnn.cli.train_main` (or --help).
"""

from jaxrnn.cli import train_main

if __name__ == "__main__":
    train_main()
