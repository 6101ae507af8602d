"""Which failures are the user's to fix, and the one line that tells them how.

Domain errors subclass one of two bases, so this module imports no domain module:

- ``BadInput``: the input is wrong (a damaged file, an unknown recipe); it fails the same way
  every time, so Prefect does not retry it;
- ``Transient``: the world was in the way (storage unreachable, a rank killed); a retry may pass.

Both are *expected*: the CLI prints their message as one line, without a traceback.
"""

from __future__ import annotations

import logging


class VisionflowError(Exception):
    """An expected failure with a message meant for the user."""


class BadInput(VisionflowError, ValueError):
    """Wrong input: retrying only delays the message."""


class Transient(VisionflowError, RuntimeError):
    """A failure of the environment; a retry may succeed."""


def explain(exc: BaseException) -> str | None:
    """A one-line message for an expected failure (bad input, unreachable storage); None for a
    bug, which should keep its traceback."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or exc.title
        return f"invalid {exc.title} parameter {where}: {first['msg']}"
    if isinstance(exc, (VisionflowError, FileNotFoundError)):
        return str(exc)
    return None


def is_bad_input(exc: BaseException | None) -> bool:
    """Bad input fails the same way every time: retrying it only delays the message."""
    from pydantic import ValidationError

    return isinstance(exc, (BadInput, ValidationError, FileNotFoundError))


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures (storage, a killed worker)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 — the state's own exception
        return not is_bad_input(exc)
    return True


class QuietExpectedFailures(logging.Filter):
    """Drop the traceback from log records about an expected failure; the message stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and explain(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True
