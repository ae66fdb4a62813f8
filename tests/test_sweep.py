"""Many models in one program (`--sweep`, jaxrnn.sweep): each member is its standalone run.

In float64, member k of a sweep equals the run of its own config trained alone (the one-run
`Trainer`, jitted on its own) to 1e-10 in every step's loss and in the final parameters, for
an lr x seed grid with the default impl and with the fused LSTM kernel, and for the other
traced hyperparameters (dropout, clip, warm-up). A member that goes non-finite is stopped or
skipped without touching the others, and the table and sweep.jsonl say so. Fields that would
change shapes or the program's structure are refused by name. A member's directory is a run
that sampling and evaluation read, and a sweep killed with SIGKILL resumes exactly.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from jaxrnn import checkpoint as ckpt_lib
from jaxrnn import data as data_lib
from jaxrnn.config import Config
from jaxrnn.errors import UserError
from jaxrnn.sweep import (Grid, Placement, SweepProgram, member_configs, member_slice,
                          parse_grid)
from jaxrnn.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, K = 10, 5
# a made-up text of a few KB (the stopped sweep is shared by several tests: module-scoped)
TEXT = "\n".join(["the quick brown fox jumps over the lazy dog.",
                  "to be, or not to be: that is the question.",
                  "all the world's a stage, and all the men and women merely players."] * 50) + "\n"
TINY = dict(hidden_size=8, num_layers=1, embedding_size=4, seq_len=8, batch_size=2,
            steps=STEPS, steps_per_call=K, warmup_steps=3, dtype="float64")


def corpus(text):
    vocab = data_lib.Vocab.from_text(text)
    return vocab, vocab.encode(text)


def standalone(config, vocab_size, tokens, impl):
    """A run of `config` alone: its own Trainer, STEPS steps in calls of K."""
    trainer = Trainer.create(config, vocab_size, len(tokens), impl)
    state, losses = trainer.init_state(), []
    for _ in range(STEPS // K):
        state, metrics = trainer.jit_train_chunk(state, jnp.asarray(tokens), K)
        losses.append(np.asarray(metrics["loss"]))
    return np.concatenate(losses), state


def swept(configs, vocab_size, tokens, impl):
    """The same members as one sweep program: (losses [M, STEPS], states [M, ...], program)."""
    program = SweepProgram.create(configs, vocab_size, len(tokens), impl)
    states = jax.device_put(program.init_states())
    hyperparams = jax.device_put(program.hyperparams())
    losses = []
    for _ in range(STEPS // K):
        states, metrics = program.jit_train_chunk(states, hyperparams, jnp.asarray(tokens), K)
        losses.append(np.asarray(metrics["loss"]))
    return np.concatenate(losses, axis=1), states, program


def assert_members_equal_standalone(configs, vocab_size, tokens, impl, tol=1e-10):
    losses, states, program = swept(configs, vocab_size, tokens, impl)
    for k, config in enumerate(configs):
        want_losses, want = standalone(config, vocab_size, tokens, impl)
        assert np.all(np.isfinite(want_losses))
        np.testing.assert_allclose(losses[k], want_losses, rtol=tol, atol=0, err_msg=f"member {k}")
        got = member_slice(states, k)
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)
        assert int(got.step) == int(want.step) == STEPS
        np.testing.assert_array_equal(np.asarray(got.rng), np.asarray(want.rng))
    # the members really differ (a sweep of one repeated run would pass the checks above)
    assert len({round(float(x), 12) for x in losses[:, -1]}) == len(configs)
    return program


def kernel_in_program(program, tokens) -> bool:
    """Whether the sweep's jitted program calls the fused LSTM kernel, forward and backward."""
    hlo = program.jit_train_chunk.lower(program.init_states(), program.hyperparams(),
                                        jnp.asarray(tokens), K).as_text()
    return "jaxrnn_lstm_forward" in hlo and "jaxrnn_lstm_backward" in hlo


def test_members_equal_standalone_runs_lr_x_seed(x64, small_text):
    vocab, tokens = corpus(small_text)
    base = Config(cell="gru", dropout=0.1, **TINY)  # the default impl, "auto"
    configs = member_configs(base, parse_grid(["lr=1e-2,3e-2", "seed=0,1"]))
    assert_members_equal_standalone(configs, len(vocab), tokens, "auto")


