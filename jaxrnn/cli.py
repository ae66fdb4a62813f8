"""The command line: flags, one-line errors, and the mains of the console scripts.

  jaxrnn-train          train_main          (python scripts/train.py)
  jaxrnn-sample         sample_main         (python scripts/sample.py)
  jaxrnn-evaluate       evaluate_main       (python scripts/evaluate.py)
  jaxrnn-prepare-data   prepare_data_main   (python scripts/prepare_data.py)

The library speaks in fields, the command line in flags: every field of `jaxrnn.config.Config`
is a flag (`hidden_size` -> `--hidden-size`, a section's fields too:
`tutorial.faithful_log_softmax` -> `--faithful-log-softmax`), and `cli_main` prints a
library `UserError` on one line with each field it names (`UserError.fields`) shown as its flag.
`--help` lists the flags in groups (`GROUPS`; a config field's group is `FIELD_GROUPS`) with
their defaults (`HelpFormatter`), through this module's `ArgumentParser`.
What the library leaves to its caller, the entry points decide here: jax_enable_x64 (from the
run's dtype) and the layers' `impl` (from $JAXRNN_CPU_KERNELS, `default_impl`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import json
import os
import re
import sys
import tokenize
import typing
import warnings

from jaxrnn import compile_cache
from jaxrnn.config import PRESETS, SECTIONS, Config, preset
from jaxrnn.errors import JaxrnnWarning, UserError
from jaxrnn.names import ALIASES, CELL_NAMES

KERNELS_ENV = "JAXRNN_CPU_KERNELS"

# ---------------------------------------------------------------------------- fields -> flags

# Field and argument names whose flag is not "--" + the name with "-" for "_".
FLAG_NAMES = {"data_path": "--data", "from_path": "--from"}
# Flags that take no value: `overwrite=True` in a message is `--overwrite`.
SWITCHES = frozenset({"overwrite", "skip_unknown", "argmax"})
_VALUE = r"""(?:=('[^']*'|"[^"]*"|[^\s,;)]+))?"""


def flag(name: str) -> str:
    """The flag of a config field or argument: hidden_size -> --hidden-size, data_path -> --data
    (a section's field, "tutorial.faithful_log_softmax", is its own name's flag)."""
    name = name.rsplit(".", 1)[-1]
    return FLAG_NAMES.get(name) or "--" + name.replace("_", "-")


def flag_message(message: str, fields) -> str:
    """`message` with each of `fields` shown as its flag.

    `hidden_size` -> `--hidden-size`; `name=VALUE` -> `--name VALUE` (quotes dropped:
    `errors='replace'` -> `--errors replace`), `overwrite=True` -> `--overwrite`. A name inside
    a path, a file name, a quoted value or a longer word is left alone.
    """
    sections = "|".join(map(re.escape, SECTIONS))
    for field in fields:
        name = field.rsplit(".", 1)[-1]
        pattern = (rf"""(?<![\w./\\'"-])(?:(?:{sections})\.)?{re.escape(name)}"""
                   rf"(?![\w/\\-]|\.\w){_VALUE}")

        def to_flag(match, name=name):
            value = match.group(1)
            if value is None or (name in SWITCHES and value == "True"):
                return flag(name)
            return f"{flag(name)} {value.strip(chr(39) + chr(34))}"

        message = re.sub(pattern, to_flag, message)
    return message


def cli_main(main):
    """Wraps an entry point's main(): a UserError is one line on stderr ("error: ...", its
    fields shown as flags) and exit code 2, no traceback.

    JaxrnnWarnings print as one line, "warning: ..."; a KeyboardInterrupt that the run loop
    did not handle (e.g. a second Ctrl-C) prints one line and exits with code 130.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        show_default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, JaxrnnWarning):
                print(f"warning: {message}", file=sys.stderr, flush=True)
            else:
                show_default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {flag_message(str(e), e.fields)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted; checkpoints already written are kept", file=sys.stderr)
            sys.exit(130)
        finally:
            warnings.showwarning = show_default

    return wrapper


# ---------------------------------------------------------------------------- flags


def parse_bool(text: str) -> bool:
    """A boolean flag's value: 1/true/yes/on or 0/false/no/off (any case)."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def config_fields():
    """(name, type, default) of every option: Config's fields, a section's fields in its place."""
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        if field.name in SECTIONS:
            section = SECTIONS[field.name]
            section_hints = typing.get_type_hints(section)
            for sub in dataclasses.fields(section):
                yield sub.name, section_hints[sub.name], sub.default
        else:
            yield field.name, hints[field.name], field.default


_HELP = {"cell": f"{' | '.join(CELL_NAMES)}; "
                 + ", ".join(f"{old} is {new}" for old, new in ALIASES.items()),
         "faithful_log_softmax": "tutorial models: the loss is log(softmax + 1e-6), as the "
                                 "tutorial's (Config.tutorial.faithful_log_softmax)",
         # the fields whose line in Config has no comment to show
         "hidden_size": "H, each layer's hidden units", "seq_len": "T, characters per window",
         "batch_size": "B, windows per step (streams: parallel streams of the text)",
         "lr": "the peak learning rate", "clip_value": "the clip's norm or bound",
         "warmup_steps": "cosine: steps of linear warm-up", "steps": "training steps in all",
         "seed": "initial weights, dropout and samples", "log_every": "a metrics line every N",
         "eval_every": "a validation loss every N steps (and at the end)",
         "eval_batch_size": "streams in one evaluation batch",
         "sample_length": "characters per sample",
         "checkpoint_every": "a checkpoint every N steps (and at the end and at a new best)",
         "keep_checkpoints": "ckpt-<step> files kept (besides last and best)"}

# --help's groups, in the order it lists them: title -> what its flags are about.
GROUPS = {
    "data": "the text, its split and its batches",
    "sampling": "what to generate and how",
    "parity": "what is compared, and what passes",
    "model": "the network",
    "regularisation": "dropout and its relatives",
    "optimisation": "optimiser, clipping and learning-rate schedule",
    "run": "where, from what and for how long",
    "evaluation and samples": "validation loss and text samples during the run",
    "output": "logs, checkpoints, TensorBoard, progress",
}
# Config field -> its --help group. A section's fields are listed under their section
# (`section_group`); a field missing here is listed under "other options".
FIELD_GROUPS = {
    **dict.fromkeys(("val_frac", "batch_mode", "carry_state", "seq_len", "batch_size"), "data"),
    **dict.fromkeys(("model", "cell", "hidden_size", "num_layers", "embedding_size", "init",
                     "tie_weights"), "model"),
    **dict.fromkeys(("dropout", "weight_drop", "locked_dropout", "embedding_dropout",
                     "zoneout"), "regularisation"),
    **dict.fromkeys(("optimizer", "lr", "rmsprop_decay", "loss_reduction", "clip",
                     "clip_value", "schedule", "warmup_steps", "min_lr_frac", "lr_decay",
                     "lr_decay_after"), "optimisation"),
    **dict.fromkeys(("steps", "minutes", "steps_per_call", "on_nonfinite", "seed", "dtype"),
                    "run"),
    **dict.fromkeys(("eval_every", "eval_batch_size", "sample_every", "sample_length",
                     "sample_prime"), "evaluation and samples"),
    **dict.fromkeys(("log_every", "checkpoint_every", "keep_checkpoints", "tensorboard"),
                    "output"),
}
OTHER_GROUP = "other options"


def section_group(section: str) -> str:
    """The --help group of a section's fields: "tutorial options (Config.tutorial)"."""
    return f"{section} options (Config.{section})"


def field_group(name: str) -> str:
    """The --help group that lists a config field's flag."""
    for section, kind in SECTIONS.items():
        if name in {f.name for f in dataclasses.fields(kind)}:
            return section_group(section)
    return FIELD_GROUPS.get(name, OTHER_GROUP)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (a main's docstring) and each flag's default after its help,
    as argparse.ArgumentDefaultsHelpFormatter, but not where the help already says it, for
    None ('not given') or for a switch."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("(default" in text or "%(default)" in text or action.default is None
                or action.default is argparse.SUPPRESS or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _group_descriptions() -> dict[str, str]:
    """title -> description of the standard --help groups, in their order: GROUPS, then one
    per section (its docstring's first sentence)."""
    descriptions = dict(GROUPS)
    for section, kind in SECTIONS.items():
        summary = " ".join(inspect.getdoc(kind).split("\n\n")[0].split())
        descriptions[section_group(section)] = summary.split(". ")[0].rstrip(".") + "."
    return descriptions


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose --help lists flags in groups: `group(title)` is that group.

    The standard groups (`_group_descriptions`) are made up front, in their order and without
    a description (argparse shows no heading for an empty group without one); asking for one
    gives it its description. Any other title is a new group listed after them.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._descriptions = _group_descriptions()
        self._groups = {title: self.add_argument_group(title) for title in self._descriptions}

    def group(self, title: str, description: str | None = None):
        if title not in self._groups:
            self._groups[title] = self.add_argument_group(title)
        group = self._groups[title]
        group.description = description or group.description or self._descriptions.get(title)
        return group


def _group(parser: argparse.ArgumentParser, title: str):
    """`parser.group(title)`, or the parser itself for a plain argparse parser."""
    return parser.group(title) if isinstance(parser, ArgumentParser) else parser


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field: its trailing comment} from a dataclass's source (`hidden_size: int = 256  #
    ...`, continued by comment-only lines indented past the field); {} without the source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments, field, last_line = {}, None, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        text = tok.string.lstrip("#").strip()
        if tok.type == tokenize.NAME and tok.start[1] == 4 and \
                re.match(rf" {{4}}{tok.string}\s*:", tok.line):
            field, last_line = tok.string, tok.start[0]  # a field's line: "    name: ..."
        elif tok.type == tokenize.COMMENT and field is not None:
            if tok.start[0] == last_line and tok.line.lstrip().startswith(field):
                comments[field] = text
            elif tok.start[0] == last_line + 1 and tok.start[1] > 4 and field in comments:
                comments[field] += " " + text
                last_line += 1
            else:
                field = None
    return comments


def _field_help(name: str, default) -> str:
    kinds = (Config, *SECTIONS.values())
    comment = next((field_comments(k)[name] for k in kinds if name in field_comments(k)), "")
    text = _HELP.get(name, comment).replace("%", "%%")  # argparse %-formats help texts
    return (f"{text} " if text else "") + f"(default: {default!r}, or the preset's)"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds `--preset` and one flag per config field (default None: 'not given'), each in its
    --help group (`field_group`) when `parser` is this module's `ArgumentParser`. A bool
    field's flag alone means true (`--tensorboard`), or takes a value (`--carry-state false`)."""
    _group(parser, "run").add_argument(
        "--preset", default="default",
        help=f"named preset, the values of every field not given as a flag: "
             f"{', '.join(PRESETS)} (default: default)")
    for name, kind, default in config_fields():
        options = dict(nargs="?", const=True) if kind is bool else {}
        _group(parser, field_group(name)).add_argument(
            flag(name), dest=name, type=parse_bool if kind is bool else kind, default=None,
            metavar=kind.__name__.upper(), help=_field_help(name, default), **options)


def add_text_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every training entry point shares besides the config: the text and output."""
    data, output = _group(parser, "data"), _group(parser, "output")
    data.add_argument("--data", required=True, metavar="PATH", help="a text file to train on")
    data.add_argument("--encoding", default="utf-8", metavar="NAME",
                      help="the text file's encoding")
    data.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"],
                      help="what to do with bytes the encoding cannot decode")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument("--final-sample", type=int, default=500, metavar="N",
                        help="characters to sample at the end (0: none)")


def add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    _group(parser, "run").add_argument(
        "--compile-cache", default=None, metavar="DIR",
        help=f"persistent XLA compilation cache (default: ${compile_cache.ENV}, else "
             f"{compile_cache.default_dir()}; 'off' to disable)")


def config_overrides(args: argparse.Namespace) -> dict:
    """{field: value} of the config flags that were given (a section's fields at the top
    level, as `Config.from_dict` and `preset` read them)."""
    return {name: getattr(args, name) for name, _, _ in config_fields()
            if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset named by --preset with every flag that was given applied on top."""
    return preset(args.preset, **config_overrides(args))


# ---------------------------------------------------------------------------- the caller's choices


def default_impl() -> str:
    """The layers' `impl` for the entry points: "auto" (the fused CPU kernel where it runs), or
    "fast" (the pure-JAX layers) when $JAXRNN_CPU_KERNELS is off, 0, false or no."""
    off = os.environ.get(KERNELS_ENV, "auto").strip().lower() in ("off", "0", "false", "no")
    return "fast" if off else "auto"


def set_x64(config: Config) -> None:
    """jax_enable_x64 on for a float64 config, off otherwise: before any JAX array exists."""
    import jax

    jax.config.update("jax_enable_x64", config.dtype == "float64")


def make_parser(main, usage: str | None = None) -> ArgumentParser:
    """An ArgumentParser (this module's: --help groups, defaults shown) whose description is
    `main`'s docstring; `usage` instead of argparse's list of every flag."""
    return ArgumentParser(description=inspect.getdoc(main), usage=usage)


# ---------------------------------------------------------------------------- the mains


@cli_main
def train_main(argv=None):
    """Train a character language model.

      jaxrnn-train --data PATH --workdir DIR [--preset NAME] [--cell rnn_tanh|rnn_relu|lstm|gru]
          [--hidden-size N] [--num-layers L] [--dropout P] [--seq-len T] [--batch-size B]
          [--optimizer adam|rmsprop|sgd] [--lr LR] [--steps S | --minutes M] [--eval-every N]
          [--sample-every N] [--seed S] ...   (every field of jaxrnn.config.Config is a flag)

    Running the same command again on the same DIR resumes from its last checkpoint.
    JAXRNN_CPU_KERNELS=off (or 0, false, no) in the environment runs the pure-JAX layers
    instead of the fused CPU LSTM kernel (impl="fast" instead of "auto": jaxrnn.cli.default_impl).
    """
    parser = make_parser(train_main, usage="%(prog)s --data PATH --workdir DIR [flags]")
    add_text_flags(parser)
    run = parser.group("run")
    run.add_argument("--workdir", required=True, metavar="DIR",
                     help="run directory (created; resumed)")
    run.add_argument("--overwrite", action="store_true",
                     help="start over in a workdir that holds another run")
    run.add_argument("--init-from", metavar="CHECKPOINT",
                     help="start from the parameters of this checkpoint")
    add_config_flags(parser)
    add_compile_cache_flag(parser)
    from jaxrnn.sweep_driver import add_sweep_flags, sweep_main
    add_sweep_flags(parser)
    from jaxrnn.mesh import add_mesh_flags, mesh_from_args
    add_mesh_flags(parser)
    args = parser.parse_args(argv)
    mesh = mesh_from_args(args)  # jax.distributed first: before any other JAX call
    if args.final_sample < 0:
        raise UserError(f"--final-sample must be 0 or more; got {args.final_sample}")
    config = config_from_args(args)
    set_x64(config)
    compile_cache.enable(args.compile_cache)
    if args.sweep:  # many models in one program (jaxrnn.sweep_driver)
        return sweep_main(args, config, impl=default_impl())
    print(f"config ({args.preset} preset + flags):\n{config.to_json()}", flush=True)

    from jaxrnn.rundir import load_run
    from jaxrnn.sampling import sample_text
    from jaxrnn.train import train_and_evaluate

    impl = default_impl()
    result = train_and_evaluate(config, args.data, args.workdir, overwrite=args.overwrite,
                                init_from=args.init_from, encoding=args.encoding,
                                errors=args.errors, progress=not args.no_progress, impl=impl,
                                mesh=mesh)
    if result.interrupted:
        return
    print(f"trained {int(result.state.step)} steps at {result.chars_per_s:,.0f} chars/s")
    if result.val is not None:
        print(f"validation loss: {result.val['loss_nats']:.4f} nats/char "
              f"({result.val['bits_per_char']:.4f} bits/char) over {result.val['chars']:,} "
              f"characters; best {result.best_val:.4f}")
    if args.final_sample:
        _, vocab, model, params = load_run(args.workdir, "best", impl=impl)
        prime = config.sample_prime if not vocab.unknown(config.sample_prime) else vocab.chars[0]
        text = sample_text(model, params, vocab, prime=prime, length=args.final_sample,
                           seed=config.seed)
        print(f"--- {args.final_sample}-character sample (best checkpoint) ---\n{text}")
        if config.tensorboard and result.steps_per_s > 0:  # a finished run's again: once
            write_final_sample(args.workdir, text, int(result.state.step))


def write_final_sample(workdir: str, text: str, step: int) -> None:
    """The final sample as TensorBoard text ("final_sample") in the run's tensorboard/."""
    from jaxrnn.metrics import tensorboard_dir
    from jaxrnn.tensorboard import write_text_once

    write_text_once(tensorboard_dir(os.path.join(workdir, "metrics.jsonl")), "final_sample",
                    text, step)


@cli_main
def sample_main(argv=None):
    """Sample text from a trained run.

      jaxrnn-sample DIR --prime TEXT --length N [--temperature T] [--top-k K]
          [--argmax] [--seed S] [--num N] [--checkpoint best|last|PATH]
    """
    parser = make_parser(sample_main)
    parser.add_argument("workdir", help="a run directory written by jaxrnn-train")
    sampling = parser.group("sampling")
    sampling.add_argument("--prime", default="\n", metavar="TEXT",
                          help="text to start from (default: newline)")
    sampling.add_argument("--length", type=int, default=500, metavar="N",
                          help="characters to generate")
    sampling.add_argument("--temperature", type=float, default=1.0, metavar="T",
                          help="divides the logits: < 1 sharper, > 1 flatter")
    sampling.add_argument("--top-k", type=int, default=0, metavar="K",
                          help="sample from the K likeliest (0: all)")
    sampling.add_argument("--argmax", action="store_true", help="greedy: always the likeliest")
    sampling.add_argument("--seed", type=int, default=0, metavar="S",
                          help="the random draws' seed")
    sampling.add_argument("--num", type=int, default=1, metavar="N",
                          help="samples, generated as one batch")
    parser.group("run").add_argument("--checkpoint", default="best", metavar="WHICH",
                                     help="best, last, or a checkpoint file")
    add_compile_cache_flag(parser)
    args = parser.parse_args(argv)

    from jaxrnn.rundir import load_run, run_config
    from jaxrnn.sampling import sample_text

    set_x64(run_config(args.workdir, args.checkpoint))
    compile_cache.enable(args.compile_cache)
    _, vocab, model, params = load_run(args.workdir, args.checkpoint, impl=default_impl())
    texts = sample_text(model, params, vocab, args.prime, args.length, num=args.num,
                        temperature=args.temperature, top_k=args.top_k, argmax=args.argmax,
                        seed=args.seed)
    for i, text in enumerate([texts] if args.num == 1 else texts):
        if args.num > 1:
            print(f"--- sample {i} ---")
        print(text)


@cli_main
def evaluate_main(argv=None):
    """Evaluate a trained run on a whole text file, with the state carried across windows.

      jaxrnn-evaluate DIR --data PATH [--skip-unknown] [--checkpoint best|last|PATH]

    Prints one JSON line: {"loss_nats": ..., "bits_per_char": ..., "chars": ...}.
    """
    parser = make_parser(evaluate_main)
    parser.add_argument("workdir", help="a run directory written by jaxrnn-train")
    data = parser.group("data")
    data.add_argument("--data", required=True, metavar="PATH",
                      help="the text file to evaluate on")
    data.add_argument("--skip-unknown", action="store_true",
                      help="drop characters the vocabulary does not hold (and count them)")
    data.add_argument("--encoding", default="utf-8", metavar="NAME",
                      help="the text file's encoding")
    data.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"],
                      help="what to do with bytes the encoding cannot decode")
    data.add_argument("--batch-size", type=int, default=None, metavar="N",
                      help="parallel streams (default: the run's eval_batch_size)")
    parser.group("run").add_argument("--checkpoint", default="best", metavar="WHICH",
                                     help="best, last, or a checkpoint file")
    add_compile_cache_flag(parser)
    args = parser.parse_args(argv)

    from jaxrnn.data import read_text
    from jaxrnn.evaluate import evaluate_text
    from jaxrnn.rundir import run_config

    set_x64(run_config(args.workdir, args.checkpoint))
    compile_cache.enable(args.compile_cache)
    text = read_text(args.data, args.encoding, args.errors)
    print(json.dumps(evaluate_text(args.workdir, text, skip_unknown=args.skip_unknown,
                                   checkpoint=args.checkpoint, batch_size=args.batch_size,
                                   what=args.data, impl=default_impl())))


@cli_main
def prepare_data_main(argv=None):
    """Fetch tiny-shakespeare into data/ and verify its sha256.

      jaxrnn-prepare-data [--from PATH] [--data-dir DIR]

    Sources, in order: --from PATH, the environment variable JAXRNN_TINYSHAKESPEARE, a verified
    copy already in DIR, then a download from karpathy/char-rnn on GitHub.
    """
    from jaxrnn.data import DEFAULT_DATA_DIR, prepare_tinyshakespeare

    parser = make_parser(prepare_data_main)
    data = parser.group("data", "where the text comes from and where it goes")
    data.add_argument("--from", dest="from_path", metavar="PATH",
                      help="use this local copy (verified)")
    data.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR",
                      help="where to put the file")
    args = parser.parse_args(argv)
    print(prepare_tinyshakespeare(args.data_dir, args.from_path, quiet=True))
