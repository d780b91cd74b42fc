"""``mai sft`` and ``mai dpo``: post-training on the one trainer, from a typed run config.

Every flag is a config field (``sft.*`` / ``dpo.*`` beside the trainer's sections); a flag given on the
command line is applied as an override after ``--config``, so the run's saved config.yaml repeats the run.
"""

from __future__ import annotations

import argparse
from typing import Any

from mai.commands.flags import add_config_flags


def tuning_config(cls: type, config: str | None, overrides: list[str], flags: dict[str, Any]) -> Any:
    """``cls`` (SFTRunConfig / DPORunConfig) from --config ← dotted overrides ← the flags that were given."""
    from mai.config import from_dict, load_yaml, merge, parse_override

    data = load_yaml(config) if config else {}
    for text in overrides:
        merge(data, *parse_override(text))
    for key, value in flags.items():
        if value is not None:
            merge(data, key.split("."), value)
    return from_dict(cls, data)


def _flags(args: argparse.Namespace, section: str, names: dict[str, str]) -> dict[str, Any]:
    flags = {"train.init_from": args.model, f"{section}.data": args.data or None}
    flags.update({f"{section}.{field}": getattr(args, attr) for field, attr in names.items()})
    return flags


def cmd_sft(args: argparse.Namespace) -> None:
    from mai.post.sft import SFTRunConfig, run_sft_config

    packing = False if args.no_packing else None
    flags = _flags(args, "sft", {"synth": "synth", "lora_rank": "lora_rank"})
    flags.update({"sft.synth": args.synth or None, "sft.packing": packing})
    result, meta = run_sft_config(tuning_config(SFTRunConfig, args.config, args.overrides, flags))
    print(f"data          {meta['train']['conversations']} conversations in {meta['train']['rows']} rows, "
          f"{meta['train']['loss_tokens']:,} assistant tokens")
    print(f"steps         {result.steps}, train loss {result.final_loss:.4f}, "
          f"validation loss {result.val_loss:.4f}")
    print(f"model         {result.out_dir / 'model'} (config: {result.out_dir / 'config.yaml'})")
    if (result.out_dir / "adapter").is_dir():
        print(f"adapter       {result.out_dir / 'adapter'} (un-merged, for a catalog's adapters)")


def cmd_dpo(args: argparse.Namespace) -> None:
    from mai.post.dpo import DPORunConfig, run_dpo_config

    flags = _flags(args, "dpo", {"beta": "beta"})
    result, meta = run_dpo_config(tuning_config(DPORunConfig, args.config, args.overrides, flags))
    print(f"data          {meta['train']['pairs']} preference pairs, {meta['val']['pairs']} for validation")
    print(f"steps         {result.steps}, loss {result.final_loss:.4f}, "
          f"validation loss {result.val_loss:.4f}")
    print(f"metrics       {result.out_dir / 'metrics.jsonl'} (reward_margin, reward_accuracy per step)")
    print(f"model         {result.out_dir / 'model'} (config: {result.out_dir / 'config.yaml'})")


def _add_tuning_flags(p: argparse.ArgumentParser, demo_config: str, model_help: str, data_help: str) -> None:
    """The flags `mai sft` and `mai dpo` share; see :func:`tuning_config`."""
    add_config_flags(p, demo_config)
    p.add_argument("--model", help=f"{model_help} (mai export, run dir, HF dir, .gguf, bundled:smollm2); "
                   "= train.init_from")
    p.add_argument("--data", action="append", default=[], help=data_help)


def register(sub) -> None:
    sft = sub.add_parser("sft", help="supervised fine-tuning on chat conversations (OpenAI messages JSONL)")
    _add_tuning_flags(sft, "configs/sft_demo.yaml", "weights to start from",
                      "a JSONL file of conversations (repeat for more; = sft.data); none = the chitchat demo")
    sft.add_argument("--synth", action="append", default=[],
                     help="WORK_DIR of a `mai data synth` run: its kept documents join as instruction data "
                          "(= sft.synth)")
    sft.add_argument("--lora-rank", type=int, default=None,
                     help="train LoRA adapters of this rank (0 = full; = sft.lora_rank)")
    sft.add_argument("--no-packing", action="store_true",
                     help="one conversation per row (= sft.packing=false)")
    sft.set_defaults(func=cmd_sft)

    dpo = sub.add_parser("dpo", help="preference tuning (DPO) on chosen/rejected pairs, frozen reference")
    _add_tuning_flags(dpo, "configs/dpo_demo.yaml", "start and reference model",
                      "JSONL of {prompt, chosen, rejected} (repeatable; = dpo.data); none = chitchat demo "
                      "pairs")
    dpo.add_argument("--beta", type=float, default=None, help="DPO temperature β (= dpo.beta, default 0.1)")
    dpo.set_defaults(func=cmd_dpo)
