"""SmolLM2-135M-Instruct from its GGUF: ``mai eval`` scores equal lm-evaluation-harness's ``hf`` model
(transformers loading the same GGUF) on a HellaSwag / ARC-Easy / PIQA subset, per example and in total;
lm-eval running the ``mai`` adapter model agrees as well."""

from __future__ import annotations

import pytest
import torch

from mai.eval.harness import run_task
from mai.eval.lm_eval_tasks import local_task_manager, write_local_tasks
from mai.eval.scoring import LoglikScorer
from mai.eval.tasks import get_task
from mai.interop import load_model

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("gguf")
pytestmark = pytest.mark.slow
N = 8  # examples per task: enough to compare every choice's log-likelihood, small enough for CI
NAMES = ["hellaswag", "arc_easy", "piqa"]


@pytest.fixture(scope="module")
def lm_eval_results(smollm_gguf, smollm_hf, benchdata, tmp_path_factory):
    import os

    import mai.eval.lm_eval_adapter  # noqa: F401  (registers "mai")

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    folder = tmp_path_factory.mktemp("tasks")
    names = write_local_tasks(NAMES, folder, limit=N)
    out = {}
    for key, model, args in [("hf", smollm_hf(8), None), ("mai", "mai", {"pretrained": str(smollm_gguf)})]:
        out[key] = lm_eval.simple_evaluate(model=model, model_args=args, tasks=names, batch_size=8,
                                           device="cpu", task_manager=local_task_manager(folder),
                                           log_samples=True)
    return out


def test_scores_equal_lm_eval_hf(smollm_gguf, lm_eval_results):
    loaded = load_model(smollm_gguf)
    scorer = LoglikScorer(loaded.model, loaded.tokenizer)
    for name in NAMES:
        ours = run_task(scorer, get_task(name), N)
        theirs = lm_eval_results["hf"]["results"][f"mai_{name}"]
        for metric in ("acc", "acc_norm"):
            assert abs(ours.metrics[metric] - theirs[f"{metric},none"]) <= 0.005, (name, metric)
        # and per example: the same log-likelihood for every choice
        samples = sorted(lm_eval_results["hf"]["samples"][f"mai_{name}"], key=lambda s: s["doc_id"])
        examples = get_task(name).load(N)
        with torch.no_grad():
            for ex, sample in zip(examples, samples, strict=True):
                theirs_ll = [r[0][0] for r in sample["resps"]]
                ours_ll = [s[0] for s in scorer.score(ex.requests)]
                assert ours_ll == pytest.approx(theirs_ll, abs=2e-3)


def test_mai_adapter_in_lm_eval_equals_hf(lm_eval_results):
    for name in NAMES:
        a = lm_eval_results["mai"]["results"][f"mai_{name}"]
        b = lm_eval_results["hf"]["results"][f"mai_{name}"]
        assert a["acc,none"] == b["acc,none"] and a["acc_norm,none"] == b["acc_norm,none"]


def test_few_shot_prefix_shared_across_questions_scores_as_lm_eval(smollm_gguf, smollm_hf, benchdata,
                                                                   tmp_path):
    """MMLU 5-shot: the questions of a subject share their five solved examples, which mai runs once per
    subject; every choice's log-likelihood still equals lm-eval's, which runs each question whole."""
    import os

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    write_local_tasks(["mmlu_5shot"], tmp_path, limit=4)
    subjects = ["astronomy", "virology"]
    res = lm_eval.simple_evaluate(model=smollm_hf(8), tasks=[f"mai_mmlu_5shot_{s}" for s in subjects],
                                  device="cpu", task_manager=local_task_manager(tmp_path),
                                  log_samples=True)
    loaded = load_model(smollm_gguf)
    scorer = LoglikScorer(loaded.model, loaded.tokenizer)
    examples = [ex for ex in get_task("mmlu_5shot").load(4) if ex.group in subjects]
    pairs = [r for ex in examples for r in ex.requests]
    groups = scorer.groups(pairs)
    assert sorted(len(g.rows) for g in groups if g.prefix) == [4, 4]  # one group per subject
    ours = iter(s[0] for s in scorer.score(pairs))
    for subject in subjects:
        for sample in sorted(res["samples"][f"mai_mmlu_5shot_{subject}"], key=lambda s: s["doc_id"]):
            assert [next(ours) for _ in sample["resps"]] == pytest.approx([r[0][0] for r in sample["resps"]],
                                                                           abs=2e-3)
