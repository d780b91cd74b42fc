"""`mai data quality train` end to end: real documents (Wikipedia intros and human chat logs from registry
packages) rated by a teacher over the OpenAI API (the stand-in annotator of teacher_server.py, which
scores by a rule a text classifier can learn), a fastText classifier trained on its labels, held-out
accuracy reported, and the `quality` step using the model in a pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mai.cli import main
from mai.data.corpus import default_corpus
from mai.data.pipeline import InputConfig, PipelineSpec, run_pipeline
from mai.data.pipeline.quality import FastTextModel, QualityTrainConfig, parse_score, train_fasttext
from mai.data.pipeline.registry import build_steps
from mai.errors import MaiError
from tests.data_pipeline.teacher_server import serve


def _chats(n: int) -> list[str]:
    from mai.post.chat_data import chitchat_conversations

    return ["\n".join(turn["content"] for turn in convo) for convo in chitchat_conversations(n)]


def _jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def test_quality_train_and_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wiki, chats = list(default_corpus(400)), _chats(2000)[:400]
    _jsonl(tmp_path / "docs.jsonl", [t for pair in zip(wiki[:300], chats[:300], strict=True) for t in pair])
    config = tmp_path / "quality.yaml"
    with serve() as base:
        teacher = {"base_url": f"{base}/v1", "model": "rater", "api_key": "x", "concurrency": 8,
                   "rpm": 100_000}
        config.write_text(yaml.safe_dump({"inputs": [str(tmp_path / "docs.jsonl")],
                                          "out_dir": str(tmp_path / "q"), "teacher": teacher}))
        assert main(["data", "quality", "train", str(config)]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert report["documents"] == report["labelled"] == 600 and 100 < report["good"] < 400
    assert report["held_out"] >= 80 and f"accuracy {report['held_out_accuracy']:.3f}" in out
    assert report["held_out_accuracy"] >= max(0.83, report["majority_baseline"] + 0.07)  # 0.8655 vs 0.7563

    _jsonl(tmp_path / "more.jsonl", wiki[300:] + chats[300:])  # documents the classifier has not seen
    inputs = [InputConfig(source="s", reader="jsonl", paths=[str(tmp_path / "more.jsonl")])]
    spec = PipelineSpec(name="q", work_dir=str(tmp_path / "w"), workers=1, inputs=inputs,
                        steps=[{"type": "quality", "model": str(tmp_path / "q")}])
    run = run_pipeline(spec, log=None)
    assert run["steps"]["quality"]["held_out_accuracy"] == report["held_out_accuracy"]
    assert run["documents"]["input"] == 200 and 50 <= run["removed_by_step"]["quality"]["low_quality"] <= 180


def test_classifier_and_reply_parsing() -> None:
    assert parse_score("Reasoning … Educational score: 4") == 4 and parse_score("**Score:** 2") == 2
    assert parse_score("I cannot rate this") is None
    cfg = QualityTrainConfig(inputs=[], out_dir="x", epochs=10)
    texts = ["good clean prose about rivers"] * 5 + ["buy cheap pills now"] * 5
    model = train_fasttext(texts, [1] * 5 + [0] * 5, cfg)
    assert model.score("prose about rivers") > 0.5 > model.score("cheap pills")
    assert isinstance(model, FastTextModel)
    with pytest.raises(MaiError, match="no model.npz"):
        build_steps([{"type": "quality", "model": "/nonexistent"}])
