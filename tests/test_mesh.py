"""Data parallelism on a `data` mesh (jaxrnn.mesh): 8 devices train as 1 does (GRU and LSTM,
by their fused kernels), each device's kernel calls run on its own B/8 streams, bad sizes are
named, the shardings are what the docs say, and without a mesh the layers trace as they did.

JAX fixes its device count when it starts, so the many-device runs are subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (8 CPU devices); the rest runs here, on
this process's one device. The reference for the 8-device run is the single-device run
(`--devices 1`, the code path without a mesh), whose own parity with PyTorch is checked
elsewhere (tests/test_charlm_parity.py).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from jaxrnn import Recurrent
from jaxrnn import checkpoint as ckpt_lib
from jaxrnn import fast as fast_lib
from jaxrnn import mesh as mesh_lib
from jaxrnn.config import preset
from jaxrnn.errors import UserError
from jaxrnn.models import build_model
from jaxrnn.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny float64 GRU (impl "auto": its fused kernel, split over the devices), per-step losses
# in metrics.jsonl (one step per call, logged every step), evaluation at the end.
FLAGS = ["--cell", "gru", "--hidden-size", "16", "--num-layers", "1", "--embedding-size", "8",
         "--batch-size", "8", "--seq-len", "10", "--steps", "30", "--steps-per-call", "1",
         "--log-every", "1", "--eval-every", "30", "--checkpoint-every", "30",
         "--dtype", "float64", "--dropout", "0.1", "--warmup-steps", "5", "--no-progress",
         "--final-sample", "0"]
WALL_CLOCK = ("elapsed_s", "chars_per_s")

KERNELS_BUILD = (sys.platform == "linux" and jax.default_backend() == "cpu"
                 and shutil.which(os.environ.get("CXX") or "c++") is not None)
needs_kernels = pytest.mark.skipif(not KERNELS_BUILD, reason="the fused kernels are built on "
                                   "Linux with a C++ compiler, and run on the CPU backend")

# Runs jaxrnn-train once per argv list in ONE process (one JAX start for all of them); a
# run that fails prints its one-line error and the exit code, and the next one goes on.
# With a second argument, it then prints "HLO " and `compiled_layers()`'s JSON.
CHILD = """
import json, sys
from jaxrnn import cli
for argv in json.loads(sys.argv[1]):
    try:
        cli.train_main(argv)
    except SystemExit as e:
        print(f"exit {e.code}", flush=True)
if len(sys.argv) > 2:
    from tests.test_mesh import compiled_layers
    print("HLO " + json.dumps(compiled_layers()), flush=True)
"""


def train_in_one_process(runs, num_devices=8, timeout=600, hlo=False):
    """Runs jaxrnn-train with each argv of `runs` in one subprocess that sees `num_devices`
    CPU devices (then `compiled_layers()` if `hlo`); returns the finished process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}"}
    argv = [sys.executable, "-c", CHILD, json.dumps(runs)] + (["hlo"] if hlo else [])
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# The lines of compiled HLO that matter here: an FFI kernel call "(results) custom-call(...),
# custom_call_target="jaxrnn_lstm_forward_f64"", and the collectives.
CUSTOM_CALL = re.compile(r'= \(([^)]*)\) custom-call\(.*custom_call_target="(jaxrnn_\w+)"')
COLLECTIVE = re.compile(r" (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
                        r"(?:-start)?\(")
SHAPE = re.compile(r"\w+\[([\d,]*)\]")


def compiled_layers(batch_size=16):
    """In a process with 8 devices: one compiled training step of a float64 char-LM (2 layers,
    as FLAGS otherwise) on the 8-device mesh, per (cell, impl) the kernels' custom calls
    [(target, [result shapes])] and the collectives of its per-device program."""
    from jaxrnn.cli import default_impl

    jax.config.update("jax_enable_x64", True)
    found = {}
    for cell, impl in (("lstm", default_impl()), ("gru", default_impl()), ("lstm", "fast")):
        config = preset("default", cell=cell, hidden_size=16, num_layers=2, embedding_size=8,
                        batch_size=batch_size, seq_len=10, dtype="float64", dropout=0.1)
        trainer = Trainer.create(config, 7, 2000, impl, mesh_lib.make_mesh(8))
        state = trainer.put_state(trainer.init_state())
        tokens = trainer.put_tokens(np.arange(2000, dtype=np.int32) % 7)
        hlo = trainer.jit_train_chunk.lower(state, tokens, 1).compile().as_text()
        calls = [(target, [[int(d) for d in dims.split(",")] for dims in SHAPE.findall(results)])
                 for results, target in CUSTOM_CALL.findall(hlo)]
        found[f"{cell}/{impl}"] = {"calls": calls, "collectives": COLLECTIVE.findall(hlo)}
    return found


