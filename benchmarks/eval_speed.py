"""Evaluation speed: ``mai eval`` vs lm-evaluation-harness on the same model, task and examples, same run.

Model: SmolLM2-135M-Instruct from its GGUF (mai loads it natively; lm-eval's ``hf`` model loads it with
transformers), fp32 on CPU. Task: the first ``--limit`` examples of each task, lm-eval reading them from
the local task files of :mod:`mai.eval.lm_eval_tasks` (its own prompt formats). Both models are loaded
once, before timing; each side's wall time covers reading the examples, building and tokenizing the
requests, scoring and the metrics. The accuracies are printed beside the speeds: they must agree.

    python benchmarks/eval_speed.py --tasks hellaswag,arc_easy,piqa --limit 100 [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="hellaswag,arc_easy,piqa")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="mai's tokens per forward")
    args = ap.parse_args()
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

    gguf = smollm2_gguf()
    names = args.tasks.split(",")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, limit {args.limit}")
    loaded = load_model(gguf)
    scorer = LoglikScorer(loaded.model, loaded.tokenizer, args.batch_tokens)
    with tempfile.TemporaryDirectory() as folder:
        write_local_tasks(names, folder, args.limit)
        tm = TaskManager(include_path=folder)
        hf = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name,
                                             dtype="float32", batch_size=args.batch_size, device="cpu")
        print(f"{'task':<12} {'n':>5} {'mai ex/s':>9} {'lm-eval ex/s':>13} {'speed-up':>9}  "
              f"{'mai acc/acc_norm':>17} {'lm-eval acc/acc_norm':>21}")
        for name in names:
            t0 = time.perf_counter()
            ours = run_task(scorer, get_task(name), args.limit)
            mai_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = lm_eval.simple_evaluate(model=hf, tasks=[f"mai_{name}"], task_manager=tm)
            lm_s = time.perf_counter() - t0
            theirs = res["results"][f"mai_{name}"]
            m = ours.metrics
            nan = float("nan")
            print(f"{name:<12} {ours.n:>5} {ours.n / mai_s:>9.2f} {ours.n / lm_s:>13.2f} "
                  f"{lm_s / mai_s:>8.2f}x  {100 * m['acc']:>8.2f}/{100 * m.get('acc_norm', nan):<8.2f}"
                  f"{100 * theirs['acc,none']:>12.2f}/{100 * theirs.get('acc_norm,none', nan):<8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
