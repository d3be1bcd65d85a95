"""The root of every error infusiond raises on purpose.

It lives in ``protocol/`` because that is the bottom layer: drivers, daemon and simulators may
all import it without breaking the one-way import rule (daemon -> drivers, protocol).
"""

from __future__ import annotations


class InfusiondError(Exception):
    """Root exception: everything infusiond raises deliberately derives from it.

    ``problems`` holds every problem found, each a complete sentence naming its field, so that
    a command-line tool can print one per line; the message is ``context`` followed by the
    problems joined with ``"; "``.
    """

    def __init__(self, *problems: str, context: str = "") -> None:
        super().__init__(context + "; ".join(problems))
        self.problems: tuple[str, ...] = problems


class LibraryError(InfusiondError):
    """A drug library file is unreadable, malformed or inconsistent.

    The message names the file, and where known the profile, drug and field.
    """


class RequestError(InfusiondError):
    """A check request is malformed; the message names the offending field."""
