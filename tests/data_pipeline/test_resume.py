"""A real `mai data run` process killed mid-stage, run again, ends with exactly the documents of an
uninterrupted run: none lost, none duplicated, and cross-shard dedup decides the same way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mai.data.pipeline.files import read_jsonl

pytestmark = pytest.mark.slow


def _spec(tmp_path: Path, work: str, slow: float) -> Path:
    spec = {
        "name": "resume", "work_dir": str(tmp_path / work), "workers": 2,
        "inputs": [{"source": "s", "reader": "jsonl", "paths": [str(tmp_path / "in" / "*.jsonl")]}],
        "steps": [{"type": "tests.data_pipeline.slow_steps:SlowStep", "seconds": slow},
                  {"type": "gopher_quality"},
                  {"type": "tests.data_pipeline.slow_steps:SlowExactDedup", "seconds": slow},
                  {"type": "minhash_dedup"}],
    }
    path = tmp_path / f"{work}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _start(spec: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mai.cli", "data", "run", str(spec)], cwd=Path.cwd(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for(pattern: str, folder: Path, count: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while len(list(folder.glob(pattern))) < count:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.time() < deadline, "the run never got that far"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its pool workers, like a machine going down
    proc.wait()


def _outputs(work: Path) -> list[str]:
    return [row["id"] for p in sorted((work / "output").rglob("*.jsonl.zst")) for row in read_jsonl(p)]


def test_killed_run_resumes_exactly(tmp_path: Path, wiki: list[str]) -> None:
    (tmp_path / "in").mkdir()
    docs = wiki[:120] + wiki[:30]  # 30 exact duplicates spread over later shards
    for i in range(6):
        rows = docs[i::6] + ["too short"]
        (tmp_path / "in" / f"{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))

    clean = subprocess.run([sys.executable, "-m", "mai.cli", "data", "run", str(_spec(tmp_path, "clean", 0))],
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr

    spec = _spec(tmp_path, "killed", 0.03)
    work = tmp_path / "killed"
    proc = _start(spec)
    _wait_for("stage0/*.done", work, 2, proc)  # killed in the parallel stage, some shards finished
    _kill(proc)
    done0 = len(list(work.glob("stage0/*.done")))
    assert 2 <= done0 < 6
    proc = _start(spec)
    _wait_for("stage1/*.done", work, 2, proc)  # killed again in the global dedup stage
    _kill(proc)
    assert len(list(work.glob("stage1/*.done"))) < 6
    final = subprocess.run([sys.executable, "-m", "mai.cli", "data", "run", str(spec)],
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert "stage 0 (parallel: slow, gopher_quality): 0 of 6 shards to do" in final.stdout

    ids, clean_ids = _outputs(work), _outputs(tmp_path / "clean")
    assert len(ids) == len(set(ids)) == 120
    assert ids == clean_ids
    report = json.loads((work / "report.json").read_text())
    clean_report = json.loads((tmp_path / "clean" / "report.json").read_text())
    assert report["documents"] == clean_report["documents"] == {"input": 156, "kept": 120, "removed": 36,
                                                                 "failed": 0}
    assert report["removed_by_step"] == clean_report["removed_by_step"]
