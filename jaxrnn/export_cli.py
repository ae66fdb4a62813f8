"""The entry points `jaxrnn-export` and `jaxrnn-import` (the library is `jaxrnn.export`).

Built with `jaxrnn.cli`'s helpers: library errors print as one line naming flags, exit code 2;
jax_enable_x64 is set from the run's (or the file's) dtype before any array exists.
"""

from __future__ import annotations

from jaxrnn import compile_cache
from jaxrnn.cli import add_compile_cache_flag, cli_main, make_parser, set_x64


@cli_main
def export_main(argv=None):
    """Write a trained run as a PyTorch state_dict in safetensors (no pickle).

      jaxrnn-export DIR --format safetensors -o model.safetensors [--which best|last|PATH]

    The tensors are torch_baselines' TorchCharLM's (embedding.weight, rnn.weight_ih_l0, ...,
    head.weight, head.bias); the config, vocabulary and format version are in the metadata.
    Load it with safetensors.torch.load_file (docs/EXPORT.md). Only char-LM runs (model
    charlm, cell rnn_tanh | rnn_relu | lstm | gru) export.
    """
    parser = make_parser(export_main)
    parser.add_argument("workdir", help="a run directory written by jaxrnn-train")
    parser.add_argument("--format", default="safetensors", choices=["safetensors"],
                        help="the file format (default: safetensors)")
    parser.add_argument("-o", "--output", required=True, help="the file to write")
    parser.add_argument("--which", default="best",
                        help="the checkpoint: best, last, or a checkpoint file (default: best)")
    add_compile_cache_flag(parser)
    args = parser.parse_args(argv)

    from jaxrnn.export import export_run
    from jaxrnn.rundir import run_config

    set_x64(run_config(args.workdir, args.which))
    compile_cache.enable(args.compile_cache)  # reading a run initialises a model's params
    written = export_run(args.workdir, args.output, which=args.which, fmt=args.format)
    print(f"wrote {written['path']}: {written['tensors']} tensors, "
          f"{written['parameters']:,} {written['dtype']} parameters")


@cli_main
def import_main(argv=None):
    """Make a jaxrnn run directory from a PyTorch char-LM's safetensors file.

      jaxrnn-import model.safetensors --workdir DIR [--config config.json] [--vocab vocab.json]
          [--cell rnn_tanh|rnn_relu|lstm|gru] [--overwrite]

    A file written by jaxrnn-export needs nothing else. A TorchCharLM state_dict saved
    without jaxrnn's metadata needs --vocab; its sizes are read from the tensors' shapes (a
    one-gate RNN also needs --cell), the other fields are the default preset's or --config's.
    DIR then works with jaxrnn-sample, jaxrnn-evaluate and (to fine-tune) jaxrnn-train.
    """
    parser = make_parser(import_main)
    parser.add_argument("file", help="a safetensors file (a TorchCharLM state_dict)")
    parser.add_argument("--workdir", required=True, help="the run directory to create")
    parser.add_argument("--config", default=None, metavar="PATH",
                        help="a config.json to use instead of the file's metadata")
    parser.add_argument("--vocab", default=None, metavar="PATH",
                        help="a vocab.json ({\"chars\": [...]}, in token-id order)")
    parser.add_argument("--cell", default=None,
                        help="the cell, where the tensors cannot tell (rnn_tanh / rnn_relu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run that DIR already holds")
    add_compile_cache_flag(parser)
    args = parser.parse_args(argv)

    from jaxrnn import export

    exported = export.read_file(args.file)
    config = export.read_config_file(args.config) if args.config else None
    vocab = export.read_vocab_file(args.vocab) if args.vocab else None
    config, vocab = export.import_config(exported, config=config, vocab=vocab, cell=args.cell)
    set_x64(config)
    compile_cache.enable(args.compile_cache)
    params = export.import_params(exported, config, vocab)
    path = export.write_run(args.workdir, config, vocab, params, overwrite=args.overwrite)
    print(f"wrote {path}: a {config.num_layers}-layer {config.cell} char-LM "
          f"(hidden {config.hidden_size}, {len(vocab)} characters, {config.dtype}); "
          f"jaxrnn-sample {args.workdir} works on it")
