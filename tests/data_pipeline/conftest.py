"""Shared fixtures: real text from the default corpus, and real WARC files built from HTML pages."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mai.data.corpus import default_corpus


@pytest.fixture(scope="session")
def wiki() -> list[str]:
    """Wikipedia intros with at least 80 words (they pass the Gopher length rule)."""
    return [t for t in default_corpus(1500) if len(t.split()) >= 80][:300]


def html_page(title: str, paragraphs: list[str]) -> str:
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
            "<nav><a href='/'>Home</a> | <a href='/about'>About</a> | <a href='/login'>Log in</a></nav>"
            f"<article><h1>{title}</h1>{body}</article>"
            "<footer>Copyright 2024. All rights reserved. <a href='/privacy'>Privacy</a></footer>"
            "</body></html>")


def write_warc(path: Path, pages: list[tuple[str, str]], extra_records: bool = True) -> None:
    """A gzipped WARC with one response record per (url, html) page, plus a request and a non-HTML record."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for url, html in pages:
            if extra_records:
                req = writer.create_warc_record(url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"))
                writer.write_record(req)
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                       protocol="HTTP/1.1")
            rec = writer.create_warc_record(url, "response", payload=io.BytesIO(html.encode("utf-8")),
                                            http_headers=headers)
            writer.write_record(rec)
        if extra_records:
            headers = StatusAndHeaders("200 OK", [("Content-Type", "image/png")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(
                "https://example.org/logo.png", "response", payload=io.BytesIO(b"\x89PNG...."),
                http_headers=headers))


@pytest.fixture
def warc_pages(wiki: list[str]) -> list[tuple[str, str]]:
    pages = []
    for i in range(12):
        paras = wiki[3 * i:3 * i + 3]
        pages.append((f"https://site{i % 4}.example.com/page/{i}", html_page(paras[0].split("\n")[0], paras)))
    return pages
