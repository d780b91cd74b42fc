"""The WARC reader on real archives (pywb's test captures) and on the ways real files go wrong: each bad
file is one failed record with a one-line reason (never a bogus document or a Python exception's text),
and extraction options (tables, time limit) do what they say on real pages."""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import pytest

from mai.data.pipeline import InputConfig, PipelineSpec, run_pipeline
from mai.data.pipeline.files import read_jsonl
from tests.data_pipeline.sdists import PYWB, TRAFILATURA, member

WARCS = "sample_archive/warcs"


def _run(tmp_path: Path, paths: list[str], extract: dict | None = None, work: str = "work") -> dict:
    inp = InputConfig(source="web", reader="warc", paths=paths)
    if extract:
        inp = InputConfig(source="web", reader="warc", paths=paths, extract=extract)  # type: ignore[arg-type]
    spec = PipelineSpec(name="warc", work_dir=str(tmp_path / work), inputs=[inp], workers=1)
    return run_pipeline(spec, log=None)


def _docs(report: dict) -> list[dict]:
    return [r for p in sorted(Path(report["output_dir"]).rglob("*.jsonl.zst")) for r in read_jsonl(p)]


def _failures(report: dict) -> dict[str, str]:
    rows = [r for p in Path(report["work_dir"], "ledger").rglob("*.jsonl.zst") for r in read_jsonl(p)]
    return {r["id"]: r["error"] for r in rows if r["outcome"] == "failed"}


