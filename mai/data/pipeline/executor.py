"""Run a pipeline: shards in parallel, global (dedup) steps in a fixed shard order, resumable at any point.

The step list is cut into stages: runs of per-document steps (run on many shards at once) and runs of
global steps (run shard by shard, in declaration order, in the driver). A local stage also does the
``prepare`` work of the global stage after it, so hashing and MinHash signatures are computed in
parallel. Each stage writes, per shard, its kept documents, a ledger of removed/failed ones, its counts,
and then a ``.done`` marker; a re-run skips every shard whose marker exists, and global steps reload the
state that the finished shards saved. The last stage writes the kept documents to the output folder.

Workers come from a ``map_shards(function, items)`` callable: a local process pool here, Ray Data in
:mod:`mai.data.pipeline.ray_executor` — the pipeline definition is the same.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from mai.config import from_dict, to_dict
from mai.data.pipeline.document import Document, Failed, Removed
from mai.data.pipeline.files import is_done, mark_done, read_jsonl, remove_temp_files, write_json, write_jsonl
from mai.data.pipeline.inputs import MANIFEST, InputChanges, Manifest, compare
from mai.data.pipeline.readers import Shard, list_shards, read_shard
from mai.data.pipeline.registry import build_steps
from mai.data.pipeline.report import ShardOutput, ShardStats, build_report, combine, summary, write_report
from mai.data.pipeline.spec import PipelineSpec
from mai.data.pipeline.step import GlobalStep, Step
from mai.errors import MaiError

MapShards = Callable[[Callable[[Any], Any], list[Any]], Iterable[Any]]


@dataclasses.dataclass
class Stage:
    index: int
    is_global: bool
    steps: list[Step]
    prepare: list[GlobalStep] = dataclasses.field(default_factory=list)


def plan_stages(steps: list[Step]) -> list[Stage]:
    """Group consecutive steps of the same kind; the first stage is always a parallel one (it reads)."""
    stages: list[Stage] = []
    for step in steps:
        is_global = isinstance(step, GlobalStep)
        if not stages or stages[-1].is_global != is_global:
            if not stages and is_global:
                stages.append(Stage(0, False, []))
            stages.append(Stage(len(stages), is_global, []))
        stages[-1].steps.append(step)
    if not stages:
        stages.append(Stage(0, False, []))
    for stage, nxt in zip(stages, stages[1:], strict=False):
        if nxt.is_global:
            stage.prepare = nxt.steps  # type: ignore[assignment]
    return stages


class PipelineRun:
    """Everything one process needs to run any stage of any shard of a pipeline."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.work = Path(spec.work_dir)
        self.shards = list_shards(spec.inputs)
        self.by_key = {s.key: s for s in self.shards}
        self.stages = plan_stages(build_steps(spec.steps))

    @cached_property
    def spec_json(self) -> dict[str, Any]:
        return to_dict(self.spec)

    def stage_dir(self, stage: int) -> Path:
        return self.work / f"stage{stage}"

    def docs_path(self, stage: int, key: str) -> Path:
        if stage == len(self.stages) - 1:
            return self.spec.out / self.source(key) / f"{key}.jsonl.zst"
        return self.stage_dir(stage) / f"{key}.jsonl.zst"

    def source(self, key: str) -> str:
        return self.spec.inputs[self.by_key[key].input_index].source

    def pending(self, stage: int) -> list[str]:
        return [s.key for s in self.shards if not is_done(self.stage_dir(stage), s.key)]

    def _records(self, stage: Stage, shard: Shard) -> Iterator[Document | Removed | Failed]:
        if stage.index == 0:
            yield from read_shard(shard, self.spec.inputs)
        else:
            for row in read_jsonl(self.docs_path(stage.index - 1, shard.key)):
                yield Document.from_json(row)

    def run_shard(self, stage: Stage, key: str) -> ShardStats:
        """Run ``stage`` on one shard and write its documents, ledger, counts and marker (in that order)."""
        shard = self.by_key[key]
        stats = ShardStats(key, self.source(key))
        out = ShardOutput(stats, {s.label: [] for s in stage.steps if s.save_removed})
        last = stage.index == len(self.stages) - 1

        def kept() -> Iterator[dict[str, Any]]:
            for rec in self._records(stage, shard):
                stats.input += 1
                if isinstance(rec, Failed):
                    out.fail(rec.id, rec.step, rec.error)
                elif isinstance(rec, Removed):
                    out.remove(rec.id, rec.step, rec.reason)
                else:
                    if stage.index == 0 and "repaired" in rec.metadata:
                        note = rec.metadata["repaired"]
                        stats.notes[note] = stats.notes.get(note, 0) + 1
                    if self._apply(stage, rec, out):
                        stats.kept += 1
                        if last:
                            rec.metadata = {k: v for k, v in rec.metadata.items() if not k.startswith("_")}
                        yield rec.to_json()

        write_jsonl(self.docs_path(stage.index, key), kept())
        write_jsonl(self.work / "ledger" / f"stage{stage.index}" / f"{key}.jsonl.zst", out.ledger)
        for label, rows in out.removed_docs.items():
            write_jsonl(self.work / "removed" / label / f"{key}.jsonl.zst", rows)
        stats.check()
        write_json(self.stage_dir(stage.index) / f"{key}.stats.json", dataclasses.asdict(stats))
        for step in stage.steps if stage.is_global else []:
            step.save_state(self.work / "state", key)  # type: ignore[attr-defined]
        mark_done(self.stage_dir(stage.index), key)
        return stats

    @staticmethod
    def _apply(stage: Stage, doc: Document, out: ShardOutput) -> bool:
        step: Step | None = None
        try:
            for step in stage.steps:
                reason = step(doc)
                if reason:
                    out.remove(doc.id, step.label, reason, doc)
                    return False
            for step in stage.prepare:
                step.prepare(doc)
        except MaiError:
            raise  # a configuration problem (missing eval file …) stops the run instead of failing every doc
        except Exception as exc:
            out.fail(doc.id, step.label if step else "?", f"{type(exc).__name__}: {exc}")
            return False
        return True

    def withdraw(self, key: str, first_stage: int) -> None:
        """Delete shard ``key``'s results of stage ``first_stage`` and later ones (markers first, so that a
        kill midway leaves the shard pending, never half withdrawn but marked done)."""
        stages = self.stages[first_stage:]
        markers = [self.stage_dir(st.index) / f"{key}.done" for st in stages]
        files = [*self.work.glob(f"tokens/*/{key}.npz"), *self.spec.out.glob(f"*/{key}.jsonl.zst")]
        for st in stages:
            folder = self.stage_dir(st.index)
            files += [folder / f"{key}.jsonl.zst", folder / f"{key}.stats.json",
                      self.work / "ledger" / f"stage{st.index}" / f"{key}.jsonl.zst"]
            files += [self.work / "removed" / step.label / f"{key}.jsonl.zst" for step in st.steps]
            files += [self.work / "state" / step.label / f"{key}.npy" for step in st.steps if st.is_global]
        for path in [*markers, *self.work.glob(f"tokens/*/{key}.done"), *files]:
            path.unlink(missing_ok=True)

    def apply_changes(self, changes: InputChanges, old_order: list[str]) -> None:
        """Make the work dir hold exactly what a run over the current files would keep of it.

        Removed and changed shards are withdrawn whole. Global (dedup) stages decided every later shard
        against them, so those later shards redo their global stages and everything after; a stage whose
        step counts over all documents first (decontamination with a frequency allow-list) is redone for
        every shard whenever anything changed. New shards are simply pending.
        """
        affected = set(changes.gone_shards) | set(changes.changed_shards)
        for key in affected:
            self.withdraw(key, 0)
        first_global = next((st.index for st in self.stages if st.is_global), None)
        counting = next((st.index for st in self.stages if st.is_global
                         and any(step.counts_first for step in st.steps)), None)  # type: ignore[attr-defined]
        seen_affected = False
        for key in old_order:
            if key in affected:
                seen_affected = True
            elif key in self.by_key and first_global is not None and seen_affected:
                self.withdraw(key, first_global)
            elif key in self.by_key and counting is not None:
                self.withdraw(key, counting)


