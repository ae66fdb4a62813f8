"""The speed benchmark of docs/WORKLOADS.md: jaxrnn against its peers, side by side.

  python scripts/bench.py [--workloads W1,W2,...] [--peers jaxrnn,torch,...] [--repeat N]

Modules:
  workloads  the workloads (W1-W5, S1), their FLOPs, the text, the timing loop and the
             correctness check. NumPy only, so a torch peer's process never imports JAX.
  peers_jax  the JAX peers: `jaxrnn`, `jaxrnn-default`, `flax`, `jax-cudnn`
             (jax.experimental.rnn's cuDNN LSTM, GPU), and jaxrnn's sampler (S1).
  peers_torch  `torch` (nn.LSTM/GRU/RNN), `torch-loop` (a Python loop over a cell), and
             PyTorch's sampling loop (S1).
  peers_autograd  `autograd`: the tutorial's own Part-1 RNN (W1 only).
  child      one (workload, peer) measurement in a fresh process; also the matmul peak.
  run        the driver: spawns the children, gathers the records, prints the table.
  gpu_session.sh  the whole GPU check (versions, parity tests, the benchmark) in one script.

This package sits outside `jaxrnn/` so that the library never imports torch, flax or autograd.
"""
