"""The one error the ``nhi`` CLI shows as a single line on stderr (exit status 1)."""

from __future__ import annotations


class CliError(Exception):
    """A problem the user can act on; its message is printed as is, without a traceback."""
