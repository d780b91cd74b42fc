"""``mai train``: pretraining (one process, or many under torchrun) from a typed run config."""

from __future__ import annotations

import argparse
import math
import os

from mai.commands.flags import add_config_flags


def cmd_train(args: argparse.Namespace) -> None:
    from mai.config import load_yaml, resolve
    from mai.train.config import RunConfig
    from mai.train.trainer import train

    base = load_yaml(args.config) if args.config else {}
    cfg = resolve(RunConfig, base, args.overrides)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        stopped = (f" of {result.planned_steps} (stopped by train.max_minutes={cfg.train.max_minutes:g})"
                   if result.steps < result.planned_steps else "")
        print(f"steps                 {result.steps}{stopped}")
        print(f"final train loss      {result.final_loss:.4f} nats/token")
        print(f"validation loss       {result.val_loss:.4f} nats/token")
        print(f"unigram entropy       {result.unigram_entropy:.4f} nats/token (the no-context baseline)")
        mfu = f"{100 * result.mfu:.1f}%" if math.isfinite(result.mfu) else "unknown (peak not trusted)"
        print(f"throughput            {result.tokens_per_s:,.0f} tokens/s in {result.precision}, MFU {mfu}")
        print(f"model                 {result.out_dir / 'model'}")
        print(f"loss curve            {result.out_dir / 'loss.png'}")


def register(sub) -> None:
    tr = sub.add_parser("train", help="train a model (launch with torchrun for several processes)")
    add_config_flags(tr, "configs/")
    tr.set_defaults(func=cmd_train)
