"""Trained char-LMs in PyTorch's format: a run directory <-> a safetensors `state_dict`.

The file holds the tensors of `torch_baselines.model.TorchCharLM`'s state_dict, under its names
(the mapping is `torch_baselines.convert.charlm_state_dict`'s, the one jaxrnn <-> torch
conversion), in the run's dtype:

  embedding.weight     [V, E]      absent for one-hot input (embedding_size 0): recurrent
                                   layer 0 then reads one_hot(token, V), weight_ih_l0 [G*H, V]
  rnn.weight_ih_l{k}   [G*H, I_k]  I_0 = E (or V), I_k = H above
  rnn.weight_hh_l{k}   [G*H, H]
  rnn.bias_ih_l{k}, rnn.bias_hh_l{k}  [G*H]
  head.weight [V, H], head.bias [V]

so `TorchCharLM(...).load_state_dict(safetensors.torch.load_file(path))` works, and so do plain
`nn.Embedding` + `nn.LSTM/GRU/RNN` + `nn.Linear` given the `rnn.` tensors without their
prefix (docs/EXPORT.md). The file is written with `safetensors.numpy` (no pickle, no torch
tensors). Its metadata (strings) says what it is:

  format "pt" (safetensors' mark of a PyTorch state_dict), jaxrnn_format "jaxrnn-charlm",
  jaxrnn_format_version "1", config (the run's Config as JSON), vocab ({"chars": [...]} as
  JSON), input ("embedding" | "one-hot"), jaxrnn_version

Importing reads such a file back into a run directory (config.json, vocab.json and a
step-0 checkpoint written through `jaxrnn.checkpoint`, atomically, with a fresh optimiser
state), which `load_run`, `jaxrnn-sample` and `jaxrnn-evaluate` read, and `jaxrnn-train`
resumes (fine-tunes) with the same config. A file without jaxrnn's metadata (a TorchCharLM
saved by `safetensors.torch.save_file`) imports given its vocabulary: the sizes are read from
the tensors' shapes (the cell from the gate count; rnn_tanh and rnn_relu need `cell`), every
other field is the default preset's, or a given config's.

Only model="charlm" with a cell that has a torch.nn module (rnn_tanh, rnn_relu, lstm, gru)
exports; minLM, the tutorial's models and the min-cells have no PyTorch counterpart.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from jaxrnn.config import Config, preset
from jaxrnn.data import Vocab
from jaxrnn.errors import UserError
from jaxrnn.fileio import atomic_write
from jaxrnn.names import NUM_GATES, TORCH_CELLS, canonical_cell

FORMAT = "jaxrnn-charlm"
FORMAT_VERSION = 1
FORMATS = ("safetensors",)
DTYPES = ("float32", "float64")
# Exporting and importing never run a model, only build its params' shapes: the plain scan
# needs no fused kernel built (impl changes how layers compute, never the params).
MODEL_IMPL = "reference"


def _convert():
    """torch_baselines.convert: the tensor names (its renames import no torch)."""
    from torch_baselines import convert

    return convert


def check_exportable(config: Config) -> None:
    """UserError unless `config` is a char-LM whose cell has a torch.nn module."""
    cells = ", ".join(TORCH_CELLS)
    if config.model != "charlm":
        raise UserError(f"model={config.model} runs have no PyTorch counterpart to export to; "
                        f"only model=charlm runs with cell {cells} export (TorchCharLM: "
                        f"nn.Embedding + nn.RNN/LSTM/GRU + nn.Linear)", fields=("model",))
    if config.cell not in TORCH_CELLS:
        raise UserError(f"cell={config.cell} has no torch.nn module, so its runs do not "
                        f"export; only the cells {cells} do", fields=("cell",))


# ---------------------------------------------------------------------------- export


def state_dict(config: Config, model, params) -> dict[str, np.ndarray]:
    """A CharLM's params -> {TorchCharLM state_dict key: C-contiguous numpy array}."""
    check_exportable(config)
    flat = _convert().charlm_state_dict(params, model)
    return {key: np.ascontiguousarray(value) for key, value in flat.items()}


