"""jaxrnn-export / jaxrnn-import (jaxrnn.export): trained runs as PyTorch safetensors files.

The reference is PyTorch: the exported file is loaded with `safetensors.torch.load_file` into
torch_baselines' TorchCharLM and into plain nn.Embedding + nn.LSTM/GRU/RNN + nn.Linear that
this file builds itself, and their logits are compared with jaxrnn's in float64.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from jaxrnn import checkpoint as ckpt_lib
from jaxrnn import export
from jaxrnn.config import preset
from jaxrnn.data import Vocab
from jaxrnn.errors import UserError
from jaxrnn.export_cli import export_main, import_main
from jaxrnn.rundir import RunDir, load_run
from jaxrnn.trainer import Trainer
from torch_baselines.model import TorchCharLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = Vocab.from_text("abcdefg \n")  # 9 characters
HIDDEN, LAYERS = 6, 2
NO_CACHE = ("--compile-cache", "off")  # the mains run in-process: leave jax's config alone
PLAIN_RNNS = {"lstm": lambda i, h, n: torch.nn.LSTM(i, h, n),
              "gru": lambda i, h, n: torch.nn.GRU(i, h, n),
              "rnn_tanh": lambda i, h, n: torch.nn.RNN(i, h, n, nonlinearity="tanh"),
              "rnn_relu": lambda i, h, n: torch.nn.RNN(i, h, n, nonlinearity="relu")}


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(**overrides):
    values = dict(hidden_size=HIDDEN, num_layers=LAYERS, embedding_size=5, dropout=0.0,
                  seq_len=8, batch_size=2, steps=2, steps_per_call=1, log_every=1,
                  eval_every=2, eval_batch_size=2, checkpoint_every=2, sample_length=4,
                  warmup_steps=0, dtype="float64")
    return preset("default", **{**values, **overrides})


def make_run(workdir, config, vocab=VOCAB, seed=0):
    """A run directory as training writes one (header, then a checkpoint), without training:
    a TrainState of `config`'s structure at step 3, its floats drawn by NumPy in [-0.5, 0.5)
    (jax.random would compile a sampler for every parameter shape: seconds per cell)."""
    trainer = Trainer.create(config, len(vocab), 10_000, impl="reference")
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if np.issubdtype(leaf.dtype, np.floating):
            return rng.uniform(-0.5, 0.5, leaf.shape).astype(leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    state = jax.tree.map(draw, jax.eval_shape(trainer.init_state))
    state = state._replace(step=np.int32(3), halted_at=np.int32(-1))
    run = RunDir(str(workdir), config.keep_checkpoints)
    os.makedirs(workdir, exist_ok=True)
    run.write_header(config, vocab, "0" * 64, 123)
    payload = ckpt_lib.to_bytes(config_json=config.to_json(), vocab_json=vocab.to_json(),
                                step=3, state=state, best_val=1.0, metrics=[], elapsed_s=0.0)
    run.checkpoints.save(3, payload, is_best=True)
    return str(workdir)


def jax_logits(workdir, tokens):
    _, _, model, params = load_run(workdir, "best", impl="reference")
    logits, _ = jax.jit(model.apply)(params, model.zero_state(tokens.shape[0]),
                                     jnp.asarray(tokens))
    return np.asarray(logits)


def plain_torch_logits(path, tokens):
    """nn.Embedding (identity weight for one-hot input) + nn.LSTM/GRU/RNN + nn.Linear, sized
    from the file's metadata and loaded from its tensors."""
    weights = load_file(path)
    with safe_open(path, "pt") as f:
        config = json.loads(f.metadata()["config"])
    vocab_size, dtype = weights["head.weight"].shape[0], weights["head.weight"].dtype
    if config["embedding_size"]:
        embedding = torch.nn.Embedding.from_pretrained(weights["embedding.weight"])
    else:  # one-hot input: the identity table gives one_hot(token) as layer 0's input
        embedding = torch.nn.Embedding.from_pretrained(torch.eye(vocab_size, dtype=dtype))
    rnn = PLAIN_RNNS[config["cell"]](config["embedding_size"] or vocab_size,
                                     config["hidden_size"], config["num_layers"]).to(dtype)
    rnn.load_state_dict({k[len("rnn."):]: v for k, v in weights.items() if k.startswith("rnn.")})
    head = torch.nn.Linear(config["hidden_size"], vocab_size).to(dtype)
    head.load_state_dict({"weight": weights["head.weight"], "bias": weights["head.bias"]})
    with torch.no_grad():
        hidden, _ = rnn(embedding(torch.from_numpy(tokens).t()))  # time-major [T, B, H]
        return head(hidden).transpose(0, 1).numpy()


