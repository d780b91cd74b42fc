"""SmolLM2-135M-Instruct from its GGUF: ``mai eval`` on GSM8K and HumanEval end to end (``--limit 2``, a
short token budget to stay cheap on CPU), and GSM8K's greedy answers equal lm-evaluation-harness's
``generate_until`` with its ``hf`` model (transformers loading the same GGUF, fp32) text for text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mai.eval import answers, sandbox

pytestmark = pytest.mark.slow
N, TOKENS = 2, 48


def mai_records(out: Path, task: str) -> list[dict]:
    [log] = list((out / "samples").glob(f"*/{task}.jsonl"))
    return sorted((json.loads(x) for x in log.read_text().splitlines()[1:]), key=lambda r: r["index"])


@pytest.fixture(scope="module")
def mai_run(smollm, benchdata, tmp_path_factory):
    if sandbox.sandbox_problem():
        pytest.skip(str(sandbox.sandbox_problem()))
    out = tmp_path_factory.mktemp("gen")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # small decode matmuls: one thread is fastest
    proc = subprocess.run([sys.executable, "-m", "mai.cli", "eval", str(smollm), "--tasks", "gsm8k,humaneval",
                           "--limit", str(N), "--max-new-tokens", str(TOKENS), "--precision", "fp32",
                           "--out", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_gsm8k_and_humaneval_end_to_end(smollm, mai_run):
    out, stdout = mai_run
    results = json.loads((out / "results.json").read_text())["results"][str(smollm)]
    gsm = mai_records(out, "gsm8k")
    assert results["gsm8k"]["n"] == N and len(gsm) == N
    for name in ("strict_match", "flexible_extract"):
        assert results["gsm8k"][name] == sum(r["metrics"][name] for r in gsm) / N
    from mai.eval.gen_tasks import gsm8k

    for rec, ex in zip(gsm, gsm8k(N), strict=True):
        [text] = rec["completions"]
        assert text and "Q:" not in text  # generation stopped at the task's stop string (or the budget)
        assert rec["metrics"] == answers.gsm8k_scores(text, ex.reference)
    code = mai_records(out, "humaneval")
    assert results["humaneval"]["n"] == N
    assert results["humaneval"]["pass@1"] == sum(r["runs"][0]["passed"] for r in code) / N
    assert all(len(r["runs"]) == 1 and "returncode" in r["runs"][0] for r in code)
    assert "strict_match" in stdout and "pass@1" in stdout


def test_gsm8k_greedy_answers_equal_lm_eval_hf(smollm_hf, mai_run, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("gguf")
    import torch
    from lm_eval.tasks import TaskManager

    from mai.eval.lm_eval_tasks import write_local_gsm8k

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    name = write_local_gsm8k(tmp_path, limit=N)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = lm_eval.simple_evaluate(model=smollm_hf(1), tasks=[name], device="cpu",
                                      gen_kwargs=f"max_gen_toks={TOKENS}", log_samples=True,
                                      task_manager=TaskManager(include_path=str(tmp_path)))
    finally:
        torch.set_num_threads(threads)
    # lm-eval logs each sample once per filter; the generated text is the same in both
    theirs = sorted((s for s in res["samples"][name] if s["filter"] == "strict-match"),
                    key=lambda s: s["doc_id"])
    ours = mai_records(mai_run[0], "gsm8k")
    assert [r["completions"][0] for r in ours] == [s["resps"][0][0] for s in theirs]
    for metric, key in (("strict_match", "exact_match,strict-match"),
                        ("flexible_extract", "exact_match,flexible-extract")):
        assert sum(r["metrics"][metric] for r in ours) / N == res["results"][name][key]