def run_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_state(workdir):
    return ckpt_lib.read(os.path.join(workdir, "last.msgpack"))["state"]


def assert_close_runs(got_dir, want_dir, rtol, skip_got=lambda record: False):
    """Same steps, losses, norms and validation loss to `rtol`; the same final parameters,
    optimiser state and carried state to `rtol` of each array's largest entry. `skip_got`
    picks the metrics records of got_dir that the reference has no counterpart for."""
    got = [r for r in run_metrics(got_dir) if not skip_got(r)]
    want = run_metrics(want_dir)
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for g, w in zip(got, want):
        for key in set(g) - set(WALL_CLOCK):
            if isinstance(w[key], float):
                assert abs(g[key] - w[key]) <= rtol * abs(w[key]), (g, w)
            else:
                assert g[key] == w[key], (g, w)
    got_leaves = jax.tree_util.tree_flatten_with_path(final_state(got_dir))[0]
    want_leaves = jax.tree_util.tree_flatten_with_path(final_state(want_dir))[0]
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, jax.tree_util.keystr(path)
        scale = max(float(np.max(np.abs(b))), 1e-300) if b.size else 1.0
        assert np.max(np.abs(a - b), initial=0.0) <= rtol * scale, jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def eight_and_one(tmp_path_factory):
    """One subprocess with 8 CPU devices: the same run on --devices 1 and --devices 8, and
    one whose batch 8 devices do not divide."""
    root = tmp_path_factory.mktemp("mesh")
    data = root / "text.txt"
    lines = ["the quick brown fox jumps over the lazy dog.",
             "to be, or not to be: that is the question.",
             "all the world's a stage, and all the men and women merely players."]
    data.write_text("\n".join(lines * 20) + "\n")
    # no persistent compilation cache: writing every small program to it costs more here
    # than it saves (each program of these runs is compiled once)
    common = ["--data", str(data), *FLAGS, "--compile-cache", "off"]
    lstm = [*common, "--cell", "lstm"]
    proc = train_in_one_process([
        [*common, "--workdir", str(root / "one"), "--devices", "1"],
        [*common, "--workdir", str(root / "eight"), "--devices", "8"],
        [*common, "--workdir", str(root / "bad"), "--devices", "8", "--batch-size", "12"],
        [*lstm, "--workdir", str(root / "lstm-one"), "--devices", "1"],
        [*lstm, "--workdir", str(root / "lstm-eight"), "--devices", "8"],
    ], hlo=True)
    hlo = [line for line in proc.stdout.splitlines() if line.startswith("HLO ")]
    assert len(hlo) == 1, proc.stdout[-2000:]
    return root, proc, json.loads(hlo[0][4:])


def test_eight_devices_train_as_one_does(eight_and_one):
    """float64: per-step losses, final params / optimiser state / carry, and the sharded
    evaluation's loss after 30 steps on 8 devices equal the 1-device run's within 1e-12."""
    root, proc, _ = eight_and_one
    assert proc.stdout.count("trained 30 steps") == 4, proc.stdout[-2000:]
    records = run_metrics(root / "eight")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 31))
    assert records[-1]["step"] == 30 and "val_loss" in records[-1]
    assert_close_runs(root / "eight", root / "one", rtol=1e-12)
    # and it did train: not equal to the initial state by accident
    assert records[-1]["val_loss"] < records[0]["loss"]


@needs_kernels
def test_eight_devices_train_the_lstm_kernel_as_one_does(eight_and_one):
    """The same for the LSTM, whose layers run the fused kernel (impl "auto"), each device on
    its own streams (test_each_device_runs_the_kernels_on_its_own_streams)."""
    root, _, _ = eight_and_one
    assert_close_runs(root / "lstm-eight", root / "lstm-one", rtol=1e-12)
    records = run_metrics(root / "lstm-eight")
    assert records[-1]["val_loss"] < records[0]["loss"]


@needs_kernels
@pytest.mark.parametrize("layers", ["lstm/auto", "gru/auto"])
def test_each_device_runs_the_kernels_on_its_own_streams(eight_and_one, layers):
    """In the compiled 8-device training step (batch 16), every forward and backward kernel
    call computes 16/8 = 2 streams ([T, 2, .] and [2, H] results): the partitioner cannot
    split a custom call, so without the layers' shard_map each device would compute all 16.
    The one collective is the gradients' all-reduce (no activations gathered)."""
    _, _, hlo = eight_and_one
    calls = hlo[layers]["calls"]
    targets = sorted({target for target, _ in calls})
    cell = layers.split("/")[0]
    assert targets == [f"jaxrnn_{cell}_backward_f64", f"jaxrnn_{cell}_forward_f64"], targets
    assert len(calls) == 4  # 2 layers, forward and backward
    for target, shapes in calls:
        batch = [shape[1] if len(shape) == 3 else shape[0] for shape in shapes]
        assert batch == [2] * len(shapes), (target, shapes)
    assert hlo[layers]["collectives"] == ["all-reduce"], hlo[layers]["collectives"]


