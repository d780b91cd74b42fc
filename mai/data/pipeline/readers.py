"""Readers: turn one input shard (a file, a group of text files, a slice of the default corpus) into
documents, and never crash on bad bytes.

A reader yields :class:`Document` for good records, :class:`Removed` for records with nothing to keep
(empty text, a page with no extractable text) and :class:`Failed` for records it could not read (an
invalid JSON line; the unreadable rest of a corrupt gzip/zstd file or a truncated WARC). Text that is not
valid UTF-8 is decoded with replacement characters and flagged in ``metadata["repaired"]``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mai.data.compressed import open_compressed
from mai.data.pipeline.document import Document, Failed, Removed, document_or_empty
from mai.data.pipeline.inputs import file_key
from mai.data.pipeline.spec import InputConfig
from mai.data.pipeline.warc import read_warc
from mai.errors import MaiError

Record = Document | Removed | Failed

SUFFIXES = {
    "text": (".txt", ".md"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".jsonl.zstd"),
    "parquet": (".parquet",),
    "warc": (".warc", ".warc.gz"),
}


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of parallel work. ``key`` names it by its files' paths (never by a position in a list),
    so it stays the same when other files come and go; it is also the name of the shard's marker files."""

    key: str
    input_index: int
    files: tuple[str, ...] = ()
    part: int = 0  # corpus reader: slice ``part`` of ``parts``
    parts: int = 1


def _expand(paths: list[str], suffixes: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern, recursive=True)) or [pattern]
        for match in matches:
            p = Path(match)
            if p.is_dir():
                found += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
            elif p.is_file():
                found.append(str(p))
            else:
                raise MaiError(f"input path not found: {pattern}")
    return list(dict.fromkeys(os.path.abspath(f) for f in found))  # one shard per file, however listed


def _group_key(source: str, files: tuple[str, ...]) -> str:
    return f"{source}-{file_key(chr(0).join(files)) if len(files) > 1 else file_key(files[0])}"


def list_shards(inputs: list[InputConfig]) -> list[Shard]:
    """All shards of a run, each input's files in sorted order (a new run's order for cross-shard dedup)."""
    shards: list[Shard] = []
    for i, cfg in enumerate(inputs):
        if cfg.reader == "corpus":
            from mai.data.corpus import default_corpus_path

            corpus = (str(default_corpus_path()),)
            shards += [Shard(f"{cfg.source}-{p:05d}", i, corpus, part=p, parts=cfg.shards)
                       for p in range(cfg.shards)]
            continue
        files = _expand(cfg.paths, SUFFIXES[cfg.reader])
        if not files:
            raise MaiError(f"input '{cfg.source}': no {cfg.reader} files under {cfg.paths}")
        step = cfg.files_per_shard if cfg.reader == "text" else 1
        for start in range(0, len(files), step):
            group = tuple(files[start:start + step])
            shards.append(Shard(_group_key(cfg.source, group), i, files=group))
    keys = [s.key for s in shards]
    if len(set(keys)) != len(keys):
        raise MaiError("two inputs share a 'source' name and a file; give each input its own source")
    return shards


def decode(data: bytes) -> tuple[str, bool]:
    """UTF-8 text and whether bytes had to be replaced."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def open_binary(path: str) -> IO[bytes]:
    """Open a plain, .gz or .zst file for streaming reads (truncation raises ``EOFError``)."""
    return open_compressed(path)


def _utf8_note(repaired: bool) -> str | None:
    return "non_utf8_repaired" if repaired else None


def read_text(shard: Shard, cfg: InputConfig) -> Iterator[Record]:
    for path in shard.files:
        id_ = f"{cfg.source}:{file_key(path)}:0"
        try:
            text, repaired = decode(Path(path).read_bytes())
        except OSError as exc:
            yield Failed(id_, "read", f"cannot read {path}: {exc.strerror or exc}")
            continue
        yield document_or_empty(id_, text, {"source": cfg.source, "path": path}, _utf8_note(repaired))


def _from_record(id_: str, row: dict[str, Any], cfg: InputConfig, repaired: bool) -> Record:
    if "_failed" in row:  # a record an earlier tool (the synth teacher) could not produce: still counted
        return Failed(f"{id_}:{row.get(cfg.id_key, '')}", str(row.get("_step", "read")), str(row["_failed"]))
    text = row.get(cfg.text_key)
    if text is None:
        return Failed(id_, "read", f"no '{cfg.text_key}' field (fields: {', '.join(sorted(row)) or 'none'})")
    if not isinstance(text, str):
        return Failed(id_, "read", f"field '{cfg.text_key}' is {type(text).__name__}, not text")
    meta = {k: v for k, v in row.items() if k not in (cfg.text_key, cfg.id_key)}
    if isinstance(meta.get("metadata"), dict):  # our own output format: lift its metadata back up
        meta = {**meta.pop("metadata"), **meta}
    if row.get(cfg.id_key) is not None:
        meta["source_id"] = row[cfg.id_key]
    meta["source"] = cfg.source
    return document_or_empty(id_, text, meta, _utf8_note(repaired))


def _stream_error(exc: Exception) -> str:
    """One line for an unreadable compressed stream (never a bare exception text)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, EOFError):
        return "the file ends in the middle of its compressed data (truncated)"
    return f"corrupt data ({first or type(exc).__name__})"


def read_jsonl(shard: Shard, cfg: InputConfig) -> Iterator[Record]:
    (path,) = shard.files
    prefix = f"{cfg.source}:{file_key(path)}"
    n = 0
    try:
        with open_binary(path) as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                id_ = f"{prefix}:{n}"
                line, repaired = decode(raw)
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Failed(id_, "read", f"invalid JSON: {exc}")
                    continue
                if not isinstance(row, dict):
                    yield Failed(id_, "read", f"JSON line is a {type(row).__name__}, not an object")
                    continue
                yield _from_record(id_, row, cfg, repaired)
    except Exception as exc:  # corrupt or truncated compressed stream: the rest of the file is unreadable
        yield Failed(f"{prefix}:after-{n}", "read", f"unreadable after line {n}: {_stream_error(exc)}")


def read_parquet(shard: Shard, cfg: InputConfig) -> Iterator[Record]:
    import pyarrow.parquet as pq

    (path,) = shard.files
    prefix = f"{cfg.source}:{file_key(path)}"
    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield _from_record(f"{prefix}:{n}", row, cfg, False)
                n += 1
    except Exception as exc:
        yield Failed(f"{prefix}:after-{n}", "read", f"unreadable after row {n}: {_stream_error(exc)}")


def read_corpus(shard: Shard, cfg: InputConfig) -> Iterator[Record]:
    from mai.data.corpus import default_corpus

    for n, text in enumerate(default_corpus(cfg.limit)):
        if n % shard.parts == shard.part:
            yield document_or_empty(f"{cfg.source}:{n}", text, {"source": cfg.source})


READERS = {"text": read_text, "jsonl": read_jsonl, "parquet": read_parquet, "warc": read_warc,
           "corpus": read_corpus}


def read_shard(shard: Shard, inputs: list[InputConfig]) -> Iterator[Record]:
    cfg = inputs[shard.input_index]
    return READERS[cfg.reader](shard, cfg)