_RUNS: dict[str, PipelineRun] = {}


def run_for(spec_json: dict[str, Any]) -> PipelineRun:
    """The run of a spec in this worker process, built once (steps load their models once)."""
    cache_key = json.dumps(spec_json, sort_keys=True)
    if cache_key not in _RUNS:
        _RUNS.clear()
        _RUNS[cache_key] = PipelineRun(from_dict(PipelineSpec, spec_json, "pipeline"))
    return _RUNS[cache_key]


def _run_in_worker(task: tuple[dict[str, Any], int, str]) -> str:
    """Entry point in a worker process (pool or Ray): run one stage of one shard."""
    spec_json, stage, key = task
    run = run_for(spec_json)
    run.run_shard(run.stages[stage], key)
    return key


def pool_map(workers: int) -> MapShards:
    """Local executor: a pool of ``workers`` processes (forked), or this process when ``workers`` is 1."""
    def map_shards(fn: Callable[[Any], Any], items: list[Any]) -> Iterable[Any]:
        if workers == 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with multiprocessing.get_context("fork").Pool(min(workers, len(items))) as pool:
            return list(pool.imap_unordered(fn, items))
    return map_shards


def _prepare_work_dir(run: PipelineRun, update: bool) -> InputChanges:
    """Tie the work dir to one pipeline and one set of input files; put the run's shards in run order.

    Other steps or reader settings are refused outright. Other files are refused with the list of added,
    removed and changed files, unless ``update``: then their shards are withdrawn or added (see
    :meth:`PipelineRun.apply_changes`). Temporary files of a killed earlier run are removed.
    """
    spec_path = run.work / "spec.json"
    inputs = [{k: v for k, v in inp.items() if k != "paths"} for inp in run.spec_json["inputs"]]
    ident = {"inputs": inputs, "steps": run.spec_json["steps"]}
    old = Manifest.load(run.work)
    if spec_path.is_file() and (old is None or json.loads(spec_path.read_text())["pipeline"] != ident):
        raise MaiError(f"{run.work} holds a run of a different pipeline (steps or reader settings "
                       "changed); use another work_dir or delete this one")
    current = {s.key: (run.source(s.key), s.files) for s in run.shards}
    manifest, changes = compare(old, current)
    if old is not None and changes:
        if not update:
            raise MaiError(f"{run.work}: the input files changed since this work dir was made: "
                           f"{changes.describe()}; rerun with --update to process only the added and "
                           "changed files (removed files' documents are withdrawn), or use a new work_dir")
        run.apply_changes(changes, old.order)
    remove_temp_files(run.work, run.spec.out)
    write_json(run.work / MANIFEST, manifest.to_json())
    write_json(spec_path, {"pipeline": ident})
    run.shards = [run.by_key[k] for k in manifest.order]
    return changes