def metadata(config: Config, vocab: Vocab) -> dict[str, str]:
    """The file's metadata (all strings, as safetensors requires)."""
    from jaxrnn import __version__

    return {"format": "pt", "jaxrnn_format": FORMAT,
            "jaxrnn_format_version": str(FORMAT_VERSION),
            "config": config.to_json(), "vocab": vocab.to_json(),
            "input": "embedding" if config.embedding_size else "one-hot",
            "jaxrnn_version": __version__}


def export_run(workdir: str, output: str, *, which: str = "best",
               fmt: str = "safetensors") -> dict:
    """Writes the run in `workdir` (checkpoint `which`: best, last or a file) to `output`.

    A float64 run needs jax_enable_x64 on (the entry point sets it from `run_config`). The
    file is written atomically. Returns {"path", "tensors", "parameters", "dtype"}.
    """
    from safetensors.numpy import save

    from jaxrnn.rundir import load_run, run_config

    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}",
                        fields=("format",))
    if os.path.isdir(output):
        raise UserError(f"output {output} is a folder; give a file name such as "
                        f"{os.path.join(output, 'model.safetensors')}", fields=("output",))
    check_exportable(run_config(workdir, which))  # before reading any array
    config, vocab, model, params = load_run(workdir, which, MODEL_IMPL)
    tensors = state_dict(config, model, params)
    atomic_write(output, save(tensors, metadata=metadata(config, vocab)))
    return {"path": output, "tensors": len(tensors),
            "parameters": int(sum(a.size for a in tensors.values())), "dtype": config.dtype}


# ---------------------------------------------------------------------------- import


@dataclasses.dataclass(frozen=True)
class ExportedFile:
    """The contents of a safetensors file: its tensors and its metadata ({} if it has none)."""

    path: str
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]

    @property
    def ours(self) -> bool:
        """Whether the metadata is jaxrnn's (a TorchCharLM saved by torch has none, or only
        safetensors' customary {"format": "pt"})."""
        return self.metadata.get("jaxrnn_format") == FORMAT


def read_file(path: str) -> ExportedFile:
    """Reads a safetensors file; errors say what is wrong with it (missing, not safetensors,
    a newer export format, tensors of a dtype jaxrnn does not train in)."""
    from safetensors import SafetensorError, safe_open

    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a safetensors file")
    if not os.path.exists(path):
        raise UserError(f"no such file: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty (0 bytes), not a safetensors file")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, ValueError, TypeError) as e:
        with open(path, "rb") as f:
            start = f.read(8)
        raise UserError(f"{path} is not a readable safetensors file (it starts with "
                        f"{start!r}; {e})") from None
    exported = ExportedFile(path, tensors, meta)
    if exported.ours:
        version = meta.get("jaxrnn_format_version", "")
        if not version.isdigit():
            raise UserError(f"{path} has a malformed jaxrnn_format_version {version!r} in its "
                            f"metadata")
        if int(version) > FORMAT_VERSION:
            raise UserError(f"{path} was exported in format version {version} by a newer "
                            f"jaxrnn ({meta.get('jaxrnn_version', 'unknown version')}); this "
                            f"one reads versions up to {FORMAT_VERSION}: upgrade jaxrnn")
    dtypes = sorted({a.dtype.name for a in tensors.values()})
    if len(dtypes) > 1 or (dtypes and dtypes[0] not in DTYPES):
        raise UserError(f"{path} holds tensors of dtype {', '.join(dtypes)}; jaxrnn imports "
                        f"one dtype out of {', '.join(DTYPES)} (cast the state_dict first)")
    return exported


def read_config_file(path: str) -> Config:
    """A Config from a JSON file (a run directory's config.json)."""
    try:
        with open(path) as f:
            return Config.from_dict(json.load(f))
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}",
                        fields=("config",)) from None
    except (ValueError, TypeError) as e:  # JSONDecodeError and UserError are ValueErrors
        raise UserError(f"{path} is not a valid config JSON file: {e}",
                        fields=("config",)) from None