def test_a_sweep_runs_the_lstm_kernel_and_matches_standalone_runs(x64, small_text):
    vocab, tokens = corpus(small_text)
    configs = member_configs(Config(cell="lstm", lr=3e-2, **TINY), parse_grid(["seed=0,1"]))
    program = assert_members_equal_standalone(configs, len(vocab), tokens, "kernel")
    assert program.base.model.rnn.plan.unmasked == "kernel"
    assert kernel_in_program(program, tokens)


@pytest.mark.slow
def test_members_equal_standalone_runs_lr_x_seed_with_the_kernel(x64, small_text):
    vocab, tokens = corpus(small_text)
    base = Config(cell="lstm", dropout=0.1, **TINY)
    configs = member_configs(base, parse_grid(["lr=1e-2,3e-2", "seed=0,1"]))
    program = assert_members_equal_standalone(configs, len(vocab), tokens, "kernel")
    assert kernel_in_program(program, tokens)


@pytest.mark.slow
def test_members_equal_standalone_runs_for_the_other_hyperparameters(x64, small_text):
    # dropout 0 runs the dropout code at rate 0 (jaxrnn.sweep.SweptRate): still exact
    vocab, tokens = corpus(small_text)
    base = Config(cell="lstm", lr=3e-2, **{**TINY, "num_layers": 2})
    grid = parse_grid(["dropout=0,0.3", "clip_value=0.05,1", "warmup_steps=2,6"])
    assert_members_equal_standalone(member_configs(base, grid), len(vocab), tokens, "auto")
    rmsprop = Config(optimizer="rmsprop", schedule="char-rnn", lr=1e-2, lr_decay_after=0,
                     **TINY)
    grid = parse_grid(["rmsprop_decay=0.9,0.99", "lr_decay=0.5,0.9"])
    assert_members_equal_standalone(member_configs(rmsprop, grid), len(vocab), tokens, "auto")


# ---------------------------------------------------------------------------- non-finite members

# A ReLU RNN, plain SGD, no clipping, lr warming up towards 1e4: the second member overflows
# after a few good steps (tests/test_nonfinite.py's recipe); the first trains normally.
BLOW_UP = dict(TINY, cell="rnn_relu", optimizer="sgd", clip="none", schedule="cosine",
               warmup_steps=1000, eval_every=10, log_every=5, checkpoint_every=5)
BLOW_UP_GRID = ["lr=1e-2,1e4"]


def run_sweep(workdir, data, base, specs, **kwargs):
    """jaxrnn.sweep_driver.train_sweep in float64; returns (result, messages)."""
    from jaxrnn.sweep_driver import train_sweep

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        messages = []
        result = train_sweep(base, parse_grid(specs), str(data), str(workdir), progress=False,
                             log=messages.append, **kwargs)
        return result, messages
    finally:
        jax.config.update("jax_enable_x64", previous)


def non_finite_sweep(root, text, on_nonfinite):
    data = root / "text.txt"
    data.write_text(text)
    base = Config(**BLOW_UP, on_nonfinite=on_nonfinite)
    result, messages = run_sweep(root / "sweep", data, base, BLOW_UP_GRID, impl="reference")
    return base, result, root / "sweep", data, messages


@pytest.fixture(scope="module")
def stopped_sweep(tmp_path_factory):
    """The blow-up sweep with on_nonfinite stop (shared: it is also the member-dir test's)."""
    return non_finite_sweep(tmp_path_factory.mktemp("stopped"), TEXT, "stop")


