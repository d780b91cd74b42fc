"""``mai sft`` and ``mai dpo``: post-training on the one trainer, from a typed run config."""

from __future__ import annotations

import argparse

from mai.commands.flags import add_config_flags


def _tuning_config(args: argparse.Namespace):
    """The run config of `mai sft` / `mai dpo`: --config, dotted overrides, and --model as train.init_from."""
    from mai.config import load_yaml, resolve
    from mai.train.config import RunConfig

    base = load_yaml(args.config) if args.config else {}
    overrides = list(args.overrides) + ([f"train.init_from={args.model}"] if args.model else [])
    return resolve(RunConfig, base, overrides)


def cmd_sft(args: argparse.Namespace) -> None:
    from mai.post.sft import run_sft

    result, meta = run_sft(_tuning_config(args), args.data, args.lora_rank, not args.no_packing,
                           synth_dirs=args.synth)
    print(f"data          {meta['train']['conversations']} conversations in {meta['train']['rows']} rows, "
          f"{meta['train']['loss_tokens']:,} assistant tokens")
    print(f"steps         {result.steps}, train loss {result.final_loss:.4f}, "
          f"validation loss {result.val_loss:.4f}")
    print(f"model         {result.out_dir / 'model'}")


def cmd_dpo(args: argparse.Namespace) -> None:
    from mai.post.dpo import run_dpo

    result, meta = run_dpo(_tuning_config(args), args.data, args.beta)
    print(f"data          {meta['train']['pairs']} preference pairs, {meta['val']['pairs']} for validation")
    print(f"steps         {result.steps}, loss {result.final_loss:.4f}, "
          f"validation loss {result.val_loss:.4f}")
    print(f"metrics       {result.out_dir / 'metrics.jsonl'} (reward_margin, reward_accuracy per step)")
    print(f"model         {result.out_dir / 'model'}")


def _add_tuning_flags(p: argparse.ArgumentParser, demo_config: str, model_help: str, data_help: str) -> None:
    """The flags `mai sft` and `mai dpo` share; see :func:`_tuning_config`."""
    add_config_flags(p, demo_config)
    p.add_argument("--model", help=f"{model_help} (mai export, run dir, HF dir, .gguf, bundled:smollm2)")
    p.add_argument("--data", action="append", default=[], help=data_help)


def register(sub) -> None:
    sft = sub.add_parser("sft", help="supervised fine-tuning on chat conversations (OpenAI messages JSONL)")
    _add_tuning_flags(sft, "configs/sft_demo.yaml", "weights to start from",
                      "a JSONL file of conversations (repeat for more); none = the chitchat-dataset demo")
    sft.add_argument("--synth", action="append", default=[],
                     help="WORK_DIR of a `mai data synth` run: its kept documents join as instruction data")
    sft.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0 = full)")
    sft.add_argument("--no-packing", action="store_true", help="one conversation per row")
    sft.set_defaults(func=cmd_sft)

    dpo = sub.add_parser("dpo", help="preference tuning (DPO) on chosen/rejected pairs, frozen reference")
    _add_tuning_flags(dpo, "configs/dpo_demo.yaml", "start and reference model",
                      "JSONL of {prompt, chosen, rejected} (repeatable); none = chitchat demo pairs")
    dpo.add_argument("--beta", type=float, default=0.1, help="DPO temperature β")
    dpo.set_defaults(func=cmd_dpo)
