"""HTML → main text for the WARC reader: charset decoding, an extractor with configurable options, and a
time limit per page.

Extractors: ``trafilatura`` (FineWeb's choice; the most careful boilerplate removal, and the most costly —
over 80% of a WARC run's time) or ``resiliparse`` (DCLM's choice for its pool: a C++ DOM parser with
main-content heuristics, about an order of magnitude faster; DCLM, Li et al. 2024, found the two give
models of similar quality). ``resiliparse`` needs the ``resiliparse`` package (the data extra).

Tables: trafilatura renders a table as ``| cell | cell |`` rows. Many pages lay out their prose in
tables, and with tables off (the old fixed setting) that prose was lost whole. ``tables: prose`` (the
default) keeps the cells that read as prose (at least ``prose_cell_words`` words) as plain lines and drops
data rows and menus; ``all`` keeps every row as trafilatura wrote it; ``none`` drops tables.

Charsets: the HTTP ``Content-Type`` charset, else a ``<meta>`` charset, else UTF-8; undeclared bytes that
are not UTF-8 are read as Windows-1252 (what browsers do with Latin-1 pages) and noted
``decoded_as_cp1252``; declared-but-wrong bytes become U+FFFD and are noted ``non_utf8_repaired``.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import re
import signal
import threading
from collections.abc import Iterator
from typing import Literal

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.I)
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_LATIN1 = {"latin-1", "iso8859-1", "ascii"}  # browsers read these labels as Windows-1252


@dataclasses.dataclass
class ExtractConfig:
    """Options of HTML extraction (``inputs[].extract`` of a WARC input)."""

    engine: Literal["trafilatura", "resiliparse"] = "trafilatura"
    tables: Literal["prose", "all", "none"] = "prose"
    prose_cell_words: int = 8  # tables: prose keeps a cell with at least this many words
    links: bool = False  # true: keep link targets (trafilatura: markdown [text](url))
    comments: bool = False
    favor: Literal["precision", "recall", "balanced"] = "precision"  # trafilatura; REFERENCES §4
    fallback: bool = True  # trafilatura's readability/jusText fallback; false: its fast mode
    timeout_s: float | None = 10.0  # per page; a page over it is a failed document, the run goes on


class ExtractionTimeout(Exception):
    pass


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return "cp1252" if name in _LATIN1 else name


def decode_html(body: bytes, content_type: str) -> tuple[str, str | None]:
    """(the page as text, a note name when bytes had to be guessed or replaced)."""
    m = _HEADER_CHARSET.search(content_type)
    declared = _codec(m.group(1) if m else None)
    if declared is None:
        meta = _META_CHARSET.search(body[:4096])
        declared = _codec(meta.group(1).decode("ascii", "replace") if meta else None)
    for codec in dict.fromkeys([declared or "utf-8", "utf-8"]):
        try:
            return body.decode(codec), None
        except UnicodeDecodeError:
            continue
    if declared is None:
        return body.decode("cp1252", errors="replace"), "decoded_as_cp1252"
    return body.decode(declared, errors="replace"), "non_utf8_repaired"


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`ExtractionTimeout` in this block after ``seconds`` (SIGALRM: main thread only).

    Pool workers run shards in their main thread; where that is not so (a Ray actor thread) the limit
    cannot be enforced and the block runs unlimited.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise ExtractionTimeout(f"extraction took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _prose_tables(text: str, min_words: int) -> str:
    """Table rows → their prose cells, one per line; data rows, separators and menus dropped."""
    out = []
    for line in text.split("\n"):
        if not _TABLE_ROW.match(line):
            out.append(line)
            continue
        out += [cell.strip() for cell in line.strip().strip("|").split("|") if len(cell.split()) >= min_words]
    return "\n".join(out)


def html_to_text(html: str, cfg: ExtractConfig) -> str | None:
    """Main text of a page (raises :class:`ExtractionTimeout` past the time limit)."""
    with time_limit(cfg.timeout_s):
        text = _resiliparse(html, cfg) if cfg.engine == "resiliparse" else _trafilatura(html, cfg)
    if text and cfg.tables == "prose" and cfg.engine == "trafilatura":
        text = _prose_tables(text, cfg.prose_cell_words)
    return text


def _resiliparse(html: str, cfg: ExtractConfig) -> str:
    """Resiliparse writes table cells as lines of text, so ``prose`` and ``all`` read the same there;
    ``none`` skips table elements."""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, preserve_formatting=True, main_content=True, links=cfg.links,
                              comments=cfg.comments, alt_texts=False,
                              skip_elements=["table"] if cfg.tables == "none" else None).strip()


def _trafilatura(html: str, cfg: ExtractConfig) -> str | None:
    import trafilatura

    return trafilatura.extract(html, fast=not cfg.fallback, favor_precision=cfg.favor == "precision",
                               favor_recall=cfg.favor == "recall", include_comments=cfg.comments,
                               include_tables=cfg.tables != "none", include_links=cfg.links,
                               output_format="markdown" if cfg.links else "txt")