def check_non_finite_member(base, result, workdir, messages, text, on_nonfinite):
    rows = {r["member"]: r for r in result.rows}
    good, bad = rows[0], rows[1]
    assert good["halted_at"] == -1 and good["skipped"] == 0 and good["status"] == "ok"
    if on_nonfinite == "stop":
        assert 0 < bad["halted_at"] < STEPS
        assert bad["status"] == f"stopped: non-finite at step {bad['halted_at']}"
        assert any(f"member 1 (lr=10000): non-finite loss or gradient at step "
                   f"{bad['halted_at']}" in m for m in messages), messages
        assert [r["member"] for r in result.rows] == [0, 1]  # a stopped member ranks last
    else:
        assert bad["halted_at"] == -1 and bad["skipped"] > 0 and "skipped" in bad["status"]
    assert bad["status"] in result.table and "ok" in result.table
    last = json.loads((workdir / "sweep.jsonl").read_text().splitlines()[-1])
    assert last["step"] == STEPS
    assert {r["member"]: r["status"] for r in last["members"]} == {0: good["status"],
                                                                   1: bad["status"]}
    # the good member is exactly its standalone run; the bad one saved finite params only
    vocab, tokens = corpus(text)
    train_tokens, _ = data_lib.split_by_position(tokens, base.val_frac)
    config = member_configs(base, parse_grid(BLOW_UP_GRID))[0]
    _, want = standalone(config, len(vocab), train_tokens, "reference")
    for member in ("0", "1"):
        payload = ckpt_lib.read(str(workdir / "members" / member / "last.msgpack"))
        assert payload["step"] == STEPS
        params = jax.tree.leaves(payload["state"]["params"])
        assert all(np.isfinite(a).all() for a in params)
        if member == "0":
            for a, b in zip(params, jax.tree.leaves(serialization.to_state_dict(want.params))):
                np.testing.assert_allclose(a, np.asarray(b), rtol=1e-10, atol=1e-12)


def test_a_member_going_non_finite_is_stopped_and_the_others_go_on(x64, stopped_sweep):
    base, result, workdir, _, messages = stopped_sweep
    check_non_finite_member(base, result, workdir, messages, TEXT, "stop")


@pytest.mark.slow
def test_a_member_going_non_finite_is_skipped_and_the_others_go_on(x64, tmp_path, small_text):
    base, result, workdir, _, messages = non_finite_sweep(tmp_path, small_text, "skip")
    check_non_finite_member(base, result, workdir, messages, small_text, "skip")


# ---------------------------------------------------------------------------- member directories


def test_each_member_directory_is_a_run_that_samples_and_evaluates(x64, stopped_sweep, capsys,
                                                                    monkeypatch):
    from jaxrnn.cli import evaluate_main, sample_main
    from jaxrnn.rundir import load_run

    monkeypatch.setenv("JAXRNN_CPU_KERNELS", "off")  # the sweep's impl; no kernel build here

    _, _, workdir, data, _ = stopped_sweep
    grid = json.loads((workdir / "sweep.json").read_text())
    assert grid["fields"] == ["lr"] and grid["values"] == [[1e-2, 1e4]]
    for member, lr in (("0", 1e-2), ("1", 1e4)):
        member_dir = str(workdir / "members" / member)
        config, vocab, _, params = load_run(member_dir, impl="fast")
        assert config.lr == lr and config.hidden_size == TINY["hidden_size"]
        assert json.loads(open(os.path.join(member_dir, "config.json")).read())["lr"] == lr
        assert os.path.exists(os.path.join(member_dir, "loss.png"))
    # (member 1's last good parameters are finite, but they overflow on other text)
    member_dir = str(workdir / "members" / "0")
    sample_main([member_dir, "--length", "30", "--prime", "the"])
    sample = capsys.readouterr().out
    assert len(sample) == len("the") + 30 + 1 and sample.startswith("the")
    evaluate_main([member_dir, "--data", str(data)])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["chars"] == len(data.read_text()) - 1
    assert 0 < evaluated["loss_nats"] < np.log(len(vocab)) + 0.5
    assert (workdir / "sweep.png").stat().st_size > 0