def torch_charlm(path):
    weights = load_file(path)
    with safe_open(path, "pt") as f:
        config = json.loads(f.metadata()["config"])
    module = TorchCharLM(weights["head.weight"].shape[0], config["cell"], config["hidden_size"],
                         config["num_layers"], config["embedding_size"])
    module = module.to(weights["head.weight"].dtype)
    module.load_state_dict(weights)  # strict: every key, every shape
    return module.eval()


# ---------------------------------------------------------------------------- export parity


# Every cell once with an embedding or one-hot input in the default run; the rest of the
# matrix (cell x input) with make test-slow.
DEFAULT_PARITY = {("lstm", 5), ("gru", 0), ("rnn_tanh", 0), ("rnn_relu", 5)}
PARITY_CASES = [pytest.param(cell, size, id=f"{cell}-{'embedding' if size else 'one-hot'}",
                             marks=() if (cell, size) in DEFAULT_PARITY else pytest.mark.slow)
                for cell in ("rnn_tanh", "rnn_relu", "lstm", "gru") for size in (5, 0)]


@pytest.mark.parametrize("cell,embedding_size", PARITY_CASES)
def test_exported_logits_in_torch_equal_jaxrnn_s(x64, tmp_path, cell, embedding_size):
    config = tiny_config(cell=cell, embedding_size=embedding_size)
    workdir = make_run(tmp_path / "run", config)
    path = str(tmp_path / "model.safetensors")
    written = export.export_run(workdir, path)
    # 16 x 16 = 256 tokens: layer 0 gathers rows of the projected table (CharLM.input_slabs)
    tokens = np.random.default_rng(1).integers(0, len(VOCAB), (16, 16))
    want = jax_logits(workdir, tokens)

    with torch.no_grad():
        charlm, _ = torch_charlm(path)(torch.from_numpy(tokens))
    plain = plain_torch_logits(path, tokens)
    assert charlm.dtype == torch.float64 and plain.dtype == np.float64
    np.testing.assert_allclose(charlm.numpy(), want, rtol=0, atol=1e-10)
    np.testing.assert_allclose(plain, want, rtol=0, atol=1e-10)

    with safe_open(path, "np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"  # safetensors' mark of a PyTorch state_dict
    assert meta["jaxrnn_format"] == "jaxrnn-charlm" and meta["jaxrnn_format_version"] == "1"
    assert meta["input"] == ("embedding" if embedding_size else "one-hot")
    assert json.loads(meta["vocab"])["chars"] == list(VOCAB.chars)
    assert written["tensors"] == 4 * LAYERS + 2 + (1 if embedding_size else 0)


# ---------------------------------------------------------------------------- round trip


@pytest.fixture
def exported(tmp_path, x64):
    """A float64 LSTM run (the sizes of a parity case: its programs are compiled already)
    and its export: (path, tensors, metadata, workdir)."""
    workdir = make_run(tmp_path / "run", tiny_config())
    path = str(tmp_path / "model.safetensors")
    export.export_run(workdir, path)
    with safe_open(path, "np") as f:
        return path, {k: f.get_tensor(k) for k in f.keys()}, f.metadata(), workdir


def test_round_trip_is_exact_and_the_import_samples_and_evaluates(tmp_path, exported,
                                                                  small_text):
    from jaxrnn.evaluate import evaluate_text
    from jaxrnn.sampling import sample_text

    path, _, _, workdir = exported
    imported = str(tmp_path / "imported")
    config, vocab, checkpoint = export.import_file(path, imported)
    assert checkpoint == os.path.join(imported, "ckpt-000000000.msgpack")
    config_a, vocab_a, model_a, params_a = load_run(workdir, impl="reference")
    config_b, vocab_b, model_b, params_b = load_run(imported, impl="reference")
    assert config_b == config == config_a and vocab_b == vocab == vocab_a
    assert_same_params(params_a, params_b)
    export.export_run(imported, str(tmp_path / "again.safetensors"))
    assert_same_file_contents(path, str(tmp_path / "again.safetensors"))

    text = "".join(c for c in small_text if c in vocab.chars)[:200]
    samples = [sample_text(model, params, vocab, "ab", 12, seed=3)
               for model, params in ((model_a, params_a), (model_b, params_b))]
    assert samples[0] == samples[1] and len(samples[0]) == 14
    losses = [evaluate_text(run, text, impl="reference") for run in (workdir, imported)]
    assert losses[0] == losses[1] and np.isfinite(losses[0]["loss_nats"])


def assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_same_file_contents(path_a, path_b):
    first, second = export.read_file(path_a), export.read_file(path_b)
    assert first.metadata == second.metadata and first.tensors.keys() == second.tensors.keys()
    for key, value in first.tensors.items():
        assert value.dtype == second.tensors[key].dtype
        np.testing.assert_array_equal(value, second.tensors[key])


@pytest.mark.slow
def test_trained_float32_run_round_trip_through_the_clis_is_exact(tmp_path, small_text,
                                                                  capsys):
    from jaxrnn.train import train_and_evaluate

    data = tmp_path / "text.txt"
    data.write_text(small_text)
    config = tiny_config(cell="gru", dtype="float32")
    train_and_evaluate(config, str(data), str(tmp_path / "run"), progress=False, impl="fast",
                       log=lambda *a: None)
    path = str(tmp_path / "model.safetensors")
    export_main([str(tmp_path / "run"), "--format", "safetensors", "-o", path,
                 "--which", "last", *NO_CACHE])
    import_main([path, "--workdir", str(tmp_path / "imported"), *NO_CACHE])
    assert "wrote" in capsys.readouterr().out

    config_a, vocab_a, _, params_a = load_run(str(tmp_path / "run"), "last", impl="reference")
    config_b, vocab_b, _, params_b = load_run(str(tmp_path / "imported"), "best",
                                              impl="reference")
    assert config_b == config_a == config and vocab_b == vocab_a
    assert_same_params(params_a, params_b)
    # and back out: the same tensors, bit for bit, and the same metadata
    again = str(tmp_path / "again.safetensors")
    export.export_run(str(tmp_path / "imported"), again)
    assert_same_file_contents(path, again)

    from jaxrnn.cli import evaluate_main, sample_main

    outputs = []
    for run in ("run", "imported"):
        # the original's "last" is the checkpoint it exported; the import has one checkpoint
        sample_main([str(tmp_path / run), "--prime", "th", "--length", "12", "--seed", "3",
                     "--checkpoint", "last", *NO_CACHE])
        evaluate_main([str(tmp_path / run), "--data", str(data), "--checkpoint", "last",
                       *NO_CACHE])
        outputs.append(capsys.readouterr().out)
    sample, evaluation = outputs[0].splitlines()[0], json.loads(outputs[0].splitlines()[-1])
    assert sample.startswith("th") and len(sample) == 14
    assert np.isfinite(evaluation["loss_nats"]) and evaluation["chars"] == len(small_text) - 1
    assert outputs[1] == outputs[0]

    # jaxrnn-train resumes the imported run: it fine-tunes the imported weights from step 0
    result = train_and_evaluate(config, str(data), str(tmp_path / "imported"), progress=False,
                                impl="fast", log=lambda *a: None)
    assert int(result.state.step) == config.steps
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(params_b), jax.tree.leaves(result.state.params))]
    assert all(moved)


