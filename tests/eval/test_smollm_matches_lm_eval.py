"""SmolLM2-135M-Instruct from its GGUF: ``mai eval`` scores equal lm-evaluation-harness's ``hf`` model
(transformers loading the same GGUF) on a HellaSwag / ARC-Easy / PIQA subset, per example and in total;
lm-eval running the ``mai`` adapter model agrees as well."""

from __future__ import annotations

import pytest
import torch

from mai.eval.harness import run_task
from mai.eval.lm_eval_tasks import write_local_tasks
from mai.eval.scoring import LoglikScorer
from mai.eval.tasks import get_task
from mai.interop import load_model

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("gguf")
pytestmark = pytest.mark.slow
N = 8  # examples per task: enough to compare every choice's log-likelihood, small enough for CI
NAMES = ["hellaswag", "arc_easy", "piqa"]


@pytest.fixture(scope="module")
def lm_eval_results(smollm, benchdata, tmp_path_factory):
    import os

    from lm_eval.tasks import TaskManager

    import mai.eval.lm_eval_adapter  # noqa: F401  (registers "mai")

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    folder = tmp_path_factory.mktemp("tasks")
    names = write_local_tasks(NAMES, folder, limit=N)
    out = {}
    hf_args = {"pretrained": str(smollm.parent), "gguf_file": smollm.name, "dtype": "float32"}
    for model, args in [("hf", hf_args), ("mai", {"pretrained": str(smollm)})]:
        out[model] = lm_eval.simple_evaluate(model=model, model_args=args, tasks=names, batch_size=8,
                                             device="cpu", task_manager=TaskManager(include_path=str(folder)),
                                             log_samples=True)
    return out


def test_scores_equal_lm_eval_hf(smollm, lm_eval_results):
    loaded = load_model(smollm)
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