def read_vocab_file(path: str) -> Vocab:
    """A Vocab from a JSON file ({"chars": [...]}, a run directory's vocab.json)."""
    try:
        return Vocab.load(path)
    except OSError as e:
        raise UserError(f"cannot read vocab file {path}: {e.strerror}",
                        fields=("vocab",)) from None
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path} is not a vocab JSON file ({{\"chars\": [...]}}): {e}",
                        fields=("vocab",)) from None


def _infer_sizes(exported: ExportedFile) -> dict:
    """{cell (if the gate count tells it), hidden_size, num_layers, embedding_size, dtype}
    read from a TorchCharLM state_dict's shapes."""
    tensors = exported.tensors
    head, recurrent = tensors.get("head.weight"), tensors.get("rnn.weight_hh_l0")
    if head is None or recurrent is None or head.ndim != 2 or recurrent.ndim != 2:
        shown = ", ".join(sorted(tensors)[:6]) + (", ..." if len(tensors) > 6 else "")
        raise UserError(f"{exported.path} is not a char-LM state_dict (TorchCharLM's): it has "
                        f"no 2-d head.weight and rnn.weight_hh_l0; its tensors are "
                        f"{shown or 'none'}")
    hidden_size = head.shape[1]
    gates, remainder = divmod(recurrent.shape[0], hidden_size)
    if remainder or recurrent.shape[1] != hidden_size:
        raise UserError(f"{exported.path}: rnn.weight_hh_l0 has shape {recurrent.shape}, "
                        f"which is no [G*H, H] for H = {hidden_size} (head.weight's columns)")
    cells = [cell for cell in TORCH_CELLS if NUM_GATES[cell] == gates]
    if not cells:
        raise UserError(f"{exported.path}: rnn.weight_hh_l0 has {gates} gates of "
                        f"{hidden_size}; no built-in cell has {gates} (lstm 4, gru 3, rnn 1)")
    num_layers = 0
    while f"rnn.weight_hh_l{num_layers}" in tensors:
        num_layers += 1
    embedding = tensors.get("embedding.weight")
    sizes = dict(hidden_size=int(hidden_size), num_layers=num_layers,
                 embedding_size=int(embedding.shape[-1]) if embedding is not None else 0,
                 dtype=head.dtype.name)
    if len(cells) == 1:
        sizes["cell"] = cells[0]
    return sizes


def import_config(exported: ExportedFile, *, config: Config | None = None,
                  vocab: Vocab | None = None, cell: str | None = None) -> tuple[Config, Vocab]:
    """The (Config, Vocab) an imported file's run gets; reads no array into JAX.

    Given values win over the file's metadata: `config` replaces its config, `vocab` its
    vocabulary, `cell` the config's cell. A file without jaxrnn's metadata needs `vocab`, and
    without `config` its sizes come from the tensors' shapes (`_infer_sizes`), every other
    field from the default preset.
    """
    meta = exported.metadata if exported.ours else {}
    cell = canonical_cell(cell) if cell is not None else None
    if config is None and "config" in meta:
        try:
            config = Config.from_dict(json.loads(meta["config"]))
        except (ValueError, TypeError) as e:
            raise UserError(f"{exported.path}: its metadata's config is not a valid jaxrnn "
                            f"config ({e})") from None
    if config is None:  # first: a file that is no char-LM at all is told so before all else
        sizes = _infer_sizes(exported)
        if cell is None and "cell" not in sizes:
            raise UserError(f"{exported.path} holds a one-gate RNN: give cell rnn_tanh or "
                            f"rnn_relu (its nonlinearity is not in the tensors)",
                            fields=("cell",))
        config = preset("default", **{**sizes, **({"cell": cell} if cell else {})})
    elif cell is not None:
        config = dataclasses.replace(config, cell=cell)
    if vocab is None:
        if "vocab" not in meta:
            raise UserError(f"{exported.path} has no jaxrnn metadata, so its vocabulary is "
                            f"unknown; give vocab (a vocab.json: {{\"chars\": [...]}}, the "
                            f"characters in token-id order)", fields=("vocab",))
        try:
            vocab = Vocab.from_json(meta["vocab"])
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"{exported.path}: its metadata's vocabulary is malformed "
                            f"({e})") from None
    check_exportable(config)
    dtypes = {a.dtype.name for a in exported.tensors.values()}
    if dtypes and dtypes != {config.dtype}:
        raise UserError(f"{exported.path} holds {dtypes.pop()} tensors but the config's dtype "
                        f"is {config.dtype}", fields=("dtype",))
    head = exported.tensors.get("head.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != len(vocab):
        raise UserError(f"{exported.path} is a model of {head.shape[0]} characters "
                        f"(head.weight {head.shape}) but the vocabulary holds {len(vocab)}",
                        fields=("vocab",))
    return config, vocab


def import_params(exported: ExportedFile, config: Config, vocab: Vocab):
    """The file's tensors as the params of `config`'s CharLM, every key and shape checked.

    A float64 config needs jax_enable_x64 on (the entry point sets it from the config).
    """
    import jax

    from jaxrnn.models import build_model

    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise UserError(f"{exported.path} holds float64 tensors; turn on jax_enable_x64 before "
                        f"importing it (jax.config.update('jax_enable_x64', True))")
    model = build_model(config, len(vocab), MODEL_IMPL)
    try:
        return _convert().charlm_params_from_state_dict(model, exported.tensors)
    except ValueError as e:
        raise UserError(f"{exported.path} does not fit a {config.num_layers}-layer "
                        f"{config.cell} char-LM of hidden size {config.hidden_size}, "
                        f"embedding size {config.embedding_size} and {len(vocab)} "
                        f"characters: {e}") from None


def write_run(workdir: str, config: Config, vocab: Vocab, params, *,
              overwrite: bool = False) -> str:
    """Writes a run directory holding `params`: config.json, vocab.json and a checkpoint at
    step 0 with a fresh optimiser state, each written atomically (the checkpoint last).

    Refuses a folder that holds a run unless `overwrite` (which removes its checkpoints and
    metrics). Returns the checkpoint's path.
    """
    from jaxrnn import checkpoint as ckpt_lib
    from jaxrnn.models import build_model
    from jaxrnn.optim import make_optimizer
    from jaxrnn.rundir import RunDir
    from jaxrnn.trainer import Trainer

    run = RunDir(workdir, config.keep_checkpoints)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} is a file, not a folder", fields=("workdir",))
    checkpoints = run.checkpoints
    holds_run = os.path.exists(run.config_path) or checkpoints.step_files() or any(
        os.path.exists(p) for p in (checkpoints.last_path, checkpoints.best_path))
    if holds_run and not overwrite:
        raise UserError(f"{workdir} already holds a run; import into another workdir, or "
                        f"overwrite to replace it", fields=("workdir", "overwrite"))
    os.makedirs(workdir, exist_ok=True)
    run.start_over(overwrite)
    for stale in (run.corpus_path, run.plot_path):  # the replaced run's, not this one's
        if overwrite and os.path.exists(stale):
            os.unlink(stale)

    # The state a fresh run of this config starts from, with the imported params: resuming
    # it with jaxrnn-train fine-tunes them. The optimiser's state does not depend on the
    # epoch length (only its schedule does), so any windows_per_epoch gives the same pytree.
    optimizer, schedule = make_optimizer(config)
    trainer = Trainer(config, build_model(config, len(vocab), MODEL_IMPL), optimizer, schedule,
                      0)
    state = trainer.init_state()._replace(params=params, opt_state=optimizer.init(params))
    payload = ckpt_lib.to_bytes(config_json=config.to_json(), vocab_json=vocab.to_json(),
                                step=0, state=state, best_val=float("inf"), metrics=[],
                                elapsed_s=0.0)
    atomic_write(run.config_path, config.to_json().encode())
    vocab.save(run.vocab_path)
    return checkpoints.save(0, payload)


def import_file(path: str, workdir: str, *, config: Config | None = None,
                vocab: Vocab | None = None, cell: str | None = None,
                overwrite: bool = False) -> tuple[Config, Vocab, str]:
    """A safetensors file -> a run directory (see `import_config` and `write_run`).

    Returns (config, vocab, checkpoint path). A float64 file needs jax_enable_x64 on.
    """
    exported = read_file(path)
    config, vocab = import_config(exported, config=config, vocab=vocab, cell=cell)
    params = import_params(exported, config, vocab)
    return config, vocab, write_run(workdir, config, vocab, params, overwrite=overwrite)
