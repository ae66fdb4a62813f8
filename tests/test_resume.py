"""Nothing lost: checkpoints survive kills, signals and corrupt files, and a resumed run is exact.

The end-to-end tests run scripts/train.py as real subprocesses and stop them with real signals:
SIGKILL at random moments (the run is restarted with the same command until it completes),
SIGINT and SIGTERM (which save and exit 0). Each finished run must equal an uninterrupted run of
the same command bit for bit: parameters, optimiser state, carried state, RNG key, and every
deterministic field of metrics.jsonl. Run with `-s` to see the kill figures.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import serialization

from jaxrnn import checkpoint as ckpt_lib
from jaxrnn.errors import JaxrnnWarning, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--hidden-size", "32", "--num-layers", "1", "--embedding-size", "16",
         "--batch-size", "4", "--seq-len", "16", "--steps-per-call", "5",
         "--checkpoint-every", "5", "--log-every", "5", "--eval-every", "50",
         "--warmup-steps", "10", "--no-progress", "--final-sample", "0"]
STEPS = 300
NONDETERMINISTIC = ("elapsed_s", "chars_per_s")  # wall-clock measurements


class Run:
    """One training command, launched as often as it takes to finish."""

    def __init__(self, root, data, name, env):
        self.workdir = root / name
        self.logs = root / f"{name}-logs"
        self.logs.mkdir()
        self.argv = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--data",
                     str(data), "--workdir", str(self.workdir), "--steps", str(STEPS), *FLAGS]
        self.env = env
        self.launches = 0

    def start(self):
        self.launches += 1
        self.log = self.logs / f"{self.launches}.txt"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        return self

    def output(self):
        return self.log.read_text()

    def newest_checkpoint(self):
        steps = ckpt_lib.CheckpointDir(str(self.workdir)).step_files()
        return steps[0][0] if steps else -1

    def last_logged_step(self):
        with open(self.workdir / "metrics.jsonl") as f:
            lines = [line for line in f if line.endswith("\n")]  # a kill may tear the last
        return json.loads(lines[-1])["step"] if lines else 0

    def wait_for_checkpoint(self, step, timeout=240):
        """Waits until a checkpoint at `step` or later exists; False if the run ended first."""
        deadline = time.monotonic() + timeout
        while self.newest_checkpoint() < step:
            if self.proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"no checkpoint at step {step}:\n{self.output()}"
            time.sleep(0.005)
        return True

    def finish(self, timeout=300):
        self.proc.wait(timeout=timeout)
        assert self.proc.returncode == 0, self.output()[-3000:]
        return self


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    lines = ["the quick brown fox jumps over the lazy dog.",
             "to be, or not to be: that is the question.",
             "all the world's a stage, and all the men and women merely players.",
             "now is the winter of our discontent made glorious summer."]
    data = root / "text.txt"
    data.write_text("\n".join(lines * 40) + "\n")  # 8.5 KB
    # The persistent compilation cache makes each restart cost seconds, not a compile.
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return root, data, env


@pytest.fixture(scope="module")
def reference(setup):
    """The uninterrupted run."""
    return Run(*setup[:2], "reference", setup[2]).start().finish()


def final_state(run):
    payload = ckpt_lib.read(str(run.workdir / "last.msgpack"))
    assert payload["step"] == STEPS
    return payload


def deterministic_metrics(run):
    with open(run.workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in m.items() if k not in NONDETERMINISTIC} for m in records]


def assert_same_run(run, reference):
    """Bitwise the same state (params, optimiser, carry, RNG, counters) and the same metrics."""
    got, want = final_state(run), final_state(reference)
    got_leaves = jax.tree_util.tree_flatten_with_path(got["state"])[0]
    want_leaves = jax.tree_util.tree_flatten_with_path(want["state"])[0]
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        assert np.array_equal(a, b), jax.tree_util.keystr(path)
    assert got["best_val"] == want["best_val"]
    metrics = deterministic_metrics(run)
    assert metrics == deterministic_metrics(reference)
    assert [m["step"] for m in metrics if "loss" in m] == list(range(5, STEPS + 1, 5))
    leftovers = [n for n in os.listdir(run.workdir) if n.startswith(".tmp-")]
    assert not leftovers, leftovers  # no partial writes left behind


def kill_and_resume(run, kills, rng, max_ahead):
    """SIGKILLs `run` `kills` times at random moments after it has written a checkpoint of
    its own, restarting it with the same command each time; then lets it finish.

    Returns [(last step logged in metrics.jsonl at the kill, newest checkpoint file then,
    step the next launch resumed from)].
    """
    figures = []
    while len(figures) < kills:
        before = run.newest_checkpoint()
        run.start()
        # A random checkpoint of this launch (leaving room for the kills to come), then a
        # random moment within the next few saves.
        room = (STEPS - max(before, 0)) // (5 * (kills - len(figures) + 1))
        target = before + 5 * rng.randint(1, max(1, min(max_ahead, room)))
        if not run.wait_for_checkpoint(target):
            break  # finished before the kill
        time.sleep(rng.uniform(0.0, 0.03))
        run.proc.send_signal(signal.SIGKILL)
        if run.proc.wait() != -signal.SIGKILL:
            break  # finished before the kill
        figures.append([run.last_logged_step(), run.newest_checkpoint(), None])
    run.start().finish()
    for i in range(len(figures)):  # each launch after a kill says where it resumed
        resumed = [line for line in (run.logs / f"{i + 2}.txt").read_text().splitlines()
                   if line.startswith("resuming from")]
        figures[i][2] = int(resumed[0].rsplit(" ", 1)[1]) if resumed else 0
    return [tuple(f) for f in figures]


def check_kills(setup, reference, name, kills, max_ahead):
    seed = int.from_bytes(os.urandom(4), "little")
    run = Run(*setup[:2], name, setup[2])
    figures = kill_and_resume(run, kills, random.Random(seed), max_ahead)
    print(f"\n[{name}] seed {seed}: {len(figures)} SIGKILLs, (last step logged, newest "
          f"checkpoint, step resumed from): {figures}; {run.launches} launches")
    assert len(figures) >= kills, f"the run finished before {kills} kills: {figures}"
    assert_same_run(run, reference)


def test_sigkill_at_random_moments_then_resume_is_exact(setup, reference):
    check_kills(setup, reference, "killed", kills=3, max_ahead=12)


@pytest.mark.slow
def test_many_sigkills_then_resume_is_exact(setup, reference):
    check_kills(setup, reference, "killed-many", kills=10, max_ahead=3)


def test_sigint_and_sigterm_save_exit_0_and_resume_exactly(setup, reference):
    """SIGINT, resume, SIGTERM, damage last.msgpack, resume: still the uninterrupted run."""
    run = Run(*setup[:2], "signalled", setup[2])
    for signum, at in ((signal.SIGINT, 50), (signal.SIGTERM, 150)):
        run.start()
        assert run.wait_for_checkpoint(at)
        run.proc.send_signal(signum)
        run.finish()  # exit code 0
        name = signal.Signals(signum).name
        message = [line for line in run.output().splitlines() if line.startswith(name)]
        saved = ckpt_lib.read(str(run.workdir / "last.msgpack"))["step"]
        assert message == [f"{name}: saved a checkpoint at step {saved} in {run.workdir}; run "
                           f"the same command again to resume"], run.output()
        print(f"\n[{name} at step {saved}] {message[0]}")
    run.start().finish()
    assert f"resuming from {run.workdir / 'last.msgpack'} at step {saved}" in run.output()
    assert_same_run(run, reference)

    # A torn last.msgpack (the file of the newest checkpoint: a hard link) falls back to the
    # checkpoint before it, with one warning line, and the run still ends as the reference.
    with open(run.workdir / "last.msgpack", "r+b") as f:
        f.truncate(1000)
    for name in ("metrics.jsonl", "loss.png"):
        os.unlink(run.workdir / name)  # metrics.jsonl is rebuilt from the checkpoint
    run.start().finish()
    previous = run.workdir / f"ckpt-{STEPS - 5:09d}.msgpack"
    warnings = [line for line in run.output().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, run.output()
    assert warnings[0].startswith(f"warning: checkpoint {run.workdir / 'last.msgpack'} is "
                                  f"truncated or corrupt (1000 bytes")
    assert warnings[0].endswith(f"falling back to {previous} (step {STEPS - 5})")
    assert f"resuming from {previous} at step {STEPS - 5}" in run.output()
    print(f"\n[torn last.msgpack] {warnings[0]}")
    assert_same_run(run, reference)


def test_same_command_same_seed_same_metrics(setup, reference):
    """Determinism on CPU: a second uninterrupted run equals the first, bit for bit."""
    assert_same_run(Run(*setup[:2], "again", setup[2]).start().finish(), reference)


# ---------------------------------------------------------------------------- checkpoint files


def write_checkpoints(workdir, steps, best=(), keep=3):
    os.makedirs(workdir, exist_ok=True)
    checkpoints = ckpt_lib.CheckpointDir(str(workdir), keep)
    for step in steps:
        state = {"params": {"w": np.full((3, 2), step, np.float32)}, "rng": np.arange(2)}
        payload = ckpt_lib.to_bytes(config_json="{}", vocab_json='{"chars": ["a"]}', step=step,
                                    state=state, best_val=1.0 / step, metrics=[{"step": step}],
                                    elapsed_s=0.0)
        checkpoints.save(step, payload, is_best=step in best)
    return checkpoints


def test_keeps_the_last_k_and_the_best(tmp_path):
    checkpoints = write_checkpoints(tmp_path, [5, 10, 15, 20, 25, 30], best=(10,))
    assert [s for s, _ in checkpoints.step_files()] == [30, 25, 20]
    assert ckpt_lib.read(checkpoints.last_path)["step"] == 30
    assert ckpt_lib.read(checkpoints.best_path)["step"] == 10
    payload = ckpt_lib.read(checkpoints.best_path)
    np.testing.assert_array_equal(payload["state"]["params"]["w"], np.full((3, 2), 10))
    assert payload["metrics"] == [{"step": 10}]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def corrupt_variants(good: bytes):
    return {
        "truncated": good[: len(good) // 2],
        "truncated by one byte": good[:-1],
        "cut after 10 bytes": good[:10],
        "empty": b"",
        "a PNG": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64)),
        "random bytes": random.Random(0).randbytes(2000),
        "text": b"just some text\n",
    }


def test_bad_checkpoint_files_give_an_error_naming_the_file(tmp_path):
    good = open(write_checkpoints(tmp_path / "run", [5]).last_path, "rb").read()
    for what, raw in corrupt_variants(good).items():
        path = tmp_path / (what.replace(" ", "-") + ".msgpack")
        path.write_bytes(raw)
        with pytest.raises(UserError, match="checkpoint") as info:
            ckpt_lib.read(str(path))
        assert str(path) in str(info.value)
        print(f"\n[{what}] {info.value}")
    payload = ckpt_lib.read(str(tmp_path / "run" / "last.msgpack"))
    path = tmp_path / "future.msgpack"
    path.write_bytes(serialization.msgpack_serialize({**payload, "version": 99,
                                                      "metrics": "[]"}, in_place=True))
    with pytest.raises(UserError, match=f"{path} has format version 99; this jaxrnn reads "
                                        f"version 1 only") as info:
        ckpt_lib.read(str(path))
    print(f"\n[another format version] {info.value}")


@pytest.mark.parametrize("damage", ["truncated", "empty", "a PNG"])
def test_a_damaged_last_falls_back_to_the_previous_checkpoint(tmp_path, damage):
    checkpoints = write_checkpoints(tmp_path, [5, 10, 15])
    good = open(checkpoints.last_path, "rb").read()
    # Rewrite in place, as a crash would: last.msgpack and ckpt-15 are one file (a hard link).
    with open(checkpoints.last_path, "r+b") as f:
        f.truncate(0)
        f.write(corrupt_variants(good)[damage])
    with pytest.warns(JaxrnnWarning, match=r"last\.msgpack.*falling back to .*ckpt-000000010"
                                           r"\.msgpack \(step 10\)") as record:
        payload, path = checkpoints.load_latest()
    assert payload["step"] == 10 and path.endswith("ckpt-000000010.msgpack")
    print(f"\n[{damage} last.msgpack] warning: {record[0].message}")


def test_no_readable_checkpoint_is_an_error(tmp_path):
    checkpoints = write_checkpoints(tmp_path, [5, 10])
    for _, path in checkpoints.step_files():
        open(path, "wb").close()
    with pytest.raises(UserError, match="no readable checkpoint in .*--overwrite"):
        checkpoints.load_latest()
