"""Train jaxrnn and PyTorch side by side and compare the losses: python scripts/parity.py [flags].

The console script `jaxrnn-parity` is the same command; see `torch_baselines.cli.parity_main`
(or --help).
"""

from torch_baselines.cli import parity_main

if __name__ == "__main__":
    parity_main()
