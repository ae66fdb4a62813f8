"""Fetch tiny-shakespeare into data/ and verify it: python scripts/prepare_data.py [--from PATH].

The console script `jaxrnn-prepare-data` is the same command; see `jaxrnn.cli.prepare_data_main` (or --help).
"""

from jaxrnn.cli import prepare_data_main

if __name__ == "__main__":
    prepare_data_main()
