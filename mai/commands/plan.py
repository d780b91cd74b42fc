"""``mai plan``: per-GPU memory, predicted MFU, step time and days of a cluster run, on paper."""

from __future__ import annotations

import argparse

from mai.errors import MaiError


def cmd_plan(args: argparse.Namespace) -> None:
    from mai.plan import Layout, format_anchors, format_plan, format_table, plan, search

    if args.anchors:
        print(format_anchors())
        return
    if not args.preset or not args.gpus:
        raise MaiError("mai plan needs --preset and --gpus (or --anchors for the published-runs table)")
    if args.search:
        plans = search(args.preset, args.gpu, args.gpus, args.seq_len, args.global_batch, args.mfu,
                       software=args.software)
        if not plans:
            raise MaiError(f"no layout of {args.preset} fits on {args.gpus} × {args.gpu}; add GPUs")
        mfu = "predicted MFU" if args.mfu is None else f"{args.mfu:.0%} MFU"
        print(f"layouts of {args.preset} that fit on {args.gpus} × {args.gpu} at {mfu}, fastest first:")
        print(format_table(plans, args.tokens))
        return
    layout = Layout(gpus=args.gpus, dp=args.dp, tp=args.tp, pp=args.pp, ep=args.ep,
                    micro_batch=args.micro_batch, seq_len=args.seq_len, global_batch=args.global_batch,
                    activation_checkpointing=args.activation_checkpointing, zero=args.zero,
                    schedule=args.schedule, chunks=args.chunks)
    print(format_plan(plan(args.preset, args.gpu, layout, args.mfu, args.software), args.tokens))


def register(sub) -> None:
    pl = sub.add_parser("plan", help="per-GPU memory, step time and days of a cluster run, on paper")
    pl.add_argument("--preset", help="a model preset, or megatron-1.7b/7.1b/70b/462b (published anchors)")
    pl.add_argument("--gpu", default="h100", help="h100, h200, a100, b200 or h100-96gb-500w")
    pl.add_argument("--gpus", type=int, help="number of GPUs")
    pl.add_argument("--dp", type=int, default=0, help="data parallel (0 = gpus / (tp·pp))")
    pl.add_argument("--tp", type=int, default=1)
    pl.add_argument("--pp", type=int, default=1)
    pl.add_argument("--ep", type=int, default=1, help="expert parallel, taken from dp")
    pl.add_argument("--micro-batch", type=int, default=1)
    pl.add_argument("--seq-len", type=int, default=4096)
    pl.add_argument("--global-batch", type=int, default=1024, help="sequences per optimizer step")
    pl.add_argument("--activation-checkpointing", default="selective", choices=["none", "selective", "full"])
    pl.add_argument("--zero", type=int, default=3, help="0-3; 3 = FSDP (all state sharded)")
    pl.add_argument("--schedule", default="1f1b", choices=["1f1b", "interleaved"], help="pipeline schedule")
    pl.add_argument("--chunks", type=int, default=1, help="model chunks per pipeline rank (interleaved: ≥ 2)")
    pl.add_argument("--software", default="compiled", help="compiled (MAI with parallel.compile), eager, "
                    "megatron, torchtitan-compiled or torchtitan-eager: sets the kernel-fusion model")
    pl.add_argument("--mfu", type=float, default=None,
                    help="override the predicted model FLOPs utilisation for the step time")
    pl.add_argument("--anchors", action="store_true",
                    help="print predicted vs published MFU of Megatron-LM's and torchtitan's runs")
    pl.add_argument("--tokens", type=float, default=15e12, help="token budget for the days estimate")
    pl.add_argument("--search", action="store_true", help="list the layouts that fit, best first")
    pl.set_defaults(func=cmd_plan)
