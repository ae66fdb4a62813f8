"""Export a trained run to PyTorch: python scripts/export.py DIR --format safetensors -o FILE.

The console script `jaxrnn-export` is the same command; see `jaxrnn.export_cli.export_main`
(or --help).
"""

from jaxrnn.export_cli import export_main

if __name__ == "__main__":
    export_main()