# ---------------------------------------------------------------------------- foreign files


# sizes of the default parity cases, so that their compiled programs are reused
@pytest.mark.parametrize("cell,embedding_size,give_cell", [("lstm", 5, None),
                                                           ("rnn_tanh", 0, "rnn_tanh")])
def test_a_torch_charlm_without_metadata_imports_with_its_vocab(x64, tmp_path, cell,
                                                                embedding_size, give_cell):
    torch.manual_seed(0)
    module = TorchCharLM(len(VOCAB), cell, HIDDEN, LAYERS, embedding_size).double().eval()
    path = str(tmp_path / "torch.safetensors")
    save_file(module.state_dict(), path, metadata={"format": "pt"})  # safetensors' custom
    VOCAB.save(str(tmp_path / "vocab.json"))
    cell_flags = ["--cell", give_cell] if give_cell else []
    import_main([path, "--workdir", str(tmp_path / "run"), "--vocab",
                 str(tmp_path / "vocab.json"), *cell_flags, *NO_CACHE])
    config, vocab, _, _ = load_run(str(tmp_path / "run"), impl="reference")
    assert (config.cell, config.hidden_size, config.num_layers, config.embedding_size,
            config.dtype) == (cell, HIDDEN, LAYERS, embedding_size, "float64")
    assert vocab == VOCAB
    tokens = np.random.default_rng(2).integers(0, len(VOCAB), (3, 11))
    with torch.no_grad():
        want, _ = module(torch.from_numpy(tokens))
    np.testing.assert_allclose(jax_logits(str(tmp_path / "run"), tokens), want.numpy(),
                               rtol=0, atol=1e-10)


