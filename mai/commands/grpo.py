"""``mai grpo``: RL on verifiable rewards (GRPO) on the one trainer, from a typed run config."""

from __future__ import annotations

import argparse
import json

from mai.commands.flags import add_config_flags


def cmd_grpo(args: argparse.Namespace) -> None:
    from mai.config import load_yaml, resolve
    from mai.post.grpo import GRPORunConfig, load_items, run_grpo

    base = load_yaml(args.config) if args.config else {}
    overrides = list(args.overrides) + ([f"train.init_from={args.model}"] if args.model else [])
    overrides += [f"grpo.data={json.dumps(args.data)}"] if args.data else []
    cfg = resolve(GRPORunConfig, base, overrides)
    if args.decontam_report:
        from mai.post.arith import gsm8k_report

        print(json.dumps(gsm8k_report(load_items(cfg.grpo), args.ngram), indent=1))
        return
    result, meta = run_grpo(cfg)
    print(f"data          {meta['prompts']} prompts, {meta['rows_per_step']} completions per step")
    print(f"steps         {result.steps}, loss {result.final_loss:.4f}")
    print(f"metrics       {result.out_dir / 'metrics.jsonl'} (reward_mean, reward_std, kl, clip_fraction, "
          "completion_tokens per step)")
    print(f"rollouts      {meta['rollouts']}")
    print(f"model         {result.out_dir / 'model'}")


def register(sub) -> None:
    p = sub.add_parser("grpo", help="RL with verifiable rewards (GRPO): sampled groups, group-relative "
                                    "advantages, clipped ratio, KL to the frozen start")
    add_config_flags(p, "docs/post_training.md (GRPO)")
    p.add_argument("--model", help="start and reference model (mai export, run dir, HF dir, .gguf, "
                                   "bundled:smollm2)")
    p.add_argument("--data", action="append", default=[],
                   help="JSONL of {prompt, answer | tests} (repeatable); none = generated arithmetic "
                        "problems")
    p.add_argument("--decontam-report", action="store_true",
                   help="print the prompts' word n-gram overlap with the GSM8K test questions and exit")
    p.add_argument("--ngram", type=int, default=8, help="n-gram length of --decontam-report")
    p.set_defaults(func=cmd_grpo)
