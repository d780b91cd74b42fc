"""The Ray Data executor runs the same pipeline definition as the local pool and gets the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mai.data.pipeline import InputConfig, PipelineSpec, run_pipeline
from mai.data.pipeline.files import read_jsonl

pytestmark = pytest.mark.slow


def test_ray_matches_local(tmp_path: Path, wiki: list[str]) -> None:
    ray = pytest.importorskip("ray")
    docs = wiki[:90] + wiki[:10] + ["short text"]
    for i in range(4):
        (tmp_path / f"{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[i::4]))
    steps = [{"type": "unicode_fix"}, {"type": "langid"}, {"type": "gopher_quality"},
             {"type": "gopher_repetition"}, {"type": "fineweb"}, {"type": "pii"}, {"type": "exact_dedup"},
             {"type": "minhash_dedup"}, {"type": "c4", "drop_lines_without_terminal_punct": False,
                                         "min_sentences": 2}]
    reports, outputs = {}, {}
    for executor in ("local", "ray"):
        inputs = [InputConfig(source="s", reader="jsonl", paths=[str(tmp_path / "*.jsonl")])]
        spec = PipelineSpec(name=executor, work_dir=str(tmp_path / executor), executor=executor, workers=2,
                            inputs=inputs, steps=steps)
        reports[executor] = run_pipeline(spec, log=None)
        outputs[executor] = [r for p in sorted((tmp_path / executor / "output").rglob("*.zst"))
                             for r in read_jsonl(p)]
    ray.shutdown()
    assert reports["ray"]["documents"] == reports["local"]["documents"]
    assert reports["ray"]["documents"]["input"] == 101 and reports["ray"]["documents"]["kept"] >= 50
    assert reports["ray"]["removed_by_step"] == reports["local"]["removed_by_step"]
    assert outputs["ray"] == outputs["local"]
