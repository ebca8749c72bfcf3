"""Errors a user can fix.

Everything the user can act on is raised as a :class:`TextgenError`; the CLI prints its
message as one line on stderr and exits with its ``exit_code`` (2 for usage and config
mistakes, 1 for bad data or missing runs), never with a traceback.
"""

from __future__ import annotations


class TextgenError(Exception):
    """A problem the user can fix; ``str(err)`` is the one-line message."""

    exit_code = 1


class UsageError(TextgenError):
    """Wrong options, config keys or values (exit code 2)."""

    exit_code = 2


class DataError(TextgenError):
    """A corpus, seed or run directory that cannot be used (exit code 1)."""

    exit_code = 1
