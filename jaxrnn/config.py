"""Training configuration: one frozen dataclass and named presets.

`Config` is the single place where a run's options and their defaults live. Options that only
some models read sit in their own section, a nested frozen dataclass (`Config.tutorial`). A
preset is a dict of overrides; unknown fields and out-of-range values are `UserError`s that
name the field (`UserError.fields`). The command line (`jaxrnn.cli`) turns every field into a
flag (`hidden_size` -> `--hidden-size`, a section's fields too) and, in its messages, every
field named by an error into its flag.
"""

from __future__ import annotations

import dataclasses
import json
import math

from jaxrnn.errors import UserError
from jaxrnn.names import CELL_NAMES, MIN_CELLS, canonical_cell

CELLS = CELL_NAMES  # the cells a Config may name (jaxrnn.names)
# The regularisers' fields and their off values (Config._validate_regularizers).
REGULARIZER_OFF = {"weight_drop": 0.0, "locked_dropout": False, "embedding_dropout": 0.0,
                   "zoneout": 0.0, "tie_weights": False}
MODELS = ("charlm", "tutorial-rnn", "tutorial-lstm", "minlm")


@dataclasses.dataclass(frozen=True)
class TutorialOptions:
    """Options that only the tutorial's models (model="tutorial-rnn" / "tutorial-lstm") read."""

    faithful_log_softmax: bool = False  # the loss is log(softmax + 1e-6), as the tutorial's


