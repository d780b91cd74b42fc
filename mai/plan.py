"""Plan a cluster run on paper: per-GPU memory, FLOPs, step time and days for a preset and a layout.

The model FLOPs are :func:`mai.model.presets.train_flops_per_token` (6·N + attention), the same count
Megatron-LM uses for its MFU, so a plan at the published MFU reproduces the published throughput
(tests/test_plan.py checks the 462B anchor). Memory follows the usual mixed-precision accounting: bf16
weights (2 B/param), fp32 gradients (4 B), fp32 master weights + two Adam moments (12 B), sharded over
data-parallel ranks according to the ZeRO stage (3 = FSDP2), and activations per token per layer from the
tensors a block keeps for backward (Korthikanti et al. 2022, adapted to SwiGLU / GQA / flash attention).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

from mai.errors import MaiError
from mai.model.config import ModelConfig
from mai.model.presets import PRESETS, count_params, train_flops_per_token


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    peak_tflops: float  # dense bf16


GPUS = {  # vendor datasheets, dense bf16 (no sparsity)
    "h100": GPU("H100 SXM 80GB", 80, 989.0),
    "h200": GPU("H200 SXM 141GB", 141, 989.0),
    "a100": GPU("A100 SXM 80GB", 80, 312.0),
    "b200": GPU("B200 192GB", 192, 2250.0),
}

# Published configurations used as anchors (not trainable presets). Megatron-LM README model table:
# GPT, hidden 18432, 112 layers, 144 heads, vocab 131072, seq 4096; a 4h GeLU MLP has 8·d² weights, the same
# as SwiGLU with f = 8d/3, so the FLOP count is identical.
ANCHOR_MODELS = {
    "megatron-462b": ModelConfig(vocab_size=131072, d_model=18432, n_layers=112, n_heads=144, n_kv_heads=144,
                                 ffn_dim=49152, max_seq_len=4096),
}

RECOMPUTE_COST = {"none": 1.0, "selective": 1.03, "full": 4 / 3}  # extra forward share of a step's FLOPs


@dataclass
class Layout:
    gpus: int
    dp: int = 0  # 0 = gpus / (tp · pp)
    tp: int = 1
    pp: int = 1
    ep: int = 1  # expert parallel borrows its ranks from dp (ep divides dp)
    micro_batch: int = 1
    seq_len: int = 4096
    global_batch: int = 1024  # sequences per optimizer step
    activation_checkpointing: str = "selective"  # none | selective | full
    zero: int = 3  # 0 none, 1 optimizer state, 2 + gradients, 3 + weights (FSDP)

    def __post_init__(self) -> None:
        if self.dp == 0 and self.gpus % (self.tp * self.pp) == 0:
            self.dp = self.gpus // (self.tp * self.pp)


@dataclass
class Plan:
    model: str
    gpu: GPU
    layout: Layout
    params_total: int
    params_active: int
    memory: dict[str, float] = field(default_factory=dict)  # bytes per GPU (the most loaded GPU)
    flops_per_token: int = 0
    mfu: float = 0.0
    step_s: float = 0.0
    tokens_per_step: int = 0
    bubble: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def memory_total(self) -> float:
        return sum(self.memory.values())

    @property
    def fits(self) -> bool:
        return not self.errors and self.memory_total <= 0.9 * self.gpu.memory_gib * 2**30

    @property
    def tflops_per_gpu(self) -> float:
        return self.mfu * self.gpu.peak_tflops

    def days(self, tokens: float) -> float:
        return tokens / self.tokens_per_step * self.step_s / 86400


def model_config(name: str) -> ModelConfig:
    if name in ANCHOR_MODELS:
        return ANCHOR_MODELS[name]
    if name not in PRESETS:
        raise MaiError(f"unknown preset '{name}' (known: {', '.join([*PRESETS, *ANCHOR_MODELS])})")
    return PRESETS[name]


def check_layout(cfg: ModelConfig, lay: Layout) -> list[str]:
    """Every divisibility rule the layout must meet, as messages (empty = valid)."""
    errors = []
    if lay.dp * lay.tp * lay.pp != lay.gpus:
        product = lay.dp * lay.tp * lay.pp
        errors.append(f"dp {lay.dp} × tp {lay.tp} × pp {lay.pp} = {product} ≠ {lay.gpus} GPUs")
    for what, n in (("heads", cfg.n_heads), ("KV heads", cfg.n_kv_heads), ("FFN width", cfg.ffn_dim)):
        if n % lay.tp:
            errors.append(f"{what} {n} not divisible by tp {lay.tp}")
    if lay.pp > cfg.n_layers:
        errors.append(f"pp {lay.pp} exceeds the {cfg.n_layers} layers")
    if lay.ep > 1 and not cfg.is_moe:
        errors.append("ep > 1 needs an MoE model")
    if cfg.is_moe and cfg.n_experts % lay.ep:
        errors.append(f"{cfg.n_experts} experts not divisible by ep {lay.ep}")
    if lay.dp and lay.dp % lay.ep:
        errors.append(f"ep {lay.ep} must divide dp {lay.dp}")
    if lay.dp and lay.global_batch % (lay.dp * lay.micro_batch):
        errors.append(f"global batch {lay.global_batch} not divisible by dp {lay.dp} × micro-batch "
                      f"{lay.micro_batch}")
    if lay.activation_checkpointing not in RECOMPUTE_COST:
        errors.append(f"activation_checkpointing must be one of {list(RECOMPUTE_COST)}")
    if lay.zero not in (0, 1, 2, 3):
        errors.append("zero must be 0, 1, 2 or 3")
    return errors


def activation_bytes_per_token(cfg: ModelConfig, layer_is_moe: bool, mode: str) -> float:
    """bf16 bytes one layer keeps per token for backward (before tensor/sequence parallel division)."""
    d, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
    if mode == "full":
        return 2.0 * d  # only the block input; the rest is recomputed
    attn = 4 * d + 2 * kv  # norm input and output, q, k, v, attention output (flash attention: no scores)
    if layer_is_moe:
        f = (cfg.top_k + cfg.n_shared_experts) * cfg.expert_ffn_dim
        mlp = 2 * d + 4 * f + 2 * cfg.top_k * d  # + permuted tokens in and out of the experts
    else:
        f = cfg.ffn_dim
        mlp = 2 * d + 4 * f  # norm in/out, w1 and w3 outputs, silu, product
    if mode == "selective":  # norm outputs, silu and product are recomputed
        attn, mlp = attn - d, mlp - d - 2 * f
    return 2.0 * (attn + mlp)


def plan(name: str, gpu: str, layout: Layout, mfu: float) -> Plan:
    cfg = model_config(name)
    if gpu not in GPUS:
        raise MaiError(f"unknown GPU '{gpu}' (known: {', '.join(GPUS)})")
    if not 0 < mfu <= 1:
        raise MaiError(f"mfu must be in (0, 1], got {mfu}")
    lay = replace(layout)
    size = count_params(cfg)
    p = Plan(name, GPUS[gpu], lay, size.total, size.active, errors=check_layout(cfg, lay))
    if lay.dp <= 0:
        return p

    # Parameters on the most loaded GPU: non-expert weights split by tp·pp; experts also by ep.
    expert = (cfg.n_layers - cfg.first_dense_layers) * cfg.n_experts * 3 * cfg.d_model * cfg.expert_ffn_dim \
        if cfg.is_moe else 0
    stage = math.ceil(cfg.n_layers / lay.pp) / cfg.n_layers * lay.pp  # uneven stages: the largest one
    local = ((size.total - expert) / (lay.tp * lay.pp) + expert / (lay.tp * lay.pp * lay.ep)) * stage
    expert_dp = max(1, lay.dp // lay.ep)  # experts are replicated over the dp ranks left after ep
    shard = {0: (1, 1, 1), 1: (1, 1, 0), 2: (1, 0, 0), 3: (0, 0, 0)}[lay.zero]  # which parts stay whole

    def sharded(bytes_per_param: float, whole: int) -> float:
        expert_part = expert / (lay.tp * lay.pp * lay.ep) * stage * bytes_per_param
        dense_part = local * bytes_per_param - expert_part
        return dense_part / (1 if whole else lay.dp) + expert_part / (1 if whole else expert_dp)

    p.memory["weights"] = sharded(2, shard[0])
    p.memory["gradients"] = sharded(4, shard[1])
    p.memory["optimizer"] = sharded(12, shard[2])
    if lay.zero == 3:  # two layers gathered at a time (current + prefetch), bf16
        p.memory["weights"] += 2 * 2 * local / max(1, cfg.n_layers // lay.pp)

    # Activations: 1F1B keeps pp micro-batches in flight on the first stage = all layers' worth of one.
    tokens = lay.micro_batch * lay.seq_len
    micro = lay.global_batch // (lay.dp * lay.micro_batch)
    layers_in_flight = math.ceil(cfg.n_layers / lay.pp) * min(lay.pp, micro or 1)
    moe_share = (cfg.n_layers - cfg.first_dense_layers) / cfg.n_layers if cfg.is_moe else 0.0
    per_layer = (moe_share * activation_bytes_per_token(cfg, True, lay.activation_checkpointing)
                 + (1 - moe_share) * activation_bytes_per_token(cfg, False, lay.activation_checkpointing))
    p.memory["activations"] = tokens * layers_in_flight * per_layer / lay.tp
    p.memory["logits"] = tokens * cfg.vocab_size / lay.tp * 4 * 2  # fp32 logits and their gradient

    p.flops_per_token = train_flops_per_token(cfg, lay.seq_len)
    p.mfu = mfu
    p.tokens_per_step = lay.global_batch * lay.seq_len
    p.step_s = p.flops_per_token * p.tokens_per_step / (lay.gpus * p.gpu.peak_tflops * 1e12 * mfu)
    p.bubble = (lay.pp - 1) / (micro + lay.pp - 1) if micro else 0.0
    return p


def search(name: str, gpu: str, gpus: int, seq_len: int, global_batch: int, mfu: float,
           limit: int = 10) -> list[Plan]:
    """Layouts that fit, best first by expected throughput (pipeline bubble and recompute cost)."""
    cfg = model_config(name)
    found = []
    stages = [n for n in (1, 2, 4, 8, 12, 16, 24, 32, 64) if n <= cfg.n_layers]
    eps = [n for n in range(1, cfg.n_experts + 1) if cfg.n_experts % n == 0] if cfg.is_moe else [1]
    for tp, pp, ep, mb, ac in itertools.product((1, 2, 4, 8), stages, eps, (1, 2, 4),
                                                ("none", "selective", "full")):
        if gpus % (tp * pp):
            continue
        lay = Layout(gpus=gpus, tp=tp, pp=pp, ep=ep, micro_batch=mb, seq_len=seq_len,
                     global_batch=global_batch, activation_checkpointing=ac)
        p = plan(name, gpu, lay, mfu)
        if p.fits and lay.dp % ep == 0:
            found.append(p)
    found.sort(key=lambda p: (-(1 - p.bubble) / RECOMPUTE_COST[p.layout.activation_checkpointing],
                              p.layout.tp * p.layout.pp, p.memory_total))
    return found[:limit]


def format_plan(p: Plan, tokens: float) -> str:
    lay, gib = p.layout, 2**30
    lines = [
        f"model             {p.model}: {p.params_total:,} parameters ({p.params_active:,} active)",
        f"cluster           {lay.gpus} × {p.gpu.name} ({p.gpu.peak_tflops:g} TFLOP/s bf16 peak)",
        f"layout            dp {lay.dp} × tp {lay.tp} × pp {lay.pp}, ep {lay.ep}, "
        f"micro-batch {lay.micro_batch}, "
        f"seq {lay.seq_len}, global batch {lay.global_batch}, checkpointing {lay.activation_checkpointing}, "
        f"ZeRO {lay.zero}",
    ]
    lines += [f"  ✗ {e}" for e in p.errors]
    if not p.memory:
        return "\n".join(lines)
    lines.append("memory per GPU    " + ", ".join(f"{k} {v / gib:,.1f}" for k, v in p.memory.items())
                 + f" = {p.memory_total / gib:,.1f} GiB of {p.gpu.memory_gib:g} "
                 + ("(fits)" if p.fits else "(DOES NOT FIT)"))
    lines += [
        f"FLOPs per token   {p.flops_per_token:,} (6·N_active + attention)",
        f"throughput        {p.tflops_per_gpu:,.1f} TFLOP/s per GPU at {p.mfu:.0%} MFU, "
        f"{p.tokens_per_step / p.step_s:,.0f} tokens/s",
        f"step time         {p.step_s:,.2f} s for {p.tokens_per_step:,} tokens "
        f"(pipeline bubble {p.bubble:.1%}, already inside the MFU)",
        f"training time     {p.days(tokens):,.1f} days for {tokens:,.3g} tokens",
    ]
    return "\n".join(lines)


def format_table(plans: list[Plan], tokens: float) -> str:
    """One line per layout, for ``--search``."""
    head = f"{'dp':>6} {'tp':>3} {'pp':>3} {'ep':>3} {'mb':>3} {'ckpt':>9} {'GiB/GPU':>8} {'bubble':>7} " \
           f"{'step s':>7} {'days':>7}"
    rows = [f"{p.layout.dp:>6} {p.layout.tp:>3} {p.layout.pp:>3} {p.layout.ep:>3} {p.layout.micro_batch:>3} "
            f"{p.layout.activation_checkpointing:>9} {p.memory_total / 2**30:>8.1f} {p.bubble:>7.1%} "
            f"{p.step_s:>7.2f} {p.days(tokens):>7.1f}" for p in plans]
    return "\n".join([head, *rows])