def test_the_pure_jax_layers_gather_no_activations_on_eight_devices(eight_and_one):
    """impl "fast": the weight-gradient GEMMs over [T*B, K] are each device's own (summed by
    the one all-reduce), no all-gather of activations."""
    _, _, hlo = eight_and_one
    assert hlo["lstm/fast"]["calls"] == []
    assert hlo["lstm/fast"]["collectives"] == ["all-reduce"], hlo["lstm/fast"]["collectives"]


def test_a_batch_the_devices_do_not_divide_is_an_error_naming_what_fits(eight_and_one):
    root, proc, _ = eight_and_one
    assert "exit 2" in proc.stdout
    assert ("error: --batch-size 12 does not split into 8 equal blocks of streams, one per "
            "device; use a --batch-size that 8 divides (8 or 16), or --devices N with N in "
            "1, 2, 3, 4, 6") in proc.stderr
    assert not (root / "bad" / "last.msgpack").exists()


def test_check_batch_names_the_sizes_that_fit():
    mesh_lib.check_batch(16, 8)  # divides: no error
    with pytest.raises(UserError) as info:
        mesh_lib.check_batch(12, 8, num_processes=2)
    assert str(info.value) == ("batch_size=12 does not split into 8 equal blocks of streams, "
                               "one per device; use a batch_size that 8 divides (8 or 16), or "
                               "devices=N on each of the 2 processes with N in 1, 2, 3")
    assert info.value.fields == ("batch_size", "devices")
    with pytest.raises(UserError, match=r"divides \(8\), or devices=N with N in 1, 5"):
        mesh_lib.check_batch(5, 8)
    with pytest.raises(UserError) as info:  # no device count fits: only the batch is named
        mesh_lib.check_batch(5, 4, num_processes=2)
    assert str(info.value).endswith("use a batch_size that 4 divides (4 or 8)")


@pytest.mark.parametrize("model,cell,expect", [
    ("charlm", "lstm", (1, 1)),            # (h, c), each [L, B, H]
    ("charlm", "gru", 1),                  # h [L, B, H]
    ("tutorial-lstm", "lstm", (0, 0)),     # (h, c), each [B, H]
    ("minlm", "mingru", [{"conv": 1, "rnn": 1}] * 2),  # per block: conv window [W, B, D]
])
def test_batch_axes_of_every_model_carry(model, cell, expect):
    config = preset("default", model=model, cell=cell, hidden_size=8,
                    num_layers=2 if model == "minlm" else 1,
                    batch_size=1 if model.startswith("tutorial") else 3,
                    minlm=dict(dim=8, conv_size=3))
    model = build_model(config, vocab_size=5, impl="reference")
    axes = mesh_lib.batch_axes(model.zero_state, 3)
    if model.__class__.__name__ == "MinLM":  # rnn state: one [L*D, B, H] array per block
        axes = [{"conv": a["conv"], "rnn": jax.tree.leaves(a["rnn"])[0]} for a in axes]
    assert axes == expect


def test_state_shardings_replicate_all_but_the_carry():
    """Params, optimiser state, step, rng replicated; the carry split over `data` along B
    (on this process's 1-device mesh; found from shapes, nothing computed)."""
    config = preset("default", cell="lstm", hidden_size=8, num_layers=2, embedding_size=4,
                    batch_size=4, seq_len=5)
    shardings = Trainer.create(config, 7, 200, "fast", mesh_lib.make_mesh(1)).state_shardings
    carry = jax.tree.leaves(shardings.carry)
    assert len(carry) == 2 and all(s.spec == PartitionSpec(None, "data", None) for s in carry)
    rest = jax.tree.leaves(shardings._replace(carry=None))
    assert len(rest) > 10 and all(s.spec == PartitionSpec() for s in rest)


