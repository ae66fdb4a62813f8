"""The `autograd` peer of W1: the tutorial's own Part-1 RNN (torch_baselines.autograd_tutorial).

Its model, loss (summed over the chunk, the tutorial's log(softmax + 1e-6)), initialisation
and float64 NumPy are the tutorial's. One step is the tutorial's `train_step` with
`autograd.value_and_grad` in place of `autograd.grad`, which computes the same forward pass
once and also returns the loss, for the correctness check.
"""

from __future__ import annotations

import numpy as np

from benchmarks import workloads as wl


def setup() -> str:
    import autograd

    version = getattr(autograd, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("autograd")
    return f"autograd {version} (float64 NumPy)"


def train(workload: wl.Workload, tokens: np.ndarray, vocab_size: int, *, block_steps: int,
          repeat: int, budget_s: float, warmup_blocks: int) -> dict:
    from autograd import value_and_grad

    from torch_baselines import autograd_tutorial as tutorial

    w = workload
    if (w.cell, w.num_layers, w.batch_size, w.carry_state) != ("rnn_tanh", 1, 1, False):
        raise ValueError(f"the autograd peer runs the tutorial's RNN (W1), not {w.id}")
    params = tutorial.init_params(vocab_size, w.hidden_size, seed=0)
    loss_and_grad = value_and_grad(tutorial.loss)
    step = 0

    def run_block(n):
        nonlocal params, step
        losses = []
        for _ in range(n):
            inputs, targets, _ = wl.stream_batch(tokens, step, 1, w.seq_len)
            loss, grads = loss_and_grad(params, inputs[0], targets[0])
            # tutorial.train_step's update: SGD on gradients clipped elementwise
            params = {k: params[k] - w.lr * np.clip(grads[k], -w.clip, w.clip) for k in params}
            losses.append(float(loss))
            step += 1
        return losses

    result = wl.measure(run_block, block_steps, repeat, budget_s, warmup_blocks)
    result["config"] = {"module": "torch_baselines.autograd_tutorial", "dtype": "float64"}
    return result
