"""One planned stage: its resolved config (what its key hashes), input files, the stages it reads, and the
function that does its work into a given folder (returning a summary for the manifest and report)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class StagePlan:
    name: str
    config: dict[str, Any]
    inputs: list[str]  # files and folders outside the run whose content the stage reads
    upstream: list[str]  # earlier stages whose outputs it reads
    work: Callable[[Path], dict[str, Any]]  # does the stage into this folder; returns its summary
    outputs: str = ""  # what it writes, for `mai recipe plan`
    teacher: bool = False  # asks the teacher


def glob_inputs(patterns: list[str]) -> list[str]:
    """Paths and glob patterns → the existing paths (a pattern matching nothing stays, to be reported)."""
    import glob

    out: list[str] = []
    for p in patterns:
        found = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        out.extend(found or [p])
    return out
