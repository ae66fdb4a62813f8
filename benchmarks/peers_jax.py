"""The JAX peers: `jaxrnn` (its fastest configuration), `jaxrnn-default` (what the training
CLI runs), `jaxrnn-sequential` (W6: the fastest configuration with impl="reference", the
sequential lax.scan), `flax` (flax.linen.RNN, jitted, optax), jaxrnn's sampler for S1, and
W7's layer measurements (`layer_case`).

jaxrnn trains through `jaxrnn.train.Trainer`, exactly as `scripts/train.py` does: the jitted
`train_chunk` runs K steps (`steps_per_call`) per call as one `lax.scan` and gathers each
step's batch from the char-rnn streams on the device; the time per step is the call's / K.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import workloads as wl

# jaxrnn's fastest configuration per workload, on top of the workload's own fields: the
# engine's fastest layers (impl="auto": the fused CPU kernel for LSTMs where it runs, else the
# pure-JAX custom-VJP layers; `cpu_kernel` in the result says which ran), and K
# training steps per jitted call (`steps_per_call`), which spreads the per-call cost (host
# sync, dispatch, ~40 MB of fresh buffers: docs/CPU_PROFILE_NOTES.md) over K steps. Measured on a
# busy 2-core machine, 7 alternating rounds in one process: on W1, K=1000 ran ~1.35x K=100,
# and CharLM (one-hot GEMM + the fast tanh-RNN layer) ~1.25x the tutorial port
# (model="tutorial-rnn", what jaxrnn-default runs) at the same K. W2 K=50 was not
# distinguishable from K=10 there; the K of W2-W5 are to re-measure on a quiet machine
# (`scripts/bench.py --peers jaxrnn --workloads W2 --steps-per-call K`).
FASTEST = {
    "W1": dict(model="charlm", steps_per_call=1000),
    "W2": dict(model="charlm", steps_per_call=20),
    "W3": dict(model="charlm", steps_per_call=10),
    "W4": dict(model="charlm", steps_per_call=20),
    "W5": dict(model="charlm", steps_per_call=20),
    # W6 (minGRU, B=16, state not carried): about 80k characters per call, at least one step;
    # not tuned yet (re-measure on a quiet machine as above). jaxrnn-sequential runs the same.
    "W6-256": dict(model="charlm", steps_per_call=20),
    "W6-1024": dict(model="charlm", steps_per_call=5),
    "W6-4096": dict(model="charlm", steps_per_call=2),
    "W6-16384": dict(model="charlm", steps_per_call=1),
}
FASTEST_IMPL = "auto"
# The minimal cells' (W6) impls: the parallel associative scan for `jaxrnn` (what "auto"
# resolves to for them, named so that it cannot fall back silently), the sequential lax.scan
# for `jaxrnn-sequential`.
MIN_CELL_IMPL = "parallel"
SEQUENTIAL_IMPL = "reference"


# jax.monitoring events whose durations add up to trace + lower + compile
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_compile_seconds = [0.0]


def _on_event(event: str, duration: float, **kwargs) -> None:
    if event in COMPILE_EVENTS:
        _compile_seconds[0] += duration


def setup(tf32: bool = True) -> str:
    """Listens for compile events; on a GPU, float32 matmuls in TF32 (`tf32`) or in full
    float32 ("highest"), as docs/WORKLOADS.md asks of speed and parity runs."""
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    note = ""
    if jax.default_backend() == "gpu":
        precision = "tensorfloat32" if tf32 else "highest"
        jax.config.update("jax_default_matmul_precision", precision)
        note = f", matmul precision {precision}"
    device = jax.devices()[0]
    return (f"jax {jax.__version__} ({jax.default_backend()}: {device.device_kind}, "
            f"{jax.device_count()} device{note})")


def peak_device_mib() -> float | None:
    """The accelerator's peak bytes in use by this process (MiB), or None on CPU."""
    if jax.default_backend() == "cpu":
        return None
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _noting_compiles(run_block):
    """run_block, also noting the seconds JAX spent tracing and compiling in its first call.

    A JAX peer's compile time is read from JAX's own events rather than from the first
    block's time less its other steps: with K steps per call the noise of K step times on a
    shared machine would swamp a few seconds of compilation.
    """
    first = []

    def wrapped(n):
        before = _compile_seconds[0]
        losses = run_block(n)
        if not first:
            first.append(_compile_seconds[0] - before)
        return losses

    return wrapped, first