def _rewrite(tmp_path, tensors, metadata):
    path = str(tmp_path / "changed.safetensors")
    with open(path, "wb") as f:
        f.write(safetensors.numpy.save(tensors, metadata=metadata))
    return path


BAD_FILES = {
    "empty": (lambda t, m: b"", "is empty"),
    "text": (lambda t, m: b"the quick brown fox jumps over the lazy dog\n" * 4,
             "not a readable safetensors file"),
    "truncated": ("truncate", "not a readable safetensors file"),
    "missing tensor": (lambda t, m: ({k: v for k, v in t.items() if k != "head.bias"}, m),
                       re.escape("missing keys ['head.bias']")),
    "wrong shape": (lambda t, m: ({**t, "rnn.weight_hh_l1": t["rnn.weight_hh_l1"][:, :-1]}, m),
                    re.escape("'rnn.weight_hh_l1' must have shape (24, 6), got (24, 5)")),
    "bidirectional": (lambda t, m: ({**t, "rnn.weight_ih_l0_reverse": t["rnn.weight_ih_l0"]},
                                    m), re.escape("unexpected keys ['rnn.weight_ih_l0_reverse']")),
    "another model": (lambda t, m: ({"transformer.wte.weight": t["head.weight"],
                                     "lm_head.weight": t["head.weight"]}, {"format": "pt"}),
                      "not a char-LM state_dict"),
    "newer format": (lambda t, m: (t, {**m, "jaxrnn_format_version": "2"}),
                     "format version 2 by a newer jaxrnn"),
    "no metadata": (lambda t, m: (t, None), "no jaxrnn metadata.*give vocab"),
    "float16": (lambda t, m: ({k: v.astype(np.float16) for k, v in t.items()}, m),
                "dtype float16"),
    "vocab size": (lambda t, m: (t, {**m, "vocab": json.dumps({"chars": list("abc")})}),
                   "9 characters .* the vocabulary holds 3"),
    "minlm config": (lambda t, m: (t, {**m, "config": preset("minlm").to_json()}),
                     "model=minlm runs have no PyTorch counterpart"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_file_gets_an_error_naming_the_problem(tmp_path, exported, name):
    path, tensors, metadata, _ = exported
    make, message = BAD_FILES[name]
    if make == "truncate":
        raw = open(path, "rb").read()
        bad = str(tmp_path / "bad.safetensors")
        open(bad, "wb").write(raw[:len(raw) // 2])
    else:
        made = make(tensors, metadata)
        if isinstance(made, bytes):
            bad = str(tmp_path / "bad.safetensors")
            open(bad, "wb").write(made)
        else:
            bad = _rewrite(tmp_path, *made)
    with pytest.raises(UserError, match=message):
        export.import_file(bad, str(tmp_path / "imported"))
    assert not os.path.exists(tmp_path / "imported")  # nothing half-written


def test_a_jaxrnn_checkpoint_is_not_taken_for_a_safetensors_file(tmp_path):
    workdir = make_run(tmp_path / "run", tiny_config(dtype="float32"))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        export.import_file(os.path.join(workdir, "last.msgpack"), str(tmp_path / "imported"))


def test_the_cli_shows_the_errors_as_flags(tmp_path, exported, capsys):
    path, tensors, _, _ = exported
    bare = _rewrite(tmp_path, tensors, None)
    with pytest.raises(SystemExit) as exit_info:
        import_main([bare, "--workdir", str(tmp_path / "imported"), *NO_CACHE])
    assert exit_info.value.code == 2
    assert "--vocab" in capsys.readouterr().err

    # a one-gate RNN without metadata: the nonlinearity is not in the tensors
    bare_rnn = str(tmp_path / "rnn.safetensors")
    save_file(TorchCharLM(len(VOCAB), "rnn_tanh", HIDDEN, LAYERS).state_dict(), bare_rnn)
    VOCAB.save(str(tmp_path / "vocab.json"))
    with pytest.raises(SystemExit):
        import_main([bare_rnn, "--workdir", str(tmp_path / "imported"), "--vocab",
                     str(tmp_path / "vocab.json"), *NO_CACHE])
    assert "give --cell rnn_tanh or rnn_relu" in capsys.readouterr().err


def test_import_refuses_a_workdir_that_holds_a_run_unless_overwrite(tmp_path, exported):
    path = exported[0]
    other = make_run(tmp_path / "other", tiny_config(lr=0.5))
    with pytest.raises(UserError, match="already holds a run"):
        export.import_file(path, other)
    export.import_file(path, other, overwrite=True)
    config, _, _, _ = load_run(other, impl="reference")
    assert config == tiny_config()  # the file's, not the replaced run's
    assert not os.path.exists(os.path.join(other, "corpus.json"))  # the replaced run's
    assert [step for step, _ in RunDir(other).checkpoints.step_files()] == [0]


NOT_EXPORTABLE = [
    (dict(model="tutorial-rnn", cell="rnn_tanh", num_layers=1, embedding_size=0, batch_size=1),
     "--model tutorial-rnn runs have no PyTorch counterpart"),
    (dict(model="minlm", cell="mingru", minlm=dict(dim=8, conv_size=2, mlp_mult=1)),
     "--model minlm runs have no PyTorch counterpart"),
    (dict(cell="mingru"), "--cell mingru has no torch.nn module"),
]


@pytest.mark.parametrize("overrides,message", NOT_EXPORTABLE)
def test_models_without_a_torch_counterpart_are_refused_naming_what_exports(overrides,
                                                                            message):
    with pytest.raises(UserError, match="only .*rnn_tanh, rnn_relu, lstm, gru") as info:
        export.check_exportable(tiny_config(dtype="float32", **overrides))
    assert info.value.fields == (("cell",) if "cell" in message else ("model",))


@pytest.mark.parametrize("overrides,message", NOT_EXPORTABLE)
def test_exporting_such_a_run_is_an_error_and_writes_nothing(tmp_path, capsys, overrides,
                                                            message):
    workdir = make_run(tmp_path / "run", tiny_config(dtype="float32", **overrides))
    with pytest.raises(SystemExit) as exit_info:
        export_main([workdir, "-o", str(tmp_path / "model.safetensors"), *NO_CACHE])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "model.safetensors")


# ---------------------------------------------------------------------------- the docs


def test_the_docs_snippets_load_the_file_and_sample(x64, tmp_path, monkeypatch):
    workdir = make_run(tmp_path / "run", tiny_config())
    export.export_run(workdir, str(tmp_path / "model.safetensors"))
    with open(os.path.join(ROOT, "docs", "EXPORT.md")) as f:
        snippets = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(snippets) >= 2
    with open(os.path.join(ROOT, "README.md")) as f:
        assert snippets[0] in f.read(), "README's export snippet differs from docs/EXPORT.md's"
    monkeypatch.chdir(tmp_path)
    for snippet in snippets[:2]:  # the TorchCharLM one and the plain-torch one
        namespace = {}
        exec(compile(snippet, "docs/EXPORT.md", "exec"), namespace)
        text = namespace["text"]
        assert len(text) > 50 and set(text) <= set(VOCAB.chars)
