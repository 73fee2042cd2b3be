"""Describing what a handler raised, in a way that cannot fail (issue 19 item 6).

A user's exception class may have a `__str__` that raises (a formatting bug), returns a
non-string, or is enormous; its traceback may be as broken. Every part of the description
is computed under its own guard, so describing an error never throws away the outcomes of
the message's batch-mates.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

# Enough to read the cause; a handler that puts a whole payload in its message does not
# get to fill the retry record and the dead letter with it.
MAX_MESSAGE_CHARS = 2000
MAX_TRACE_CHARS = 16_000


@dataclass(frozen=True, slots=True)
class ErrorDescription:
    """What a failed call raised, as text: its type, its message and its traceback."""

    type_name: str
    message: str
    trace: str

    @property
    def summary(self) -> str:
        return f"{self.type_name}: {self.message}"


def describe(exc: BaseException) -> ErrorDescription:
    """The type name, message and traceback of `exc`, each replaced by a note if it cannot be had."""
    type_name = _guarded(lambda: type(exc).__name__, "<unnamed exception>", slice(0, 200))
    message = _guarded(lambda: str(exc), f"<str() of {type_name} failed>", slice(0, MAX_MESSAGE_CHARS))
    trace = _guarded(lambda: "".join(traceback.format_exception(exc)), f"<traceback of {type_name} unavailable>",
                     slice(-MAX_TRACE_CHARS, None))
    return ErrorDescription(type_name, message, trace)


def _guarded(make: Callable[[], object], fallback: str, part: slice) -> str:
    """make(), cut to `part`, as a plain str that encodes as UTF-8: a str subclass's own
    methods are never called (its __getitem__ or __len__ may be as broken as its __str__)."""
    try:
        text = make()
        if not isinstance(text, str):
            return fallback
        # Lone surrogates (a message built from undecodable bytes) would fail the UTF-8
        # encoding of the settlement itself, long after this call.
        return str.__getitem__(text, part).encode("utf-8", "backslashreplace").decode("utf-8")
    except BaseException:  # noqa: BLE001 - whatever a user's __str__ raises, even SystemExit
        return fallback
