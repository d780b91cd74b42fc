"""``mai model info``: a preset's exact size and FLOPs, built on the meta device (no memory)."""

from __future__ import annotations

import argparse
import time

from mai.errors import MaiError


def cmd_model_info(args: argparse.Namespace) -> None:
    import torch

    from mai.model.presets import count_params, get_preset, train_flops_per_token
    from mai.model.transformer import Transformer

    cfg = get_preset(args.preset)
    start = time.perf_counter()
    with torch.device("meta"):  # shapes only: a 500B model costs no memory here
        model = Transformer(cfg)
    built = sum(p.numel() for p in model.parameters())
    size = count_params(cfg)
    if built != size.total:
        raise MaiError(f"internal: module has {built:,} parameters but the formula says {size.total:,}")
    seq = args.seq_len or cfg.max_seq_len
    print(f"preset            {args.preset}")
    print(f"shape             d={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads}/{cfg.n_kv_heads} "
          f"head_dim={cfg.head_dim} ffn={cfg.ffn_dim} vocab={cfg.vocab_size} tied={cfg.tie_embeddings}")
    if cfg.is_moe:
        print(f"experts           {cfg.n_experts} routed (top-{cfg.top_k}) + {cfg.n_shared_experts} shared, "
              f"expert ffn={cfg.expert_ffn_dim}, first {cfg.first_dense_layers} layers dense")
    print(f"parameters        {size.total:,}")
    if cfg.is_moe:
        print(f"active parameters {size.active:,}")
    print(f"weights (bf16)    {size.bf16_bytes:,} bytes ({size.bf16_bytes / 2**30:,.1f} GiB)")
    print(f"train FLOPs/token {train_flops_per_token(cfg, seq):,} (seq_len {seq})")
    print(f"built on meta in  {time.perf_counter() - start:.2f} s")


def register(sub) -> None:
    model = sub.add_parser("model", help="model presets").add_subparsers(dest="action", required=True)
    info = model.add_parser("info", help="exact parameter count, bf16 bytes and FLOPs of a preset")
    info.add_argument("--preset", required=True)
    info.add_argument("--seq-len", type=int, default=None, help="sequence length for the FLOP count")
    info.set_defaults(func=cmd_model_info)
