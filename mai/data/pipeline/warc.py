"""The WARC reader: HTML responses → main text, and a one-line reason for every file it cannot read.

warcio accepts a lot without complaint: a text file named ``.warc.gz`` is parsed as an archive, a record
cut short hands back its partial bytes, a file cut inside a record header ends iteration with an
``AttributeError``, a WARC gzipped as one stream (not one gzip member per record) stops after the first
record. So the reader checks the file's first bytes itself, reads gzip through Python's ``gzip`` module (it
takes both layouts), checks each record's length and the end of the file, and turns whatever is left into
a :class:`Failed` record that says what is wrong with the file and where. Ids are
``SOURCE:FILEKEY:OFFSET`` (the record's byte offset in the uncompressed archive): unique across files,
where the WARC-Record-ID (kept in ``metadata.warc_record_id``) is not when an archive is copied.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from typing import IO, Any

from mai.data.pipeline.document import Failed, Removed, document_or_empty
from mai.data.pipeline.extract import ExtractionTimeout, decode_html, html_to_text
from mai.data.pipeline.inputs import file_key
from mai.data.pipeline.spec import InputConfig

GZIP_MAGIC = b"\x1f\x8b"
SNIFF_BYTES = 1 << 22  # decompressed bytes looked at to tell the two gzip layouts apart
_NEXT_RECORD = re.compile(rb"\nWARC/\d")


class BadWarc(Exception):
    """A problem with the file that the message states in full."""


def _one_gzip_stream(path: str) -> bool:
    """Whether the first gzip member of ``path`` holds more than one record (a WARC gzipped whole)."""
    inflate = zlib.decompressobj(31)
    seen = b""
    with open(path, "rb") as fh:
        if fh.read(2) != GZIP_MAGIC:
            return False
        fh.seek(0)
        while not inflate.eof and len(seen) < SNIFF_BYTES:
            chunk = fh.read(1 << 16)
            if not chunk:
                break
            seen += inflate.decompress(chunk, SNIFF_BYTES)
            if _NEXT_RECORD.search(seen, 1):
                return True
    return False


def _open(path: str) -> IO[bytes]:
    """warcio reads one-member-per-record gzip itself (fast, seekable offsets); a WARC gzipped as one
    stream goes through Python's gzip module instead, which warcio gives up on after the first record."""
    if _one_gzip_stream(path):
        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def _preview(data: bytes) -> str:
    text = data[:40].decode("utf-8", "replace")
    return repr("".join(c if c.isprintable() else " " for c in text).strip())


def check_file(path: str) -> str | None:
    """Why ``path`` is not a WARC file at all, or None when it starts like one."""
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
        with gzip.open(path, "rb") if compressed else open(path, "rb") as fh:
            start = fh.read(64)
    except (OSError, EOFError, zlib.error):
        return "a gzip file whose first block cannot be decompressed"
    if not start.lstrip().startswith(b"WARC/"):
        return f"not a WARC file (it begins {_preview(start)})"
    return None


def _reason(exc: Exception, offset: int) -> str:
    if isinstance(exc, BadWarc):
        return str(exc)
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"compressed data truncated or corrupt after byte {offset}"
    return f"malformed or truncated WARC record header at byte {offset}"  # warcio's own parse errors


def _body(record: Any) -> bytes:
    body = record.content_stream().read()
    missing = getattr(record.raw_stream, "limit", 0)
    if missing:  # warcio hands back a truncated record's bytes without complaint
        raise BadWarc(f"a record is truncated: {missing} of its {record.length} bytes are missing")
    return body


def _response(record: Any, body: bytes, id_: str, cfg: InputConfig) -> Any:
    """One response record → a document, or why there is none (not HTML, no main text, extraction)."""
    ctype = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
    if "html" not in ctype.lower():
        return Removed(id_, "read", "not-html")
    html, note = decode_html(body, ctype)
    try:
        text = html_to_text(html, cfg.extract)
    except ExtractionTimeout as exc:
        return Failed(id_, "extract", str(exc))
    except Exception as exc:  # a page trafilatura cannot parse: that page fails, the file goes on
        return Failed(id_, "extract", f"extraction failed ({type(exc).__name__})")
    if not text:
        return Removed(id_, "extract", "no-main-text")
    meta = {"source": cfg.source, "url": record.rec_headers.get_header("WARC-Target-URI") or "",
            "date": record.rec_headers.get_header("WARC-Date"),
            "warc_record_id": record.rec_headers.get_header("WARC-Record-ID")}
    return document_or_empty(id_, text, meta, note)


def read_warc(shard: Any, cfg: InputConfig) -> Iterator[Any]:
    """HTML responses of one WARC file as main text; non-HTML responses are removed as ``not-html``."""
    from warcio.archiveiterator import ArchiveIterator

    (path,) = shard.files
    prefix = f"{cfg.source}:{file_key(path)}"
    problem = check_file(path)
    if problem:
        yield Failed(f"{prefix}:0", "read", problem)
        return
    n = offset = 0  # response records read completely; the end of the last whole record
    try:
        with _open(path) as fh:
            records = ArchiveIterator(fh)
            for record in records:
                if record.rec_type == "response":
                    body = _body(record)
                    doc = _response(record, body, f"{prefix}:{records.get_record_offset()}", cfg)
                    n += 1
                    yield doc
                offset = records.offset
            offset = records.offset
            fh.read()
            if fh.tell() > offset:  # warcio also stops quietly at a cut-off last header
                raise BadWarc(f"the file ends inside a record ({fh.tell() - offset} bytes at byte {offset})")
    except Exception as exc:
        yield Failed(f"{prefix}:after-{n}", "read", f"unreadable after record {n}: {_reason(exc, offset)}")
