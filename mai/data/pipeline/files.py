"""Atomic files for the pipeline: compressed JSONL, JSON, and completion markers.

Every file is written under a temporary name in its own folder (``.NAME.PID.tmp``, see
:func:`mai.fileio.atomic_path`) and renamed into place, so a killed worker leaves either the whole file or
none of it; a shard's marker is written after all its files. The temporary files a killed run leaves
behind are removed when the next run starts (:func:`remove_temp_files`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import zstandard

from mai.data.pipeline.readers import open_binary
from mai.fileio import atomic_path

_TEMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")  # what atomic_path names its temporary files


def remove_temp_files(*folders: Path) -> int:
    """Delete the temporary files that killed writers left under ``folders``; returns how many."""
    n = 0
    for folder in folders:
        for path in folder.rglob(".*.tmp") if folder.is_dir() else []:
            if _TEMP_NAME.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                n += 1
    return n


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as zstd-compressed JSONL atomically; returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
            n += 1
    return n


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open_binary(str(path)) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def mark_done(folder: Path, key: str) -> None:
    write_text(folder / f"{key}.done", "")


def is_done(folder: Path, key: str) -> bool:
    return (folder / f"{key}.done").is_file()
