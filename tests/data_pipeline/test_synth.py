"""`mai data synth` against a real OpenAI-compatible server on 127.0.0.1 serving a real small model
(SmolLM2-135M-Instruct), with injected 429s, 500s, timeouts and garbage replies, a cache that never pays
twice, and a real kill in the middle of a run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mai.data.pipeline.files import read_jsonl
from mai.data.pipeline.synth.config import load_synth_config
from mai.data.pipeline.synth.run import run_synth
from tests.data_pipeline.teacher_server import ROOT, http_json, serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(smollm2_hf_dir: Path) -> Iterator[str]:
    with serve(smollm2_hf_dir) as base:
        yield base


def _config(tmp_path: Path, base: str, name: str, topics: list[str], **teacher) -> Path:
    cfg = {
        "name": name, "work_dir": str(tmp_path / name), "min_completion_tokens": 8,
        "teacher": {"base_url": f"{base}/v1", "model": "smollm2-135m", "api_key": "test", "max_tokens": 24,
                    "timeout_s": 20, "backoff_s": 0.1, "max_retries": 4, "concurrency": 1, "rpm": 600,
                    "tpm": 100_000, **teacher},
        "prompts": {"mode": "templates", "topics": topics, "styles": ["textbook", "story"],
                    "audiences": ["young children"]},
        "steps": [{"type": "unicode_fix"}, {"type": "exact_dedup"}, {"type": "minhash_dedup"},
                  {"type": "decontam", "texts": ["an evaluation question that no generation will ever "
                                                 "contain word for word in this test run"]}],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_faults_retries_cache_and_provenance(server: str, tmp_path: Path) -> None:
    http_json(f"{server}/control", {"faults": ["429", "500", "timeout", "garbage"]})
    before = http_json(f"{server}/stats")["requests"]
    # the injected timeout costs the client its whole timeout_s; 8 s still leaves a 24-token answer ~8x room
    report = run_synth(load_synth_config(_config(tmp_path, server, "a", ["volcanoes", "bees"], timeout_s=8)),
                       log=None)
    teacher = report["teacher"]
    assert teacher == {"requests": 4, "cached": 0, "generated": 4, "failed": 0, "attempts": 8}
    assert http_json(f"{server}/stats")["requests"] - before == 8  # 4 faults on the first prompt, 4 answers
    d = report["documents"]
    assert d["input"] == 4 and d["input"] == d["kept"] + d["removed"] + d["failed"] and d["failed"] == 0
    docs = [r for p in Path(report["output_dir"]).rglob("*.zst") for r in read_jsonl(p)]
    assert len(docs) == d["kept"] >= 1
    prov = docs[0]["metadata"]["provenance"]
    assert prov["teacher_model"] == "smollm2-135m" and prov["prompt_template"] == "topic-style-audience-v1"
    assert prov["topic"] in ("volcanoes", "bees") and prov["temperature"] == 0.6 and prov["top_p"] == 0.95
    assert prov["usage"]["completion_tokens"] <= 24 and prov["request_key"]
    # the kept documents are SFT instruction data: [user: the teacher's prompt, assistant: the document]
    from mai.interop import load_model
    from mai.interop.bundled import smollm2_gguf
    from mai.post.chat_data import encode_conversation, synth_conversations

    chats = list(synth_conversations(tmp_path / "a"))
    assert len(chats) == len(docs)
    by_text = {doc["text"]: doc["metadata"]["provenance"]["prompt"] for doc in docs}
    for messages, where in chats:
        assert by_text[messages[1]["content"]] == messages[0]["content"] and " document synthetic:" in where
    tok = load_model(smollm2_gguf(), max_seq_len=256).tokenizer
    encoded = encode_conversation(tok, chats[0][0], chats[0][1])
    trained = tok.decode([t for t, m in zip(encoded.ids, encoded.mask, strict=True) if m])
    assert chats[0][0][1]["content"] in trained and chats[0][0][0]["content"] not in trained

    again = run_synth(load_synth_config(_config(tmp_path, server, "a", ["volcanoes", "bees"], timeout_s=8)),
                      log=None)
    assert again["teacher"]["cached"] == 4 and again["teacher"]["attempts"] == 0
    assert http_json(f"{server}/stats")["requests"] - before == 8  # the re-run paid nothing
    assert again["documents"] == report["documents"]


def test_a_teacher_that_keeps_failing_is_counted_then_retried(server: str, tmp_path: Path) -> None:
    http_json(f"{server}/control", {"faults": ["500", "garbage"]})
    path = _config(tmp_path, server, "b", ["glaciers"], max_retries=1)
    cfg = load_synth_config(path, ["prompts.styles=[textbook]"])
    report = run_synth(cfg, log=None)
    assert report["teacher"]["failed"] == 1
    assert report["documents"] == {"input": 1, "kept": 0, "removed": 0, "failed": 1}
    assert report["failed_by_step"] == {"teacher": 1}
    assert "gave up after 2 attempts" in report["errors"][0]["error"]
    retry = run_synth(cfg, log=None)  # failures are not cached: the next run asks again
    assert retry["teacher"]["generated"] == 1 and retry["documents"]["failed"] == 0


def test_killed_synth_resumes_without_paying_twice(server: str, tmp_path: Path) -> None:
    path = _config(tmp_path, server, "c", ["tides", "clouds", "rainbows"])
    proc = subprocess.Popen([sys.executable, "-m", "mai.cli", "data", "synth", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    db = tmp_path / "c" / "cache.sqlite"
    deadline = time.time() + 180
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        assert time.time() < deadline
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                if con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] >= 2:
                    break
        except sqlite3.OperationalError:  # not created yet
            pass
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as con:
        cached = con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert 2 <= cached < 6
    report = run_synth(load_synth_config(path), log=None)
    assert report["teacher"]["cached"] == cached and report["teacher"]["generated"] == 6 - cached
    ids = [r["id"] for p in Path(report["output_dir"]).rglob("*.zst") for r in read_jsonl(p)]
    assert len(ids) == len(set(ids)) == report["documents"]["kept"]
    assert report["documents"]["input"] == 6