def _compile_plus_first_step(result: dict, compile_s: float) -> dict:
    """compile_s = trace + compile (JAX's events) + one step at the median rate."""
    result["compile_s"] = compile_s + statistics.median(result["step_times"])
    return result


def workload_fields(w: wl.Workload) -> dict:
    """The jaxrnn Config fields that define a workload (everything else stays default)."""
    return dict(cell=w.cell, hidden_size=w.hidden_size, num_layers=w.num_layers,
                embedding_size=0, dropout=0.0, init="pytorch", batch_size=w.batch_size,
                seq_len=w.seq_len, optimizer=w.optimizer, lr=w.lr, schedule="constant",
                warmup_steps=0, clip="elementwise" if w.clip else "none",
                clip_value=w.clip or 1.0, loss_reduction=w.loss, carry_state=w.carry_state)


def jaxrnn_config(w: wl.Workload, peer: str, steps_per_call: int | None = None):
    """(Config, impl) of `peer` on `w`.

    jaxrnn-default: the CLI's defaults with the workload's fields; for W1, the CLI's own
    `tutorial-rnn` preset (the tutorial's model, which is W1), checked against the workload.
    jaxrnn: FASTEST[w.id], impl="auto" (the minimal cells: "parallel"). jaxrnn-sequential:
    the same config with impl="reference" (the sequential lax.scan). `steps_per_call`, if
    given, replaces any one's K.
    """
    from jaxrnn.config import preset

    fields = workload_fields(w)
    if peer == "jaxrnn-default":
        if w.id == "W1":
            config = preset("tutorial-rnn")
            mismatched = {k: (getattr(config, k), v) for k, v in fields.items()
                          if getattr(config, k) != v}
            if mismatched:
                raise ValueError(f"the tutorial-rnn preset is no longer W1: {mismatched}")
        else:
            config = preset("default", **fields)
        if steps_per_call:
            config = dataclasses.replace(config, steps_per_call=steps_per_call)
        return config, "auto"  # train_and_evaluate's default
    config = preset("default", **fields, **FASTEST[w.id])
    if steps_per_call:
        config = dataclasses.replace(config, steps_per_call=steps_per_call)
    if peer == "jaxrnn-sequential":
        return config, SEQUENTIAL_IMPL
    return config, MIN_CELL_IMPL if w.cell in wl.MIN_CELLS else FASTEST_IMPL


def train_jaxrnn(workload: wl.Workload, peer: str, tokens: np.ndarray, vocab_size: int, *,
                 steps_per_call: int | None, repeat: int, budget_s: float,
                 warmup_blocks: int) -> dict:
    """Trains through jaxrnn.train.Trainer's jitted K-step chunk; one timed block = one call."""
    from jaxrnn.train import Trainer

    config, impl = jaxrnn_config(workload, peer, steps_per_call)
    trainer = Trainer.create(config, vocab_size, len(tokens), impl)
    state = jax.device_put(trainer.init_state())
    device_tokens = jnp.asarray(tokens)
    chunk_fn = trainer.jit_train_chunk
    K = config.steps_per_call

    def run_block(n):
        nonlocal state
        losses = []
        for _ in range(n // K):
            state, metrics = chunk_fn(state, device_tokens, K)
            metrics = jax.device_get(metrics)  # the host sync of scripts/train.py's loop
            losses.extend(metrics["loss"].tolist())
        if int(state.halted_at) >= 0:
            raise FloatingPointError(f"non-finite loss or gradient at step "
                                     f"{int(state.halted_at)}")
        return losses

    run_block, compile_s = _noting_compiles(run_block)
    result = wl.measure(run_block, K, repeat, budget_s, warmup_blocks)
    # whether the recurrent layers ran a fused kernel (jaxrnn.kernels) or pure JAX: the plan
    # the model's engine resolved (plan.unmasked), for the run's dtype (a dtype the kernel does
    # not compute in falls back); models without an engine ran no kernel
    rnn = getattr(trainer.model, "rnn", None)
    cpu_kernel = rnn is not None and rnn.plan.unmasked == "kernel" and rnn.plan.for_call(
        rnn.cell, jnp.dtype(config.dtype), False) == "kernel"
    result["config"] = {"model": config.model, "impl": impl, "steps_per_call": K,
                        "cpu_kernel": rnn.cell.name if cpu_kernel else "none",
                        "layers": rnn.plan.unmasked if rnn is not None else "none",
                        "carry_state": config.carry_state}
    return _compile_plus_first_step(result, compile_s[0])


# ---------------------------------------------------------------------------- flax

def _flax_model(cell: str, hidden_size: int, num_layers: int, vocab_size: int):
    import flax.linen as nn

    cells = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.SimpleCell}

    class FlaxCharLM(nn.Module):
        """One-hot -> num_layers x nn.RNN(cell) -> Dense head; carries in and out."""

        @nn.compact
        def __call__(self, carries, tokens):  # tokens <int32>[B, T]
            x = jax.nn.one_hot(tokens, vocab_size)  # [B, T, V]
            new_carries = []
            for layer in range(num_layers):
                rnn = nn.RNN(cells[cell](hidden_size), return_carry=True)
                carry, x = rnn(x, initial_carry=carries[layer])
                new_carries.append(carry)
            return nn.Dense(vocab_size)(x), tuple(new_carries)  # [B, T, V]

    def zero_carries(batch_size):
        one = cells[cell](hidden_size).initialize_carry(jax.random.key(0),
                                                       (batch_size, hidden_size))
        return tuple(jax.tree.map(jnp.zeros_like, one) for _ in range(num_layers))

    return FlaxCharLM(), zero_carries, cells[cell].__name__


