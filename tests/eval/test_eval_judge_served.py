"""`mai eval --judge MODEL`: the run serves its judge itself with `mai serve` (a child process on a free
127.0.0.1 port) and stops it at the end — also when the run is killed with SIGKILL (the kernel's
parent-death signal). The tiny random model judges: the point is the child's life, not the verdicts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mai.serve.child import health
from tests.eval.test_cli_eval import mai
from tests.eval.test_pairwise import BAD, GOOD, PROMPTS

SERVED = re.compile(r"served by `mai serve` \(pid (\d+)\) at (\S+)")


def gone(pid: int, timeout: float = 60) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow  # two judges started (about 50 s on 2 shared cores)
def test_catalog_or_path_judge_is_served_for_the_run_and_stopped(tiny_dir, tmp_path):
    prompts, good, bad = tmp_path / "p.jsonl", tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    good.write_text("".join(json.dumps({"answer": x}) + "\n" for x in GOOD))
    bad.write_text("".join(json.dumps({"answer": x}) + "\n" for x in BAD))
    catalog = tmp_path / "catalog.yaml"
    entry = {"name": "tiny-judge", "path": str(tiny_dir), "max_seq_len": 512, "safety": {"classifier": "off"}}
    catalog.write_text(yaml.safe_dump({"models": [entry]}))
    common = ["--a", str(good), "--b", str(bad), "--prompts", str(prompts), "--judge-max-tokens", "4"]

    # a catalog model; the run is killed with SIGKILL as soon as its judge is up: the judge goes too
    run = subprocess.Popen([sys.executable, "-m", "mai.cli", "eval", "--judge", "tiny-judge",
                            "--judge-catalog", str(catalog), *common, "--out", str(tmp_path / "killed")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.stdout is not None
    lines = []
    for line in run.stdout:
        lines.append(line)
        if found := SERVED.search(line):
            break
    else:
        raise AssertionError(f"the judge was never served: {''.join(lines)}")
    run.send_signal(signal.SIGKILL)
    run.wait(30)
    pid, url = int(found.group(1)), found.group(2)
    assert gone(pid), "the judge outlived the killed run"
    assert health(url)[0] == 0  # nothing listens there any more

    # a model path, to the end: served under the name "judge", stopped when the run ends
    proc = mai("eval", "--judge", str(tiny_dir), *common, "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    found = SERVED.search(proc.stdout)
    assert found and "judge      stopped" in proc.stdout
    assert gone(int(found.group(1)), timeout=5) and health(found.group(2))[0] == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())["judge"]
    assert report["judge_model"] == "judge" and report["judgments"] == 6
    assert report["wins"] + report["losses"] + report["ties"] + report["malformed"] == 6