def _warc(path: Path, pages: list[tuple[str, bytes, str]]) -> None:
    """A gzipped WARC of (url, body, content type) responses."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for url, body, ctype in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                          http_headers=headers))


def _html(paragraphs: list[str]) -> str:
    return "<html><body><article>" + "".join(f"<p>{p}</p>" for p in paragraphs) + "</article></body></html>"


def _key(path: Path) -> str:
    from mai.data.pipeline.inputs import file_key

    return file_key(str(path))


def test_real_and_broken_warcs(tmp_path: Path, wiki: list[str]) -> None:
    iana = member(PYWB, f"{WARCS}/iana.warc.gz")
    example = member(PYWB, f"{WARCS}/example.warc")
    (tmp_path / "iana.warc.gz").write_bytes(iana)
    (tmp_path / "whole.warc.gz").write_bytes(gzip.compress(gzip.decompress(iana)))  # one gzip stream
    (tmp_path / "example.warc").write_bytes(example)
    (tmp_path / "example-copy.warc").write_bytes(example)  # same WARC-Record-IDs in another file
    (tmp_path / "readme.warc.gz").write_bytes(member(PYWB, "README.rst"))  # a text file, misnamed
    (tmp_path / "empty.warc").write_bytes(b"")
    third = [m.start() for m in re.finditer(rb"WARC/1\.0\r\n", example)][2]
    (tmp_path / "cut.warc").write_bytes(example[:third + 40])  # cut inside a record header
    latin = next(t for t in wiki if "é" in t and all(ord(c) < 256 for c in t))
    # Latin-1 bytes with no charset declared anywhere (common on old sites)
    latin_html = _html(latin.split("\n\n")).encode("latin-1")
    _warc(tmp_path / "latin.warc.gz", [("http://old.example.org/", latin_html, "text/html")])
    report = _run(tmp_path, [str(tmp_path / "*.warc*")])

    d = report["documents"]
    assert d["input"] == d["kept"] + d["removed"] + d["failed"]
    docs = _docs(report)
    by_file: dict[str, list[dict]] = {}
    for doc in docs:
        by_file.setdefault(doc["id"].split(":")[1], []).append(doc)

    def texts(name: str) -> list[str]:
        return [doc["text"] for doc in by_file.get(_key(tmp_path / name), [])]

    assert len(texts("iana.warc.gz")) >= 10
    assert texts("whole.warc.gz") == texts("iana.warc.gz")  # the whole-file gzip reads the same pages
    assert any("Internet Assigned Numbers Authority" in t for t in texts("iana.warc.gz"))
    ex, copy = by_file[_key(tmp_path / "example.warc")], by_file[_key(tmp_path / "example-copy.warc")]
    assert [x["metadata"]["warc_record_id"] for x in ex] == [x["metadata"]["warc_record_id"] for x in copy]
    assert len({doc["id"] for doc in docs}) == len(docs)  # ids unique across files all the same

    errors = _failures(report)
    assert errors[f"web:{_key(tmp_path / 'empty.warc')}:0"] == "empty file (0 bytes)"
    assert errors[f"web:{_key(tmp_path / 'readme.warc.gz')}:0"].startswith("not a WARC file (it begins '")
    cut = [e for i, e in errors.items() if i.startswith(f"web:{_key(tmp_path / 'cut.warc')}")]
    assert cut == [f"unreadable after record 1: malformed or truncated WARC record header at byte {third}"]
    assert not texts("readme.warc.gz") and not texts("empty.warc")  # no bogus documents
    for error in errors.values():
        assert "\n" not in error and not re.search(r"\b\w+(Error|Exception|Failed)\b", error), error
    assert report["notes"] == {"decoded_as_cp1252": 1}
    (latin_doc,) = texts("latin.warc.gz")
    assert "\ufffd" not in latin_doc and latin.split("\n\n")[1][:80] in latin_doc


def test_extraction_options_on_real_pages(tmp_path: Path, wiki: list[str]) -> None:
    prose = [t.split("\n\n")[1] for t in wiki[:3]]
    cells = "".join(f"<tr><td>{p}</td><td><a href='/'>Home</a></td></tr>" for p in prose)
    layout = f"<html><body><table>{cells}</table><table><tr><td>1914</td><td>12</td></tr></table></body>"
    utf8 = "text/html; charset=utf-8"
    _warc(tmp_path / "pages.warc.gz", [("http://layout.example.org/", layout.encode(), utf8),
                                       ("http://scam.example.org/",
                                        member(TRAFILATURA, "tests/resources/scam.html"), utf8)])
    paths = [str(tmp_path / "pages.warc.gz")]
    kept = {d["metadata"]["url"]: d["text"] for d in _docs(_run(tmp_path, paths, work="prose"))}
    assert kept["http://layout.example.org/"].split("\n") == prose  # the prose cells, nothing else
    assert ".onion" not in kept.get("http://scam.example.org/", "")[100:]  # link tables are not prose
    none = _run(tmp_path, paths, {"tables": "none"}, work="none")
    assert none["removed_by_step"] == {"extract": {"no-main-text": 2}}  # the old setting lost the prose
    every = _docs(_run(tmp_path, paths, {"tables": "all"}, work="all"))
    layout_text = next(d["text"] for d in every if d["metadata"]["url"] == "http://layout.example.org/")
    assert "| Home |" in layout_text  # the cells as trafilatura wrote them
    fast = {d["metadata"]["url"]: d["text"] for d in _docs(_run(tmp_path, paths, {"fallback": False}, "f"))}
    assert fast["http://layout.example.org/"].split("\n") == prose  # trafilatura's fast mode, same prose
    slow = _run(tmp_path, paths, {"timeout_s": 1e-6}, work="slow")  # every page over its time limit
    assert slow["failed_by_step"] == {"extract": 2}
    assert set(_failures(slow).values()) == {"extraction took longer than 1e-06 s"}


@pytest.mark.parametrize("bad", [{"tables": "some"}, {"timeout": 3}])
def test_extraction_options_are_checked(tmp_path: Path, bad: dict) -> None:
    from mai.config import from_dict
    from mai.errors import MaiError

    with pytest.raises(MaiError):
        from_dict(InputConfig, {"source": "w", "reader": "warc", "extract": bad}, "inputs[0]")


def test_resiliparse_engine_on_real_pages(tmp_path: Path, wiki: list[str]) -> None:
    """The fast extractor keeps an article's prose without its menus and footer, on a page of the project's
    own making and on pywb's real captures, where it finds the pages trafilatura finds; ``tables: none``
    skips layout tables there too."""
    pytest.importorskip("resiliparse")
    from tests.data_pipeline.conftest import html_page

    article = wiki[0].split("\n\n")
    prose = [t.split("\n\n")[1] for t in wiki[1:4]]
    rows = "".join(f"<tr><td>{p}</td></tr>" for p in prose)
    layout = f"<html><body><table>{rows}</table></body></html>"
    utf8 = "text/html; charset=utf-8"
    page = html_page("A", article).encode()
    _warc(tmp_path / "pages.warc.gz", [("http://article.example.org/", page, utf8),
                                       ("http://layout.example.org/", layout.encode(), utf8)])
    (tmp_path / "iana.warc.gz").write_bytes(member(PYWB, f"{WARCS}/iana.warc.gz"))
    paths = [str(tmp_path / "*.warc.gz")]
    fast = {d["metadata"]["url"]: d["text"] for d in _docs(_run(tmp_path, paths, {"engine": "resiliparse"}))}
    text = fast["http://article.example.org/"]
    assert all(p in text for p in article) and "All rights reserved" not in text and "Log in" not in text
    assert all(p in fast["http://layout.example.org/"] for p in prose)
    careful = {d["metadata"]["url"] for d in _docs(_run(tmp_path, paths, work="trafilatura"))}
    assert {u for u in fast if "iana.org" in u} >= {u for u in careful if "iana.org" in u}
    none = _run(tmp_path, paths, {"engine": "resiliparse", "tables": "none"}, work="none")
    assert "http://layout.example.org/" not in {d["metadata"]["url"] for d in _docs(none)}
