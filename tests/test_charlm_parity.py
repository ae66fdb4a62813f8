"""End-to-end parity of jaxrnn's CharLM training with PyTorch (torch_baselines.parity).

Same weights in both frameworks (converted), same batches (jaxrnn's own get_batch), dropout 0;
the JAX side runs jaxrnn's real training step (Trainer.jit_train_chunk). Short runs here; the
full matrix is `python scripts/parity.py --all --steps 200 --dtype float64` (and float32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxrnn.config import Config
from jaxrnn.model import CharLM
from jaxrnn.train import lr_schedule
from torch_baselines import convert, parity, training
from torch_baselines.model import TorchCharLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("cell,embedding_size", [("lstm", 5), ("gru", 0), ("rnn_relu", 5)])
def test_conversion_round_trip_is_exact(x64, cell, embedding_size):
    model = CharLM(vocab_size=7, cell=cell, hidden_size=6, num_layers=2 if cell == "lstm" else 1,
                   embedding_size=embedding_size, dtype="float64")
    params = model.init(jax.random.key(1))
    module = convert.charlm_to_torch(params, model)
    model_back, params_back = convert.charlm_from_torch(module)
    assert model_back == model
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 params, params_back)

    module_again = convert.charlm_to_torch(params_back, model_back)
    for (name, a), (_, b) in zip(module.state_dict().items(), module_again.state_dict().items()):
        assert torch.equal(a, b), name

    tokens = np.random.default_rng(0).integers(0, 7, (3, 5))
    logits, _ = model.apply(params, model.zero_state(3), jnp.asarray(tokens))
    torch_logits, _ = module(torch.from_numpy(tokens))
    np.testing.assert_allclose(np.asarray(logits), torch_logits.detach().numpy(), atol=1e-12)


def test_params_from_torch_do_not_share_memory_with_the_module(x64):
    # jnp.asarray may wrap an aligned numpy view of a tensor without copying; the conversions
    # must copy, or optimizer.step() on the module would change the jax params too.
    module = TorchCharLM(7, "lstm", 6, 1, embedding_size=4).double()
    _, params = convert.charlm_from_torch(module)
    before = jax.tree.map(np.array, params)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(1.0)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, before)


def test_conversion_checks_keys_and_shapes():
    model = CharLM(vocab_size=7, cell="lstm", hidden_size=6, num_layers=1, embedding_size=4)
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="head"):
        convert.charlm_to_torch({**params, "head": {"weight": params["head"]["weight"]}}, model)
    with pytest.raises(ValueError, match="embedding.weight"):
        convert.charlm_to_torch({**params, "embedding": params["embedding"][:, :3]}, model)
    module = TorchCharLM(7, "lstm", 6, 1, embedding_size=4)
    module.head = torch.nn.Linear(6, 8)
    with pytest.raises(ValueError, match="head.weight"):
        convert.charlm_from_torch(module)


# ---------------------------------------------------------------------------- optimisation


def test_norm_clip_is_optax_exactly_and_torch_clip_grad_norm_is_not(x64):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(4, 3)), rng.normal(size=(5,))]
    optax_clip = optax.clip_by_global_norm(1.0)
    for scale in (0.05, 10.0):  # below and above the threshold
        grads = [a * scale for a in arrays]
        want, _ = optax_clip.update([jnp.asarray(g) for g in grads], optax_clip.init(None))
        ours = [torch.tensor(g) for g in grads]
        assert training.clip_gradients_(ours, "norm", 1.0) == (scale == 10.0)
        for a, b in zip(want, ours):
            np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=0, atol=1e-15)
    # torch's own clip multiplies by 1 / (norm + 1e-6): too far off for 1e-9 float64 parity.
    theirs = [torch.tensor(a * 10.0, requires_grad=True) for a in arrays]
    for t in theirs:
        t.grad = t.detach().clone()
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert max(float(np.max(np.abs(np.asarray(a) - t.grad.numpy())))
               for a, t in zip(want, theirs)) > 1e-9


@pytest.mark.parametrize("schedule", ["constant", "cosine", "char-rnn"])
def test_learning_rate_is_jaxrnns_schedule(x64, schedule):
    config = Config(lr=2e-3, schedule=schedule, warmup_steps=7, steps=50, lr_decay_after=2)
    jax_schedule = lr_schedule(config, windows_per_epoch=4)
    for step in range(60):
        want = float(jax_schedule(jnp.int32(step)))
        assert training.learning_rate(config, step, 4) == pytest.approx(want, rel=1e-14, abs=0)


# ---------------------------------------------------------------------------- training parity


def _check(result, clip):
    summary = result.summary
    assert summary["passed"], summary
    assert summary["state_resets"] >= 2  # the state was carried and reset at epoch starts
    if clip != "none":  # the clip acted on some steps, not on all
        assert 0 < summary["clipped_steps"], summary
    assert summary["last_loss"] < summary["first_loss"] - 0.1


@pytest.mark.parametrize("cell,optimizer,clip,overrides,init_in", [
    ("lstm", "adam", "norm", {}, "jax"),
    ("gru", "rmsprop", "elementwise",
     {"schedule": "char-rnn", "lr_decay_after": 1, "num_layers": 1}, "jax"),
    ("rnn", "sgd", "none", {"schedule": "constant", "embedding_size": 0, "num_layers": 1},
     "torch"),
])
def test_training_parity_float64(x64, cell, optimizer, clip, overrides, init_in):
    config = parity.parity_config(cell=cell, optimizer=optimizer, clip=clip, dtype="float64",
                                  steps=STEPS, **overrides)
    result = parity.run_parity(config, parity.PARITY_TEXT, init_in=init_in,
                               argmax_sample=40 if cell == "lstm" else 0)
    _check(result, clip)
    assert result.summary["max_abs_loss_diff"] <= 1e-9
    assert result.summary["max_abs_param_diff"] <= 1e-9
    if cell == "lstm":
        assert result.summary["argmax_sample_identical"]


def test_training_parity_float32():
    config = parity.parity_config(cell="gru", optimizer="adam", clip="norm", dtype="float32",
                                  steps=STEPS, num_layers=1)
    result = parity.run_parity(config, parity.PARITY_TEXT)
    _check(result, "norm")
    assert result.summary["max_abs_loss_diff"] <= 1e-4


@pytest.mark.slow
def test_train_torch_logs_what_jaxrnn_logs(x64, tmp_path):
    """The whole run loop: same metrics.jsonl from train_and_evaluate and train_torch."""
    from jaxrnn.train import train_and_evaluate

    data = tmp_path / "text.txt"
    data.write_text(parity.PARITY_TEXT)
    config = Config(hidden_size=32, embedding_size=8, dropout=0.0, seq_len=16, batch_size=4,
                    steps=40, warmup_steps=5, steps_per_call=5, log_every=10, eval_every=20,
                    eval_batch_size=8, val_frac=0.1, dtype="float64")
    train_and_evaluate(config, str(data), str(tmp_path / "jax"), progress=False,
                       log=lambda *a: None)
    training.train_torch(config, str(data), str(tmp_path / "torch"), final_sample=0,
                         progress=False, log=lambda *a: None)
    runs = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
            for name in ("jax", "torch")]
    assert [sorted(m) for m in runs[0]] == [sorted(m) for m in runs[1]]
    for a, b in zip(*runs):
        assert a["step"] == b["step"]
        for key in ("loss", "grad_norm", "param_norm", "val_loss", "val_bpc"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-9, (key, a, b)


# ---------------------------------------------------------------------------- the scripts


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow  # the in-process trajectory tests above cover the parity itself
def test_parity_script_prints_json_and_exits_0():
    proc = _run("scripts/parity.py", "--steps", "5", "--cell", "gru", "--num-layers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 5 and summary["cell"] == "gru" and summary["passed"]
    for key in ("max_abs_loss_diff", "max_abs_param_diff", "optimizer", "clip", "dtype"):
        assert key in summary
    assert summary["max_abs_loss_diff"] <= summary["threshold"] == 1e-4


def test_train_torch_script_writes_metrics(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(parity.PARITY_TEXT)
    workdir = tmp_path / "run"
    proc = _run("scripts/train_torch.py", "--data", str(data), "--workdir", str(workdir),
                "--hidden-size", "16", "--embedding-size", "8", "--seq-len", "16",
                "--batch-size", "4", "--steps", "6", "--steps-per-call", "2", "--log-every", "2",
                "--eval-every", "4", "--final-sample", "20", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if "loss" in m]
    val = [m for m in lines if "val_loss" in m]
    assert [m["step"] for m in train] == [2, 4, 6] and [m["step"] for m in val] == [4, 6]
    assert all(set(m) == {"step", "loss", "grad_norm", "param_norm", "lr", "skipped",
                          "elapsed_s", "chars_per_s"} for m in train)
    assert all(set(m) == {"step", "val_loss", "val_bpc"} for m in val)
    assert "20-character sample" in proc.stdout

    out = tmp_path / "compare.png"
    proc = _run("scripts/compare_runs.py", str(workdir), str(workdir), "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.stat().st_size > 0
