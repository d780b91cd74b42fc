"""``mai eval``: benchmarks (lm-eval conventions), generative tasks, perplexity, contamination, and a pairwise
LLM-as-judge comparison of two models (``--judge``).

Every flag is a field of :class:`mai.eval.run.EvalConfig`; ``--config FILE`` and ``--set KEY=VALUE`` set the
rest, and a flag given on the command line wins. The run saves its config as OUT/config.yaml.
"""

from __future__ import annotations

import argparse
from typing import Any

from mai.commands.flags import add_precision_flag

# flag attribute → config field (generative settings live under gen.)
_FIELDS = {"limit": "limit", "text": "texts", "shards": "shards", "split": "split",
           "batch_tokens": "batch_tokens", "max_seq_len": "max_seq_len", "device": "device",
           "precision": "precision", "out": "out", "contamination": "contamination", "ngram": "ngram",
           "samples": "gen.samples", "temperature": "gen.temperature", "chat": "gen.chat",
           "max_new_tokens": "gen.max_new_tokens", "batch_size": "gen.batch_size", "seed": "gen.seed",
           "judge": "judge.model", "judge_catalog": "judge.catalog", "a": "judge.a", "b": "judge.b",
           "prompts": "judge.prompts", "judge_max_tokens": "judge.max_tokens",
           "judge_workers": "judge.workers"}


def eval_config(args: argparse.Namespace) -> Any:
    from mai.config import from_dict, load_yaml, merge, parse_override
    from mai.eval.run import EvalConfig

    data = load_yaml(args.config) if args.config else {}
    for text in args.set:
        merge(data, *parse_override(text))
    given: dict[str, Any] = {field: getattr(args, attr) for attr, field in _FIELDS.items()}
    given["models"] = args.models or None
    given["tasks"] = [t for t in args.tasks.split(",") if t] if args.tasks is not None else None
    for field, value in given.items():
        if value is not None and value != []:
            merge(data, field.split("."), value)
    return from_dict(EvalConfig, data, "eval")


def cmd_eval(args: argparse.Namespace) -> None:
    from mai.eval.run import run_eval_config

    cfg = eval_config(args)
    run_eval_config(cfg)
    files = [f"{cfg.out}/results.json"] + [f"{cfg.out}/results.png"] * bool(cfg.models) + \
        [f"{cfg.out}/judgments.jsonl"] * bool(cfg.judge.model)
    print(f"results    {', '.join(files)} (config: {cfg.out}/config.yaml)")


def register(sub) -> None:
    ev = sub.add_parser("eval", help="benchmarks (lm-eval conventions), perplexity and bits per byte, "
                                     "pairwise LLM-as-judge (--judge)")
    ev.add_argument("models", nargs="*", help="model paths: .gguf, HF dir, mai export, run dir (= models)")
    ev.add_argument("--config", help="a YAML eval config (the fields of mai.eval.run.EvalConfig)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. gen.temperature=0.7")
    ev.add_argument("--tasks", default=None, help="comma list: hellaswag,arc_easy,arc_challenge,piqa,"
                    "winogrande,boolq,mmlu,mmlu_5shot,lambada; generative: gsm8k,humaneval,mbpp,"
                    "minerva_math_500,drop,squad, or a .jsonl file of {prompt, answer}")
    ev.add_argument("--limit", type=int, default=None, help="first N examples per task (per MMLU subject)")
    ev.add_argument("--text", nargs="*", default=None, help=".txt / .jsonl files: perplexity, bits/byte")
    ev.add_argument("--shards", default=None, help="token-shard directory for held-out perplexity")
    ev.add_argument("--split", default=None, help="split of --shards (default val)")
    ev.add_argument("--batch-tokens", type=int, default=None, help="tokens per forward batch (default 4096)")
    ev.add_argument("--max-seq-len", type=int, default=None, help="context window (default: the model's)")
    ev.add_argument("--device", default=None, help="default cpu")
    add_precision_flag(ev)
    ev.set_defaults(precision=None)
    ev.add_argument("--out", default=None, help="folder for results.json and results.png (default runs/eval)")
    ev.add_argument("--contamination", action="append", default=None, metavar="SHARD_DIR",
                    help="report the task examples sharing an n-gram with these training shards (repeatable)")
    ev.add_argument("--ngram", type=int, default=None, help="n-gram length of the contamination report (13)")
    ev.add_argument("--samples", type=int, default=None, help="generative: answers per question (pass@k)")
    ev.add_argument("--temperature", type=float, default=None, help="generative tasks: 0 = greedy")
    ev.add_argument("--chat", action="store_true", default=None,
                    help="generative tasks: prompt through the chat template")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="generative tasks: at most N tokens")
    ev.add_argument("--batch-size", type=int, default=None, help="generative: requests decoded together")
    ev.add_argument("--seed", type=int, default=None, help="generative tasks: sampling seed")
    judge = ev.add_argument_group("pairwise LLM-as-judge (win rate of A over B, both answer orders)")
    judge.add_argument("--judge", default=None, metavar="URL_OR_MODEL",
                       help="the judge: an OpenAI-compatible base URL (http://127.0.0.1:8000/v1, optionally "
                            "#MODEL; key from $MAI_JUDGE_API_KEY), a model of --judge-catalog, or a model "
                            "path (e.g. bundled:smollm2): those two are served by `mai serve` for the run")
    judge.add_argument("--judge-catalog", default=None, metavar="FILE",
                       help="a `mai serve` catalog in which --judge names a model")
    judge.add_argument("--a", default=None,
                       help="model A: a path mai loads, or a .jsonl of {answer} per prompt")
    judge.add_argument("--b", default=None, help="model B (the baseline), the same way")
    judge.add_argument("--prompts", default=None,
                       help="JSONL of prompts (strings or {prompt}); none = chitchat-dataset openers "
                            "(--limit, default 50); A and B answer in --max-new-tokens (default 256)")
    judge.add_argument("--judge-max-tokens", type=int, default=None, help="judge reply length (default 256)")
    judge.add_argument("--judge-workers", type=int, default=None, help="judge requests in flight (default 4)")
    ev.set_defaults(func=cmd_eval)
