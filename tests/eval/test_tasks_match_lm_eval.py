"""mai's task prompts are lm-eval's: lm-eval builds its requests from its own task YAMLs over the same
documents (local files written by mai), and they equal mai's (context, continuation) pairs exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from mai.eval.lm_eval_tasks import local_task_manager, write_local_tasks
from mai.eval.tasks import get_task

pytest.importorskip("lm_eval")
N = 4


def lm_eval_requests(include: Path, task_name: str) -> list[list[tuple[str, str]]]:
    task = local_task_manager(include).load_task_or_group([task_name])[task_name]
    task.build_all_requests(limit=N, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        by_doc.setdefault(inst.doc_id, []).append(tuple(inst.args))
    return [by_doc[d] for d in sorted(by_doc)]


@pytest.mark.parametrize("name", ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "boolq",
                                  "lambada"])
def test_requests_equal_lm_eval(benchdata, tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    [task_name] = write_local_tasks([name], tmp_path, limit=N)
    ours = [ex.requests for ex in get_task(name).load(N)]
    assert lm_eval_requests(tmp_path, task_name) == ours


@pytest.mark.parametrize("name", ["mmlu", "mmlu_5shot"])
def test_mmlu_requests_equal_lm_eval(benchdata, tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    assert write_local_tasks([name], tmp_path, limit=2) == [f"mai_{name}"]
    assert len(list(tmp_path.glob(f"mai_{name}_*.yaml"))) == 57
    for subject in ("astronomy", "world_religions"):
        ours = [ex.requests for ex in get_task(name).load(2) if ex.group == subject]
        assert lm_eval_requests(tmp_path, f"mai_{name}_{subject}") == ours


def test_unknown_task_names_the_known_ones():
    from mai.errors import MaiError

    with pytest.raises(MaiError, match="unknown task 'helaswag'.*hellaswag"):
        get_task("helaswag")
