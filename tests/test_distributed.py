"""Many processes and resumes on a `data` mesh: 2 processes x 2 devices train as 1 x 4, a
SIGKILLed 4-device run resumes bit for bit, a checkpoint resumes on another device count, and
--minutes stops every process of a run after the same step.

Each process is a real `scripts/train.py` (or `jaxrnn.cli.train_main`) subprocess on CPU
devices made with XLA_FLAGS=--xla_force_host_platform_device_count; the processes of one run
find each other through a coordinator on 127.0.0.1 (jax.distributed, gloo collectives).
All slow: each launch starts JAX and compiles for its own device count.
"""

import os
import random
import re
import socket
import subprocess
import sys

import pytest

from jaxrnn import checkpoint as ckpt_lib

from tests.test_mesh import (FLAGS, ROOT, assert_close_runs, run_metrics,
                             train_in_one_process)
from tests.test_resume import Run, assert_same_run, kill_and_resume

pytestmark = pytest.mark.slow

LINES = ["the quick brown fox jumps over the lazy dog.",
         "to be, or not to be: that is the question.",
         "all the world's a stage, and all the men and women merely players.",
         "now is the winter of our discontent made glorious summer."]


def cpu_env(num_devices):
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(argv, num_processes, devices_per_process=1, timeout=600):
    """Runs `argv` as the processes of one run (a coordinator on 127.0.0.1); returns each
    one's output after checking that it exited 0."""
    port = free_port()
    procs = [subprocess.Popen([*argv, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                               str(num_processes), "--process-id", str(i)], cwd=ROOT,
                              env=cpu_env(devices_per_process), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i in range(num_processes)]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


@pytest.fixture
def text(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("\n".join(LINES * 20) + "\n")
    return data


def test_two_processes_of_two_devices_train_as_one_process_of_four(tmp_path, text):
    """float64, 30 steps: per-step losses, evaluation, final state within 1e-12; one
    metrics.jsonl and one set of checkpoints, written by process 0 alone."""
    train = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--data", str(text),
             *FLAGS]
    one = subprocess.run([*train, "--workdir", str(tmp_path / "one")], cwd=ROOT,
                         env=cpu_env(4), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    outputs = run_processes([*train, "--workdir", str(tmp_path / "two")], 2,
                            devices_per_process=2)
    for out in outputs:
        assert "trained 30 steps" in out, out[-3000:]
    # a second writer would have doubled every line (and the comparison would fail)
    assert_close_runs(tmp_path / "two", tmp_path / "one", rtol=1e-12)
    names = sorted(os.listdir(tmp_path / "two"))
    assert names == sorted(os.listdir(tmp_path / "one")), names


def test_a_checkpoint_resumes_on_another_device_count(tmp_path, text):
    """15 steps on 8 devices, then 15 more on 2, equal 30 steps on 1 within 1e-12."""
    # (a constant schedule: a cosine one's shape depends on --steps, which then may not change)
    common = ["--data", str(text), *FLAGS, "--schedule", "constant"]
    moved = str(tmp_path / "moved")
    proc = train_in_one_process([
        [*common, "--workdir", str(tmp_path / "one"), "--devices", "1"],
        [*common, "--workdir", moved, "--devices", "8", "--steps", "15"],
        [*common, "--workdir", moved, "--devices", "2"],
    ])
    assert f"resuming from {os.path.join(moved, 'last.msgpack')} at step 15" in proc.stdout
    # the first part's final evaluation, at step 15, is a line the uninterrupted run lacks
    assert_close_runs(moved, tmp_path / "one", rtol=1e-12,
                      skip_got=lambda r: r["step"] == 15 and "val_loss" in r)
    assert [r["step"] for r in run_metrics(moved) if "loss" in r] == list(range(1, 31))


@pytest.fixture(scope="module")
def four_device_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume4")
    data = root / "text.txt"
    data.write_text("\n".join(LINES * 40) + "\n")
    env = {**cpu_env(4), "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return root, data, env


def four_device_run(setup, name):
    root, data, env = setup
    run = Run(root, data, name, env)
    run.argv += ["--devices", "4"]  # tests/test_resume.py's run (batch 4): a stream a device
    return run


def test_sigkill_and_resume_on_four_devices_is_bitwise_exact(four_device_setup):
    reference = four_device_run(four_device_setup, "reference").start().finish()
    run = four_device_run(four_device_setup, "killed")
    seed = int.from_bytes(os.urandom(4), "little")
    figures = kill_and_resume(run, kills=2, rng=random.Random(seed), max_ahead=12)
    print(f"\n[4 devices] seed {seed}: (last step logged, newest checkpoint, step resumed "
          f"from) at each SIGKILL: {figures}")
    assert len(figures) >= 2, f"the run finished before 2 kills: {figures}"
    assert_same_run(run, reference)


# jaxrnn-train, with the loop's clock on process 1 jumping an hour ahead at its 4th reading
# (1: the deadline; 2, 3, 4: after calls 1, 2, 3): process 1 alone is out of time at step 3.
CLOCK_AHEAD_ON_PROCESS_1 = """
import sys, time, types
from jaxrnn import cli, loop
readings = []
def clock():
    readings.append(None)
    return time.monotonic() + (3600.0 if len(readings) >= 4 else 0.0)
if sys.argv[sys.argv.index("--process-id") + 1] == "1":
    loop.time = types.SimpleNamespace(monotonic=clock, perf_counter=time.perf_counter)
cli.train_main(sys.argv[1:])
"""


def test_minutes_stop_every_process_after_the_same_step(tmp_path, text):
    """--minutes with 2 processes whose clocks disagree: process 1's says time is up after
    step 3, process 0's not for 10 minutes. The loop's `agree` makes one decision, so both
    stop after step 3 (a process that went on alone would wait forever in a collective:
    this test's timeout), and the checkpoint is step 3's."""
    train = [sys.executable, "-c", CLOCK_AHEAD_ON_PROCESS_1, "--data", str(text), *FLAGS,
             "--steps", "1000000", "--minutes", "10", "--log-every", "1",
             "--eval-every", "1000000", "--checkpoint-every", "1000000",
             "--workdir", str(tmp_path / "run")]
    outputs = run_processes(train, 2, timeout=300)
    for out in outputs:
        assert re.findall(r"trained (\d+) steps", out) == ["3"], out[-2000:]
    assert [r["step"] for r in run_metrics(tmp_path / "run") if "loss" in r] == [1, 2, 3]
    assert int(ckpt_lib.read(str(tmp_path / "run" / "last.msgpack"))["step"]) == 3
