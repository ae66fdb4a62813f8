"""The PyTorch peers: `torch` (nn.LSTM / nn.GRU / nn.RNN), `torch-loop` (a Python loop over
nn.LSTMCell / GRUCell / RNNCell, as the tutorial's batched RNN loops over time), `torch-mingru`
(W6: benchmarks.peers_mingru_torch, a log-space parallel minGRU), and PyTorch's sampling loop
for S1. Imports torch and NumPy, never JAX.

The training peers run the same model as jaxrnn's CharLM: one-hot input, the recurrent
layers, a linear head to the vocabulary, PyTorch's default initialisation, no dropout; the
loss is F.cross_entropy (mean over B*T; W1: summed over T, divided by B). The minimal cells
(W6's minGRU) have no torch module: there `torch` runs nn.GRU at the same H, B and T
(wl.SCALE_CELL), for scale, and says so in its config and its `cell`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks import workloads as wl
from torch_baselines.model import TorchCharLM, detach_state

# jaxrnn.names cell name -> the torch cell stepped by torch-loop (nn.RNNCell is tanh by default)
CELL_CLASSES = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.RNNCell}


def setup(threads: int | None = None, device: str = "cpu", tf32: bool = True) -> str:
    """torch's threads = this machine's cores (docs/WORKLOADS.md) unless given; on a GPU, TF32 in
    matmuls and cuDNN on or off (`tf32`). Returns a version line."""
    torch.set_num_threads(threads or os.cpu_count())
    if device == "cpu":
        return f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return (f"torch {torch.__version__}, {torch.cuda.get_device_name()}, cuDNN "
            f"{torch.backends.cudnn.version()}, TF32 {'on' if tf32 else 'off'}")


def torch_device(device: str) -> torch.device:
    """The benchmark's device names: "cpu", or "gpu" (CUDA)."""
    return torch.device("cuda" if device == "gpu" else "cpu")


def peak_device_mib(device: str) -> float | None:
    """The GPU's peak memory allocated by this process (MiB), or None on CPU."""
    return torch.cuda.max_memory_allocated() / 2**20 if device == "gpu" else None


class LoopCharLM(nn.Module):
    """One-hot -> a stack of nn.*Cell stepped in a Python loop over time -> linear head.

    The head runs once on the stacked outputs [T, B, H]; the loop is over time (and layers
    inside each time step), as the tutorial's batched RNN steps its cell.
    """

    def __init__(self, vocab_size: int, cell: str, hidden_size: int, num_layers: int):
        super().__init__()
        self.vocab_size, self.cell_name = vocab_size, cell
        self.cells = nn.ModuleList(
            CELL_CLASSES[cell](vocab_size if layer == 0 else hidden_size, hidden_size)
            for layer in range(num_layers))
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens, state=None):
        """tokens <int64>[B, T] -> (logits <float>[B, T, V], state: a list over layers)."""
        x = F.one_hot(tokens.t(), self.vocab_size).float()  # [T, B, V]
        if state is None:
            state = [None] * len(self.cells)
        state = list(state)
        outputs = []
        for t in range(x.shape[0]):
            layer_input = x[t]
            for layer, cell in enumerate(self.cells):
                state[layer] = cell(layer_input, state[layer])
                layer_input = state[layer][0] if self.cell_name == "lstm" else state[layer]
            outputs.append(layer_input)
        return self.head(torch.stack(outputs)).transpose(0, 1), state


def _detach(state):
    if state is None:
        return None
    if isinstance(state, list):  # LoopCharLM: per layer, a tensor or an (h, c) tuple
        return [detach_state(s) if isinstance(s, tuple) else s.detach() for s in state]
    return detach_state(state)


