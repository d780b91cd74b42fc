"""Atomic files for the pipeline: compressed JSONL, JSON, and completion markers.

Every file is written under a temporary name in its own folder and renamed into place, so a killed
worker leaves either the whole file or none of it; a shard's marker is written after all its files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import zstandard

from mai.data.pipeline.readers import open_binary


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as zstd-compressed JSONL atomically; returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    n = 0
    try:
        with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open_binary(str(path)) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def mark_done(folder: Path, key: str) -> None:
    write_text(folder / f"{key}.done", "")


def is_done(folder: Path, key: str) -> bool:
    return (folder / f"{key}.done").is_file()
