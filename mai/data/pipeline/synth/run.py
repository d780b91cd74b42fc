"""``mai data synth``: prompts → teacher (cached) → documents with provenance → the pipeline's steps.

The generations file is rebuilt from the cache on every run (same prompts, same order, same ids), and the
pipeline after it is re-run from scratch (it is cheap next to the teacher), so a run resumed after a kill,
or re-run after teacher failures, ends in the same place as one that never stopped.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from mai.data.pipeline.executor import run_pipeline
from mai.data.pipeline.files import write_json, write_jsonl
from mai.data.pipeline.spec import InputConfig, PipelineSpec
from mai.data.pipeline.synth.cache import ResponseCache
from mai.data.pipeline.synth.config import SynthConfig
from mai.data.pipeline.synth.prompts import build_prompts
from mai.data.pipeline.synth.teacher import Teacher


def run_synth(cfg: SynthConfig, log: Any = print) -> dict[str, Any]:
    work = Path(cfg.work_dir)
    prompts = build_prompts(cfg.prompts)
    cache = ResponseCache(work / "cache.sqlite")
    try:
        teacher = Teacher(cfg.teacher, cache)
        bodies = [teacher.request(p.messages, p.fields["sample"]) for p in prompts]
        if log:
            log(f"synth: {len(bodies)} requests to {cfg.teacher.base_url} ({len(cache)} responses cached)")
        outcomes = asyncio.run(teacher.generate_all(bodies))
    finally:
        cache.close()
    rows: list[dict[str, Any]] = []
    t = cfg.teacher
    for i, (prompt, out) in enumerate(zip(prompts, outcomes, strict=True)):
        doc_id = f"synth-{i:06d}-{out.key[:12]}"
        if out.response is None:
            rows.append({"id": doc_id, "_failed": out.error, "_step": "teacher"})
            continue
        provenance = {"teacher_model": t.model, "served_model": out.response.get("model"),
                      "prompt_template": prompt.template, **prompt.fields, "temperature": t.temperature,
                      "top_p": t.top_p, "max_tokens": t.max_tokens, "prompt": prompt.messages[-1]["content"],
                      "finish_reason": out.response.get("finish_reason"), "usage": out.response.get("usage"),
                      "request_key": out.key}
        rows.append({"id": doc_id, "text": out.response["text"], "metadata": {"provenance": provenance}})
    generations = work / "generations.jsonl.zst"
    write_jsonl(generations, rows)
    shutil.rmtree(work / "pipeline", ignore_errors=True)
    spec = PipelineSpec(
        name=cfg.name, work_dir=str(work / "pipeline"), output_dir=str(work / "output"), workers=cfg.workers,
        inputs=[InputConfig(source="synthetic", reader="jsonl", paths=[str(generations)])],
        steps=[{"type": "teacher_output", "min_completion_tokens": cfg.min_completion_tokens,
                "drop_truncated": cfg.drop_truncated}, *cfg.steps],
        tokenize=cfg.tokenize)
    report = run_pipeline(spec, log=log)
    report["teacher"] = {"requests": len(outcomes), "cached": sum(o.cached for o in outcomes),
                         "generated": sum(o.response is not None and not o.cached for o in outcomes),
                         "failed": sum(o.response is None for o in outcomes),
                         "attempts": sum(o.attempts for o in outcomes)}
    if log:
        tr = report["teacher"]
        log(f"teacher: {tr['generated']} generated, {tr['cached']} from cache, {tr['failed']} failed, "
            f"{tr['attempts']} HTTP attempts")
    write_json(work / "pipeline" / "report.json", report)
    return report
