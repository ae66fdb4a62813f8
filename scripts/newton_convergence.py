"""How the Newton solvers (jaxrnn.newton) converge on a trained model's real text.

  python scripts/newton_convergence.py RUN_DIR --data PATH [--steps T] [--batch B]
      [--start N] [--layer L] [--reverse] [--dtype float32|float64] [--methods M1,M2,...]
      [--max-iters N] [--tol X] [--no-fallback] [--lambda-init L] [--repeats R]

Loads the run's checkpoint (`jaxrnn.rundir.load_run`), takes one layer of its recurrent net
(default `params["rnn"][0][0]`: layer 0, forward direction; made for a GRU run, e.g.
`jaxrnn-train --cell gru ...`, but any built-in cell works), feeds it B windows of T
characters of the text (the layers below run the sequential reference), and evaluates that
layer with DEER, quasi-DEER, ELK and quasi-ELK. Prints one row per method: iterations,
final residual, converged, fell back, non-finite iterations, ELK's lam increases, compile
and run wall time (best of --repeats), and the largest difference from the sequential
scan, which is the first row.

The initial state is zero, so the window is evaluated as the start of a sequence.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (jaxrnn-train --workdir)")
    parser.add_argument("--data", required=True, help="a text file (UTF-8)")
    parser.add_argument("--steps", type=int, default=500, help="T, the window length")
    parser.add_argument("--batch", type=int, default=1, help="B, windows side by side")
    parser.add_argument("--start", type=int, default=0, help="first character of the windows")
    parser.add_argument("--layer", type=int, default=0, help="which layer")
    parser.add_argument("--reverse", action="store_true",
                        help="the reverse direction (a bidirectional run's second)")
    parser.add_argument("--which", default="best", help="best, last or a checkpoint path")
    parser.add_argument("--dtype", choices=("run", "float32", "float64"), default="run",
                        help="evaluate in this dtype (default: the run's)")
    parser.add_argument("--methods", default="deer,quasi-deer,elk,quasi-elk")
    parser.add_argument("--max-iters", type=int, default=0, help="0: T")
    parser.add_argument("--tol", type=float, default=None, help="default: by dtype")
    parser.add_argument("--lambda-init", type=float, default=None, help="ELK's initial lam")
    parser.add_argument("--init", default="zeros", help="zeros, carry0 or inputs")
    parser.add_argument("--no-fallback", action="store_true",
                        help="report the last iterate instead of falling back")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    return parser.parse_args(argv)


def _timed(fn, args, repeats):
    """(result, compile-and-first-run seconds, best run seconds)."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return result, first, best


def layer_problem(model, params, ids, layer, direction, dtype):
    """(cell, layer params, slab <dtype>[T, B, G*H], zero carry0) of one layer on ids [T, B]."""
    from jaxrnn.engine import Recurrent
    from jaxrnn.fast import input_slab

    rnn = model.rnn
    if not 0 <= layer < rnn.num_layers or direction >= rnn.num_directions:
        raise SystemExit(f"error: the run has {rnn.num_layers} layer(s) and "
                         f"{rnn.num_directions} direction(s)")
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)  # noqa: E731
    params = cast(params)
    x, slabs = model.input_slabs(params, ids)
    if layer == 0:
        p = params["rnn"][0][direction]
        slab = slabs[direction] if slabs is not None else input_slab(p, x, rnn.cell.slab_bias(p))
    else:
        below = Recurrent(rnn.mode, rnn.input_size, rnn.hidden_size, layer,
                          bidirectional=rnn.bidirectional, impl="reference")
        hidden, _ = below.apply(params["rnn"][:layer], x, projected0=slabs)
        p = params["rnn"][layer][direction]
        slab = input_slab(p, hidden, rnn.cell.slab_bias(p))
    carry0 = jax.tree.map(lambda a: jnp.zeros((ids.shape[1],) + a.shape, dtype),
                          rnn.cell.zero_carry(rnn.hidden_size, dtype))
    return rnn.cell, p, slab.astype(dtype), carry0


def main(argv=None):
    args = _parse(argv)
    from jaxrnn.data import read_text
    from jaxrnn.rundir import load_run, run_config

    config = run_config(args.run_dir, args.which)
    dtype_name = config.dtype if args.dtype == "run" else args.dtype
    jax.config.update("jax_enable_x64", dtype_name == "float64" or config.dtype == "float64")
    from jaxrnn import newton
    from jaxrnn.engine import run_direction

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in newton.METHODS:
            raise SystemExit(f"error: --methods: {m!r} is not one of {', '.join(newton.METHODS)}")
    if args.steps < 1 or args.batch < 1:
        raise SystemExit("error: --steps and --batch must be positive")
    _, vocab, model, params = load_run(args.run_dir, args.which)
    tokens = vocab.encode(read_text(args.data), skip_unknown=True, what=args.data)
    need = args.start + args.steps * args.batch
    if len(tokens) < need:
        raise SystemExit(f"error: {args.data} has {len(tokens)} known characters; --start "
                         f"{args.start} with {args.batch} window(s) of {args.steps} needs {need}")
    ids = np.asarray(tokens[args.start:need]).reshape(args.batch, args.steps).T  # [T, B]
    dtype = jnp.dtype(dtype_name)
    cell, p, slab, carry0 = layer_problem(model, params, jnp.asarray(ids), args.layer,
                                          int(args.reverse), dtype)
    overrides = {} if args.lambda_init is None else {"lambda_init": args.lambda_init}
    options = newton.SolverOptions(max_iters=args.max_iters, tol=args.tol, init=args.init,
                                   fallback=not args.no_fallback, warn=False, **overrides)

    reference = jax.jit(lambda p, s, c: run_direction(cell, p, None, c, reverse=args.reverse,
                                                      slab=s))
    (ref_ys, _), ref_first, ref_best = _timed(reference, (p, slab, carry0), args.repeats)
    print(f"{args.run_dir}: {cell.name} H={model.hidden_size} layer {args.layer}"
          f"{' reverse' if args.reverse else ''}, T={args.steps} B={args.batch} {dtype_name}, "
          f"tol {options.tolerance(dtype):g}, max_iters {options.iterations(args.steps)}, "
          f"init {options.init}, fallback {options.fallback}")
    header = (f"{'method':11s} {'iters':>5s} {'residual':>9s} {'converged':>9s} {'fell_back':>9s} "
              f"{'nonfinite':>9s} {'lam_up':>6s} {'compile_s':>9s} {'run_ms':>9s} {'max_diff':>9s}")
    print(header)
    print("-" * len(header))
    print(f"{'sequential':11s} {'-':>5s} {'-':>9s} {'-':>9s} {'-':>9s} {'-':>9s} {'-':>6s} "
          f"{ref_first:9.2f} {ref_best * 1e3:9.2f} {0.0:9.2g}")
    for method in methods:
        solve = jax.jit(lambda p, s, c, m=method: newton.solve_with_info(
            cell, p, s, c, reverse=args.reverse, method=m, options=options))
        (ys, _, info), first, best = _timed(solve, (p, slab, carry0), args.repeats)
        info = jax.device_get(info)
        diff = float(jnp.max(jnp.where(jnp.isfinite(ys), jnp.abs(ys - ref_ys), jnp.inf)))
        print(f"{method:11s} {int(info.iterations):5d} {float(info.residual):9.2e} "
              f"{str(bool(info.converged)):>9s} {str(bool(info.fell_back)):>9s} "
              f"{int(info.nonfinite):9d} {int(info.raised):6d} {first:9.2f} "
              f"{best * 1e3:9.2f} {diff:9.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
