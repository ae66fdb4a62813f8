"""Bad input gives exit code 2 and one line on stderr that names the problem, never a traceback.

Every case runs a CLI as a real subprocess. The cases are independent, so a module fixture runs
them all at once (a few at a time) and each test then checks its own result; run with `-s` to
see the table of messages.
"""

import concurrent.futures
import json
import os
import pathlib
import random
import struct
import subprocess
import sys
import zlib

import jax
import numpy as np
import pytest

import jaxrnn
from jaxrnn import checkpoint as ckpt_lib
from jaxrnn import data as data_lib
from jaxrnn.config import preset
from jaxrnn.fileio import atomic_write
from jaxrnn.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny model: the cases that train at all train for 2 steps.
TINY = dict(hidden_size=16, num_layers=1, embedding_size=8, batch_size=2, seq_len=8, steps=2,
            steps_per_call=2, eval_every=2, checkpoint_every=2, warmup_steps=0)
TINY_FLAGS = [arg for name, value in TINY.items()
              for arg in (f"--{name.replace('_', '-')}", str(value))]
QUIET = ["--no-progress", "--final-sample", "0"]


def png_bytes() -> bytes:
    """A valid 4x4 PNG image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(b"\x00" + b"\x80" * 12) * 4) + chunk(b"IEND", b""))


# A made-up text of about 4 KB (the module-scoped fixture cannot use conftest's small_text).
TEXT = "\n".join(["the quick brown fox jumps over the lazy dog.",
                  "to be, or not to be: that is the question.",
                  "now is the winter of our discontent made glorious summer."] * 30) + "\n"


def make_run_dir(workdir, text, **overrides):
    """A run directory as train.py leaves it after step 0, written without compiling."""
    config = preset("default", **{**TINY, **overrides})
    vocab = data_lib.Vocab.from_text(text)
    trainer = Trainer.create(config, len(vocab), len(text))
    payload = ckpt_lib.to_bytes(config_json=config.to_json(), vocab_json=vocab.to_json(),
                                step=0, state=trainer.init_state(), best_val=float("inf"),
                                metrics=[], elapsed_s=0.0)
    os.makedirs(workdir)
    ckpt_lib.CheckpointDir(str(workdir)).save(0, payload)
    atomic_write(os.path.join(workdir, "config.json"), config.to_json().encode())
    vocab.save(os.path.join(workdir, "vocab.json"))


def train(data, workdir, *flags):
    return ("scripts/train.py", "--data", str(data), "--workdir", str(workdir), *TINY_FLAGS,
            *QUIET, *flags)


def case_table(d):
    """id -> (argv, exit code, fragments the one stderr line must hold)."""
    text, run, latin1, png = d / "text.txt", d / "run", d / "latin1.txt", d / "image.png"
    work = d / "work"
    return {
        "empty text": (train(d / "empty.txt", work / "a"), 2,
                       ["corpus is empty", "empty.txt"]),
        "text too short": (train(d / "short.txt", work / "b", "--batch-size", "4",
                                 "--seq-len", "16"), 2,
                           ["short.txt (29 characters less --val-frac 0.05) has 28 characters",
                            "needs at least 68", "smaller --batch-size or --seq-len"]),
        "not UTF-8": (train(latin1, work / "d"), 2,
                      ["latin1.txt", "is not valid utf-8", "byte offset 3", "0xe9",
                       "--encoding", "--errors replace"]),
        "PNG as text": (train(png, work / "e"), 2,
                        ["image.png", "binary", "byte offset 8"]),
        "PNG as text, --errors replace": (train(png, work / "f", "--errors", "replace"), 2,
                                          ["image.png", "binary"]),
        "random bytes as text": (train(d / "random.bin", work / "h", "--errors", "ignore"),
                                 2, ["random.bin", "binary"]),
        "unknown --encoding": (train(text, work / "i", "--encoding", "klingon"), 2,
                               ["unknown --encoding 'klingon'"]),
        "missing file": (train(d / "nope.txt", work / "j"), 2,
                         [f"no such file: {d / 'nope.txt'}"]),
        "folder as text": (train(d, work / "k"), 2, [f"{d} is a folder"]),
        "workdir is a file": (train(text, text), 2, ["text.txt is a file, not a folder"]),
        "--hidden-size 0": (train(text, work / "l", "--hidden-size", "0"), 2,
                            ["--hidden-size must be at least 1; got 0"]),
        "--batch-size -3": (train(text, work / "m", "--batch-size", "-3"), 2,
                            ["--batch-size must be at least 1; got -3"]),
        "--dropout 1": (train(text, work / "o", "--dropout", "1"), 2,
                        ["--dropout must be in [0, 1); got 1.0"]),
        "unknown cell": (train(text, work / "r", "--cell", "transformer"), 2,  # jaxrnn.names
                         ["--cell must be one of rnn_tanh, rnn_relu, lstm, gru, mingru, "
                          "minlstm, lstm_ln, gru_ln; got 'transformer'"]),
        "unknown preset": (train(text, work / "s", "--preset", "huge"), 2,
                           ["unknown preset 'huge'; choose one of default, char-rnn"]),
        "unknown flag (argparse)": (train(text, work / "t", "--hidden-sise", "32"), 2,
                                    ["unrecognized arguments: --hidden-sise 32"]),
        "prime with unknown characters": (("scripts/sample.py", str(run), "--prime", "QZ€"),
                                          2, ["prime text", "'Q', 'Z', '€'"]),
        "sample from a missing run": (("scripts/sample.py", str(d / "norun")), 2,
                                      [f"no such run directory: {d / 'norun'}"]),
        "sample from a PNG checkpoint": (("scripts/sample.py", str(run), "--checkpoint",
                                          str(png)), 2,
                                         ["image.png is not a jaxrnn checkpoint"]),
        "evaluate on unknown characters": (("scripts/evaluate.py", str(run), "--data",
                                            str(d / "upper.txt")), 2,
                                           ["upper.txt has 3 character(s) not in the "
                                            "vocabulary: 'A', 'B', 'C'"]),
        "--init-from another vocabulary": (train(d / "upper.txt", work / "v", "--init-from",
                                                 str(run / "last.msgpack")), 2,
                                           ["different vocabulary", "only in the checkpoint",
                                            "only in this text: 'A', 'B', 'C'"]),
        "--init-from another model": (train(text, work / "w", "--hidden-size", "24",
                                            "--init-from", str(run / "last.msgpack")), 2,
                                      ["does not fit this model",
                                       "model has shape (96, 8), checkpoint has (64, 8)"]),
        "--init-from a folder": (train(text, work / "x", "--init-from", str(run)), 2,
                                 ["run is a folder", "last.msgpack"]),
        "workdir holds another config": (train(text, run, "--hidden-size", "24"), 2,
                                         ["holds a run with a different config",
                                          "hidden_size: 16 -> 24", "--overwrite"]),
        # What works: --overwrite (here with --encoding latin-1) and --skip-unknown.
        "--overwrite --encoding latin-1": (
            train(latin1, d / "run2", "--hidden-size", "24", "--overwrite", "--encoding",
                  "latin-1"), 0, []),
        "evaluate --skip-unknown": (("scripts/evaluate.py", str(run), "--data",
                                     str(d / "upper.txt"), "--skip-unknown"), 0, []),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    (d / "text.txt").write_text(TEXT)
    (d / "empty.txt").write_bytes(b"")
    (d / "short.txt").write_text("the quick brown fox jumps ove")  # 29 characters
    (d / "latin1.txt").write_bytes("café au lait, s'il vous plaît\n".encode("latin-1") * 40)
    (d / "image.png").write_bytes(png_bytes())
    (d / "random.bin").write_bytes(random.Random(0).randbytes(4096))
    (d / "upper.txt").write_text("ABC " + TEXT[:500])
    make_run_dir(d / "run", TEXT)
    make_run_dir(d / "run2", TEXT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    cases = case_table(d)

    def run(argv):
        return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        procs = dict(zip(cases, pool.map(run, [argv for argv, _, _ in cases.values()])))
    return d, cases, procs


CASE_IDS = list(case_table(pathlib.Path("/ids-only")))


@pytest.mark.parametrize("case", CASE_IDS)
def test_cli_bad_input(results, case):
    d, cases, procs = results
    argv, code, fragments = cases[case]
    proc = procs[case]
    assert proc.returncode == code, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if code == 0:
        return
    lines = proc.stderr.strip().splitlines()
    message = lines[-1]
    print(f"\n[{case}] {message}")
    if "argparse" not in case:  # argparse prints its usage first
        assert len(lines) == 1 and message.startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_what_works_does_the_right_thing(results):
    d, _, procs = results
    config = json.loads((d / "run2" / "config.json").read_text())
    assert config["hidden_size"] == 24  # --overwrite started the run over
    vocab = json.loads((d / "run2" / "vocab.json").read_text(encoding="utf-8"))["chars"]
    assert "é" in vocab and "î" in vocab  # --encoding latin-1 decoded the file as it is
    result = json.loads(procs["evaluate --skip-unknown"].stdout)
    assert result["skipped"] == 3 and result["chars"] == 500
    print(f"\n[evaluate --skip-unknown] {procs['evaluate --skip-unknown'].stdout.strip()}")
    # --errors (the flag is train.py's and evaluate.py's) is read_text's `errors`:
    assert data_lib.read_text(str(d / "latin1.txt"), errors="replace").startswith("caf\ufffd ")
    assert data_lib.read_text(str(d / "latin1.txt"), errors="ignore").startswith("caf au")


def test_library_errors_name_the_argument():
    rnn = jaxrnn.Recurrent("gru", input_size=3, hidden_size=4)
    params = rnn.init(jax.random.key(0))
    x = np.zeros((5, 2, 3), np.float32)  # (T, B, I)
    bad_calls = [("lengths", dict(lengths=np.array([0, 5]))),
                 ("lengths", dict(lengths=np.array([6, 1]))),
                 ("hx", dict(hx=np.zeros((1, 3, 4), np.float32)))]
    for name, kwargs in bad_calls:
        with pytest.raises(ValueError, match=name) as info:
            rnn.apply(params, x, **kwargs)
        print(f"\n[Recurrent.apply {name}] {info.value}")
    with pytest.raises(ValueError, match=r"params\[0\]\[0\] must have keys") as info:
        rnn.apply([[{"weight_ih": params[0][0]["weight_ih"]}]], x)
    print(f"\n[Recurrent.apply params] {info.value}")
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        jaxrnn.Recurrent("lstm", input_size=3, hidden_size=0)