def run_pipeline(spec: PipelineSpec, map_shards: MapShards | None = None,
                 log: Callable[[str], None] | None = print, update: bool = False) -> dict[str, Any]:
    """Run (or resume) ``spec`` to the end and return its report (also saved in the work dir).

    ``update``: the input files may differ from the work dir's record; process the new and changed ones
    and withdraw what removed ones produced (otherwise such a rerun is refused).
    """
    start = time.perf_counter()
    if map_shards is None:
        if spec.executor == "ray":
            from mai.data.pipeline.ray_executor import ray_map

            map_shards = ray_map(spec.workers)
        else:
            map_shards = pool_map(spec.workers)
    run = PipelineRun(spec)
    if spec.tokenize is not None:  # fail before the work, not after it
        from mai.tokenizer import load_tokenizer

        load_tokenizer(spec.tokenize.tokenizer)
    changes = _prepare_work_dir(run, update)
    if log and changes and update:
        log(f"inputs changed: {changes.describe()}")
    for stage in run.stages:
        pending = run.pending(stage.index)
        if log:
            kind = "global" if stage.is_global else "parallel"
            names = ", ".join(s.label for s in stage.steps) or "read"
            log(f"stage {stage.index} ({kind}: {names}): {len(pending)} of {len(run.shards)} shards to do")
        if not stage.is_global:
            list(map_shards(_run_in_worker, [(run.spec_json, stage.index, k) for k in pending]))
            continue
        finished = [s.key for s in run.shards if s.key not in pending]
        for step in stage.steps:
            step.load_state(run.work / "state", finished)  # type: ignore[attr-defined]
        counting = [s for s in stage.steps if s.counts_first]  # type: ignore[attr-defined]
        if counting and pending:
            for shard in run.shards:
                for row in read_jsonl(run.docs_path(stage.index - 1, shard.key)):
                    doc = Document.from_json(row)
                    for step in counting:
                        step.observe(doc)  # type: ignore[attr-defined]
            for step in counting:
                step.counted()  # type: ignore[attr-defined]
        for key in pending:
            run.run_shard(stage, key)
    per_shard = []
    for shard in run.shards:
        stages = [ShardStats.from_json(json.loads((run.stage_dir(s.index) / f"{shard.key}.stats.json")
                                                  .read_text())) for s in run.stages]
        per_shard.append(combine(shard.key, run.source(shard.key), stages))
    extra: dict[str, Any] = {"output_dir": str(spec.out), "work_dir": str(run.work),
                             "inputs": {"files": len({f for s in run.shards for f in s.files}),
                                        "shards": len(run.shards), "added": len(changes.added),
                                        "removed": len(changes.removed), "changed": len(changes.changed)},
                             "steps": {st.label: st.describe() for stage in run.stages for st in stage.steps
                                       if st.describe()}}
    if spec.tokenize is not None:
        from mai.data.pipeline.tokenize import tokenize_outputs

        extra["tokens"] = tokenize_outputs(run, map_shards)
    report = build_report(spec.name, per_shard, time.perf_counter() - start, extra)
    write_report(run.work, report)
    if log:
        log(summary(report))
    return report
