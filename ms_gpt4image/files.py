"""File writes of the training half: atomic (a file appears under its final name complete or not at
all), and a failed write (full disk, no permission) becomes one WriteFailed line naming the file."""
import contextlib
import json
import os
from pathlib import Path


class WriteFailed(Exception):
    """A file could not be written; the message names it, the reason, and what is still intact."""


@contextlib.contextmanager
def write_failures(path, kept: str = ""):
    """Turns an OSError raised inside the block into WriteFailed naming `path` (and `kept`)."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        raise WriteFailed(f"cannot write {path}: {reason}" + (f"; {kept}" if kept else "")) from None


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renamed to `path` when the block finishes, removed on
    any error (or interruption)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path, obj) -> None:
    with write_failures(path), atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_line(path, line: str) -> None:
    """Appends one line whole or not at all: a failed write is cut back, so no torn line stays."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    with write_failures(path):
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except BaseException:
            with contextlib.suppress(OSError):
                os.truncate(path, size)
            raise
