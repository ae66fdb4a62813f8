"""Import a PyTorch char-LM: python scripts/import_model.py FILE.safetensors --workdir DIR.

The console script `jaxrnn-import` is the same command; see `jaxrnn.export_cli.import_main`
(or --help).
"""

from jaxrnn.export_cli import import_main

if __name__ == "__main__":
    import_main()
