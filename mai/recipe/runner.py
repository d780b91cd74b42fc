"""Plan and run a recipe: keys chained from the configs, skip what a manifest proves done, do the rest.

A stage works in ``RUN/.partial/<stage>-<key>`` (its own resume state lives there: pipeline markers, the
teacher's response cache, training checkpoints), writes its manifest there, and only then is renamed to
``RUN/<stage>``. A ``kill -9`` at any moment leaves either the old finished folder or a partial one that
the same command continues; a changed config or input changes the key, so the stage and every stage after
it run again, and nothing before it does.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mai.errors import MaiError
from mai.recipe import manifest as mf
from mai.recipe.config import Recipe, section
from mai.recipe.stage import StagePlan
from mai.recipe.teacher_server import TeacherServer


@dataclasses.dataclass
class PlannedStage:
    plan: StagePlan
    key: str
    inputs: dict[str, str]
    status: str  # "done", "to run", "partial (resumes)", "stale: …"


def build_plans(recipe: Recipe, base_dir: Path, teacher_url: Callable[[str], str]) -> list[StagePlan]:
    from mai.recipe import stages_data as d
    from mai.recipe import stages_model as m
    from mai.recipe import stages_ship as s

    run = Path(recipe.run_dir)
    plans: list[StagePlan] = []
    for name in recipe.enabled():
        cfg = getattr(recipe, name)
        try:
            def url(stage: str = name) -> str:
                return teacher_url(stage)

            if name == "web":
                plans.append(d.web_plan(recipe, run, section(cfg.pipeline, cfg.set, "web", base_dir)))
            elif name == "synth":
                plans.append(d.synth_plan(recipe, run, section(cfg.config, cfg.set, "synth", base_dir), url))
            elif name == "tokenizer":
                plans.append(d.tokenizer_plan(recipe, run))
            elif name == "shards":
                plans.append(d.shards_plan(recipe, run))
            elif name in ("pretrain", "sft", "dpo", "eval"):
                data = section(cfg.config, cfg.set, name, base_dir)
                make = {"pretrain": m.pretrain_plan, "sft": m.sft_plan}.get(name)
                plans.append(make(recipe, run, data) if make else
                             (m.dpo_plan if name == "dpo" else s.eval_plan)(recipe, run, data, url))
            elif name == "export":
                plans.append(s.export_plan(recipe, run))
            else:
                plans.append(s.serve_plan(recipe, run))
        except MaiError as exc:
            text = str(exc)
            raise MaiError(text if text.startswith(f"stage {name}:") else f"stage {name}: {text}") from None
    return plans


def resolve_plan(recipe: Recipe, plans: list[StagePlan]) -> list[PlannedStage]:
    """Every stage's key (config + input contents + upstream keys) and whether its folder proves it done."""
    run = Path(recipe.run_dir)
    keys: dict[str, str] = {}
    stale_from: str | None = None
    out = []
    for plan in plans:
        try:
            inputs = mf.content_hash(plan.inputs)
        except MaiError as exc:
            raise MaiError(f"stage {plan.name}: {exc}") from None
        missing = [u for u in plan.upstream if u not in keys]
        if missing:
            raise MaiError(f"stage {plan.name}: needs the {missing[0]} stage, which the recipe does not "
                           "enable")
        key = mf.stage_key(plan.config, inputs, {u: keys[u] for u in plan.upstream})
        keys[plan.name] = key
        manifest = mf.read_manifest(run / plan.name, plan.name)
        if manifest is None:
            status = "partial (resumes)" if _partial(run, plan.name, key).exists() else "to run"
        elif manifest["key"] != key:
            why = "an earlier stage changed" if stale_from else "its config or inputs changed"
            status = f"stale: {why}"
        elif changed := mf.changed_outputs(run / plan.name, manifest):
            raise MaiError(f"stage {plan.name}: output {changed[0]} no longer matches its manifest; delete "
                           f"{run / plan.name} to redo the stage")
        else:
            status = "done"
        if status != "done" and stale_from is None:
            stale_from = plan.name
        out.append(PlannedStage(plan, key, inputs, status))
    return out


def _partial(run: Path, stage: str, key: str) -> Path:
    return run / ".partial" / f"{stage}-{key[:16]}"


def _promote(partial: Path, final: Path) -> None:
    """Put the finished partial folder in place of the stage's folder (the old one goes last), and drop
    the stage's partial folders of other keys (work for configs no longer asked for)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    for stale in partial.parent.glob(f"{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def run_recipe(recipe: Recipe, base_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage not proven done; return {stage: manifest}. Errors name the stage; stages finished
    before the error stay finished."""
    run = Path(recipe.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    teacher = TeacherServer(recipe.teacher, run / "logs" / "teacher.log", log)
    manifests: dict[str, Any] = {}
    try:
        planned = resolve_plan(recipe, build_plans(recipe, base_dir, teacher.url))
        for st in planned:
            name, final = st.plan.name, run / st.plan.name
            if st.status == "done":
                manifests[name] = mf.read_manifest(final, name)
                log(f"{name:<10} done (manifest matches), skipped")
                continue
            partial = _partial(run, name, st.key)
            ready = mf.read_manifest(partial, name) if (partial / mf.MANIFEST).exists() else None
            if ready is None or ready["key"] != st.key:
                log(f"{name:<10} running ({st.status}) in {partial}")
                start = time.perf_counter()
                partial.mkdir(parents=True, exist_ok=True)
                try:
                    summary = st.plan.work(partial)
                except MaiError as exc:
                    text = str(exc)
                    raise MaiError(text if text.startswith(f"stage {name}:") else f"stage {name}: {text}") \
                        from None
                ready = mf.write_manifest(partial, name, st.key, st.plan.config, st.inputs,
                                          {u: next(p.key for p in planned if p.plan.name == u)
                                           for u in st.plan.upstream}, summary, time.perf_counter() - start)
            _promote(partial, final)
            manifests[name] = ready
            log(f"{name:<10} finished in {ready['seconds']:.1f} s")
            if not any(p.plan.teacher for p in planned[planned.index(st) + 1:]):
                teacher.stop()  # no later stage asks it: free its cores now
    finally:
        teacher.stop()
    from mai.recipe.report import write_report

    write_report(recipe, manifests)
    return manifests
