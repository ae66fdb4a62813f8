"""Errors that are the user's to fix: the CLIs print them on one line and exit with code 2."""

from __future__ import annotations

import functools
import sys


class UserError(ValueError):
    """Bad input (a file, a flag, a checkpoint) with a message that says what to do."""


def cli_main(main):
    """Wraps a script's main(): UserError -> one line on stderr and exit code 2, no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
