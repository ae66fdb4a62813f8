"""Training configuration: one frozen dataclass, named presets, and the CLI built from both.

Every field of `Config` is a command-line flag (`hidden_size` -> `--hidden-size`), so the
dataclass is the single place where options and their defaults live. A preset is a dict of
overrides; unknown fields, wrong types and out-of-range values are errors that name the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from jaxrnn.errors import UserError

CELLS = ("lstm", "gru", "rnn", "rnn_relu")
MODELS = ("charlm", "tutorial-rnn", "tutorial-lstm")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Defaults are the `default` preset's."""

    # model
    model: str = "charlm"          # charlm | tutorial-rnn | tutorial-lstm (the tutorial's ports)
    cell: str = "lstm"             # lstm | gru | rnn (tanh) | rnn_relu
    hidden_size: int = 256
    num_layers: int = 2
    embedding_size: int = 64       # 0: one-hot input, as char-rnn and the tutorial
    dropout: float = 0.1           # between layers and before the head
    init: str = "pytorch"          # pytorch: U(±1/sqrt(H)) | char-rnn: U(±0.08), forget bias 1
    faithful_log_softmax: bool = False  # tutorial models: log(softmax + 1e-6) as the tutorial
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
    on_nonfinite: str = "stop"     # stop | skip
    seed: int = 0
    dtype: str = "float32"         # float32 | float64

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
                raise UserError(f"--{_flag(name)} must be one of {', '.join(allowed)}; "
                                f"got {getattr(self, name)!r}")
        positive = ("hidden_size", "num_layers", "seq_len", "batch_size", "steps_per_call",
                    "log_every", "eval_every", "eval_batch_size", "sample_length",
                    "checkpoint_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{_flag(name)} must be at least 1; got {getattr(self, name)}")
        for name in ("embedding_size", "steps", "warmup_steps", "sample_every",
                     "lr_decay_after"):
            if getattr(self, name) < 0:
                raise UserError(f"--{_flag(name)} must be 0 or more; got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--dropout must be in [0, 1); got {self.dropout}")
        if not 0.0 <= self.val_frac < 1.0:
            raise UserError(f"--val-frac must be in [0, 1); got {self.val_frac}")
        for name in ("lr", "clip_value", "rmsprop_decay", "lr_decay"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{_flag(name)} must be positive; got {getattr(self, name)}")
        if self.minutes < 0:
            raise UserError(f"--minutes must be 0 or more; got {self.minutes}")
        if self.steps == 0 and self.minutes == 0:
            raise UserError("give --steps N or --minutes M (or both)")
        if self.model != "charlm" and self.batch_size != 1:
            raise UserError(f"--model {self.model} trains online, one chunk at a time: "
                            f"--batch-size must be 1, got {self.batch_size}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**values)


# Fields that change how long or how verbosely a run goes, not what it computes: a run may be
# resumed with different values of these.
RUN_CONTROL_FIELDS = frozenset({
    "steps", "minutes", "log_every", "eval_every", "eval_batch_size", "sample_every",
    "sample_length", "sample_prime", "checkpoint_every", "keep_checkpoints", "on_nonfinite",
})


def _flag(name: str) -> str:
    return name.replace("_", "-")


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
    # For a GPU: 3x512 LSTM with dropout.
    "large": dict(hidden_size=512, num_layers=3, embedding_size=128, dropout=0.25,
                  seq_len=128, batch_size=128, lr=2e-3, steps=20000, warmup_steps=500,
                  eval_every=1000, checkpoint_every=1000),
    # The tutorial's online loop: 25-character chunks, SGD 0.01, clip ±5, summed NLL.
    "tutorial-rnn": dict(_TUTORIAL, model="tutorial-rnn", cell="rnn"),
    "tutorial-lstm": dict(_TUTORIAL, model="tutorial-lstm", cell="lstm"),
}


def preset(name: str, **overrides) -> Config:
    """The named preset with `overrides` applied (field names as in `Config`)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Config.from_dict({**PRESETS[name], **overrides})


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds `--preset` and one flag per Config field (default None: 'not given')."""
    parser.add_argument("--preset", default="default",
                        help=f"named preset: {', '.join(PRESETS)} (default: default)")
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        kind = hints[field.name]
        convert = _parse_bool if kind is bool else kind
        parser.add_argument(f"--{_flag(field.name)}", dest=field.name, type=convert,
                            default=None, metavar=kind.__name__.upper(),
                            help=f"(default: {field.default!r}, or the preset's)")


def add_text_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every training entry point shares besides the config: the text and output."""
    parser.add_argument("--data", required=True, help="a UTF-8 text file to train on")
    parser.add_argument("--encoding", default="utf-8", help="the text file's encoding")
    parser.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"],
                        help="what to do with bytes the encoding cannot decode")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--final-sample", type=int, default=500,
                        help="characters to sample at the end (0: none)")


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset named by --preset with every flag that was given applied on top."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if getattr(args, f.name, None) is not None}
    return preset(args.preset, **overrides)


def config_diff(old: Config, new: Config) -> dict:
    """{field: (old, new)} for the fields that differ and would change what a run computes.

    Run-control fields may differ, except `steps` under the cosine schedule, whose shape
    depends on the total number of steps.
    """
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)
    ignore = RUN_CONTROL_FIELDS
    if a["schedule"] == "cosine" or b["schedule"] == "cosine":
        ignore = ignore - {"steps"}
    return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in ignore}
