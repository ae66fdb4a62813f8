"""Data parallelism over devices and hosts: a `jax.sharding.Mesh` with one `data` axis.

The training step stays one jitted function; what changes is where its arrays live, and
the compiler does the rest (the gradient all-reduce included). No pmap, no hand-written
communication:

  parameters, optimiser state, step, RNG key   replicated on every device
  carried recurrent state [.., B, H]           split over `data` along B
  a batch <int32>[B, T]                        split over `data` along B
  the training text <int32>[N]                 replicated (each device gathers its streams)
  an evaluation window [W, B, T]               split over `data` along B

Splitting B into contiguous blocks keeps truncated BPTT unchanged: device d holds streams
[d*B/n, (d+1)*B/n) and their carried state, window after window (the stream layout of
`jaxrnn.data`). The mesh spans every process's devices (`jax.distributed`); each process
reads the same text and config, and the arrays are put on the mesh from identical host
values (`put`). Gathering them back (`to_host`) is a collective: every process calls it.

Launch options (`add_mesh_flags`, `mesh_from_args`) are not Config fields: a checkpoint holds
the whole carry, so it resumes under any device or process count that divides the batch.
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrnn.errors import UserError

DATA = "data"  # the mesh axis the batch's streams are split over


# ---------------------------------------------------------------------------- processes


def start_distributed(coordinator: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None, auto: bool = False) -> None:
    """Joins this process to a multi-process run (`jax.distributed.initialize`).

    Either all three of coordinator ("HOST:PORT"), num_processes and process_id, or
    auto=True: JAX's own detection (SLURM, TPU pods, Open MPI) with no arguments. Nothing
    given: a single-process run (no call). Must come before any other JAX call.
    """
    given = {"coordinator": coordinator, "num_processes": num_processes,
             "process_id": process_id}
    if auto:
        if any(v is not None for v in given.values()):
            raise UserError("distributed auto detects coordinator, num_processes and "
                            "process_id itself; give either those three or distributed auto",
                            fields=("distributed", *given))
        jax.distributed.initialize()
        return
    if all(v is None for v in given.values()):
        return
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise UserError(f"a multi-process run needs coordinator, num_processes and "
                        f"process_id together (missing {', '.join(missing)}), or "
                        f"distributed auto", fields=(*given, "distributed"))
    if ":" not in coordinator:
        raise UserError(f"coordinator must be HOST:PORT; got {coordinator!r}",
                        fields=("coordinator",))
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise UserError(f"process_id must be in 0..num_processes-1 and num_processes at "
                        f"least 1; got process_id {process_id}, num_processes "
                        f"{num_processes}", fields=("process_id", "num_processes"))
    jax.distributed.initialize(coordinator, num_processes, process_id)


def is_main_process() -> bool:
    """Whether this process writes the run's files (metrics, plots, checkpoints)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process got here (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------- the mesh


def make_mesh(devices_per_process: int | None = None) -> Mesh:
    """A 1-D mesh (axis `data`) over the first `devices_per_process` local devices of every
    process (None: all of them), ordered by process then device id."""
    local = sorted(jax.local_devices(), key=lambda d: d.id)
    n = len(local) if devices_per_process is None else devices_per_process
    if not 1 <= n <= len(local):
        raise UserError(f"devices must be in 1..{len(local)} (this process sees {len(local)} "
                        f"{local[0].platform} device(s)); got {devices_per_process}",
                        fields=("devices",))
    by_process = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    chosen = []
    for p in sorted(by_process):
        chosen += sorted(by_process[p], key=lambda d: d.id)[:n]
    return Mesh(np.array(chosen), (DATA,))