def test_launch_options_that_do_not_fit_are_errors_naming_them():
    with pytest.raises(UserError, match=r"needs coordinator, num_processes and process_id "
                                        r"together \(missing num_processes, process_id\)"):
        mesh_lib.start_distributed(coordinator="127.0.0.1:1234")
    with pytest.raises(UserError, match="coordinator must be HOST:PORT; got '1234'"):
        mesh_lib.start_distributed("1234", 2, 0)
    with pytest.raises(UserError, match="process_id must be in 0..num_processes-1"):
        mesh_lib.start_distributed("127.0.0.1:1234", 2, 2)
    with pytest.raises(UserError, match="distributed auto detects") as info:
        mesh_lib.start_distributed(num_processes=2, auto=True)
    assert "distributed" in info.value.fields
    with pytest.raises(UserError, match=r"devices must be in 1\.\.1 .*; got 4") as info:
        mesh_lib.make_mesh(4)
    assert info.value.fields == ("devices",)


# ---------------------------------------------------------------------------- traced layers


def _layer_args(batch=8, steps=5, features=3, hidden=4, masked=False):
    rnn = Recurrent("lstm", input_size=features, hidden_size=hidden)
    params = rnn.init(jax.random.key(0), jnp.float32)[0][0]
    xs = jax.random.normal(jax.random.key(1), (steps, batch, features))
    carry0 = (jnp.zeros((batch, hidden)), jnp.zeros((batch, hidden)))
    lengths = jnp.arange(batch) % steps + 1
    mask = jnp.arange(steps)[:, None] < lengths[None, :] if masked else None  # [T, B]
    return params, xs, carry0, mask


def _direction_jaxpr(impl, masked=False, **sizes):
    rnn = Recurrent("lstm", input_size=3, hidden_size=4, impl=impl)
    params, xs, carry0, mask = _layer_args(masked=masked, **sizes)
    return str(jax.make_jaxpr(lambda p, x, c, m: rnn._direction(impl, p, x, None, c, False, m))(
        params, xs, carry0, mask))


@pytest.mark.parametrize("impl,masked", [
    ("fast", False), pytest.param("kernel", False, marks=needs_kernels),
    pytest.param("kernel", True, marks=needs_kernels)])
def test_without_a_mesh_a_layer_traces_as_it_did(impl, masked):
    """No mesh, a 1-device mesh, or a mesh without a `data` axis: one direction's jaxpr is
    exactly the input projection and the cell's recurrence, as before the mesh came in."""
    cell = Recurrent("lstm", 3, 4).cell
    params, xs, carry0, mask = _layer_args(masked=masked)

    def before(params, xs, carry0, mask):
        slab = fast_lib.input_slab(params, xs, cell.slab_bias(params))
        if impl == "fast":
            return cell.fast(params, slab, carry0, False, 1)
        if mask is None:
            return cell.kernel.run(params, slab, carry0, False, 0)
        return cell.kernel.run(params, slab, carry0, False, 0,
                               jnp.sum(mask, axis=0, dtype=jnp.int32))

    def want():
        return _without_ctx_mesh(str(jax.make_jaxpr(before)(params, xs, carry0, mask)))

    def got():
        return _without_ctx_mesh(_direction_jaxpr(impl, masked))

    assert got() == want()
    with jax.set_mesh(mesh_lib.make_mesh(1)):
        assert got() == want()
    with jax.sharding.use_abstract_mesh(AbstractMesh((8,), ("members",), (AxisType.Auto,))):
        assert got() == want()


def _without_ctx_mesh(jaxpr_text):
    """The jaxpr text without the mesh context that JAX annotates some equations with
    (ctx_mesh=...): whether it shows depends on JAX's trace caches, not on the layer."""
    return re.sub(r"\n\s*ctx_mesh=[^\n]*", "", jaxpr_text)
    assert "shard_map" not in want()


@pytest.mark.parametrize("impl,masked", [
    ("fast", False), pytest.param("kernel", False, marks=needs_kernels),
    pytest.param("kernel", True, marks=needs_kernels)])
def test_under_a_data_mesh_a_layer_runs_per_block_of_streams(impl, masked):
    """Traced under an (abstract) 8-device `data` mesh, a direction is one shard_map whose
    body sees B/8 streams; a batch 8 does not divide is left whole (XLA splits what it can)."""
    eight = AbstractMesh((8,), ("data",), (AxisType.Auto,))
    with jax.sharding.use_abstract_mesh(eight):
        split = _direction_jaxpr(impl, masked, batch=16)
        whole = _direction_jaxpr(impl, masked, batch=12)
    assert split.count("shard_map") == 1 and "shard_map" not in whole
    # the recurrence's final state in the body: [16/8, H] = [2, 4]
    recurrence = "ffi_call" if impl == "kernel" else "scan"
    assert re.search(rf"f32\[2,4\][^\n]*= {recurrence}\[", split), split[:3000]
    assert not re.search(rf"f32\[16,4\][^\n]*= {recurrence}\[", split)
    assert re.search(rf"f32\[12,4\][^\n]*= {recurrence}\[", whole)
