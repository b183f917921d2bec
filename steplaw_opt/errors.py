"""The one exception type users see for bad input.

Every check at the library's boundary raises :class:`SteplawInputError` with a one-line message
that names the bad value; the CLI prints that line and exits with code 2.
"""

from __future__ import annotations


class SteplawInputError(ValueError):
    """Bad input at the library's boundary: the message is one line naming the bad value."""


class SteplawStorageError(SteplawInputError):
    """The study's storage failed mid-study for longer than the retries (a database gone, a
    disk full): one line naming the storage (password masked), exit code 2 in the CLI. The
    finished trials are kept; the running one is failed ("interrupted") when the storage
    still takes the write, or else recovered as lost by the next process on the study."""
