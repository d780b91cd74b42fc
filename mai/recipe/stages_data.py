"""Data stages: web pipeline (`mai data run`), synthetic data from the teacher (`mai data synth`),
tokenizer (`mai tokenizer train`) and token shards per source (`mai data prepare`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mai.config import from_dict, to_dict
from mai.recipe.config import Recipe
from mai.recipe.stage import StagePlan, glob_inputs

SOURCES = ("web", "synth")  # the stages whose kept documents are text for the student


def _step_files(steps: list[dict[str, Any]]) -> list[str]:
    return [f for s in steps for f in s.get("files", []) if isinstance(f, str)]


def web_plan(recipe: Recipe, run: Path, section: dict[str, Any]) -> StagePlan:
    from mai.data.pipeline import PipelineSpec, run_pipeline

    def spec_at(out: Path) -> PipelineSpec:
        data = {**section, "work_dir": str(out / "work"), "output_dir": str(out / "output"), "tokenize": None}
        return from_dict(PipelineSpec, data, "web.pipeline")

    spec = spec_at(run / "web")  # validates now
    inputs = glob_inputs([p for i in spec.inputs for p in i.paths] + _step_files(spec.steps))
    if any(i.reader == "corpus" for i in spec.inputs):
        from mai.data.corpus import default_corpus_path

        inputs.append(str(default_corpus_path()))

    def work(out: Path) -> dict[str, Any]:
        report = run_pipeline(spec_at(out), log=None)
        return {"documents": report["documents"], "removed_by_step": report["removed_by_step"],
                "sources": report["sources"]}

    return StagePlan("web", section, inputs, [], work, "work/report.json, output/ (kept documents)")


def synth_plan(recipe: Recipe, run: Path, section: dict[str, Any],
               teacher_url: Callable[[], str]) -> StagePlan:
    from mai.data.pipeline.synth.config import SynthConfig
    from mai.data.pipeline.synth.run import run_synth

    def config_at(out: Path, url: str) -> SynthConfig:
        data = {**section, "work_dir": str(out), "tokenize": None}
        data["teacher"] = {**data.get("teacher", {}), "base_url": url, "model": recipe.teacher.name}
        return from_dict(SynthConfig, data, "synth.config")

    cfg = config_at(run / "synth", "http://127.0.0.1:0/v1")
    inputs = glob_inputs(cfg.prompts.seed_files + _step_files(cfg.steps))
    teacher = recipe.teacher.base_url or recipe.teacher.model
    config = {**section, "teacher_model": teacher}

    def work(out: Path) -> dict[str, Any]:
        report = run_synth(config_at(out, teacher_url()), log=None)
        return {"documents": report["documents"], "removed_by_step": report["removed_by_step"],
                "teacher": report["teacher"]}

    return StagePlan("synth", config, inputs, [], work, "output/ (kept documents with their prompts)",
                     teacher=True)


def text_dirs(recipe: Recipe, run: Path) -> dict[str, Path]:
    """{source: folder of its kept documents} for the enabled text stages."""
    return {s: run / s / "output" for s in SOURCES if getattr(recipe, s) is not None}


def tokenizer_plan(recipe: Recipe, run: Path) -> StagePlan:
    from mai.data.prepare import documents
    from mai.errors import MaiError
    from mai.tokenizer import train_tokenizer

    cfg = recipe.tokenizer
    assert cfg is not None
    sources = text_dirs(recipe, run)

    def work(out: Path) -> dict[str, Any]:
        if not sources:
            raise MaiError("the tokenizer stage needs the web or synth stage (documents to train on)")
        import itertools

        texts = documents([str(p) for p in sources.values()])
        tok = train_tokenizer(itertools.islice(texts, cfg.max_documents), cfg.vocab_size, out / "tokenizer")
        return {"vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint}

    return StagePlan("tokenizer", to_dict(cfg), [], list(sources), work, "tokenizer/ (tokenizer.json)")


def shards_plan(recipe: Recipe, run: Path) -> StagePlan:
    from mai.data.prepare import prepare
    from mai.errors import MaiError
    from mai.tokenizer import load_tokenizer

    cfg = recipe.shards
    assert cfg is not None
    sources = text_dirs(recipe, run)
    unknown = sorted(set(cfg.weights) - set(SOURCES))
    if unknown:
        raise MaiError(f"shards.weights: unknown source '{unknown[0]}' (sources: {', '.join(SOURCES)})")

    def work(out: Path) -> dict[str, Any]:
        tok = load_tokenizer(run / "tokenizer" / "tokenizer")
        summary: dict[str, Any] = {}
        for name, folder in sources.items():
            s = prepare([str(folder)], tok, out / name, val_fraction=cfg.val_fraction, workers=1)
            tok.save(out / name / "tokenizer")  # as `mai data prepare` leaves it: the shards decode alone
            summary[name] = {k: v for k, v in dataclasses.asdict(s).items() if k != "out_dir"}
            summary[name]["weight"] = cfg.weights.get(name, 0.0)
        return summary

    return StagePlan("shards", to_dict(cfg), [], [*sources, "tokenizer"], work,
                     ", ".join(f"{s}/ (train/val token shards)" for s in sources))