def train(workload: wl.Workload, peer: str, tokens: np.ndarray, vocab_size: int, *,
          block_steps: int, repeat: int, budget_s: float, warmup_blocks: int,
          device: str = "cpu") -> dict:
    """Trains `peer` ("torch", "torch-loop" or "torch-mingru") on `workload`; returns
    wl.measure's dict, with the cell that ran (`cell`: W6's `torch` runs nn.GRU).

    The losses are read once per block (as the JAX peers do), so that on a GPU the host
    does not wait for every step.
    """
    torch.manual_seed(0)
    dev = torch_device(device)
    w = workload
    cell = w.cell
    if peer == "torch-mingru":
        from benchmarks.peers_mingru_torch import TorchMinGRULM

        if (w.cell, w.num_layers) != ("mingru", 1):
            raise ValueError(f"torch-mingru runs one minGRU layer, not {w.id}")
        model = TorchMinGRULM(vocab_size, w.hidden_size)
        config = {"module": "benchmarks.peers_mingru_torch (log-space cumsum + logcumsumexp)"}
    elif peer == "torch":
        cell = wl.SCALE_CELL.get(w.cell, w.cell)
        model = TorchCharLM(vocab_size, cell, w.hidden_size, w.num_layers)
        config = {"module": f"nn.{type(model.rnn).__name__}"}
        if cell != w.cell:
            config["module"] += f" (for scale: {wl.CELL_LABELS[w.cell]} has no torch module)"
    else:
        model = LoopCharLM(vocab_size, w.cell, w.hidden_size, w.num_layers)
        config = {"module": f"loop over nn.{type(model.cells[0]).__name__}"}
    model.to(dev).train()
    parameters = list(model.parameters())
    if w.optimizer == "adam":
        optimizer = torch.optim.Adam(parameters, lr=w.lr, betas=(0.9, 0.999), eps=1e-8)
    else:
        optimizer = torch.optim.SGD(parameters, lr=w.lr)
    state, step = None, 0

    def run_block(n):
        nonlocal state, step
        losses = []
        for _ in range(n):
            inputs, targets, reset = wl.stream_batch(tokens, step, w.batch_size, w.seq_len)
            if reset or not w.carry_state:
                state = None  # zeros
            x = torch.from_numpy(inputs).long().to(dev)
            y = torch.from_numpy(targets).long().to(dev)
            logits, new_state = model(x, state)
            flat_logits, flat_y = logits.reshape(-1, vocab_size), y.reshape(-1)
            if w.loss == "mean":
                loss = F.cross_entropy(flat_logits, flat_y)
            else:
                loss = F.cross_entropy(flat_logits, flat_y, reduction="sum") / w.batch_size
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if w.clip:
                torch.nn.utils.clip_grad_value_(parameters, w.clip)
            optimizer.step()
            state = _detach(new_state)
            losses.append(loss.detach())
            step += 1
        return torch.stack(losses).tolist() if losses else []

    result = wl.measure(run_block, block_steps, repeat, budget_s, warmup_blocks)
    result["config"] = config
    result["cell"] = cell  # the cell that ran (its FLOPs are the record's)
    return result


def sample(sampling: wl.SamplingWorkload, vocab_size: int, *, length: int, repeat: int,
           budget_s: float, warmup_blocks: int, device: str = "cpu") -> dict:
    """S1: nn.LSTM stepped one character at a time, torch.multinomial on softmax(logits / T)."""
    torch.manual_seed(0)
    dev = torch_device(device)
    m = sampling.model
    model = TorchCharLM(vocab_size, m.cell, m.hidden_size, m.num_layers).to(dev).eval()
    generator = torch.Generator(device=dev).manual_seed(0)
    batch_size, temperature = sampling.batch_size, sampling.temperature
    last = {}

    @torch.inference_mode()
    def generate():
        prime = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)
        logits, state = model(prime)
        logits = logits[:, -1]  # [B, V]
        out = torch.empty(batch_size, length, dtype=torch.long, device=dev)
        for i in range(length):
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)  # [B, 1]
            out[:, i] = token[:, 0]
            logits, state = model(token, state)
            logits = logits[:, 0]
        return out

    def run_block(n):
        for _ in range(n):
            last["tokens"] = generate().cpu().numpy()
        return []

    result = wl.measure(run_block, 1, repeat, budget_s, warmup_blocks)
    result["tokens"] = last["tokens"]
    result["config"] = {"module": "nn.LSTM, one step per call, torch.multinomial"}
    return result
