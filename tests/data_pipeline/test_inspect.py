"""Removed documents are inspectable: a step with ``removed: true`` keeps their text and reason, and
`mai data inspect WORK_DIR --step c4 --sample 5` shows a reproducible sample with the file each came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mai.cli import main
from mai.data.pipeline import InputConfig, PipelineSpec, run_pipeline
from mai.data.pipeline.files import read_jsonl


def test_removed_output_and_inspect(tmp_path: Path, wiki: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in wiki[:60]))
    spec = PipelineSpec(name="i", work_dir=str(tmp_path / "w"), workers=1,
                        inputs=[InputConfig(source="s", reader="jsonl", paths=[str(tmp_path / "a.jsonl")])],
                        steps=[{"type": "c4", "removed": True}, {"type": "gopher_quality", "min_words": 500}])
    report = run_pipeline(spec, log=None)
    removed_c4 = sum(report["removed_by_step"]["c4"].values())
    assert removed_c4 >= 5 and "gopher_quality" in report["removed_by_step"]
    rows = [r for p in (tmp_path / "w" / "removed" / "c4").glob("*.jsonl.zst") for r in read_jsonl(p)]
    assert len(rows) == removed_c4 and not (tmp_path / "w" / "removed" / "gopher_quality").exists()
    by_id = {r["id"]: r for r in rows}
    for row in rows:  # the text as the step saw it, with its reason
        line = int(row["id"].rsplit(":", 1)[1])
        assert row["text"] == wiki[line - 1] and row["reason"] in report["removed_by_step"]["c4"]

    assert main(["data", "inspect", str(tmp_path / "w"), "--step", "c4", "--sample", "5"]) == 0
    out = capsys.readouterr().out
    shown = [ln.split()[1] for ln in out.splitlines() if ln.startswith("--- ")]
    assert len(shown) == 5 and set(shown) <= set(by_id)
    assert f"step c4: {removed_c4} removed" in out and str(tmp_path / "a.jsonl") in out
    assert by_id[shown[0]]["text"][:200] in out
    main(["data", "inspect", str(tmp_path / "w"), "--step", "c4", "--sample", "5"])
    assert capsys.readouterr().out == out  # the same seed, the same sample
    assert main(["data", "inspect", str(tmp_path / "w"), "--step", "gopher_quality", "--sample", "3"]) == 0
    out = capsys.readouterr().out
    assert "removed: true" in out and len([ln for ln in out.splitlines() if ln.startswith("--- ")]) == 3
    assert main(["data", "inspect", str(tmp_path / "w"), "--step", "fineweb"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: step 'fineweb' removed nothing") and err.count("\n") == 1