def check_batch(batch_size: int, num_devices: int, num_processes: int = 1) -> None:
    """Raises a UserError saying which sizes fit when `num_devices` (in all, over
    `num_processes` processes) do not divide the batch."""
    if batch_size % num_devices == 0:
        return
    lower = batch_size // num_devices * num_devices
    sizes = " or ".join(str(s) for s in (lower, lower + num_devices) if s > 0)
    per_process = num_devices // num_processes
    fit = [n for n in range(1, per_process + 1) if batch_size % (n * num_processes) == 0]
    where = f" on each of the {num_processes} processes" if num_processes > 1 else ""
    fewer = f", or devices=N{where} with N in {', '.join(map(str, fit))}" if fit else ""
    raise UserError(
        f"batch_size={batch_size} does not split into {num_devices} equal blocks of streams, "
        f"one per device; use a batch_size that {num_devices} divides ({sizes}){fewer}",
        fields=("batch_size", "devices"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_along(mesh: Mesh, ndim: int, axis: int) -> NamedSharding:
    """Arrays of `ndim` dimensions split over `data` along `axis`."""
    spec = [None] * ndim
    spec[axis] = DATA
    return NamedSharding(mesh, PartitionSpec(*spec))


# ---------------------------------------------------------------------------- inside a layer


def data_split_size(batch_size: int) -> int:
    """Into how many blocks a layer splits a batch of `batch_size` over the `data` axis of
    JAX's current mesh (`jax.set_mesh`, read at trace time): the axis's size when it is an
    Auto axis of more than one device that divides the batch and is not already manual (we
    are not inside a shard_map over it); else 1, nothing split."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA not in mesh.axis_names or DATA not in mesh.auto_axes:
        return 1
    size = mesh.shape[DATA]
    return size if size > 1 and batch_size % size == 0 else 1


def split_batch(fn, in_axes, out_axes, batch_size: int):
    """`fn` as one program per block of the batch: `jax.shard_map` over the current mesh's
    `data` axis (`data_split_size`), or `fn` itself when nothing splits.

    in_axes / out_axes: per argument / per result, as `jax.vmap`'s: the batch axis of every
    leaf of it, or None for an argument that is the same on every device (weights). Each
    device runs `fn` on its own [.., B/n, ..] blocks, so an XLA custom call inside it (a
    fused kernel the partitioner cannot split) runs on B/n rows and reshapes that merge B
    with another axis stay local. The gradient of a replicated argument is the sum over
    `data` of the blocks' gradients: shard_map's transpose adds it, no hand-written
    communication. `fn` must treat the batch's rows independently (a recurrent layer does).
    """
    if data_split_size(batch_size) == 1:
        return fn
    mesh = jax.sharding.get_abstract_mesh()

    def spec(axis):
        return PartitionSpec() if axis is None else PartitionSpec(*[None] * axis, DATA)

    # check_vma off: an FFI call's results carry no varying-axes type to check
    return jax.shard_map(fn, mesh=mesh, in_specs=tuple(map(spec, in_axes)),
                         out_specs=tuple(map(spec, out_axes)), axis_names=frozenset({DATA}),
                         check_vma=False)


def in_mesh(jitted, mesh: Mesh):
    """`jitted` called and lowered with `mesh` as JAX's mesh context (`jax.set_mesh`), so the
    layers traced inside it split their batch over it (`split_batch`)."""

    @functools.wraps(jitted)
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return jitted(*args, **kwargs)

    def lower(*args, **kwargs):
        with jax.set_mesh(mesh):
            return jitted.lower(*args, **kwargs)

    call.lower = lower
    return call


def batch_axes(zero_state, batch_size: int):
    """The batch axis of every leaf of a model's carried state, or None for a leaf without one.

    Found from shapes alone, without computing: the axis whose size follows `batch_size`
    between `zero_state(batch_size)` and `zero_state(2 * batch_size)`.
    """
    one = jax.eval_shape(lambda: zero_state(batch_size))
    two = jax.eval_shape(lambda: zero_state(2 * batch_size))

    def axis(a, b):
        changed = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
        return changed[0] if changed else None

    return jax.tree.map(axis, one, two)


def carry_shardings(mesh: Mesh, carry_shapes, axes):
    """NamedShardings of a carried state: split along its batch axes, else replicated."""
    return jax.tree.map(
        lambda s, a: replicated(mesh) if a is None else split_along(mesh, len(s.shape), a),
        carry_shapes, axes)


# ---------------------------------------------------------------------------- host <-> mesh


def put(tree, shardings):
    """Global arrays from host values that every process holds in full (identical).

    Each process places only the pieces its own devices hold; no communication.
    `shardings`: one sharding, or a tree of them matching `tree`.
    """
    if isinstance(shardings, NamedSharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def place(value, sharding):
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree, shardings)


def to_host(tree):
    """Numpy copies of a tree of (possibly sharded, possibly multi-process) arrays.

    Single process: a plain device_get. Many processes: arrays that this process does not
    hold in full are made replicated by one jitted copy first, so every process must call
    this at the same point (it is a collective).
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    leaves, treedef = jax.tree.flatten(tree)
    partial = [i for i, a in enumerate(leaves)
               if isinstance(a, jax.Array) and not a.is_fully_replicated]
    if partial:
        mesh = leaves[partial[0]].sharding.mesh
        gathered = jax.jit(lambda xs: xs, out_shardings=replicated(mesh))(
            [leaves[i] for i in partial])
        for i, a in zip(partial, gathered):
            leaves[i] = a
    return jax.tree.unflatten(treedef, [local_value(a) for a in leaves])


def local_value(a):
    """A replicated array's value from this process's first copy (no communication)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return np.asarray(a.addressable_data(0))
    return np.asarray(a)


def on_one_device(tree):
    """Single-device copies of replicated arrays (e.g. parameters, for sampling): this
    process's first copy, no communication."""
    return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a,
                        tree)


def broadcast_int(value: int) -> int:
    """Process 0's `value`, on every process (a collective)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def any_process(flags) -> tuple[bool, ...]:
    """Flag i set on every process if it is set on any (a collective: every process calls
    it at the same point); the flags themselves in a single-process run."""
    flags = tuple(bool(f) for f in flags)
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    every = multihost_utils.process_allgather(np.asarray(flags, np.int32))  # [processes, n]
    return tuple(bool(f) for f in np.asarray(every).reshape(-1, len(flags)).any(axis=0))


# ---------------------------------------------------------------------------- launch flags


def add_mesh_flags(parser: argparse.ArgumentParser) -> None:
    """--devices, --coordinator, --num-processes, --process-id, --distributed.

    Launch options, not Config fields: a run resumes under another device or process count.
    """
    group = parser.add_argument_group(
        "devices and processes (data parallel; launch options, not saved with the run)")
    group.add_argument("--devices", type=int, default=None, metavar="N",
                       help="local devices each process uses (default: all of them); the "
                            "batch's streams are split over every process's devices")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="multi-process: process 0's address (with --num-processes and "
                            "--process-id)")
    group.add_argument("--num-processes", type=int, default=None, metavar="N")
    group.add_argument("--process-id", type=int, default=None, metavar="I")
    group.add_argument("--distributed", choices=("off", "auto"), default="off",
                       help="auto: jax.distributed.initialize() detects SLURM, TPU pods, "
                            "Open MPI (default: off)")


def mesh_from_args(args: argparse.Namespace) -> Mesh | None:
    """Starts jax.distributed if asked (call this before any other JAX call), then the mesh.

    Returns None for one device in all (today's single-device path, exactly), else the
    `data` mesh over `--devices` local devices of every process.
    """
    start_distributed(args.coordinator, args.num_processes, args.process_id,
                      auto=args.distributed == "auto")
    mesh = make_mesh(args.devices)
    return None if mesh.size == 1 else mesh
