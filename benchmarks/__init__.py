"""The speed benchmark of docs/WORKLOADS.md: jaxrnn against its peers, side by side.

  python scripts/bench.py [--workloads W1,W2,...] [--peers jaxrnn,torch,...] [--repeat N]
  python scripts/bench.py --workloads W6              # minGRU, T = 256 ... 16384
  python scripts/bench.py --workloads W7 [--w7-grid full]   # layers by every impl

Modules:
  workloads  the workloads (W1-W7, S1), their FLOPs, the text, the timing loops, the
             correctness check, and W7's grids, estimates and budgets. NumPy only, so a torch
             peer's process never imports JAX.
  peers_jax  the JAX peers: `jaxrnn`, `jaxrnn-default`, `jaxrnn-sequential` (W6: impl
             "reference"), `flax`, `jax-cudnn` (jax.experimental.rnn's cuDNN LSTM, GPU),
             jaxrnn's sampler (S1), and W7's layer measurements (`layer_case`).
  peers_torch  `torch` (nn.LSTM/GRU/RNN; W6: nn.GRU for scale), `torch-loop` (a Python loop
             over a cell), `torch-mingru` (W6), and PyTorch's sampling loop (S1).
  peers_mingru_torch  the PyTorch minGRU of `torch-mingru`: log-space, parallel over time.
  peers_autograd  `autograd`: the tutorial's own Part-1 RNN (W1 only).
  child      one (workload, peer) measurement in a fresh process (W7: one case, every impl);
             also the matmul peak.
  run        the driver: spawns the children, gathers the records, prints the tables.
  gpu_session.sh  the whole GPU check (versions, parity tests, the benchmark) in one script.

This package sits outside `jaxrnn/` so that the library never imports torch, flax or autograd.
"""
