"""Fetch tiny-shakespeare into data/ and verify its sha256.

  python scripts/prepare_data.py [--from PATH] [--data-dir DIR]

Sources, in order: --from PATH, the environment variable JAXRNN_TINYSHAKESPEARE, a verified
copy already in DIR, then a download from karpathy/char-rnn on GitHub.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrnn.data import DEFAULT_DATA_DIR, prepare_tinyshakespeare  # noqa: E402
from jaxrnn.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="from_path", help="use this local copy (verified)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where to put the file")
    args = parser.parse_args(argv)
    print(prepare_tinyshakespeare(args.data_dir, args.from_path, quiet=True))


if __name__ == "__main__":
    main()
