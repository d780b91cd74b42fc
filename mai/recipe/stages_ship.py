"""Shipping stages: evaluation (`mai eval`, student beside teacher), GGUF export with quantization, and the
serving catalog for `mai serve --catalog` with the content filter on."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mai.config import from_dict, to_dict
from mai.errors import MaiError
from mai.fileio import atomic_write_text
from mai.recipe.config import Recipe
from mai.recipe.stage import StagePlan
from mai.recipe.stages_data import text_dirs
from mai.recipe.stages_model import student_before


def _student(recipe: Recipe, run: Path, stage: str) -> tuple[str, list[str]]:
    student, upstream = student_before(recipe, run, stage)
    if student is None:
        raise MaiError(f"stage {stage}: no student model; enable pretrain, sft or dpo")
    return student, upstream


def held_out_texts(run: Path, out: Path, limit: int) -> Path | None:
    """The web shards' validation documents, decoded, as a JSONL text set: held out from the student, and
    comparable across tokenizers in bits per byte (the teacher has another vocabulary)."""
    from mai.data.shards import TokenDataset
    from mai.tokenizer import load_tokenizer

    shards = run / "shards" / "web"
    if not shards.is_dir():
        return None
    ds, tok = TokenDataset(shards, "val"), load_tokenizer(run / "tokenizer" / "tokenizer")
    n = min(limit, len(ds.doc_ends))
    texts = [tok.decode([t for t in ds.document(i).tolist() if t != ds.eos_id]) for i in range(n)]
    path = out / "held_out.jsonl"
    atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts if t.strip()))
    return path


def eval_plan(recipe: Recipe, run: Path, section: dict[str, Any],
              teacher_url: Callable[[], str]) -> StagePlan:
    from mai.eval.run import EvalConfig, run_eval_config
    from mai.recipe.pairs import first_turns, student_replies, teacher_replies

    cfg = recipe.eval
    assert cfg is not None
    student, upstream = _student(recipe, run, "eval")
    with_teacher = cfg.teacher and recipe.teacher.base_url is None
    upstream += [s for s in ("shards", "tokenizer") if getattr(recipe, s) is not None and s not in upstream]

    def config_at(out: Path, texts: list[str]) -> EvalConfig:
        data = json.loads(json.dumps(section))
        data["models"] = [student] + ([recipe.teacher.model] if with_teacher else [])
        data["out"] = str(out)
        data["texts"] = [*data.get("texts", []), *texts]
        if cfg.contamination and recipe.shards is not None and data.get("tasks"):
            data["contamination"] = [str(run / "shards" / s) for s in text_dirs(recipe, run)]
        return from_dict(EvalConfig, data, "eval.config")

    config_at(run / "eval", [])

    def work(out: Path) -> dict[str, Any]:
        held = held_out_texts(run, out, cfg.held_out_docs)
        ecfg = config_at(out, [str(held)] if held else [])
        results = run_eval_config(ecfg, echo=lambda _: None)["results"]
        if recipe.shards is not None and recipe.web is not None:  # held-out shards: the student's tokens
            student_only = dataclasses.replace(ecfg, models=[student], tasks=[], texts=[], contamination=[],
                                               shards=str(run / "shards" / "web"), out=str(out / "shards"))
            for name, r in run_eval_config(student_only, echo=lambda _: None)["results"].items():
                results[name].update(r)
        chats: list[dict[str, str]] = []
        if cfg.chats:
            prompts = first_turns(cfg.chats, skip=1500)
            from mai.interop import load_model

            mine = student_replies(load_model(student), prompts, 64)
            theirs = (teacher_replies(teacher_url(), recipe.teacher.name, prompts, 64) if cfg.teacher
                      else [""] * len(prompts))
            chats = [{"prompt": p, "student": s, "teacher": t} for p, s, t in zip(prompts, mine, theirs,
                                                                                   strict=True)]
        atomic_write_text(out / "chats.json", json.dumps(chats, indent=1) + "\n")
        pairwise: dict[str, Any] | str = "off (eval.judge: false): compared by held-out bits per byte and " \
                                         "benchmarks"
        if cfg.judge and chats and cfg.teacher:
            from mai.eval.pairwise import Judge, judge_pairs, summarize

            judge = Judge(teacher_url(), recipe.teacher.name, max_tokens=cfg.judge_max_tokens, workers=2,
                          structured=True)
            pairwise = summarize(judge_pairs(judge, prompts, mine, theirs), len(prompts))
        names = {student: "student", recipe.teacher.model: "teacher"}
        return {"results": {names.get(k, k): v for k, v in results.items()}, "chats": len(chats),
                "pairwise": pairwise}

    stage = {k: v for k, v in to_dict(cfg).items() if k not in ("config", "set")}
    config = {"eval": section, **stage, "teacher_model": recipe.teacher.base_url or recipe.teacher.model}
    return StagePlan("eval", config, [], upstream, work, "results.json, results.png, chats.json, config.yaml",
                     teacher=bool(cfg.chats and cfg.teacher))


def export_plan(recipe: Recipe, run: Path) -> StagePlan:
    cfg = recipe.export
    assert cfg is not None
    student, upstream = _student(recipe, run, "export")

    def work(out: Path) -> dict[str, Any]:
        import torch

        from mai.interop import load_model
        from mai.interop.gguf_write import transformers_logits_gap, write_gguf

        src = load_model(student)
        path = write_gguf(src, out / "model.gguf", cfg.qtype, recipe.name)
        back = load_model(path)
        ids = back.tokenizer.encode("The water cycle moves water between the sea, the air and the land.")
        with torch.no_grad():
            quant_gap = float((back.model(torch.tensor([ids])) - src.model(torch.tensor([ids]))).abs().max())
        gap = transformers_logits_gap(path, back.model, ids) if cfg.check else None
        return {"qtype": cfg.qtype, "bytes": path.stat().st_size, "parameters": sum(
            p.numel() for p in src.model.parameters()), "max_logit_gap_vs_float": quant_gap,
            "max_logit_gap_transformers": gap}

    return StagePlan("export", to_dict(cfg), [], upstream, work, "model.gguf")


def serve_plan(recipe: Recipe, run: Path) -> StagePlan:
    from mai.serve.catalog import Catalog

    cfg = recipe.serve
    assert cfg is not None
    if recipe.export is not None:
        path, upstream = str(run / "export" / "model.gguf"), ["export"]
    else:
        path, upstream = _student(recipe, run, "serve")
    entry = {"name": cfg.name, "path": path, "safety": {"prompt": "medium", "completion": "medium"},
             **cfg.entry}
    catalog = {"models": [entry]}
    from_dict(Catalog, catalog, "serve")

    def work(out: Path) -> dict[str, Any]:
        atomic_write_text(out / "catalog.yaml", yaml.safe_dump(catalog, sort_keys=False))
        return {"command": f"mai serve --catalog {run / 'serve' / 'catalog.yaml'}", "model": cfg.name}

    return StagePlan("serve", to_dict(cfg), [], upstream, work, "catalog.yaml")
