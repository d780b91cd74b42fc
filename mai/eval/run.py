"""``mai eval``: every requested model on every requested task (log-likelihood or generative) and text set,
then table, JSON and chart; and, with a judge, two answer sets compared pairwise (:mod:`mai.eval.judge_run`).
:class:`EvalConfig` holds every flag, and a run saves it as ``OUT/config.yaml`` so
``mai eval --config OUT/config.yaml`` repeats it."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from mai.config import to_dict
from mai.errors import MaiError
from mai.eval.gen_tasks import GEN_TASKS, GenTask, get_gen_task
from mai.eval.generation import GenSettings, run_gen_task
from mai.eval.harness import run_task
from mai.eval.judge_endpoint import JudgeSettings
from mai.eval.perplexity import shard_perplexity, text_documents, text_perplexity
from mai.eval.report import plot, table, write_json
from mai.eval.scoring import LoglikScorer
from mai.eval.tasks import TASKS, Task
from mai.fileio import atomic_write_text


@dataclasses.dataclass
class EvalConfig:
    models: list[str] = dataclasses.field(default_factory=list)  # .gguf, HF dir, mai export, run dir
    tasks: list[str] = dataclasses.field(default_factory=list)  # benchmark names or .jsonl task files
    out: str = "runs/eval"  # results.json, results.png, config.yaml, samples/
    limit: int | None = None  # first N examples per task (per MMLU subject)
    texts: list[str] = dataclasses.field(default_factory=list)  # .txt / .jsonl files for perplexity
    shards: str | None = None  # token-shard directory for held-out perplexity
    split: str = "val"
    batch_tokens: int = 4096
    device: str = "cpu"
    max_seq_len: int | None = None  # context window (default: the model's)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    gen: GenSettings = dataclasses.field(default_factory=GenSettings)  # generative tasks
    contamination: list[str] = dataclasses.field(default_factory=list)  # training shard dirs to check
    ngram: int = 13  # n-gram length of the contamination report
    judge: JudgeSettings = dataclasses.field(default_factory=JudgeSettings)  # pairwise A vs B (judge.model)


def run_eval_config(cfg: EvalConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Save ``cfg`` as OUT/config.yaml, evaluate, judge A against B and write the contamination report
    when asked; write OUT/results.json; returns the results (and ``judge``, ``contamination`` when
    computed)."""
    if not cfg.models and not cfg.judge.model:
        raise MaiError("no model to evaluate: give model paths (or models: [...] in the config), or --judge")
    if cfg.models and cfg.judge.model and not (cfg.tasks or cfg.texts or cfg.shards):
        raise MaiError("--judge compares --a with --b; the model paths given have no --tasks, --text or "
                       "--shards to run (give the two models as --a and --b)")
    out = Path(cfg.out)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    done: dict[str, Any] = {"results": {}}
    if cfg.models:
        done["results"] = run_eval(cfg.models, cfg.tasks, cfg.out, cfg.limit, cfg.texts, cfg.shards,
                                   cfg.split, cfg.batch_tokens, cfg.device, cfg.max_seq_len, echo,
                                   cfg.precision, cfg.gen)
        write_json({"limit": cfg.limit, **done}, out / "results.json")  # kept should the judging fail
    if cfg.judge.model:
        from mai.eval.judge_run import run_judge

        done["judge"] = run_judge(cfg.judge, out, cfg.limit, cfg.gen, cfg.precision, cfg.device, echo)
        write_json({"limit": cfg.limit, **done}, out / "results.json")
    if not cfg.contamination:
        return done
    from mai.eval.decontam import contamination

    report = contamination(cfg.tasks, cfg.contamination, cfg.ngram, cfg.limit)
    for name, r in report.items():
        echo(f"contamination  {name:<14} {r['contaminated']:>6} of {r['examples']:>6} examples "
             f"({r['percent']:.2f}%) share a {r['ngram']}-gram with the training shards")
    write_json(report, out / "contamination.json")
    return {**done, "contamination": report}


def resolve_tasks(names: Sequence[str]) -> tuple[list[Task], list[GenTask]]:
    """Log-likelihood and generative tasks by name (task files by path); MaiError listing the known
    names for an unknown one, before any model loads."""
    loglik, generative = [], []
    for name in names:
        if name in TASKS:
            loglik.append(TASKS[name])
        elif (gen := get_gen_task(name)) is not None:
            generative.append(gen)
        else:
            raise MaiError(f"unknown task {name!r}; known tasks: {', '.join([*TASKS, *GEN_TASKS])}, "
                           "or a .jsonl task file")
    return loglik, generative


def samples_path(out_dir: str | Path, model: str, task: str) -> Path:
    """Where a model's per-example answers on a task are logged (a resumed run reads them back)."""
    tag = hashlib.sha1(str(Path(model).resolve()).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(model).name)  # "bundled:smollm2" is a valid model name
    return Path(out_dir) / "samples" / f"{name}-{tag}" / f"{Path(task).name}.jsonl"


def run_eval(models: Sequence[str], tasks: Sequence[str], out_dir: str | Path, limit: int | None = None,
             texts: Sequence[str] = (), shards: str | None = None, split: str = "val",
             batch_tokens: int = 4096, device: str = "cpu", max_seq_len: int | None = None,
             echo: Callable[[str], None] = print, precision: str = "auto",
             gen: GenSettings | None = None) -> dict[str, Any]:
    """Evaluate; write ``results.png`` into out_dir; return the results dict."""
    from mai.infer.load import load_for_inference
    from mai.precision import TRAIN_ROWS

    chosen, generative = resolve_tasks(tasks)  # unknown names fail before any model loads
    if not chosen and not generative and not texts and not shards:
        raise MaiError("nothing to evaluate: give --tasks, --text or --shards")
    results: dict[str, dict[str, Any]] = {}
    for path in models:
        # scoring runs the model over many rows at once: the precision is measured for that shape
        loaded, _ = load_for_inference(path, precision=precision, rows=TRAIN_ROWS, device=device)
        model = loaded.model
        length = min(max_seq_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        scorer = LoglikScorer(model, loaded.tokenizer, batch_tokens, length)
        per_task: dict[str, Any] = {}
        for task in chosen:
            res = run_task(scorer, task, limit)
            per_task[task.name] = res.as_dict()
            echo(f"{Path(path).name}: {task.name} done ({res.n} examples, {res.seconds:.1f} s)")
        for gtask in generative:
            log = samples_path(out_dir, path, gtask.name)
            res = run_gen_task(model, loaded.tokenizer, gtask, limit, gen or GenSettings(), log, echo=echo)
            per_task[gtask.name] = res
            echo(f"{Path(path).name}: {gtask.name} done ({res['n']} examples, answers in "
                 f"{log})")
        with torch.no_grad():
            if texts:
                ppl = text_perplexity(model, loaded.tokenizer, text_documents(texts), length, limit)
                per_task["text"] = ppl.as_dict()
            if shards:
                ppl = shard_perplexity(model, loaded.tokenizer, shards, split, length, limit)
                per_task[f"shards:{split}"] = ppl.as_dict()
        results[str(path)] = per_task
    plot(results, Path(out_dir) / "results.png")
    echo(table(results))
    return results
