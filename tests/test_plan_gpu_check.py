"""benchmarks/gpu_check.sh stays runnable without a GPU: its CPU dry run trains both models through the
real trainer, compares them with the planner, SIGKILLs and resumes a `mai train` process, resumes from
async checkpoints, and writes one JSON summary."""

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
def test_dry_run_writes_a_complete_summary(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] and summary["device"] == "cpu"
    assert [r["preset"] for r in summary["throughput"]] == ["1b", "moe-demo"]
    for r in summary["throughput"]:
        assert r["tokens_per_s"] > 0 and r["steps"] == 4
        assert 0 < r["predicted"]["mfu"] < 1 and r["predicted"]["tokens_per_s"] > 0
    kill = summary["kill_resume"]
    assert kill["ok"] and kill["exit_code_of_killed"] == -9 and kill["final_step"] == kill["planned_steps"]
    assert summary["async_checkpoint"]["ok"] and summary["async_checkpoint"]["resumed"]
    pp = summary["pipeline"]
    assert pp.get("ok") or "skipped" in pp
    assert "| 1b" in proc.stdout and "kill_resume:" in proc.stdout
