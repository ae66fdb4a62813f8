"""Times `Recurrent.apply` (forward, and forward + backward) next to torch.nn.LSTM / GRU.

For each workload shape (docs/WORKLOADS.md) it builds the same network in jaxrnn, with
impl="reference" (the plain scan, differentiated by JAX), impl="fast" (the pure-JAX custom-VJP
layers of `jaxrnn.fast`, `Recurrent(unroll=u)` for a few scan unroll values) and, for LSTMs
where it can run, impl="kernel" (the fused CPU kernel of `jaxrnn.kernels`, "jax kernel"),
and in PyTorch (torch.set_num_threads), and times them *interleaved in one process*: every
repetition runs each peer once, in a rotating order with a short pause after each call
(torch's OpenMP workers spin for a while after a call, which would otherwise be charged to
whoever runs next). The machines are shared
and noisy, so read the medians and the ratios, not a lone time.

  forward    jit(rnn.apply)(params, x)            torch: module(x) under no_grad
  fwd+bwd    jit(grad(loss))(params)              torch: loss.backward(), grads set to None
  loss       sum(w * output) + sum(h_n) (+ sum(c_n)); gradients w.r.t. every parameter
             (not x: in training, layer 0 reads one-hot / embedded tokens)

Columns: median ms [min-max] over the repetitions; "x torch" = torch median / this median
(above 1 is faster than torch), "x 1t" the same against torch on one thread; "cpu" = median
process CPU ms of one call (cpu > wall means several threads worked; on a busy machine, cpu
is the steadier measure of work done).

  python scripts/profile_engine.py                       # W1-W5, about 10-15 minutes
  python scripts/profile_engine.py --workloads W2 --reps 30 --unrolls 1,2,4,8
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxrnn import Recurrent, get_cell


@dataclasses.dataclass(frozen=True)
class Workload:
    mode: str
    num_layers: int
    hidden_size: int
    batch_size: int
    steps: int
    reps: int  # default repetitions (the long ones get fewer)


WORKLOADS = {
    "W1": Workload("rnn_tanh", 1, 100, 1, 25, 50),
    "W2": Workload("lstm", 2, 128, 50, 50, 20),
    "W3": Workload("lstm", 2, 512, 64, 100, 6),
    "W4": Workload("lstm", 1, 256, 16, 1000, 6),
    "W5": Workload("gru", 2, 128, 50, 50, 20),
}
VOCAB_SIZE = 65  # tiny-shakespeare characters: the input width of layer 0


def _jax_peer(work: Workload, impl: str, unroll: int, input_size: int):
    """Returns (forward, forward_backward) callables with their inputs bound, compiled, for
    `Recurrent(impl=impl, unroll=unroll)` ("reference", "fast" or "kernel")."""
    rnn = Recurrent(work.mode, input_size, work.hidden_size, work.num_layers, impl=impl,
                    unroll=unroll)
    assert rnn.plan.unmasked == impl, rnn.plan  # a named impl runs itself or raises
    params = rnn.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((work.steps, work.batch_size, input_size)), jnp.float32)
    weight = jnp.asarray(rng.standard_normal((work.steps, work.batch_size, work.hidden_size)),
                         jnp.float32)

    def loss(params):
        out, state = rnn.apply(params, x)
        return jnp.sum(weight * out) + sum(jnp.sum(s) for s in jax.tree.leaves(state))

    forward = jax.jit(rnn.apply)
    forward_backward = jax.jit(jax.grad(loss))
    compile_s = {}
    for name, fn, args in (("forward", forward, (params, x)),
                           ("fwd+bwd", forward_backward, (params,))):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        compile_s[name] = time.perf_counter() - start
    return ({"forward": lambda: jax.block_until_ready(forward(params, x)),
             "fwd+bwd": lambda: jax.block_until_ready(forward_backward(params))}, compile_s)


def _torch_peer(work: Workload, input_size: int, threads: int):
    module_class = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU,
                    "rnn_tanh": torch.nn.RNN}[work.mode]
    module = module_class(input_size, work.hidden_size, work.num_layers)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(work.steps, work.batch_size, input_size, generator=generator)
    weight = torch.randn(work.steps, work.batch_size, work.hidden_size, generator=generator)

    def forward():
        torch.set_num_threads(threads)
        with torch.no_grad():
            module(x)

    def forward_backward():
        torch.set_num_threads(threads)
        module.zero_grad(set_to_none=True)
        out, state = module(x)
        states = state if isinstance(state, tuple) else (state,)
        (torch.sum(weight * out) + sum(torch.sum(s) for s in states)).backward()

    start = time.perf_counter()
    forward(), forward_backward()
    warm_up_s = time.perf_counter() - start
    return {"forward": forward, "fwd+bwd": forward_backward}, {"warm-up": warm_up_s}


def profile(name: str, work: Workload, unrolls, reps: int, input_size: int, pause_s: float,
            threads: int):
    print(f"\n== {name}: {work.mode} {work.num_layers}x{work.hidden_size}, B={work.batch_size}, "
          f"T={work.steps}, input {input_size}, {reps} reps, load {os.getloadavg()[0]:.1f}",
          flush=True)
    # "torch" (threads = cores) is the peer of docs/WORKLOADS.md; "torch 1t" is there because a
    # busy machine wrecks multi-threaded torch (its OpenMP barriers wait on descheduled threads).
    peers = {"torch": _torch_peer(work, input_size, threads),
             "torch 1t": _torch_peer(work, input_size, 1)}
    peers["jax reference u1"] = _jax_peer(work, "reference", 1, input_size)
    for unroll in unrolls:
        peers[f"jax fast u{unroll}"] = _jax_peer(work, "fast", unroll, input_size)
    kernel = get_cell(work.mode).kernel
    if kernel is not None and kernel.unavailable_reason(np.float32) is None:
        peers["jax kernel"] = _jax_peer(work, "kernel", 1, input_size)
    elif kernel is not None:
        print(f"   (no jax kernel peer: {kernel.unavailable_reason(np.float32)})")
    for peer, (_, compile_s) in peers.items():
        print(f"   compile/warm-up {peer:18s} "
              + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()))

    calls = [(peer, kind) for peer in peers for kind in ("forward", "fwd+bwd")]
    wall = {call: [] for call in calls}
    cpu = {call: [] for call in calls}
    for rep in range(reps):
        order = calls[rep % len(calls):] + calls[:rep % len(calls)]  # rotate: no fixed neighbour
        for call in order:
            fn = peers[call[0]][0][call[1]]
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            fn()
            wall[call].append(time.perf_counter() - wall_start)
            cpu[call].append(time.process_time() - cpu_start)
            time.sleep(pause_s)

    print(f"   {'peer':18s} | {'forward ms [min-max]':>26s} {'x torch':>7s} {'x 1t':>6s} "
          f"{'cpu':>7s} | {'fwd+bwd ms [min-max]':>26s} {'x torch':>7s} {'x 1t':>6s} {'cpu':>7s}")
    rows = {}
    for peer in peers:
        cells = []
        for kind in ("forward", "fwd+bwd"):
            times = np.array(wall[(peer, kind)]) * 1e3
            median = float(np.median(times))
            ratio = float(np.median(wall[("torch", kind)])) * 1e3 / median
            ratio_1t = float(np.median(wall[("torch 1t", kind)])) * 1e3 / median
            cells.append(f"{median:9.2f} [{times.min():7.2f}-{times.max():8.2f}] {ratio:7.2f} "
                         f"{ratio_1t:6.2f} {np.median(cpu[(peer, kind)]) * 1e3:7.1f}")
            rows[(peer, kind)] = dict(median_ms=median, x_torch=ratio, x_torch_1t=ratio_1t)
        print(f"   {peer:18s} | " + " | ".join(cells), flush=True)
    print(f"   load after: {os.getloadavg()[0]:.1f}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5")
    parser.add_argument("--unrolls", default="1,2,4", help="scan unroll values for impl=fast")
    parser.add_argument("--reps", type=int, default=None, help="default: per workload")
    parser.add_argument("--input-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds after each call")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # each torch peer sets its own count before a call
    unrolls = [int(u) for u in args.unrolls.split(",")]
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from {sorted(WORKLOADS)}")
        work = WORKLOADS[name]
        profile(name, work, unrolls, args.reps or work.reps, args.input_size, args.pause,
                args.threads)


if __name__ == "__main__":
    main()
