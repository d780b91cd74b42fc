"""Readers on real files of every kind, and bad input that must be counted, never crash the run."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mai.data.pipeline import InputConfig, PipelineSpec, run_pipeline
from mai.data.pipeline.files import read_jsonl
from tests.data_pipeline.conftest import write_warc


def _run(tmp_path: Path, inputs: list[InputConfig], steps: list[dict] | None = None) -> dict:
    spec = PipelineSpec(name="t", work_dir=str(tmp_path / "work"), inputs=inputs, steps=steps or [],
                        workers=1)
    return run_pipeline(spec, log=None)


def _outputs(report: dict) -> list[dict]:
    return [row for p in sorted(Path(report["output_dir"]).rglob("*.jsonl.zst")) for row in read_jsonl(p)]


def _ledger(report: dict) -> list[dict]:
    files = sorted(Path(report["work_dir"], "ledger").rglob("*.jsonl.zst"))
    return [row for p in files for row in read_jsonl(p)]


def test_every_format_reads(tmp_path: Path, wiki: list[str], warc_pages: list[tuple[str, str]]) -> None:
    (tmp_path / "txt").mkdir()
    for i in range(3):
        (tmp_path / "txt" / f"{i}.txt").write_text(wiki[i])
    rows = [{"id": f"r{i}", "text": wiki[10 + i], "url": f"https://a.org/{i}"} for i in range(4)]
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl").write_bytes(lines)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    write_warc(tmp_path / "e.warc.gz", warc_pages[:5])
    report = _run(tmp_path, [
        InputConfig(source="txt", reader="text", paths=[str(tmp_path / "txt")]),
        InputConfig(source="jsonl", reader="jsonl", paths=[str(tmp_path / "*.jsonl*")]),
        InputConfig(source="parquet", reader="parquet", paths=[str(tmp_path / "d.parquet")]),
        InputConfig(source="web", reader="warc", paths=[str(tmp_path / "e.warc.gz")]),
    ])
    src = report["sources"]
    assert src["txt"] == {"input": 3, "kept": 3, "removed": 0, "failed": 0}
    assert src["jsonl"]["kept"] == 12 and src["parquet"]["kept"] == 4
    # 5 HTML pages kept; the PNG response is removed as not-html (requests are not documents)
    assert src["web"] == {"input": 6, "kept": 5, "removed": 1, "failed": 0}
    out = _outputs(report)
    web = [d for d in out if d["metadata"]["source"] == "web"]
    assert {d["metadata"]["url"] for d in web} == {u for u, _ in warc_pages[:5]}
    first_para = wiki[0].split("\n\n")[1][:60]
    assert any(first_para in d["text"] for d in web)  # the article text was extracted …
    assert not any("Log in" in d["text"] or "rights reserved" in d["text"] for d in web)  # … boilerplate not
    parquet = [d for d in out if d["metadata"]["source"] == "parquet"]
    assert sorted(d["metadata"]["source_id"] for d in parquet) == ["r0", "r1", "r2", "r3"]
    assert len({d["id"] for d in out}) == len(out)


def test_bad_input_is_counted_not_fatal(tmp_path: Path, wiki: list[str],
                                        warc_pages: list[tuple[str, str]]) -> None:
    good = [json.dumps({"text": t}) for t in wiki[:50]]
    # invalid JSON, a non-object, a missing field, an empty text, non-UTF-8 bytes
    lines = [*good[:3], "{not json", "[1, 2]", json.dumps({"body": "x"}), json.dumps({"text": "  "})]
    data = "\n".join(lines).encode() + b"\n" + '{"text": "caf\xe9 '.encode() + b"\xff\xfe" + b' ok"}\n'
    (tmp_path / "mixed.jsonl").write_bytes(data)
    # a gzip file cut in half: the lines before the cut are read, the rest is one failure
    full = gzip.compress(("\n".join(good) + "\n").encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    zst = zstandard.ZstdCompressor().compress(("\n".join(good) + "\n").encode())
    (tmp_path / "cut.jsonl.zst").write_bytes(zst[: len(zst) // 2])  # zstandard alone ends quietly here
    # a WARC whose last record is truncated
    write_warc(tmp_path / "w.warc.gz", warc_pages[:4], extra_records=False)
    raw = (tmp_path / "w.warc.gz").read_bytes()
    (tmp_path / "w.warc.gz").write_bytes(raw[: len(raw) - 700])
    report = _run(tmp_path, [InputConfig(source="j", reader="jsonl", paths=[str(tmp_path / "*.jsonl*")]),
                             InputConfig(source="w", reader="warc", paths=[str(tmp_path / "w.warc.gz")])])
    d = report["documents"]
    assert d["input"] == d["kept"] + d["removed"] + d["failed"]
    ledger = _ledger(report)
    assert len(ledger) == d["removed"] + d["failed"]
    errors = " ".join(e["error"] for e in ledger if e["outcome"] == "failed")
    assert "invalid JSON" in errors and "not an object" in errors and "no 'text' field" in errors
    assert errors.count("the file ends in the middle of its compressed data (truncated)") == 2  # gz, zst
    assert "unreadable after record 3" in errors  # 3 whole WARC records, then the truncated one
    assert report["removed_by_step"]["read"]["empty"] == 1
    assert report["notes"]["non_utf8_repaired"] == 1
    kept = _outputs(report)
    repaired = [doc for doc in kept if doc["metadata"].get("repaired") == "non_utf8_repaired"]
    assert [doc["text"] for doc in repaired] == ["café \ufffd\ufffd ok"]
    assert 0 < report["sources"]["j"]["kept"] < 2 * 50 + 4
    assert report["sources"]["w"]["kept"] == 3


def test_missing_input_is_a_user_error(tmp_path: Path) -> None:
    from mai.errors import MaiError

    with pytest.raises(MaiError, match="not found"):
        _run(tmp_path, [InputConfig(source="x", reader="jsonl", paths=[str(tmp_path / "nope.jsonl")])])