def _train_stepwise(w: wl.Workload, tokens: np.ndarray, params, carry, logits_fn, *,
                    block_steps: int, repeat: int, budget_s: float,
                    warmup_blocks: int) -> dict:
    """Times one jitted optax step per batch, as a JAX user would write it (flax, jax-cudnn).

    Args:
      params, carry: the model's parameters and zero recurrent state (a pytree).
      logits_fn: (params, carry, x <int32>[B, T]) -> (logits <float>[B, T, V], new carry).
    Returns:
      wl.measure's dict, its compile_s from JAX's compile events.
    """
    if w.optimizer == "adam":
        optimizer = optax.adam(w.lr, b1=0.9, b2=0.999, eps=1e-8)
    else:
        optimizer = optax.sgd(w.lr)
    if w.clip:
        optimizer = optax.chain(optax.clip(w.clip), optimizer)
    opt_state = optimizer.init(params)

    def loss_fn(params, carry, x, y):
        logits, new_carry = logits_fn(params, carry, x)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)  # [B, T]
        loss = nll.mean() if w.loss == "mean" else nll.sum() / w.batch_size
        return loss, new_carry

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(params, opt_state, carry, x, y, reset):
        carry = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), carry)
        (loss, new_carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, carry, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state,
                jax.lax.stop_gradient(new_carry), loss)

    step = 0

    def run_block(n):
        nonlocal params, opt_state, carry, step
        losses = []
        for _ in range(n):
            x, y, reset = wl.stream_batch(tokens, step, w.batch_size, w.seq_len)
            reset = np.bool_(reset or not w.carry_state)
            params, opt_state, carry, loss = train_step(params, opt_state, carry, x, y, reset)
            losses.append(loss)
            step += 1
        return [float(x) for x in jax.device_get(losses)]

    run_block, compile_s = _noting_compiles(run_block)
    result = wl.measure(run_block, block_steps, repeat, budget_s, warmup_blocks)
    return _compile_plus_first_step(result, compile_s[0])


def train_flax(workload: wl.Workload, tokens: np.ndarray, vocab_size: int,
               **timing) -> dict:
    import flax

    w = workload
    model, zero_carries, cell_name = _flax_model(w.cell, w.hidden_size, w.num_layers,
                                                 vocab_size)
    carries = zero_carries(w.batch_size)
    x0 = jnp.zeros((w.batch_size, w.seq_len), jnp.int32)
    params = model.init(jax.random.key(0), carries, x0)
    result = _train_stepwise(w, tokens, params, carries, model.apply, **timing)
    result["config"] = {"module": f"flax.linen.RNN({cell_name})", "flax": flax.__version__}
    return result


# ---------------------------------------------------------------------------- jax-cudnn


