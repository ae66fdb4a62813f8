"""The quality benchmark (benchmarks/quality.py): the timed loop on a scripted driver and clock,
the run specs, the one split, and a tiny end-to-end run of jaxrnn and PyTorch."""

import hashlib
import json
import math

import numpy as np
import pytest

from benchmarks import quality
from jaxrnn.config import Config
from jaxrnn.errors import UserError
from jaxrnn.loop import Chunk


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class ScriptedDriver:
    """A Driver whose steps take `step_s` seconds and whose evaluation takes `eval_s` on the
    fake clock; its loss is 1 / (1 + step). Raises UserError on step `fail_at` if given."""

    def __init__(self, clock, step_s=1.0, eval_s=5.0, fail_at=None):
        self.clock, self.step_s, self.eval_s, self.fail_at = clock, step_s, eval_s, fail_at
        self.step = 0
        self.calls = []

    def train(self, num_steps):
        if self.fail_at is not None and self.step + num_steps > self.fail_at:
            self.clock.now += self.step_s
            raise UserError(f"non-finite loss or gradient at step {self.fail_at}")
        self.calls.append(num_steps)
        self.clock.now += self.step_s * num_steps
        self.step += num_steps
        return Chunk(np.full(num_steps, 2.0), 0.5, 10.0, 1e-3, 0)

    def evaluate(self):
        self.clock.now += self.eval_s
        loss = 1.0 / (1 + self.step)
        return {"loss_nats": loss, "bits_per_char": loss / math.log(2), "chars": 100}


def test_train_for_evaluates_at_each_mark_on_the_training_clock():
    # Calls of K=4 one-second steps end at 4, 8, 12, ... training seconds; marks every 6 s
    # (0.1 min) up to 30 s. The first call past each mark is followed by an evaluation; the
    # 5 s evaluations never move the training clock; the call ending at 32 s is the last.
    clock = FakeClock()
    driver = ScriptedDriver(clock)
    run = quality.train_for(driver, minutes=0.5, eval_every_minutes=0.1, steps_per_call=4,
                            clock=clock)
    assert [e.step for e in run.evaluations] == [0, 8, 12, 20, 24, 32]
    assert [e.mark_minutes for e in run.evaluations] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert [e.minutes * 60 for e in run.evaluations] == pytest.approx([0, 8, 12, 20, 24, 32])
    assert [e.loss_nats for e in run.evaluations] == pytest.approx(
        [1 / (1 + s) for s in (0, 8, 12, 20, 24, 32)])
    assert run.train_s == pytest.approx(32.0) and run.eval_s == pytest.approx(30.0)
    assert run.steps == 32 and run.stopped == "minutes" and run.error is None
    assert driver.calls == [4] * 8
    assert run.last_train_loss == pytest.approx(2.0)


def test_train_for_stops_at_max_steps_and_keeps_call_boundaries():
    clock = FakeClock()
    driver = ScriptedDriver(clock)
    run = quality.train_for(driver, minutes=1.0, eval_every_minutes=0.1, steps_per_call=4,
                            max_steps=10, clock=clock)
    assert driver.calls == [4, 4, 2]
    assert run.stopped == "steps" and run.steps == 10
    # mark 1 (6 s) after the call ending at 8 s; the end (10 s) is between marks
    assert [(e.step, e.mark_minutes) for e in run.evaluations] == \
        [(0, 0.0), (8, 0.1), (10, None)]


def test_train_for_reports_a_non_finite_stop_and_keeps_what_it_measured():
    clock = FakeClock()
    driver = ScriptedDriver(clock, fail_at=9)
    run = quality.train_for(driver, minutes=1.0, eval_every_minutes=0.1, steps_per_call=4,
                            clock=clock)
    assert run.stopped == "error" and "step 9" in run.error
    assert run.steps == 8 and [e.step for e in run.evaluations] == [0, 8]
    assert run.train_s == pytest.approx(9.0)


def test_run_specs_and_overrides():
    specs = quality.parse_runs("jaxrnn:default, torch:lstm-2x256,torch:char-rnn")
    assert [(s.framework, s.setting) for s in specs] == \
        [("jaxrnn", "default"), ("torch", "lstm-2x256"), ("torch", "char-rnn")]
    assert specs[1].dirname == "torch-lstm-2x256"
    for bad, says in [("pytorch:lstm-2x256", "FRAMEWORK:SETTING"), ("jaxrnn", "FRAMEWORK"),
                      ("jaxrnn:lstm-2x256", "unknown jaxrnn setting"),
                      ("jaxrnn:default,jaxrnn:default", "more than once"), (",", "no run")]:
        with pytest.raises(UserError, match=says):
            quality.parse_runs(bad)
    overrides = quality.parse_overrides(["val_frac=0.1", "hidden-size=32", "carry_state=off",
                                         "dim=96", "cell=gru"])
    assert overrides == {"val_frac": 0.1, "hidden_size": 32, "carry_state": False, "dim": 96,
                         "cell": "gru"}
    for bad, says in [(["hiden_size=3"], "unknown config field 'hiden_size'"),
                      (["hidden_size=big"], "hidden_size takes int values"),
                      (["val_frac"], "field=value"), (["minutes=3"], "use --minutes")]:
        with pytest.raises(UserError, match=says):
            quality.parse_overrides(bad)
    # the torch setting, then the overrides, then the benchmark's minutes
    config = quality.run_config(specs[1], {"val_frac": 0.1}, minutes=8)
    assert (config.cell, config.hidden_size, config.num_layers, config.batch_size,
            config.seq_len, config.optimizer, config.lr, config.dropout, config.schedule,
            config.val_frac, config.minutes, config.steps) == \
        ("lstm", 256, 2, 64, 100, "adam", 2e-3, 0.0, "constant", 0.1, 8, 0)
    assert quality.run_config(specs[0], {"dropout": 0.0}, minutes=2).dropout == 0.0


