"""``mai eval``: benchmarks (lm-eval conventions), generative tasks, perplexity and contamination."""

from __future__ import annotations

import argparse

from mai.commands.flags import add_precision_flag


def cmd_eval(args: argparse.Namespace) -> None:
    from mai.eval.generation import GenSettings
    from mai.eval.run import run_eval

    tasks = [t for t in (args.tasks or "").split(",") if t]
    gen = GenSettings(args.samples, args.temperature, args.chat, args.max_new_tokens, args.seed,
                      args.batch_size)
    run_eval(args.models, tasks, args.out, args.limit, args.text, args.shards, args.split, args.batch_tokens,
             args.device, args.max_length, precision=args.precision, gen=gen)
    print(f"results    {args.out}/results.json, {args.out}/results.png")
    if args.contamination:
        from mai.eval.decontam import contamination
        from mai.eval.report import write_json

        report = contamination(tasks, args.contamination, args.ngram, args.limit)
        for name, r in report.items():
            print(f"contamination  {name:<14} {r['contaminated']:>6} of {r['examples']:>6} examples "
                  f"({r['percent']:.2f}%) share a {r['ngram']}-gram with the training shards")
        write_json(report, f"{args.out}/contamination.json")


def register(sub) -> None:
    ev = sub.add_parser("eval", help="benchmarks (lm-eval conventions), perplexity and bits per byte")
    ev.add_argument("models", nargs="+", help="model paths: .gguf, HF dir, mai export, run dir")
    ev.add_argument("--tasks", default="", help="comma list: hellaswag,arc_easy,arc_challenge,piqa,"
                    "winogrande,boolq,mmlu,mmlu_5shot,lambada; generative: gsm8k,humaneval,mbpp,"
                    "minerva_math_500,drop,squad, or a .jsonl file of {prompt, answer}")
    ev.add_argument("--limit", type=int, default=None, help="first N examples per task (per MMLU subject)")
    ev.add_argument("--text", nargs="*", default=[], help=".txt / .jsonl files for perplexity and bits/byte")
    ev.add_argument("--shards", default=None, help="token-shard directory for held-out perplexity")
    ev.add_argument("--split", default="val", help="split of --shards")
    ev.add_argument("--batch-tokens", type=int, default=4096, help="tokens per forward batch")
    ev.add_argument("--max-length", type=int, default=None, help="context window (default: the model's)")
    ev.add_argument("--device", default="cpu")
    add_precision_flag(ev)
    ev.add_argument("--out", default="runs/eval", help="folder for results.json and results.png")
    ev.add_argument("--contamination", action="append", default=[], metavar="SHARD_DIR",
                    help="report the task examples sharing an n-gram with these training shards (repeatable)")
    ev.add_argument("--ngram", type=int, default=13, help="n-gram length of the contamination report")
    ev.add_argument("--samples", type=int, default=1, help="generative tasks: answers per question (pass@k)")
    ev.add_argument("--temperature", type=float, default=0.0, help="generative tasks: 0 = greedy")
    ev.add_argument("--chat", action="store_true", help="generative tasks: prompt through the chat template")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="generative tasks: at most N tokens")
    ev.add_argument("--batch-size", type=int, default=8, help="generative tasks: requests decoded together")
    ev.add_argument("--seed", type=int, default=1234, help="generative tasks: sampling seed")
    ev.set_defaults(func=cmd_eval)
