"""User-facing errors.

Every error a user can cause by configuration or input is a :class:`ConfigError`: its message
is a single line that names the offending field or value and says what is allowed. The CLI
prints that line alone (no traceback) and exits with status 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: one line naming the bad value and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # enforce a single line