def test_runs_must_share_one_split(tmp_path, small_text):
    path = tmp_path / "text.txt"
    path.write_text(small_text)
    named = [("a", Config(val_frac=0.1, batch_size=4, seq_len=16)),
             ("b", Config(val_frac=0.2, batch_size=4, seq_len=16))]
    with pytest.raises(UserError, match="split the text differently") as error:
        quality.split_corpus(str(path), named)
    assert error.value.fields == ("val_frac",)
    with pytest.raises(UserError, match="for b"):  # a run that does not fit, named
        quality.split_corpus(str(path), [named[0], ("b", Config(val_frac=0.1,
                                                                batch_size=512))])


def _split_digests(text: str, val_frac: float):
    """sha256 of the train and val token ids (int32) of the split by position, from the text
    with plain Python: the vocabulary is the sorted characters, val the last round(N * f)."""
    ids = {c: i for i, c in enumerate(sorted(set(text)))}
    n_val = int(round(len(text) * val_frac))
    digest = [hashlib.sha256(np.array([ids[c] for c in part], np.int32).tobytes()).hexdigest()
              for part in (text[:-n_val], text[-n_val:])]
    return digest, (len(text) - n_val, n_val)


def test_quality_end_to_end_jaxrnn_and_torch(tmp_path, small_text, monkeypatch, capsys):
    # the pure-JAX layers: the fused kernel's one-off build is not what this test is about
    monkeypatch.setenv("JAXRNN_CPU_KERNELS", "off")
    path = tmp_path / "text.txt"
    path.write_text(small_text)
    out = tmp_path / "quality"
    tiny = ["hidden_size=8", "num_layers=1", "embedding_size=8", "seq_len=16", "batch_size=4",
            "eval_batch_size=4", "steps_per_call=5", "val_frac=0.1", "steps=0",
            "schedule=constant", "lr=0.01"]
    argv = ["--data", str(path), "--out", str(out), "--minutes", "0.05",
            "--eval-every-minutes", "0.02", "--runs", "jaxrnn:default,torch:lstm-2x256",
            "--torch-threads", "1", "--compile-cache", "off"]
    for item in tiny:
        argv += ["--set", item]
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    try:
        quality.main(argv)  # sets torch's threads (--torch-threads 1): put back below
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out

    report = json.loads((out / "quality.json").read_text())
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "quality.md").read_text()
    assert report["versions"]["jax"] and report["versions"]["torch"] and report["machine"]
    assert report["date"] and "git" in report and report["minutes"] == 0.05
    (jax_run, torch_run) = report["runs"]
    assert [r["name"] for r in report["runs"]] == ["jaxrnn:default", "torch:lstm-2x256"]
    (digests, sizes) = _split_digests(small_text, 0.1)
    for run in report["runs"]:
        assert run["name"] in table and run["name"] in printed
        assert run["config"]["val_frac"] == 0.1 and run["config"]["hidden_size"] == 8
        assert run["steps"] > 0 and run["chars_per_s"] > 0 and run["params"] > 0
        assert run["stopped"] == "minutes" and run["error"] is None
        assert run["train_s"] >= 0.05 * 60
        # the same split for both, as the drivers hold it, and the one the text gives
        split = run["split"]
        assert [split["train_sha256"], split["val_sha256"]] == digests
        assert (split["train_chars"], split["val_chars"]) == sizes
        evaluations = run["evaluations"]
        minutes = [e["minutes"] for e in evaluations]
        assert len(evaluations) >= 3 and minutes[0] == 0.0
        assert all(a < b for a, b in zip(minutes, minutes[1:]))
        assert all(math.isfinite(e["loss_nats"]) for e in evaluations)
        assert evaluations[-1]["loss_nats"] < evaluations[0]["loss_nats"]  # it learned
        assert run["final"] == evaluations[-1]
        assert run["final"]["bits_per_char"] == pytest.approx(
            run["final"]["loss_nats"] / math.log(2))
        run_dir = out / run["run_dir"]
        val_lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()
                     if "val_loss" in line]
        assert [m["val_loss"] for m in val_lines] == [e["loss_nats"] for e in evaluations]
        assert (run_dir / "config.json").exists()
    assert jax_run["warmup_s"] > 0 and torch_run["warmup_s"] is None
    assert (out / "jaxrnn-default" / "last.msgpack").exists()
    assert (out / "torch-lstm-2x256" / "final_weights.npz").exists()
    # the table's last two columns: the final evaluation, in nats and bits per character
    row = next(line for line in table.splitlines() if line.startswith("| torch:lstm-2x256"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-2:] == [f"{torch_run['final']['loss_nats']:.4f}",
                          f"{torch_run['final']['bits_per_char']:.4f}"]
    # a second benchmark into the same folder is refused without --overwrite
    with pytest.raises(SystemExit) as exited:
        quality.main(argv)
    assert exited.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
