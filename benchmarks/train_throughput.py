"""Training tokens/s and MFU of mai's decoder against Hugging Face transformers' LlamaForCausalLM.

Both models have the same shape and weights count, train with the same step (AdamW, cross-entropy on
fp32 logits, gradient clipping) on the same random batches, in fp32 and in bf16 autocast. The runs
alternate (mai, HF, mai, HF, ...) so that load from other processes hits both alike; the script prints
medians and the mai/HF ratio, and MFU against this machine's matmul peak measured in the same process.
By default only the precision that ``precision: auto`` picks here is timed (bf16 on a CPU without a fast
bf16 path would take hours); ``--precision both`` times fp32 and bf16.

    python benchmarks/train_throughput.py [--steps 8] [--rounds 3] [--compile] \
        [--precision auto|fp32|bf16|both]

``--layout pp2`` / ``--layout dp2`` instead times mai's own fp32 training step on 2 CPU processes
(gloo, one thread each) under that layout — the same model, global batch and optimizer; pp2 runs the
1F1B schedule over ``--microbatches`` micro-batches (bubble ≈ (p − 1)/(m + p − 1)), dp2 is FSDP 2 —
and prints the tokens/s of the whole job (rank 0, the median step after two warm-up steps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from mai.model.config import ModelConfig
from mai.model.presets import train_flops_per_token
from mai.model.transformer import Transformer
from mai.precision import bench_tag, resolve
from mai.train.peak import measure_matmul_flops

SHAPE = dict(vocab_size=8192, d_model=384, n_layers=6, n_heads=6, n_kv_heads=6, ffn_dim=1024, max_seq_len=256)
SEQ, BATCH = 256, 16


def hf_model(cfg: ModelConfig) -> torch.nn.Module:
    import transformers

    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, intermediate_size=cfg.ffn_dim,
        max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=False, attn_implementation="sdpa",
    )
    return transformers.LlamaForCausalLM(hf_cfg)


def time_steps(model, forward, batches, precision: str, steps: int) -> float:
    """Seconds per optimizer step, the median over ``steps`` steps after two warm-up steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for i in range(steps + 2):
        x, y = batches[i % len(batches)]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = forward(model, x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def layout_worker(layout: str, steps: int, microbatches: int) -> None:
    """One rank of ``--layout`` (run by torchrun): time the training step of the whole 2-process job."""
    import torch.distributed as dist

    from mai.parallel import ParallelConfig, build_mesh, parallelize
    from mai.parallel.grad import clip_grad_norm_
    from mai.parallel.init import materialize
    from mai.parallel.pipeline import pipeline_model

    torch.set_num_threads(1)
    world, cpu, cfg = int(os.environ["WORLD_SIZE"]), torch.device("cpu"), ModelConfig(**SHAPE)
    pcfg = ParallelConfig(pp=world if layout.startswith("pp") else 1, pp_microbatches=microbatches)
    pcfg = pcfg.resolve(world)
    mesh = build_mesh(pcfg, world, "cpu", cfg)
    tokens = torch.randint(0, cfg.vocab_size, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(0))
    pp_group = None
    if pcfg.pp > 1:
        pipe = pipeline_model(cfg, pcfg, mesh, cpu, BATCH // microbatches, SEQ,
                              lambda module: materialize(module, cpu, 0))
        model, pp_group = pipe.rank_module, mesh.pp.get_group()

        def forward_backward() -> None:
            pipe.step(tokens[:, :-1], tokens[:, 1:], 1.0 / microbatches)
    else:
        with torch.device("meta"):
            model = Transformer(cfg)
        parallelize(model, pcfg, mesh)
        materialize(model, cpu, 0)
        mine = tokens.chunk(world)[dist.get_rank()]

        def forward_backward() -> None:
            logits = model(mine[:, :-1])
            F.cross_entropy(logits.float().flatten(0, 1), mine[:, 1:].flatten()).backward()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for i in range(steps + 2):
        dist.barrier()
        start = time.perf_counter()
        forward_backward()
        clip_grad_norm_(model.parameters(), 1.0, pp_group)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dist.barrier()
        if i >= 2:
            times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        print(f"{bench_tag('fp32')} torch {torch.__version__}; shape {SHAPE}; seq {SEQ}, "
              f"global batch {BATCH}")
        extra = f", {microbatches} micro-batches (1F1B)" if pcfg.pp > 1 else " (FSDP)"
        print(f"layout {layout}{extra}: {BATCH * SEQ / statistics.median(times):,.0f} tokens/s "
              f"(2 processes, 1 thread each)")
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time mai with torch.compile")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "both"))
    ap.add_argument("--layout", choices=("pp2", "dp2"), help="time mai on 2 processes under this layout")
    ap.add_argument("--microbatches", type=int, default=4, help="--layout pp2: micro-batches per step")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a torchrun rank of --layout
    args = ap.parse_args()
    if args.worker:
        layout_worker(args.layout, args.steps, args.microbatches)
        return
    if args.layout:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        subprocess.run([*launcher, __file__, "--worker", "--layout", args.layout, "--steps", str(args.steps),
                        "--microbatches", str(args.microbatches)], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        return
    precisions = ("fp32", "bf16") if args.precision == "both" else (resolve(args.precision).name,)

    torch.manual_seed(0)
    cfg = ModelConfig(**SHAPE)
    def tokens() -> torch.Tensor:
        return torch.randint(0, cfg.vocab_size, (BATCH, SEQ))

    batches = [(tokens(), tokens()) for _ in range(4)]
    flops_per_token = train_flops_per_token(cfg, SEQ)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: measure_matmul_flops(dtypes[name]) for name in precisions}
    for name in precisions:
        print(f"{bench_tag(name)} torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"shape {SHAPE}; seq {SEQ}, batch {BATCH}; matmul peak here {peaks[name] / 1e9:.0f} GFLOP/s")

    contenders = {
        "mai": (lambda: Transformer(cfg), lambda m, x: m(x)),
        "hf": (lambda: hf_model(cfg), lambda m, x: m(input_ids=x).logits),
    }
    if args.compile:
        contenders["mai+compile"] = (lambda: torch.compile(Transformer(cfg)), lambda m, x: m(x))
    results: dict[tuple[str, str], list[float]] = {}
    for precision in precisions:
        models = {name: build() for name, (build, _) in contenders.items()}
        for _ in range(args.rounds):
            for name, (_, forward) in contenders.items():
                sec = time_steps(models[name], forward, batches, precision, args.steps)
                results.setdefault((name, precision), []).append(BATCH * SEQ / sec)

    print(f"\n{'model':<12} {'precision':<9} {'tokens/s':>10} {'MFU':>7} {'vs HF':>7}  machine")
    for precision in precisions:
        hf = statistics.median(results[("hf", precision)])
        for name in contenders:
            tps = statistics.median(results[(name, precision)])
            mfu = tps * flops_per_token / peaks[precision]
            print(f"{name:<12} {precision:<9} {tps:>10,.0f} {100 * mfu:>6.1f}% {tps / hf:>6.2f}x  "
                  f"{bench_tag(precision)}")


if __name__ == "__main__":
    main()
