"""Per-shard counts and the per-run report that adds them up.

Every input document ends in exactly one of three outcomes: kept, removed (by a step, for a reason) or
failed (in a step, with an error). :func:`check_balance` asserts ``input == kept + removed + failed``
for every shard and for the run; the report refuses to be written when it does not hold. The full
ledger, one line per removed or failed document, lives in ``WORK_DIR/ledger/``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mai.data.pipeline.document import Document
from mai.data.pipeline.files import write_json, write_text
from mai.errors import MaiError


@dataclasses.dataclass
class ShardStats:
    shard: str
    source: str
    input: int = 0
    kept: int = 0
    removed: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # step → reason → n
    failed: dict[str, int] = dataclasses.field(default_factory=dict)  # step → n
    notes: dict[str, int] = dataclasses.field(default_factory=dict)  # e.g. repaired non-UTF-8 text
    errors: list[dict[str, str]] = dataclasses.field(default_factory=list)  # first few failures

    def remove(self, step: str, reason: str) -> None:
        by_reason = self.removed.setdefault(step, {})
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def fail(self, doc_id: str, step: str, error: str) -> None:
        self.failed[step] = self.failed.get(step, 0) + 1
        if len(self.errors) < 20:
            self.errors.append({"id": doc_id, "step": step, "error": error[:500]})

    @property
    def n_removed(self) -> int:
        return sum(sum(r.values()) for r in self.removed.values())

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    def check(self) -> None:
        if self.input != self.kept + self.n_removed + self.n_failed:
            raise MaiError(f"internal: shard {self.shard} lost track of documents: input {self.input} "
                           f"!= kept {self.kept} + removed {self.n_removed} + failed {self.n_failed}")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardStats:
        return cls(**data)


@dataclasses.dataclass
class ShardOutput:
    """What one stage of one shard records besides its kept documents: counts, the ledger of removed and
    failed ids, and the removed documents themselves for the steps that keep them (``removed: true``)."""

    stats: ShardStats
    removed_docs: dict[str, list[dict[str, Any]]]  # step label → rows, for steps with save_removed
    ledger: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def fail(self, doc_id: str, step: str, error: str) -> None:
        self.stats.fail(doc_id, step, error)
        self.ledger.append({"id": doc_id, "outcome": "failed", "step": step, "error": error})

    def remove(self, doc_id: str, step: str, reason: str, doc: Document | None = None) -> None:
        self.stats.remove(step, reason)
        self.ledger.append({"id": doc_id, "outcome": "removed", "step": step, "reason": reason})
        if doc is not None and step in self.removed_docs:
            self.removed_docs[step].append({"id": doc.id, "reason": reason, "text": doc.text,
                                            "metadata": {k: v for k, v in doc.metadata.items()
                                                         if not k.startswith("_")}})


def combine(shard: str, source: str, stages: list[ShardStats]) -> ShardStats:
    """One shard's end-to-end counts from its per-stage counts (stage k's input is stage k-1's kept)."""
    total = ShardStats(shard, source, input=stages[0].input, kept=stages[-1].kept)
    for prev, cur in zip(stages, stages[1:], strict=False):
        if cur.input != prev.kept:
            raise MaiError(f"internal: shard {shard}: a stage read {cur.input} documents, the one before "
                           f"kept {prev.kept}")
    for st in stages:
        for step, reasons in st.removed.items():
            for reason, n in reasons.items():
                total.removed.setdefault(step, {})
                total.removed[step][reason] = total.removed[step].get(reason, 0) + n
        for step, n in st.failed.items():
            total.failed[step] = total.failed.get(step, 0) + n
        for key, n in st.notes.items():
            total.notes[key] = total.notes.get(key, 0) + n
        total.errors += st.errors[: max(0, 20 - len(total.errors))]
    total.check()
    return total


def build_report(name: str, shards: list[ShardStats], seconds: float,
                 extra: dict[str, Any]) -> dict[str, Any]:
    removed_by_step: dict[str, dict[str, int]] = {}
    failed_by_step: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    sources: dict[str, Counter[str]] = {}
    for st in shards:
        st.check()
        for step, reasons in st.removed.items():
            for reason, n in reasons.items():
                removed_by_step.setdefault(step, {})
                removed_by_step[step][reason] = removed_by_step[step].get(reason, 0) + n
        failed_by_step.update(st.failed)
        notes.update(st.notes)
        src = sources.setdefault(st.source, Counter())
        src.update({"input": st.input, "kept": st.kept, "removed": st.n_removed, "failed": st.n_failed})
    total = {k: sum(s[k] for s in sources.values()) for k in ("input", "kept", "removed", "failed")}
    if total["input"] != total["kept"] + total["removed"] + total["failed"]:
        raise MaiError(f"internal: the run's counts do not add up: {total}")
    return {
        "pipeline": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 2),
        "documents": total,
        "sources": {k: dict(v) for k, v in sorted(sources.items())},
        "removed_by_step": removed_by_step,
        "failed_by_step": dict(failed_by_step),
        "notes": dict(notes),
        "errors": [e for st in shards for e in st.errors][:50],
        "shards": [dataclasses.asdict(st) | {"errors": len(st.errors)} for st in shards],
        **extra,
    }


def summary(report: dict[str, Any]) -> str:
    """The report as a few readable lines (also saved as report.txt)."""
    d = report["documents"]

    def pct(n: int) -> str:
        return f"{100 * n / d['input']:.1f}%" if d["input"] else "-"

    lines = [f"pipeline {report['pipeline']}: {d['input']:,} documents in {report['seconds']:.1f} s",
             f"  kept     {d['kept']:>9,}  {pct(d['kept'])}",
             f"  removed  {d['removed']:>9,}  {pct(d['removed'])}",
             f"  failed   {d['failed']:>9,}  {pct(d['failed'])}"]
    for step, reasons in report["removed_by_step"].items():
        parts = ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
        lines.append(f"  removed by {step:<18} {sum(reasons.values()):>7,}  ({parts})")
    for step, n in report["failed_by_step"].items():
        lines.append(f"  failed in {step:<19} {n:>7,}")
    for key, n in report["notes"].items():
        lines.append(f"  note: {key} {n:,}")
    for label, info in report.get("steps", {}).items():  # what a step says about itself (model, allow-list)
        facts = ", ".join(f"{k} {v}" for k, v in info.items() if not isinstance(v, (list, dict)))
        lines.append(f"  step {label}: {facts}")
    for src, c in report["sources"].items():
        lines.append(f"  source {src}: {c['input']:,} in → {c['kept']:,} kept")
    for err in report["errors"][:5]:
        lines.append(f"  error {err['step']} {err['id']}: {err['error'][:160]}")
    if "tokens" in report:
        for src, t in report["tokens"].items():
            lines.append(f"  tokens {src}: {t['train_tokens']:,} train / {t['val_tokens']:,} val "
                         f"in {t['dir']}")
    return "\n".join(lines)


def write_report(work_dir: Path, report: dict[str, Any]) -> None:
    write_json(work_dir / "report.json", report)
    write_text(work_dir / "report.txt", summary(report) + "\n")
