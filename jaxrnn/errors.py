"""Errors that are the user's to fix, and warnings the user should see.

The library's messages name the fields and arguments they are about (`hidden_size`, `prime`),
never a command-line flag; `UserError.fields` lists those names, and the command line
(`jaxrnn.cli`) shows each as its flag (`--hidden-size`, `--prime`) in its one-line message.
"""

from __future__ import annotations

import functools


class UserError(ValueError):
    """Bad input (a file, a field, a checkpoint) with a message that says what to do.

    fields: the config fields (e.g. "hidden_size", a section's "faithful_log_softmax") or
    function arguments (e.g. sample_text's "prime", read_text's "encoding") that the message
    names; empty when it names none.
    """

    def __init__(self, *args, fields: tuple[str, ...] | list[str] = ()):
        super().__init__(*args)
        self.fields = tuple(fields)

    def __reduce__(self):  # keep `fields` through pickling (worker processes)
        return functools.partial(type(self), fields=self.fields), self.args


class JaxrnnWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. a checkpoint skipped)."""
