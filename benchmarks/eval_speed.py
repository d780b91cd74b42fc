"""Evaluation speed: ``mai eval`` vs lm-evaluation-harness on the same model, task and examples, same run.

Model: SmolLM2-135M-Instruct from its GGUF (mai loads it natively; lm-eval's ``hf`` model loads it with
transformers), fp32 on CPU. Task: the first ``--limit`` examples of each task, lm-eval reading them from
the local task files of :mod:`mai.eval.lm_eval_tasks` (its own prompt formats). Both models are loaded
once, before timing; each side's wall time covers reading the examples, building and tokenizing the
requests, scoring and the metrics. The accuracies are printed beside the speeds: they must agree.

    python benchmarks/eval_speed.py --tasks hellaswag,arc_easy,piqa --limit 100 [--threads 2]

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

from mai.precision import bench_tag

PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16"}

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

    if args.skip and any(get_task(n).per_subject for n in args.tasks.split(",")):
        ap.error("--skip cuts one list of examples; MMLU's limit is per subject")

    gguf = smollm2_gguf()
    names = args.tasks.split(",")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, skip {args.skip}, limit {limit}, side {args.side}, "
          f"{args.dtype} {bench_tag(PRECISION_NAMES[args.dtype])}")
    run_mai, run_lm = args.side in ("both", "mai"), args.side in ("both", "lm-eval")
    nan = float("nan")
    record: dict[str, dict] = {}
    if run_mai:
        loaded = load_model(gguf, dtype=getattr(torch, args.dtype))
        scorer = LoglikScorer(loaded.model, loaded.tokenizer, args.batch_tokens)
    with tempfile.TemporaryDirectory() as folder:
        if run_lm:
            write_local_tasks(names, folder, limit, args.skip)
            tm = TaskManager(include_path=folder)
            hf = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name,
                      dtype=args.dtype, batch_size=args.batch_size, device="cpu")
        print(f"{'task':<12} {'n':>5} {'mai ex/s':>9} {'lm-eval ex/s':>13} {'speed-up':>9}  "
              f"{'mai acc/acc_norm':>17} {'lm-eval acc/acc_norm':>21} machine")
        for name in names:
            row: dict = {}
            if run_mai:
                t0 = time.perf_counter()
                ours = run_task(scorer, get_task(name), limit, args.skip)
                row["mai"] = {"n": ours.n, "seconds": time.perf_counter() - t0, "acc": ours.metrics["acc"],
                              "acc_norm": ours.metrics.get("acc_norm", nan)}
            if run_lm:
                t0 = time.perf_counter()
                res = lm_eval.simple_evaluate(model=hf, tasks=[f"mai_{name}"], task_manager=tm)
                theirs = res["results"][f"mai_{name}"]
                n = sum(v["effective"] for v in res["n-samples"].values())  # MMLU: a group of subjects
                row["lm-eval"] = {"n": n,
                                  "seconds": time.perf_counter() - t0, "acc": theirs["acc,none"],
                                  "acc_norm": theirs.get("acc_norm,none", nan)}
            record[name] = row
            print(_row(name, row.get("mai"), row.get("lm-eval")), bench_tag(PRECISION_NAMES[args.dtype]),
                  flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(record, indent=1))


def _row(name: str, ours: dict | None, theirs: dict | None) -> str:
    """One table line; a side that did not run shows as dashes."""
    def rate(side: dict | None) -> float:
        return side["n"] / side["seconds"] if side else float("nan")

    def scores(side: dict | None) -> str:
        return f"{100 * side['acc']:.2f}/{100 * side['acc_norm']:.2f}" if side else "-"

    n = (ours or theirs or {}).get("n", 0)
    speedup = rate(ours) / rate(theirs) if ours and theirs else float("nan")
    return (f"{name:<12} {n:>5} {rate(ours):>9.2f} {rate(theirs):>13.2f} {speedup:>8.2f}x  "
            f"{scores(ours):>17} {scores(theirs):>21}")


if __name__ == "__main__":
    main()