def train_jax_cudnn(workload: wl.Workload, tokens: np.ndarray, vocab_size: int,
                    **timing) -> dict:
    """LSTM workloads through `jax.experimental.rnn.lstm` (cuDNN's fused LSTM) on a GPU.

    One-hot input -> the cuDNN LSTM stack (one flat weight vector, PyTorch's gate order) ->
    a linear head; Adam via optax; one jitted step per batch, as the flax peer. Off a GPU
    there is no cuDNN: it then runs `jax.experimental.rnn.lstm_ref` on the same weights (a
    plain-JAX reference scan, labelled as such), which keeps the peer testable on CPU.
    """
    from jax.experimental import rnn

    w = workload
    if w.cell != "lstm":
        raise ValueError(f"jax-cudnn has only an LSTM; {w.id} is a {w.cell}")
    on_gpu = jax.default_backend() == "gpu"
    sizes = dict(input_size=vocab_size, hidden_size=w.hidden_size, num_layers=w.num_layers)
    lengths = jnp.full((w.batch_size,), w.seq_len, jnp.int32)

    def lstm(x, h0, c0, weights):  # x [B, T, V] -> y [B, T, H], h_n, c_n [L, B, H]
        if on_gpu:
            return rnn.lstm(x, h0, c0, weights, lengths, **sizes, dropout=0.0,
                            bidirectional=False)
        unpacked = rnn.unpack_lstm_weights(weights, **sizes, bidirectional=False)
        return rnn.lstm_ref(x, h0, c0, *unpacked, lengths, **sizes, dropout=0.0,
                            bidirectional=False)

    def logits_fn(params, carry, x):
        inputs = jax.nn.one_hot(x, vocab_size, dtype=jnp.float32)  # [B, T, V]
        hidden, h_n, c_n = lstm(inputs, *carry, params["lstm"])
        return hidden @ params["head_w"] + params["head_b"], (h_n, c_n)  # [B, T, V]

    key_rnn, key_head = jax.random.split(jax.random.key(0))
    bound = 1.0 / np.sqrt(w.hidden_size)  # PyTorch's default initialisation, as the others
    params = {"lstm": rnn.init_lstm_weight(key_rnn, **sizes, bidirectional=False),
              "head_w": jax.random.uniform(key_head, (w.hidden_size, vocab_size),
                                           jnp.float32, -bound, bound),
              "head_b": jnp.zeros((vocab_size,), jnp.float32)}
    shape = (w.num_layers, w.batch_size, w.hidden_size)
    carry = (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))  # (h, c): donated
    result = _train_stepwise(w, tokens, params, carry, logits_fn, **timing)
    result["config"] = {"module": "jax.experimental.rnn.lstm (cuDNN)" if on_gpu
                        else "jax.experimental.rnn.lstm_ref (no GPU: reference scan, not cuDNN)"}
    return result


# ---------------------------------------------------------------------------- sampling


def sample_jaxrnn(sampling: wl.SamplingWorkload, vocab_size: int, *, length: int, repeat: int,
                  budget_s: float, warmup_blocks: int) -> dict:
    """S1: jaxrnn.sampling.generate, a jitted lax.scan over the generated characters."""
    from jaxrnn.model import CharLM
    from jaxrnn.sampling import generate

    m = sampling.model
    model = CharLM(vocab_size, m.cell, m.hidden_size, m.num_layers, embedding_size=0)
    params = model.init(jax.random.key(0))
    prime = jnp.zeros((sampling.batch_size, 1), jnp.int32)
    temperature = jnp.float32(sampling.temperature)
    key = jax.random.key(1)
    calls = 0
    last = {}

    def run_block(n):
        nonlocal calls
        for _ in range(n):
            tokens = generate(model, params, prime, jax.random.fold_in(key, calls),
                              temperature, length=length)
            last["tokens"] = np.asarray(tokens)  # waits for the result
            calls += 1
        return []

    run_block, compile_s = _noting_compiles(run_block)
    result = wl.measure(run_block, 1, repeat, budget_s, warmup_blocks)
    result["tokens"] = last["tokens"]
    result["config"] = {"sampler": "jaxrnn.sampling.generate (jit, lax.scan)"}
    result["compile_s_jax"] = compile_s[0]  # trace + compile; the child adds nothing to it
    return result


# ---------------------------------------------------------------------------- W7: layers


