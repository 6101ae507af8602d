"""Which failures are the user's to fix, and the one line that tells them how."""

from __future__ import annotations


def explain(exc: BaseException) -> str | None:
    """A one-line message for an expected failure (bad input, unreachable storage); None for a
    bug, which should keep its traceback."""
    from pydantic import ValidationError

    from tasks.imagenet import ImagenetError
    from tasks.mnist import IdxError
    from tasks.shards import ShardError
    from tasks.storage import StorageError
    from tasks.training import TrainingError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or exc.title
        return f"invalid {exc.title} parameter {where}: {first['msg']}"
    if isinstance(exc, (IdxError, ImagenetError, ShardError, StorageError, TrainingError, FileNotFoundError)):
        return str(exc)
    return None
