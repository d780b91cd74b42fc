"""Atomic file writes (a file appears complete under its name or not at all, whatever kills the writer:
write to a temporary name in the same folder, then ``os.replace`` it into place), and the one reader of
user-written JSONL files, whose errors name the file and line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mai.errors import MaiError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder ``PATH.partial``; on success it replaces ``path`` whole (an old one is
    moved aside first and then removed), so a reader never sees half a folder; on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_jsonl_records(path: str | Path, key: str | None = None) -> Iterator[tuple[Any, str]]:
    """(record, "file:line") for every non-blank line of a user's JSONL file; ``key`` picks a field (a
    bare list is accepted as the field's value). Bad lines are a :class:`MaiError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise MaiError(f"no data file at {path}")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MaiError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if key is not None and not isinstance(record, list):
                if not isinstance(record, dict) or key not in record:
                    raise MaiError(f"{where}: expected an object with a {key!r} field")
                record = record[key]
            yield record, where
