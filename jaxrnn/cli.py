"""The command line: flags, one-line errors, and the mains of the console scripts.

  jaxrnn-train          train_main          (python scripts/train.py)
  jaxrnn-sample         sample_main         (python scripts/sample.py)
  jaxrnn-evaluate       evaluate_main       (python scripts/evaluate.py)
  jaxrnn-prepare-data   prepare_data_main   (python scripts/prepare_data.py)

The library speaks in fields, the command line in flags: every field of `jaxrnn.config.Config`
is a flag (`hidden_size` -> `--hidden-size`, a section's fields too:
`tutorial.faithful_log_softmax` -> `--faithful-log-softmax`), and `cli_main` prints a
library `UserError` on one line with each field it names (`UserError.fields`) shown as its flag.
What the library leaves to its caller, the entry points decide here: jax_enable_x64 (from the
run's dtype) and the layers' `impl` (from $JAXRNN_CPU_KERNELS, `default_impl`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import os
import re
import sys
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


def _parse_bool(text: str) -> bool:
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
                                 "tutorial's (Config.tutorial.faithful_log_softmax)"}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds `--preset` and one flag per config field (default None: 'not given')."""
    parser.add_argument("--preset", default="default",
                        help=f"named preset: {', '.join(PRESETS)} (default: default)")
    for name, kind, default in config_fields():
        parser.add_argument(flag(name), dest=name, type=_parse_bool if kind is bool else kind,
                            default=None, metavar=kind.__name__.upper(),
                            help=(f"{_HELP[name]} " if name in _HELP else "")
                            + f"(default: {default!r}, or the preset's)")


def add_text_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every training entry point shares besides the config: the text and output."""
    parser.add_argument("--data", required=True, help="a UTF-8 text file to train on")
    parser.add_argument("--encoding", default="utf-8", help="the text file's encoding")
    parser.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"],
                        help="what to do with bytes the encoding cannot decode")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--final-sample", type=int, default=500,
                        help="characters to sample at the end (0: none)")


def add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile-cache", default=None, metavar="DIR",
                        help=f"persistent XLA compilation cache (default: "
                             f"${compile_cache.ENV}, else {compile_cache.default_dir()}; "
                             f"'off' to disable)")


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


def make_parser(main) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is `main`'s docstring."""
    return argparse.ArgumentParser(description=inspect.getdoc(main),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


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
    parser = make_parser(train_main)
    add_text_flags(parser)
    parser.add_argument("--workdir", required=True, help="run directory (created; resumed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a workdir that holds another run")
    parser.add_argument("--init-from", help="start from the parameters of this checkpoint")
    add_config_flags(parser)
    add_compile_cache_flag(parser)
    args = parser.parse_args(argv)
    if args.final_sample < 0:
        raise UserError(f"--final-sample must be 0 or more; got {args.final_sample}")
    config = config_from_args(args)
    set_x64(config)
    compile_cache.enable(args.compile_cache)
    print(f"config ({args.preset} preset + flags):\n{config.to_json()}", flush=True)

    from jaxrnn.rundir import load_run
    from jaxrnn.sampling import sample_text
    from jaxrnn.train import train_and_evaluate

    impl = default_impl()
    result = train_and_evaluate(config, args.data, args.workdir, overwrite=args.overwrite,
                                init_from=args.init_from, encoding=args.encoding,
                                errors=args.errors, progress=not args.no_progress, impl=impl)
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


@cli_main
def sample_main(argv=None):
    """Sample text from a trained run.

      jaxrnn-sample DIR --prime TEXT --length N [--temperature T] [--top-k K]
          [--argmax] [--seed S] [--num N] [--checkpoint best|last|PATH]
    """
    parser = make_parser(sample_main)
    parser.add_argument("workdir", help="a run directory written by jaxrnn-train")
    parser.add_argument("--prime", default="\n", help="text to start from (default: newline)")
    parser.add_argument("--length", type=int, default=500, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="sample from the K likeliest (0: all)")
    parser.add_argument("--argmax", action="store_true", help="greedy: always the likeliest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num", type=int, default=1, help="samples, generated as one batch")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a file")
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
    parser.add_argument("--data", required=True, help="the text file to evaluate on")
    parser.add_argument("--skip-unknown", action="store_true",
                        help="drop characters the vocabulary does not hold (and count them)")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a file")
    parser.add_argument("--batch-size", type=int, default=None, help="parallel streams")
    parser.add_argument("--encoding", default="utf-8")
    parser.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"])
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
    parser.add_argument("--from", dest="from_path", help="use this local copy (verified)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where to put the file")
    args = parser.parse_args(argv)
    print(prepare_tinyshakespeare(args.data_dir, args.from_path, quiet=True))
