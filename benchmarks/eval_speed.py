"""Evaluation speed: ``mai eval`` vs lm-evaluation-harness on the same model, task and examples, same run.

Model: SmolLM2-135M-Instruct from its GGUF (mai loads it natively; lm-eval's ``hf`` model loads it with
transformers), fp32 on CPU. Task: the first ``--limit`` examples of each task, lm-eval reading them from
the local task files of :mod:`mai.eval.lm_eval_tasks` (its own prompt formats). Both models are loaded
once, before timing; each side's wall time covers reading the examples, building and tokenizing the
requests, scoring and the metrics. The scores are printed beside the speeds: they must agree.

    python benchmarks/eval_speed.py --tasks hellaswag,arc_easy,piqa --limit 100 [--threads 2]
    python benchmarks/eval_speed.py --tasks gsm8k --limit 32 --max-gen-toks 256 --gen-batch-sizes 1,16

Generative tasks (``gsm8k``, ``humaneval``: greedy ``generate_until``) run mai's ``run_gen_task`` on its
engine (continuous batching, the shared few-shot prefix prefilled once through the prefix cache) against
lm-eval's ``hf`` model at each of ``--gen-batch-sizes`` (1 is its default), one line each.

A full run (``--limit 0``) of lm-eval takes hours on two cores; ``--side mai`` or ``--side lm-eval`` runs one
side alone (e.g. one per core under ``taskset``) and ``--json`` writes its scores and times, so the two
full runs can proceed in parallel and be compared afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mai.eval.gen_tasks import GEN_TASKS
from mai.eval.generation import GenSettings
from mai.precision import bench_tag

PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16"}
GEN_METRICS = {"gsm8k": {"strict": ("strict_match", "exact_match,strict-match"),
                         "flexible": ("flexible_extract", "exact_match,flexible-extract")},
               "humaneval": {"pass@1": ("pass@1", "pass@1,create_test")}}  # name: (mai's, lm-eval's)

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="hellaswag,arc_easy,piqa")
    ap.add_argument("--limit", type=int, default=100, help="examples per task (0 = all)")
    ap.add_argument("--skip", type=int, default=0, help="start after this many (a long run in pieces)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="weights and compute of both sides")
    ap.add_argument("--side", choices=("both", "mai", "lm-eval"), default="both")
    ap.add_argument("--json", help="write per-task scores and seconds here")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="mai's tokens per forward")
    ap.add_argument("--gen-batch-sizes", default="1,16",
                    help="generative: lm-eval's batch sizes, one line each")
    ap.add_argument("--mai-batch", type=int, default=GenSettings.batch_size,
                    help="generative: mai's requests decoded together (mai eval --batch-size)")
    ap.add_argument("--max-gen-toks", type=int, default=0,
                    help="generative: cap on new tokens, both sides (0 = the task's own budget)")
    args = ap.parse_args()
    limit = args.limit or None
    if args.threads:
        torch.set_num_threads(args.threads)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from mai.eval.harness import run_task
    from mai.eval.lm_eval_tasks import write_local_tasks
    from mai.eval.scoring import LoglikScorer
    from mai.eval.tasks import get_task
    from mai.interop import load_model
    from mai.interop.bundled import smollm2_gguf

    names = args.tasks.split(",")
    generative = [n for n in names if n in GEN_TASKS]
    if args.skip and (generative or any(get_task(n).per_subject for n in names)):
        ap.error("--skip cuts one list of log-likelihood examples; MMLU's limit is per subject")
    gguf = smollm2_gguf()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, ISA {torch.backends.cpu.get_cpu_capability()}, "
          f"load {os.getloadavg()[0]:.2f}, skip {args.skip}, limit {limit}, side {args.side}, "
          f"{args.dtype} {bench_tag(PRECISION_NAMES[args.dtype])}")
    run_mai, run_lm = args.side in ("both", "mai"), args.side in ("both", "lm-eval")
    nan = float("nan")
    record: dict[str, dict] = {}
    if run_mai:
        loaded = load_model(gguf, dtype=getattr(torch, args.dtype))
        scorer = LoglikScorer(loaded.model, loaded.tokenizer, args.batch_tokens)
    with tempfile.TemporaryDirectory() as folder:
        if run_lm:
            write_local_tasks([n for n in names if n not in GEN_TASKS], folder, limit, args.skip)
            tm = TaskManager(include_path=folder)
            hf_model, hf_tok = _hf_model(gguf, args.dtype)
        print(f"{'task':<12} {'n':>5} {'mai ex/s':>9} {'lm-eval ex/s':>13} {'speed-up':>9}  "
              f"{'mai scores':>17} {'lm-eval scores':>21} lm-eval batch, machine")
        for name in names:
            row: dict = {}
            if name in GEN_TASKS:
                if run_mai:
                    row["mai"] = _mai_generative(loaded, name, limit, args, Path(folder))
                sizes = [int(b) for b in args.gen_batch_sizes.split(",")] if run_lm else [0]
                for size in sizes:
                    if run_lm:
                        hf = HFLM(pretrained=hf_model, tokenizer=hf_tok, batch_size=size, device="cpu")
                        row[f"lm-eval bs{size}"] = _lm_generative(lm_eval, hf, name, limit, args,
                                                                  Path(folder))
                    print(_row(name, row.get("mai"), row.get(f"lm-eval bs{size}")), f"bs {size},",
                          bench_tag(PRECISION_NAMES[args.dtype]), flush=True)
            else:
                if run_mai:
                    t0 = time.perf_counter()
                    ours = run_task(scorer, get_task(name), limit, args.skip)
                    row["mai"] = {"n": ours.n, "seconds": time.perf_counter() - t0,
                                  "scores": {"acc": ours.metrics["acc"],
                                             "acc_norm": ours.metrics.get("acc_norm", nan)}}
                if run_lm:
                    t0 = time.perf_counter()
                    hf = HFLM(pretrained=hf_model, tokenizer=hf_tok, batch_size=args.batch_size, device="cpu")
                    res = lm_eval.simple_evaluate(model=hf, tasks=[f"mai_{name}"], task_manager=tm)
                    theirs = res["results"][f"mai_{name}"]
                    n = sum(v["effective"] for v in res["n-samples"].values())  # MMLU: a group of subjects
                    row["lm-eval"] = {"n": n, "seconds": time.perf_counter() - t0,
                                      "scores": {"acc": theirs["acc,none"],
                                                 "acc_norm": theirs.get("acc_norm,none", nan)}}
                print(_row(name, row.get("mai"), row.get("lm-eval")), f"bs {args.batch_size},",
                      bench_tag(PRECISION_NAMES[args.dtype]), flush=True)
            record[name] = row
            if args.json:
                Path(args.json).write_text(json.dumps(record, indent=1))


def _hf_model(gguf: Path, dtype: str):
    """transformers' reading of the GGUF, loaded once (lm-eval's ``hf`` wrappers of each batch size share
    it): what ``HFLM(pretrained=DIR, gguf_file=NAME)`` loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 torch_dtype=getattr(torch, dtype)).eval()
    return model, AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _mai_generative(loaded, name: str, limit: int | None, args: argparse.Namespace, folder: Path) -> dict:
    """``mai eval``'s generative path (a fresh results log, so nothing is resumed), timed."""
    from mai.eval.generation import run_gen_task

    settings = GenSettings(max_new_tokens=args.max_gen_toks or None, batch_size=args.mai_batch)
    log = folder / "mai" / f"{name}.jsonl"
    res = run_gen_task(loaded.model, loaded.tokenizer, GEN_TASKS[name], limit, settings, log,
                       echo=lambda _: None)
    records = sorted((json.loads(x) for x in log.read_text().splitlines()[1:]), key=lambda r: r["index"])
    return {"n": res["n"], "seconds": res["seconds"], "texts": [r["completions"][0] for r in records],
            "scores": {k: res[ours] for k, (ours, _) in GEN_METRICS[name].items()}}