def _block(tree):
    return jax.tree.map(lambda a: a.block_until_ready(), tree)


def _memory_bytes(compiled) -> float | None:
    """XLA's estimate of a compiled call's memory: arguments + outputs + temporaries."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend / version reports it
        return None
    if stats is None:
        return None
    return float(stats.argument_size_in_bytes + stats.output_size_in_bytes
                 + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def device_memory_limit() -> float | None:
    """wl.W7_MEMORY_FRACTION of the accelerator's memory, or of the host's on a CPU."""
    if jax.default_backend() != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return wl.W7_MEMORY_FRACTION * stats["bytes_limit"]
    return wl.memory_limit_bytes()


def _max_abs_diff(a, b) -> float:
    return float(max(jnp.max(jnp.abs(x - y)) for x, y in
                     zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def _max_abs(a) -> float:
    return float(max(jnp.max(jnp.abs(x)) for x in jax.tree.leaves(a)))


def _all_finite(a) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(a))


# The W7 correctness check against impl="reference" on the same inputs: the output within
# FORWARD_ATOL (GRU / LSTM outputs lie in (-1, 1); the Newton solves stop at a float32 residual
# of 1e-5 relative), the gradients within GRADIENT_RTOL of the largest reference gradient.
FORWARD_ATOL = 1e-3
GRADIENT_RTOL = 1e-2


def layer_case(case: dict, *, repeat: int, budget_s: float, warmup: int, deadline: float,
               max_iters: int, history: list, memory_limit: float | None, write) -> list:
    """W7: one case (cell, H, T, B) by every planned (impl, mode); returns the measurements.

    Each measurement: the call jitted and compiled ahead of time (compile_s; XLA's memory
    analysis, checked against `memory_limit`), timed by wl.measure_calls, checked against
    impl="reference" (which runs first), and for a Newton impl's forward one more call through
    jaxrnn.newton.diagnostics for the iterations, residual and convergence (the forward +
    backward's forward solve is the same one: its record carries the same figures).
    `write(measurements)` is called after each one, so a process stopped midway keeps them.

    Args:
      case: {"cell", "hidden_size", "seq_len", "batch_size", "runs": [{"impl", "mode",
        "estimate_s"}, ...]} in order (reference first).
      deadline: time.monotonic() after which the measurements left are skipped (W7's total
        budget).
      history: the driver's measurements of earlier cases (wl.estimate_layer's input); with
        this case's own, each run's estimate is checked again just before it runs.
    """
    import time

    from jaxrnn import Recurrent
    from jaxrnn import newton

    cell, hidden, steps, batch = (case["cell"], case["hidden_size"], case["seq_len"],
                                  case["batch_size"])
    keys = jax.random.split(jax.random.key(0), 3)
    params = Recurrent(cell, hidden, hidden, impl="reference").init(keys[0])
    x = jax.random.normal(keys[1], (steps, batch, hidden), jnp.float32)
    cotangent = jax.random.normal(keys[2], (steps, batch, hidden), jnp.float32)
    solver = newton.SolverOptions(max_iters=max_iters)
    reference = {}
    infos = {}
    measurements = []
    history = list(history)

    def forward_fn(rnn):
        return lambda p, x: rnn.apply(p, x)[0]

    def forward_backward_fn(rnn):
        def loss(p, x):
            return jnp.vdot(rnn.apply(p, x)[0], cotangent)
        return jax.value_and_grad(loss, argnums=(0, 1))

    for run in case["runs"]:
        impl, mode = run["impl"], run["mode"]
        out = dict(impl=impl, mode=mode, estimate_s=run.get("estimate_s"))
        measurements.append(out)
        seconds, memory, source = wl.estimate_layer(history, cell, impl, mode, hidden, steps)
        calls = wl.calls_per_measurement(impl, mode, repeat, warmup)
        if time.monotonic() > deadline:
            out.update(status="skipped", reason="W7's total time budget was spent")
            write(measurements)
            continue
        if seconds is not None and seconds * calls > budget_s:
            out.update(status="skipped", estimate_s=seconds,
                       reason=f"estimated {seconds:.3g} s per call x {calls} calls > the "
                              f"{budget_s:g} s budget (scaled from {source})")
            history.append(dict(cell=cell, impl=impl, mode=mode, hidden_size=hidden,
                                seq_len=steps, call_s=seconds, memory_bytes=memory,
                                estimated=True))
            write(measurements)
            continue
        try:
            rnn = Recurrent(cell, hidden, hidden, impl=impl,
                            solver=solver if impl in wl.NEWTON_IMPLS else None)
            out["resolved"] = rnn.plan.for_call(rnn.cell, jnp.dtype(jnp.float32), False)
            fn = forward_fn(rnn) if mode == "forward" else forward_backward_fn(rnn)
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(params, x).compile()
            out["compile_s"] = time.perf_counter() - start
            out["memory_bytes"] = _memory_bytes(compiled)
            if (out["memory_bytes"] is not None and memory_limit
                    and out["memory_bytes"] > memory_limit):
                out.update(status="skipped",
                           reason=f"needs {out['memory_bytes'] / 2**30:.3g} GiB (XLA's memory "
                                  f"analysis) > the {memory_limit / 2**30:.3g} GiB limit")
                write(measurements)
                continue
            last = {}

            def call():
                last["value"] = _block(compiled(params, x))

            timing = wl.measure_calls(call, repeat=repeat, budget_s=budget_s, warmup=warmup)
            out["first_call_s"] = timing["first_call_s"]
            if timing.get("over_budget"):
                out.update(status="skipped", estimate_s=timing["first_call_s"],
                           reason=f"its first call took {timing['first_call_s']:.3g} s: the "
                                  f"timed calls would not fit in the {budget_s:g} s budget")
                history.append(dict(cell=cell, impl=impl, mode=mode, hidden_size=hidden,
                                    seq_len=steps, call_s=timing["first_call_s"],
                                    memory_bytes=out["memory_bytes"]))
                write(measurements)
                continue
            out.update(status="measured", call_times=timing["call_times"], reps=timing["reps"],
                       **wl.ms_stats(timing["call_times"]))
            history.append(dict(cell=cell, impl=impl, mode=mode, hidden_size=hidden,
                                seq_len=steps, call_s=statistics.median(timing["call_times"]),
                                memory_bytes=out["memory_bytes"]))
            value = last.pop("value")
            if mode == "forward+backward":
                value = value[1]  # the gradients (params, x)
            out["ok"], out["check"] = _layer_check(impl, mode, value, reference)
            if impl == "reference":
                reference[mode] = value
            del value
            if impl in wl.NEWTON_IMPLS:
                if impl not in infos:
                    start = time.perf_counter()
                    diag = newton.diagnostics(rnn, params, x)
                    out["diagnostics_s"] = time.perf_counter() - start
                    infos[impl] = diag.layers[0][0]
                    del diag
                out.update(infos[impl]._asdict())
                if out["fell_back"]:
                    out["check"] += (f"; not converged in {out['iterations']} iterations "
                                     f"(residual {out['residual']:.2g}): fell back to the "
                                     f"sequential scan")
        except Exception as e:  # noqa: BLE001 - one failed measurement does not stop the case
            out.update(status="failed", ok=False, error=f"{type(e).__name__}: {e}"[:500])
            out["check"] = out["error"]
        out["peak_rss_mib"] = wl.peak_rss_mib()
        write(measurements)
    return measurements


def _layer_check(impl: str, mode: str, value, reference: dict) -> tuple[bool, str]:
    """Finite, and (but for the reference itself) close to impl="reference"'s on the same
    inputs: forward within FORWARD_ATOL, gradients within GRADIENT_RTOL of the largest."""
    if not _all_finite(value):
        return False, "non-finite " + ("output" if mode == "forward" else "gradient")
    if impl == "reference":
        return True, "finite"
    if mode not in reference:
        return True, "finite (no reference run to compare with)"
    error = _max_abs_diff(value, reference[mode])
    if mode == "forward":
        summary = f"max |y - y_ref| {error:.2g}"
        return error <= FORWARD_ATOL, summary + ("" if error <= FORWARD_ATOL else
                                                 f" > {FORWARD_ATOL:g}")
    relative = error / max(_max_abs(reference[mode]), 1e-30)
    summary = f"max |g - g_ref| / max |g_ref| {relative:.2g}"
    return relative <= GRADIENT_RTOL, summary + ("" if relative <= GRADIENT_RTOL else
                                                 f" > {GRADIENT_RTOL:g}")