@dataclasses.dataclass(frozen=True)
class MinLMOptions:
    """Options that only model="minlm" (`jaxrnn.minlm.MinLM`) reads. Its number of blocks is
    `Config.num_layers` and its cell `Config.cell` (mingru | minlstm); `hidden_size` and
    `embedding_size` are CharLM's and not read by it."""

    dim: int = 256                 # D, the residual stream's (and the embedding's) width
    expansion: float = 1.5         # the minRNN's width H = round(dim * expansion)
    conv_size: int = 4             # causal depthwise conv taps before the minRNN (0: none)
    mlp_mult: int = 4              # the MLP's width = dim * mlp_mult
    norm: str = "rms"              # rms (RMSNorm, learned scale) | layer (LayerNorm)

    def __post_init__(self):
        if self.norm not in ("rms", "layer"):
            raise UserError(f"norm must be one of rms, layer; got {self.norm!r}",
                            fields=("norm",))
        for name in ("dim", "mlp_mult"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1; got {getattr(self, name)}",
                                fields=(name,))
        if self.conv_size < 0:
            raise UserError(f"conv_size must be 0 or more; got {self.conv_size}",
                            fields=("conv_size",))
        if not (math.isfinite(self.expansion) and round(self.dim * self.expansion) >= 1):
            raise UserError(f"expansion must be finite and make round(dim * expansion) at "
                            f"least 1; got {self.expansion} (dim {self.dim})",
                            fields=("expansion",))


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Defaults are the `default` preset's."""

    # model
    model: str = "charlm"          # charlm | tutorial-rnn | tutorial-lstm | minlm (Config.minlm)
    cell: str = "lstm"             # rnn_tanh | rnn_relu | lstm | gru (jaxrnn.names); lstm_ln |
                                   # gru_ln (layer-normalised, jaxrnn.normcells); mingru |
                                   # minlstm (jaxrnn.mincells, model minlm)
    hidden_size: int = 256
    num_layers: int = 2            # minlm: its number of residual blocks
    embedding_size: int = 64       # 0: one-hot input, as char-rnn and the tutorial
    dropout: float = 0.1           # between layers and before the head (minlm: its branches)
    init: str = "pytorch"          # pytorch: U(±1/sqrt(H)) | char-rnn: U(±0.08), forget bias 1
    # regularisers and normalisation (charlm; docs/REGULARIZERS.md, jaxrnn.regularizers)
    weight_drop: float = 0.0       # DropConnect on weight_hh, one mask per step (AWD-LSTM)
    locked_dropout: bool = False   # dropout's masks shared over time (variational dropout)
    embedding_dropout: float = 0.0  # drop whole embedding rows (needs embedding_size > 0)
    zoneout: float = 0.0           # a unit keeps its previous value w.p. zoneout (h and c)
    tie_weights: bool = False      # the head reuses the embedding (E != H: via [H -> E])
    # data
    val_frac: float = 0.05         # char-rnn's 95/5 split by position
    batch_mode: str = "streams"    # streams (char-rnn, state carried) | random (nanoGPT)
    carry_state: bool = True       # streams: carry the hidden state across windows
    seq_len: int = 100
    batch_size: int = 64
    # optimisation
    optimizer: str = "adam"        # adam | rmsprop | sgd
    lr: float = 3e-3
    rmsprop_decay: float = 0.95    # char-rnn's decay_rate
    loss_reduction: str = "mean"   # mean over B*T | sum (the tutorial's)
    clip: str = "norm"             # norm (global) | elementwise (char-rnn, tutorial) | none
    clip_value: float = 1.0
    schedule: str = "cosine"       # constant | cosine (with warm-up) | char-rnn (per-epoch decay)
    warmup_steps: int = 100
    min_lr_frac: float = 0.05      # cosine ends at lr * min_lr_frac
    lr_decay: float = 0.97         # char-rnn: multiply lr by this every epoch ...
    lr_decay_after: int = 10       # ... from this epoch on
    # run
    steps: int = 1500
    minutes: float = 0.0           # > 0: also stop after this many minutes of training
    steps_per_call: int = 10       # training steps per jitted call (one lax.scan)
    log_every: int = 50
    eval_every: int = 250
    eval_batch_size: int = 64
    sample_every: int = 0          # 0: only at the end
    sample_length: int = 200
    sample_prime: str = "\n"        # the tutorial samples from "a"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    tensorboard: bool = False      # also TensorBoard events in DIR/tensorboard/ (extra tensorboard)
    on_nonfinite: str = "stop"     # stop | skip
    seed: int = 0
    dtype: str = "float32"         # float32 | float64
    # sections: options that only some models read
    tutorial: TutorialOptions = TutorialOptions()
    minlm: MinLMOptions = MinLMOptions()

    def __post_init__(self):
        self.validate()

    def validate(self):
        choices = {
            "model": MODELS, "cell": CELLS, "init": ("pytorch", "char-rnn"),
            "batch_mode": ("streams", "random"), "optimizer": ("adam", "rmsprop", "sgd"),
            "loss_reduction": ("mean", "sum"), "clip": ("norm", "elementwise", "none"),
            "schedule": ("constant", "cosine", "char-rnn"), "on_nonfinite": ("stop", "skip"),
            "dtype": ("float32", "float64"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}; "
                                f"got {getattr(self, name)!r}", fields=(name,))
        positive = ("hidden_size", "num_layers", "seq_len", "batch_size", "steps_per_call",
                    "log_every", "eval_every", "eval_batch_size", "sample_length",
                    "checkpoint_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1; got {getattr(self, name)}",
                                fields=(name,))
        for name in ("embedding_size", "steps", "warmup_steps", "sample_every",
                     "lr_decay_after"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be 0 or more; got {getattr(self, name)}",
                                fields=(name,))
        for name in ("dropout", "val_frac"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{name} must be in [0, 1); got {getattr(self, name)}",
                                fields=(name,))
        for name in ("lr", "clip_value", "rmsprop_decay", "lr_decay"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be positive; got {getattr(self, name)}",
                                fields=(name,))
        self._validate_regularizers()
        if self.minutes < 0:
            raise UserError(f"minutes must be 0 or more; got {self.minutes}", fields=("minutes",))
        if self.steps == 0 and self.minutes == 0:
            raise UserError("steps and minutes are both 0: give steps=N or minutes=M (or both)",
                            fields=("steps", "minutes"))
        for name, section in SECTIONS.items():
            if not isinstance(getattr(self, name), section):
                raise UserError(f"{name} must be a {section.__name__}; "
                                f"got {getattr(self, name)!r}", fields=(name,))

    def _validate_regularizers(self):
        """The regularisers' ranges and what they need (docs/REGULARIZERS.md)."""
        for name in ("weight_drop", "embedding_dropout", "zoneout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{name} must be in [0, 1); got {getattr(self, name)}",
                                fields=(name,))
        on = [name for name, off in REGULARIZER_OFF.items() if getattr(self, name) != off]
        if on and self.model != "charlm":
            raise UserError(f"{', '.join(on)}: options of model charlm, not {self.model}",
                            fields=tuple(on) + ("model",))
        for name in ("embedding_dropout", "tie_weights"):
            if getattr(self, name) and self.embedding_size == 0:
                raise UserError(f"{name} needs an embedding; embedding_size is 0 (one-hot "
                                f"input)", fields=(name, "embedding_size"))
        if self.weight_drop > 0 and self.cell in MIN_CELLS:
            raise UserError(f"weight_drop drops weight_hh, which cell {self.cell} does not "
                            f"have", fields=("weight_drop", "cell"))

    def to_json(self) -> str:
        """The config as JSON; a section is a nested object ({"tutorial": {...}})."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """The Config of `values` (field -> value, as `json.loads(config.to_json())`).

        Reads what older run directories hold too: cell "rnn" (now "rnn_tanh", jaxrnn.names)
        and a section's fields at the top level ("faithful_log_softmax", now
        "tutorial": {"faithful_log_softmax": ...}). A top-level key of a section's field applies
        on top of the section's values (so a preset's section takes flat overrides).
        """
        values = dict(values)
        for name, section in SECTIONS.items():
            values[name] = _section_from(name, section, values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown config field(s): {', '.join(unknown)}")
        if isinstance(values.get("cell"), str):
            values["cell"] = canonical_cell(values["cell"])
        return cls(**values)


# Config fields that are sections: name -> its dataclass. Their fields' names are unique among
# all fields (sections included), so a field's name alone says which option it is.
SECTIONS: dict[str, type] = {"tutorial": TutorialOptions, "minlm": MinLMOptions}
assert not {f.name for s in SECTIONS.values() for f in dataclasses.fields(s)} & \
    {f.name for f in dataclasses.fields(Config)}, "a section's field shadows a Config field"


def _section_from(name: str, section: type, values: dict):
    """Pops the section `name` and its fields' top-level keys from `values`; -> the section."""
    given = values.pop(name, {})
    if isinstance(given, section):
        given = dataclasses.asdict(given)
    if not isinstance(given, dict):
        raise UserError(f"{name} must be a {section.__name__} or a dict; got {given!r}",
                        fields=(name,))
    names = [f.name for f in dataclasses.fields(section)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UserError(f"unknown config field(s): {', '.join(f'{name}.{k}' for k in unknown)}")
    flat = {k: values.pop(k) for k in names if k in values}
    return section(**{**given, **flat})


# Fields that change how long or how verbosely a run goes, not what it computes: a run may be
# resumed with different values of these.
RUN_CONTROL_FIELDS = frozenset({
    "steps", "minutes", "log_every", "eval_every", "eval_batch_size", "sample_every",
    "sample_length", "sample_prime", "checkpoint_every", "keep_checkpoints", "on_nonfinite",
    "tensorboard",
})


_TUTORIAL = dict(hidden_size=100, num_layers=1, embedding_size=0, dropout=0.0, seq_len=25,
                 batch_size=1, carry_state=False, optimizer="sgd", lr=0.01,
                 loss_reduction="sum", clip="elementwise", clip_value=5.0, schedule="constant",
                 warmup_steps=0, steps=20000, steps_per_call=100, log_every=500,
                 eval_every=5000, eval_batch_size=256, sample_every=5000, sample_length=100,
                 sample_prime="a", checkpoint_every=5000)

PRESETS: dict[str, dict] = {
    # The main job: the best validation loss we measured in about 10 CPU minutes (README).
    "default": {},
    # char-rnn's defaults: 2x128 LSTM, one-hot input, B=50, T=50, RMSprop 2e-3, clip ±5.
    "char-rnn": dict(hidden_size=128, num_layers=2, embedding_size=0, dropout=0.0,
                     init="char-rnn", seq_len=50, batch_size=50, optimizer="rmsprop", lr=2e-3,
                     clip="elementwise", clip_value=5.0, schedule="char-rnn", warmup_steps=0,
                     steps=10000, eval_every=1000, checkpoint_every=1000),
    # The best loss in 8 minutes on 2 CPU cores, on the 90/10 split (scripts/quality.py): the
    # default model trained longer, with more dropout and weight drop on weight_hh against the
    # overfitting of the default (BENCHMARKS.md). Time-based: its figures need a quiet machine.
    "cpu-8min": dict(dropout=0.2, weight_drop=0.1, steps=2400, minutes=8.0, val_frac=0.1,
                     eval_every=500, checkpoint_every=500),
    # For a GPU: 3x512 LSTM with dropout.
    "large": dict(hidden_size=512, num_layers=3, embedding_size=128, dropout=0.25,
                  seq_len=128, batch_size=128, lr=2e-3, steps=20000, warmup_steps=500,
                  eval_every=1000, checkpoint_every=1000),
    # The tutorial's online loop: 25-character chunks, SGD 0.01, clip ±5, summed NLL.
    "tutorial-rnn": dict(_TUTORIAL, model="tutorial-rnn", cell="rnn_tanh"),
    "tutorial-lstm": dict(_TUTORIAL, model="tutorial-lstm", cell="lstm"),
    # Feng et al.'s minGRU LM: residual blocks of conv -> minGRU -> proj and an MLP, sized
    # for about 10 CPU minutes like the default preset (jaxrnn.minlm).
    "minlm": dict(model="minlm", cell="mingru", num_layers=2, dropout=0.1, seq_len=128,
                  batch_size=64, lr=2e-3, warmup_steps=100, steps=1000, eval_every=250,
                  checkpoint_every=500,
                  minlm=dict(dim=192, expansion=1.5, conv_size=4, mlp_mult=4, norm="rms")),
}


def preset(name: str, **overrides) -> Config:
    """The named preset with `overrides` applied (field names as in `Config`; a section's
    fields may be given at the top level, as `Config.from_dict` reads them)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Config.from_dict({**PRESETS[name], **overrides})


def _flat_dict(config: Config) -> dict:
    """dataclasses.asdict with sections flattened: {"tutorial.faithful_log_softmax": ...}."""
    flat = {}
    for key, value in dataclasses.asdict(config).items():
        if key in SECTIONS:
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def config_diff(old: Config, new: Config) -> dict:
    """{field: (old, new)} for the fields that differ and would change what a run computes
    (a section's field as "section.field").

    Run-control fields may differ, except `steps` under the cosine schedule, whose shape
    depends on the total number of steps.
    """
    a, b = _flat_dict(old), _flat_dict(new)
    ignore = RUN_CONTROL_FIELDS
    if a["schedule"] == "cosine" or b["schedule"] == "cosine":
        ignore = ignore - {"steps"}
    return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in ignore}
