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
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mai.data.pipeline.document import Document, Failed, Removed
from mai.data.pipeline.spec import InputConfig
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
    """One unit of parallel work: ``key`` names it uniquely within a run (also the marker file's name)."""

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
    return found


def list_shards(inputs: list[InputConfig]) -> list[Shard]:
    """All shards of a run in a fixed order (the order cross-shard dedup sees them in)."""
    shards: list[Shard] = []
    for i, cfg in enumerate(inputs):
        if cfg.reader == "corpus":
            shards += [Shard(f"{cfg.source}-{p:05d}", i, part=p, parts=cfg.shards) for p in range(cfg.shards)]
            continue
        files = _expand(cfg.paths, SUFFIXES[cfg.reader])
        if not files:
            raise MaiError(f"input '{cfg.source}': no {cfg.reader} files under {cfg.paths}")
        step = cfg.files_per_shard if cfg.reader == "text" else 1
        for n, start in enumerate(range(0, len(files), step)):
            shards.append(Shard(f"{cfg.source}-{n:05d}", i, files=tuple(files[start:start + step])))
    keys = [s.key for s in shards]
    if len(set(keys)) != len(keys):
        raise MaiError("two inputs share a 'source' name; give each input its own source")
    return shards


def decode(data: bytes) -> tuple[str, bool]:
    """UTF-8 text and whether bytes had to be replaced."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def open_binary(path: str) -> IO[bytes]:
    """Open a plain, .gz or .zst file for streaming reads."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith((".zst", ".zstd")):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # noqa: SIM115
        return io.BufferedReader(raw)  # line iteration
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def _doc(id_: str, text: str, metadata: dict[str, Any], repaired: bool = False) -> Record:
    if repaired:
        metadata["repaired"] = "non-utf8"
    if not text.strip():
        return Removed(id_, "read", "empty")
    return Document(id_, text, metadata)


def read_text(shard: Shard, cfg: InputConfig) -> Iterator[Record]:
    for path in shard.files:
        try:
            text, repaired = decode(Path(path).read_bytes())
        except OSError as exc:
            yield Failed(f"{cfg.source}:{path}", "read", f"{type(exc).__name__}: {exc}")
            continue
        yield _doc(f"{cfg.source}:{path}", text, {"source": cfg.source, "path": path}, repaired)


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
    return _doc(id_, text, meta, repaired)


def read_jsonl(shard: Shard, cfg: InputConfig) -> Iterator[Record]:
    (path,) = shard.files
    n = 0
    try:
        with open_binary(path) as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                id_ = f"{cfg.source}:{path}:{n}"
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
        yield Failed(f"{cfg.source}:{path}:after-line-{n}", "read",
                     f"unreadable after line {n}: {type(exc).__name__}: {exc}")


def read_parquet(shard: Shard, cfg: InputConfig) -> Iterator[Record]:
    import pyarrow.parquet as pq

    (path,) = shard.files
    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield _from_record(f"{cfg.source}:{path}:{n}", row, cfg, False)
                n += 1
    except Exception as exc:
        yield Failed(f"{cfg.source}:{path}:after-row-{n}", "read",
                     f"unreadable after row {n}: {type(exc).__name__}: {exc}")


def html_to_text(html: bytes) -> str | None:
    """Main text of an HTML page (trafilatura, precision-first, no comments: REFERENCES §4)."""
    import trafilatura

    return trafilatura.extract(html, favor_precision=True, include_comments=False, include_tables=False)


def read_warc(shard: Shard, cfg: InputConfig) -> Iterator[Record]:
    """HTML responses of a WARC file, as main text. The id is the WARC-Record-ID."""
    from warcio.archiveiterator import ArchiveIterator

    (path,) = shard.files
    n = 0  # response records read completely
    try:
        with open(path, "rb") as fh:
            records = ArchiveIterator(fh)
            for record in records:
                if record.rec_type != "response":
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                id_ = f"{cfg.source}:{record.rec_headers.get_header('WARC-Record-ID') or f'{path}:{n}'}"
                ctype = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
                body = record.content_stream().read()
                missing = getattr(record.raw_stream, "limit", 0)
                if missing:  # warcio hands back a truncated record's bytes without complaint
                    raise EOFError(f"record {url} is truncated: {missing} of {record.length} bytes missing")
                n += 1
                if "html" not in ctype.lower():
                    yield Removed(id_, "read", "not-html")
                    continue
                try:
                    text = html_to_text(body)
                except Exception as exc:
                    yield Failed(id_, "extract", f"{type(exc).__name__}: {exc}")
                    continue
                if not text:
                    yield Removed(id_, "extract", "no-main-text")
                    continue
                date = record.rec_headers.get_header("WARC-Date")
                yield _doc(id_, text, {"source": cfg.source, "url": url, "date": date})
            left = os.path.getsize(path) - records.offset
            if left > 0:  # warcio also stops quietly at a cut-off last header
                raise EOFError(f"{left} bytes of a truncated record at the end")
    except Exception as exc:
        yield Failed(f"{cfg.source}:{path}:after-record-{n}", "read",
                     f"unreadable after record {n}: {type(exc).__name__}: {exc}")


def read_corpus(shard: Shard, cfg: InputConfig) -> Iterator[Record]:
    from mai.data.corpus import default_corpus

    for n, text in enumerate(default_corpus(cfg.limit)):
        if n % shard.parts == shard.part:
            yield _doc(f"{cfg.source}:{n}", text, {"source": cfg.source})


READERS = {"text": read_text, "jsonl": read_jsonl, "parquet": read_parquet, "warc": read_warc,
           "corpus": read_corpus}


def read_shard(shard: Shard, inputs: list[InputConfig]) -> Iterator[Record]:
    cfg = inputs[shard.input_index]
    return READERS[cfg.reader](shard, cfg)
