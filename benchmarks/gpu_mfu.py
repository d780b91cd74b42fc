"""MFU and tokens/s of `mai`'s model on one GPU: a ~1B dense model and a small MoE, in the precision
`mai train`'s ``precision: auto`` picks (bf16 autocast with fp32 master weights on CUDA; on a CPU dry run
bf16 only where it measures fast), torch.compile, fused AdamW, random tokens.

MFU = tokens/s × training FLOPs per token (mai.model.presets.train_flops_per_token, the count Megatron-LM
and torchtitan use) ÷ the device's dense bf16 peak (989 TFLOP/s for H100/H200, mai.train.peak).
``--dry-run`` runs the same code on CPU with tiny shapes and no compile, so CI can keep the script working.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from mai.model.moe import moe_aux_loss
from mai.model.presets import count_params, get_preset, train_flops_per_token
from mai.model.transformer import Transformer
from mai.precision import bench_tag, resolve
from mai.train.peak import peak_flops

# name → (model config, micro-batch, sequence length)
MODELS = {
    # Llama-3.2-1B's shape (the "1b" preset): 1.24B parameters.
    "dense-1b": (get_preset("1b"), 8, 2048),
    # 16 experts of 1024 (top-2) + 1 shared, first layer dense: 0.93B total, 0.27B active.
    "moe-small": (get_preset("moe-demo", vocab_size=32768, d_model=1024, n_layers=16, n_heads=16,
                             n_kv_heads=8, ffn_dim=4096, max_seq_len=2048, n_experts=16, top_k=2,
                             n_shared_experts=1, expert_ffn_dim=1024, first_dense_layers=1), 8, 2048),
}


def tiny(cfg, batch: int, seq: int):
    """The dry-run shape: same family, CPU-sized."""
    small = replace(cfg, vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                    ffn_dim=128, max_seq_len=32, expert_ffn_dim=32 if cfg.is_moe else 0)
    return small, 2, 32


def measure(name: str, cfg, batch: int, seq: int, device: torch.device, steps: int, warmup: int,
            compile_model: bool) -> dict:
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    step_fn = torch.compile(model) if compile_model else model
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]

    precision = resolve("auto", device).name

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = step_fn(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        (loss + moe_aux_loss(model)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # synchronises the device

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    compile_s = time.perf_counter() - started
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tok_s = batch * seq / step_s
    flops = train_flops_per_token(cfg, seq)
    peak = peak_flops(device, precision)
    size = count_params(cfg)
    on_gpu = device.type == "cuda"
    result = {"model": name, "params": size.total, "active_params": size.active, "batch": batch, "seq": seq,
              "step_s": step_s, "tokens_per_s": tok_s, "tflops": tok_s * flops / 1e12,
              "mfu": tok_s * flops / peak, "peak_tflops": peak / 1e12, "warmup_s": compile_s,
              "precision": precision,
              "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
              "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else 0.0}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, no compile")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (include compilation)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--batch", type=int, default=0, help="micro-batch override (0 = per-model default of 8)")
    ap.add_argument("--out", default="runs/bench/gpu_mfu.json")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run with --dry-run to check the script on CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for name in args.models.split(","):
        if device.type == "cuda":  # the previous model's memory is free once measure() returned
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        if name not in MODELS:
            raise SystemExit(f"error: unknown model '{name}' (known: {', '.join(MODELS)})")
        cfg, batch, seq = MODELS[name]
        if args.dry_run:
            cfg, batch, seq = tiny(cfg, batch, seq)
        batch = args.batch or batch
        steps = 2 if args.dry_run else args.steps
        warmup = 1 if args.dry_run else args.warmup
        results.append(measure(name, cfg, batch, seq, device, steps, warmup,
                               compile_model=not (args.dry_run or args.no_compile)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    peak = results[0]["peak_tflops"]
    print(f"| model | params (active) | batch × seq | tokens/s | TFLOP/s | MFU vs {peak:.1f} | step "
          "| warm-up | peak memory | machine |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['params'] / 1e9:.2f}B ({r['active_params'] / 1e9:.2f}B) | {r['batch']} × "
              f"{r['seq']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {r['mfu']:.1%} | "
              f"{r['step_s'] * 1e3:.0f} ms | {r['warmup_s']:.0f} s | {r['peak_mem_gib']:.1f} GiB | "
              f"{bench_tag(r['precision'])} |")
    print(f"device: {results[0]['device']} {bench_tag(results[0]['precision'])}; results in {out}")


if __name__ == "__main__":
    main()