def test_members_resume_from_the_newest_step_they_all_hold(tmp_path):
    from jaxrnn.rundir import RunDir
    from jaxrnn.sweep_driver import agreeing_checkpoints

    def runs_with(steps_per_member):
        runs = []
        for k, steps in enumerate(steps_per_member):
            run = RunDir(str(tmp_path / f"case{len(os.listdir(tmp_path))}-{k}"), 5)
            os.makedirs(run.path)
            for step in steps:
                run.checkpoints.save(step, ckpt_lib.to_bytes(
                    config_json="{}", vocab_json='"ab"', step=step, state={"w": np.zeros(1)},
                    best_val=1.0, metrics=[], elapsed_s=0.0))
            runs.append(run)
        return runs, [run.checkpoints.load_latest() for run in runs]

    logged = []
    runs, latest = runs_with([(5, 10, 15), (5, 10, 15)])
    assert [p["step"] for p, _ in agreeing_checkpoints(runs, latest, logged.append)] == [15, 15]
    assert not logged
    # killed between the members' saves of step 15: both go back to step 10
    runs, latest = runs_with([(5, 10, 15), (5, 10)])
    chosen = agreeing_checkpoints(runs, latest, logged.append)
    assert [p["step"] for p, _ in chosen] == [10, 10]
    assert "resumes from step 10" in logged[-1]
    # killed during the very first save: nothing in common, start over
    runs, latest = runs_with([(5,), ()])
    assert agreeing_checkpoints(runs, latest, logged.append) is None
    assert "starting the sweep over" in logged[-1]


# ---------------------------------------------------------------------------- refused fields


@pytest.mark.parametrize("spec,why", [
    ("hidden_size=8,16", "changes the shapes"), ("batch_size=2,4", "changes the shapes"),
    ("seq_len=8,16", "changes the shapes"), ("cell=lstm,gru", "changes the shapes"),
    ("num_layers=1,2", "changes the shapes"), ("dtype=float32,float64", "changes the shapes"),
    ("optimizer=adam,sgd", "structure of the program"),
    ("schedule=cosine,constant", "structure of the program"),
    ("on_nonfinite=stop,skip", "structure of the program"),
    ("steps=10,20", "share one run loop"),
])
def test_shape_and_structure_fields_are_refused_by_name(spec, why):
    name = spec.split("=")[0]
    with pytest.raises(UserError, match=why) as e:
        parse_grid([spec])
    assert str(e.value).startswith(f"{name} cannot be swept") and name in e.value.fields


def test_bad_sweep_specs_are_refused():
    for specs, match in ((["nonsense=1,2"], "unknown config field 'nonsense'"),
                         (["lr"], "expected FIELD=V1,V2"), (["lr=a,b"], "must be floats"),
                         (["lr=1e-3,1e-3"], "repeated"), (["lr=1", "lr=2"], "given twice"),
                         ([], "at least one")):
        with pytest.raises(UserError, match=match):
            parse_grid(specs)
    assert parse_grid(["warmup-steps=1,2"]).values == ((1, 2),)  # the flag's spelling
    with pytest.raises(UserError, match="only a run with optimizer rmsprop reads it"):
        member_configs(Config(), parse_grid(["rmsprop_decay=0.9,0.99"]))
    with pytest.raises(UserError, match="lr must be positive"):  # each member is checked
        member_configs(Config(), parse_grid(["lr=1e-3,-1"]))
    with pytest.raises(UserError, match="changes the shapes"):  # a hand-made grid too
        member_configs(Config(), Grid(("hidden_size",), ((8, 16),)))


