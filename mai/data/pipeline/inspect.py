"""``mai data inspect WORK_DIR [--step LABEL --sample N]``: look at what a step removed, and why.

Counts alone do not tell whether a rule removes spam or good prose. A step declared with ``removed: true``
keeps each document it removes (its text as the step saw it, the reason, the metadata) in
``WORK_DIR/removed/LABEL/SHARD.jsonl.zst``; this command prints a reproducible random sample of them,
with the input file each came from. For a step without that output it samples the ledger (ids and
reasons) and says how to get the text.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mai.data.pipeline.files import read_jsonl
from mai.data.pipeline.inputs import Manifest
from mai.data.pipeline.report import summary
from mai.errors import MaiError


def _reservoir(rows: Iterator[dict[str, Any]], k: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """A uniform sample of ``k`` rows (in the order seen) without holding them all, and the row count."""
    rng = random.Random(seed)
    picked: list[tuple[int, dict[str, Any]]] = []
    n = 0
    for n, row in enumerate(rows, 1):
        if len(picked) < k:
            picked.append((n, row))
        else:
            j = rng.randrange(n)
            if j < k:
                picked[j] = (n, row)
    return [row for _, row in sorted(picked, key=lambda x: x[0])], n


def _origin(doc_id: str, paths: dict[str, str]) -> str:
    """``SOURCE:FILEKEY:OFFSET`` → ``  path @ OFFSET`` when the file key is one of the run's files."""
    parts = doc_id.split(":")
    if len(parts) >= 3 and parts[1] in paths:
        return f"  {paths[parts[1]]} @ {':'.join(parts[2:])}"
    return ""


def _rows(folder: Path, step: str | None = None) -> Iterator[dict[str, Any]]:
    for path in sorted(folder.rglob("*.jsonl.zst")):
        for row in read_jsonl(path):
            if step is None or (row.get("step") == step and row.get("outcome") == "removed"):
                yield row


def inspect_work_dir(work_dir: str | Path, step: str | None = None, sample: int = 5, seed: int = 0,
                     chars: int = 600) -> str:
    """The text ``mai data inspect`` prints."""
    work = Path(work_dir)
    path = work / "report.json"
    if not path.is_file():
        raise MaiError(f"{work} has no report.json: run `mai data run` on it first (or finish the run)")
    report = json.loads(path.read_text(encoding="utf-8"))
    if step is None:
        kept = sorted(p.name for p in (work / "removed").iterdir()) if (work / "removed").is_dir() else []
        return summary(report) + f"\n  removed documents kept for: {', '.join(kept) or 'no step'}"
    reasons = report["removed_by_step"].get(step)
    if reasons is None:
        raise MaiError(f"step '{step}' removed nothing in this run (steps that removed documents: "
                       f"{', '.join(report['removed_by_step']) or 'none'})")
    paths = (Manifest.load(work) or Manifest()).paths()
    has_text = (work / "removed" / step).is_dir()
    rows, n = _reservoir(_rows(work / "removed" / step) if has_text else _rows(work / "ledger", step),
                         sample, seed)
    counts = ", ".join(f"{r} {c:,}" for r, c in sorted(reasons.items(), key=lambda x: -x[1]))
    lines = [f"step {step}: {n:,} removed ({counts}); {len(rows)} sampled (seed {seed})"]
    if not has_text:
        lines.append("  (no text kept: declare the step with `removed: true` to keep removed documents)")
    for row in rows:
        lines.append(f"\n--- {row['id']}  [{row['reason']}]{_origin(row['id'], paths)}")
        if "text" in row:
            text = row["text"]
            lines.append(text[:chars] + (f" … ({len(text):,} characters)" if len(text) > chars else ""))
    return "\n".join(lines)
