"""Train the PyTorch twin of jaxrnn's model: python scripts/train_torch.py --data PATH --workdir DIR.

The console script `jaxrnn-train-torch` is the same command; see
`torch_baselines.cli.train_torch_main` (or --help).
"""

from torch_baselines.cli import train_torch_main

if __name__ == "__main__":
    train_torch_main()
