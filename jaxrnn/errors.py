"""Errors that are the user's to fix: the CLIs print them on one line and exit with code 2."""

from __future__ import annotations

import functools
import sys
import warnings


class UserError(ValueError):
    """Bad input (a file, a flag, a checkpoint) with a message that says what to do."""


class JaxrnnWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. a checkpoint skipped)."""


def cli_main(main):
    """Wraps a script's main(): UserError -> one line on stderr and exit code 2, no traceback.

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
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted; checkpoints already written are kept", file=sys.stderr)
            sys.exit(130)
        finally:
            warnings.showwarning = show_default

    return wrapper