def test_the_command_line_names_the_flag(capsys, tmp_path):
    from jaxrnn.cli import train_main

    data = tmp_path / "t.txt"
    data.write_text("abc" * 100)
    with pytest.raises(SystemExit) as e:
        train_main(["--data", str(data), "--workdir", str(tmp_path / "w"),
                    "--sweep", "hidden_size=8,16"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --hidden-size cannot be swept"), err


def test_members_on_devices_are_planned_without_waste():
    # (members, devices) -> (devices used, members per device, slots with padding)
    for (members, devices), want in {(6, 4): (3, 2, 6), (5, 4): (3, 2, 6), (7, 8): (7, 1, 7),
                                     (8, 8): (8, 1, 8), (3, 1): (1, 3, 3), (10, 4): (4, 3, 12),
                                     (9, 4): (3, 3, 9)}.items():
        placement = Placement.plan(members, range(devices))
        assert (len(placement.devices), placement.per_device, placement.padded) == want
    padded = Placement.plan(5, range(4)).pad({"lr": np.arange(5.0)})  # 6 slots
    np.testing.assert_array_equal(padded["lr"], [0, 1, 2, 3, 4, 4])


# ---------------------------------------------------------------------------- kill and resume

KILL_FLAGS = ["--hidden-size", "8", "--num-layers", "1", "--embedding-size", "4",
              "--batch-size", "2", "--seq-len", "8", "--steps", "400", "--steps-per-call", "5",
              "--checkpoint-every", "5", "--log-every", "5", "--eval-every", "50",
              "--warmup-steps", "10", "--dropout", "0.1", "--sweep", "lr=1e-2,3e-2",
              "--sweep", "seed=0,1", "--no-progress", "--final-sample", "0"]
WALL_CLOCK = ("elapsed_s", "chars_per_s")


def sweep_command(data, workdir):
    return [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--data", str(data),
            "--workdir", str(workdir), *KILL_FLAGS]


def deterministic_lines(path):
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
            for line in open(path)]


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_resumes_exactly(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    reference = tmp_path / "reference"
    subprocess.run(sweep_command(data, reference), env=env, check=True, capture_output=True,
                   timeout=600)
    killed, rng, kills = tmp_path / "killed", random.Random(0), 0
    while True:
        proc = subprocess.Popen(sweep_command(data, killed), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kills < 4:
            # wait for a checkpoint of this launch, then a random moment more (mid-save too)
            deadline = time.monotonic() + 300
            before = {p for p in (killed / "members").glob("*/ckpt-*")} if killed.exists() \
                else set()
            while proc.poll() is None and time.monotonic() < deadline:
                now = set((killed / "members").glob("*/ckpt-*")) if killed.exists() else set()
                if now - before:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        assert proc.wait(timeout=600) == 0
        break
    print(f"\n[sweep] resumed exactly after {kills} SIGKILLs")
    assert kills >= 2
    for k in range(4):
        a = ckpt_lib.read(str(reference / "members" / str(k) / "last.msgpack"))
        b = ckpt_lib.read(str(killed / "members" / str(k) / "last.msgpack"))
        assert a["step"] == b["step"] == 400
        for x, y in zip(jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"])):
            np.testing.assert_array_equal(x, y)  # bit for bit
        assert deterministic_lines(reference / "members" / str(k) / "metrics.jsonl") == \
            deterministic_lines(killed / "members" / str(k) / "metrics.jsonl")
    assert (reference / "sweep.jsonl").read_text() == (killed / "sweep.jsonl").read_text()


# ---------------------------------------------------------------------------- on a mesh

MESH_SCRIPT = """
import json, sys, jax
jax.config.update("jax_enable_x64", True)
from jaxrnn.config import Config
from jaxrnn.sweep import SweepProgram, member_configs, member_slice, parse_grid
from jaxrnn import data as data_lib
text = open(sys.argv[1]).read()
vocab = data_lib.Vocab.from_text(text)
tokens = vocab.encode(text)
configs = member_configs(Config(**json.loads(sys.argv[2])),
                         parse_grid(["lr=1e-2,2e-2,3e-2", "seed=0,1"]))
out = {}
for n in (1, 4):
    program = SweepProgram.create(configs, len(vocab), len(tokens), "auto", jax.devices()[:n])
    placement = program.placement
    states = placement.put(program.init_states())
    hyperparams = placement.put(program.hyperparams())
    tokens_on = placement.replicate(tokens)
    for _ in range(2):
        states, metrics = program.jit_train_chunk(states, hyperparams, tokens_on, 5)
    out[n] = {"devices": len(placement.devices), "per_device": placement.per_device,
              "shards": len(states.params["head"]["weight"].sharding.device_set),
              "loss": jax.device_get(metrics["loss"])[:6].tolist(),
              "params": [a.tolist() for a in jax.tree.leaves(
                  jax.device_get(states.params))]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_members_split_over_devices_match_one_device(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(data),
                           json.dumps({**TINY, "cell": "gru", "dropout": 0.1})],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one, four = out["1"], out["4"]
    assert (one["devices"], one["per_device"], one["shards"]) == (1, 6, 1)
    assert (four["devices"], four["per_device"], four["shards"]) == (3, 2, 3)  # 6 on 4: 3 x 2
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-12)
    for a, b in zip(four["params"], one["params"]):
        np.testing.assert_allclose(np.asarray(a)[:6], np.asarray(b)[:6], rtol=1e-12, atol=1e-14)
