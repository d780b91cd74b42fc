"""Inputs are identities, not positions: adding, removing or editing files between runs of one work dir
either is refused with the list of files, or (``--update``) ends with every document of the current files
accounted for exactly once — the same documents a fresh run over those files keeps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from mai.cli import main
from mai.data.pipeline import InputConfig, PipelineSpec, run_pipeline
from mai.data.pipeline.files import read_jsonl
from mai.data.pipeline.inputs import compare, fingerprint, refresh
from mai.errors import MaiError

STEPS = [{"type": "gopher_quality", "min_words": 30}, {"type": "exact_dedup"}, {"type": "pii"}]


def _write(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def _spec(tmp_path: Path, work: str) -> PipelineSpec:
    inputs = [InputConfig(source="s", reader="jsonl", paths=[str(tmp_path / "in" / "*.jsonl")])]
    return PipelineSpec(name="inputs", work_dir=str(tmp_path / work), workers=2, steps=STEPS, inputs=inputs)


def _kept(report: dict) -> list[dict]:
    return [r for p in sorted(Path(report["output_dir"]).rglob("*.jsonl.zst")) for r in read_jsonl(p)]


def _ledger(report: dict) -> list[dict]:
    return [r for p in sorted(Path(report["work_dir"], "ledger").rglob("*.jsonl.zst")) for r in read_jsonl(p)]


def _final_ids(report: dict) -> list[str]:
    """Each document's last word: kept ids, plus the ids a stage removed or failed (once each)."""
    return [r["id"] for r in _kept(report)] + [r["id"] for r in _ledger(report)]


def test_add_remove_modify_between_runs(tmp_path: Path, wiki: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    _write(inp / "a.jsonl", wiki[0:10])
    _write(inp / "b.jsonl", wiki[10:20] + ["too short"])
    _write(inp / "c.jsonl", wiki[20:30] + [wiki[2], wiki[12]])  # copies of a's and b's documents
    first = run_pipeline(_spec(tmp_path, "w"), log=None)
    assert first["documents"] == {"input": 33, "kept": 30, "removed": 3, "failed": 0}
    again = run_pipeline(_spec(tmp_path, "w"), log=None)  # nothing changed: a plain resume
    assert again["documents"] == first["documents"]

    (inp / "a.jsonl").unlink()  # removed: its documents are withdrawn, c's copy of wiki[2] is now the first
    with open(inp / "b.jsonl", "a") as fh:  # changed: one more document
        fh.write(json.dumps({"text": wiki[40]}) + "\n")
    _write(inp / "d.jsonl", wiki[30:35] + [wiki[15]])  # added, with a copy of one of b's documents
    with pytest.raises(MaiError) as refused:
        run_pipeline(_spec(tmp_path, "w"), log=None)
    message = str(refused.value)
    assert "1 added (" in message and "d.jsonl" in message
    assert "1 removed (" in message and "a.jsonl" in message
    assert "1 changed (" in message and "b.jsonl" in message and "--update" in message
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "inputs", "work_dir": str(tmp_path / "w"), "workers": 2,
                                        "inputs": [{"source": "s", "reader": "jsonl",
                                                    "paths": [str(inp / "*.jsonl")]}], "steps": STEPS}))
    capsys.readouterr()
    assert main(["data", "run", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "d.jsonl" in err

    leftovers = [Path(first["output_dir"]) / "s" / ".s-0.jsonl.zst.4242.tmp",
                 Path(first["work_dir"]) / "stage0" / ".s-1.jsonl.zst.4242.tmp"]  # as a killed writer leaves
    for path in leftovers:
        path.write_bytes(b"partial")
    assert main(["data", "run", str(pipeline), "--update"]) == 0
    out = capsys.readouterr().out
    assert "stage 0 (parallel: gopher_quality): 2 of 3 shards to do" in out  # only b (changed) and d (new)
    updated = json.loads((tmp_path / "w" / "report.json").read_text())
    fresh = run_pipeline(_spec(tmp_path, "fresh"), log=None)
    assert updated["documents"] == fresh["documents"] == {"input": 30, "kept": 27, "removed": 3, "failed": 0}
    assert [r["text"] for r in _kept(updated)] == [r["text"] for r in _kept(fresh)]
    ids = _final_ids(updated)
    assert len(ids) == len(set(ids)) == 30 and sorted(ids) == sorted(_final_ids(fresh))
    assert updated["removed_by_step"] == {"gopher_quality": {"too_few_words": 1},
                                          "exact_dedup": {"exact_duplicate": 2}}
    assert updated["inputs"] == {"files": 3, "shards": 3, "added": 1, "removed": 1, "changed": 1}
    assert not any(path.exists() for path in leftovers)


def test_fingerprint_sees_edits_not_touches(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "one"}\n')
    old = fingerprint(str(path))
    os.utime(path, ns=(old["mtime_ns"] + 10**9, old["mtime_ns"] + 10**9))  # touched, same bytes
    assert refresh(str(path), old)[1]
    path.write_text('{"text": "two"}\n')  # same size, other bytes
    os.utime(path, ns=(old["mtime_ns"] + 2 * 10**9, old["mtime_ns"] + 2 * 10**9))
    new, same = refresh(str(path), old)
    assert not same and new["size"] == old["size"] and new["hash"] != old["hash"]
    manifest, changes = compare(None, {"k": ("s", (str(path),))})
    assert changes.added == [str(path)] and manifest.order == ["k"]