def _lm_generative(lm_eval, hf, name: str, limit: int | None, args: argparse.Namespace, folder: Path) -> dict:
    """lm-eval's own task (:mod:`mai.eval.lm_eval_tasks`) on the same examples, greedy, timed from the
    writing of its task file to its metrics."""
    from lm_eval.tasks import TaskManager

    from mai.eval import lm_eval_tasks

    t0 = time.perf_counter()
    where = folder / f"lm_{name}"
    task = getattr(lm_eval_tasks, f"write_local_{name}")(where, limit)
    here = os.getcwd()
    os.chdir(where)  # humaneval: evaluate.load("code_eval") finds the local metric script here
    try:
        gen_kwargs = f"max_gen_toks={args.max_gen_toks}" if args.max_gen_toks else None
        res = lm_eval.simple_evaluate(model=hf, tasks=[task], gen_kwargs=gen_kwargs, log_samples=True,
                                      confirm_run_unsafe_code=True,
                                      task_manager=TaskManager(include_path=str(where)))
    finally:
        os.chdir(here)
    theirs = res["results"][task]
    texts = {s["doc_id"]: s["resps"][0][0] for s in res["samples"][task]}  # once per filter, same text
    return {"n": res["n-samples"][task]["effective"], "seconds": time.perf_counter() - t0,
            "texts": [texts[i] for i in sorted(texts)],
            "scores": {k: theirs[key] for k, (_, key) in GEN_METRICS[name].items()}}


def _row(name: str, ours: dict | None, theirs: dict | None) -> str:
    """One table line; a side that did not run shows as dashes."""
    def rate(side: dict | None) -> float:
        return side["n"] / side["seconds"] if side else float("nan")

    def scores(side: dict | None) -> str:
        return "/".join(f"{100 * v:.2f}" for v in side["scores"].values()) if side else "-"

    n = (ours or theirs or {}).get("n", 0)
    speedup = rate(ours) / rate(theirs) if ours and theirs else float("nan")
    same = ""
    if ours and theirs and "texts" in ours:  # generative: greedy answers equal text for text
        same = f" same text {sum(a == b for a, b in zip(ours['texts'], theirs['texts'], strict=True))}/{n},"
    return (f"{name:<12} {n:>5} {rate(ours):>9.2f} {rate(theirs):>13.2f} {speedup:>8.2f}x  "
            f"{scores(ours):>17} {scores(theirs):>21}{same}")


if __name__ == "__main__":
    main()
