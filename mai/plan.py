"""Plan a cluster run on paper: per-GPU memory, a predicted MFU, step time and days for a preset and a layout.

The model FLOPs are :func:`mai.model.presets.train_flops_per_token` (6·N + attention), the count Megatron-LM
and torchtitan use for their MFU. The MFU is predicted, not assumed: a step's time is built from

- compute: every GEMM at its per-GPU shape (a roofline: FLOPs at the best matmul rate plus the bytes of its
  operands at HBM speed, so thin GEMMs of small or heavily tensor-parallel layers run slower), flash
  attention at its own kernel rate, and the memory-bound elementwise work (norms, rotary, SwiGLU, residuals,
  the loss), which torch.compile or fused kernels cut to a few passes; activation recompute adds its share;
- the pipeline bubble of the schedule: 1F1B (p−1)/(m+p−1), interleaved with v chunks (p−1)/(v·m+p−1);
- the communication of each parallel dimension over NVLink inside a node and the network between nodes,
  with what overlaps stated in :func:`predict` (FSDP's gathers and reductions hide behind compute, up to
  its length; TP and EP collectives and PP send/recv sit on the critical path).

Memory follows mixed-precision accounting: bf16 weights (2 B/param), fp32 gradients (4 B), fp32 master
weights + two Adam moments (12 B), sharded over data-parallel ranks by the ZeRO stage (3 = FSDP2), and the
activations a block keeps under MAI's own checkpointing policies (:func:`activation_bytes_per_token`,
measured against the real block in tests/test_plan_activations.py).
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
    hbm_tbps: float  # memory bandwidth, TB/s
    nvlink_gbps: float  # GB/s each way per GPU inside a node
    network_gbps: float  # GB/s per GPU between nodes
    per_node: int = 8
    clock: float = 1.0  # sustained tensor-core clock relative to the datasheet's (power-capped parts)


GPUS = {  # vendor datasheets: dense bf16 (no sparsity), HBM, NVLink each way; network = one NIC per GPU
    # Megatron-LM's planner bandwidths (../shared/REFERENCES.md §7): NVLink 450 GB/s, InfiniBand NDR 400 Gb/s
    "h100": GPU("H100 SXM 80GB", 80, 989.0, 3.35, 450.0, 50.0),
    "h200": GPU("H200 SXM 141GB", 141, 989.0, 4.8, 450.0, 50.0),
    "a100": GPU("A100 SXM 80GB", 80, 312.0, 2.04, 300.0, 25.0),
    "b200": GPU("B200 192GB", 192, 2250.0, 8.0, 900.0, 50.0),
    # torchtitan's benchmark machine (torchtitan docs/performance.md: Grand Teton, H100 96 GB HBM2e at
    # 2.4 TB/s, 400 Gb/s RDMA per GPU, run at a 500 W power limit of the 700 W TDP). Dynamic power goes
    # as f·V² with V ∝ f, so a dense-GEMM clock that needs 700 W falls to (500/700)^(1/3) = 0.89 of it.
    "h100-96gb-500w": GPU("H100 96GB HBM2e at 500 W", 96, 989.0, 2.4, 450.0, 50.0,
                          clock=(500 / 700) ** (1 / 3)),
}

# --- global constants of the performance model (one set for every layout; each justified) ---
# Best bf16 GEMM rate as a share of the dense peak: large square matmuls reach ~795 of 989 TFLOP/s on H100
# SXM (Stas Bekman, ml-engineering, "maximum achievable matmul FLOPS" table).
GEMM_PEAK_FRACTION = 0.80
# Streaming kernels reach ~90% of the datasheet HBM bandwidth (copy/triad-style kernels on H100).
HBM_FRACTION = 0.90
# A tiled GEMM reads its operands from DRAM about twice: the 50 MB L2 holds only part of a training GEMM's
# operands, so row and column panels are fetched again for other output tiles (an assumption).
GEMM_DRAM_REREAD = 2.0
# Eager cross-entropy over fp32 logits: the bf16→fp32 cast (6 B per logit), log-softmax (8), its backward
# (12), the zeroed/scattered NLL gradient (4) and the cast back (6). Megatron-LM's and MAI's losses are both
# separate kernels outside any compiled block.
LOSS_BYTES_PER_LOGIT = 36
# NCCL's achieved bus bandwidth as a share of the link's: ~360 of 450 GB/s for all-gather / reduce-scatter
# on NVLink, and a similar share of a 400 Gb/s NIC (nccl-tests on DGX H100 class machines).
LINK_FRACTION = 0.80
COLLECTIVE_LATENCY_S = 20e-6  # per collective call (ring start-up, kernel launch)
# Flash attention's rate on the FLOPs it executes (causal: half the square): FlashAttention-2 runs fwd+bwd at
# ~350 TFLOP/s on H100 (Shah et al. 2024, FlashAttention-3, fig. 5-6). It is PyTorch SDPA's flash kernel
# (MAI, torchtitan), and assumed to be what Transformer Engine ran on Hopper for Megatron-LM's table.
ATTENTION_FRACTION = 0.35
# Data-parallel traffic also crosses HBM three times per byte: NCCL reads what it sends and writes what it
# receives, and FSDP2 copies into and out of its flat communication buffers.
DP_HBM_PASSES = 3
# Fused AdamW per parameter: read param, grad and two moments (16 B), write param and moments (12 B) and
# the bf16 copy FSDP gathers (2 B), rounded up.
ADAM_BYTES_PER_PARAM = 32

ACTIVATION_CHECKPOINTING = ("none", "selective", "full")
SCHEDULES = ("1f1b", "interleaved")


@dataclass(frozen=True)
class Software:
    """What the training code does with the hardware: how many HBM bytes its memory-bound elementwise
    work moves per element in forward (backward: twice that), and what selective checkpointing recomputes."""

    name: str
    per_d: float  # norms and residual adds, over the (sequence-sharded) model width
    per_qk: float  # rotary embedding over the local query and key heads
    per_f: float  # SwiGLU over the local FFN width
    mm_recompute: float = 0.0  # share of forward matmuls selective checkpointing runs again


# Bytes per element, as kernel passes (a read or a write) × 2 B in bf16, 4 B in fp32:
# fused (torch.compile, Transformer Engine): add + RMSNorm in one kernel (4 passes, twice a layer) = 16,
#   rotary in one pass (4), SiLU·product in one kernel (6);
# MAI eager: F.rms_norm is one kernel on CUDA (2 passes, twice) and the two residual adds 3 passes each =
#   20; rotary as written in mai/model/transformer.py: two muls, a negated half, a cat, an add ≈ 9 passes
#   = 18; SiLU (2) and the product (3) = 10;
# torchtitan eager: RMSNorm upcast to fp32 and composite (cast 6, pow 8, mean 4, scale 8, cast back 6,
#   weight 4 = 36 B, twice) + residual adds 12 = 84; complex-number rotary in fp32 (cast 6, multiply 8,
#   cast back 6) = 20; SwiGLU 10.
SOFTWARE = {
    # MAI: PyTorch SDPA, DTensor TP without async TP, FSDP2; its selective policy keeps every matmul output
    # (mai/parallel/parallelize.py).
    "compiled": Software("MAI, torch.compile per block", 16, 4, 6),
    "eager": Software("MAI, eager", 20, 18, 10),
    # torchtitan: the same PyTorch kernels; its selective op-level checkpointing saves every other matmul
    # output and recomputes the rest (torchtitan models/llama3 parallelize.py, "op" SAC).
    "torchtitan-compiled": Software("torchtitan, torch.compile", 16, 4, 6, mm_recompute=0.5),
    "torchtitan-eager": Software("torchtitan, eager", 84, 20, 10, mm_recompute=0.5),
    # Megatron-LM with Transformer Engine: fused norms and activations.
    "megatron": Software("Megatron-LM + Transformer Engine", 16, 4, 6),
}

# Published configurations used as anchors (not trainable presets). Megatron-LM README model table: GPT with
# multi-head attention, vocab 131072, seq 4096; its 4h GeLU MLP has 8·d² weights, as SwiGLU with f = 8d/3
# (rounded to a multiple of 128 where 8d/3 is not whole), so FLOPs and per-GPU GEMM sizes match.
ANCHOR_MODELS = {
    "megatron-1.7b": ModelConfig(vocab_size=131072, d_model=2048, n_layers=24, n_heads=16, n_kv_heads=16,
                                 ffn_dim=5504, max_seq_len=4096),
    "megatron-7.1b": ModelConfig(vocab_size=131072, d_model=4096, n_layers=30, n_heads=32, n_kv_heads=32,
                                 ffn_dim=10880, max_seq_len=4096),
    "megatron-70b": ModelConfig(vocab_size=131072, d_model=8192, n_layers=84, n_heads=64, n_kv_heads=64,
                                ffn_dim=21888, max_seq_len=4096),
    "megatron-462b": ModelConfig(vocab_size=131072, d_model=18432, n_layers=112, n_heads=144, n_kv_heads=144,
                                 ffn_dim=49152, max_seq_len=4096),
}


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
    schedule: str = "1f1b"  # pipeline schedule: 1f1b | interleaved
    chunks: int = 1  # model chunks per pipeline rank (interleaved: v ≥ 2)

    def __post_init__(self) -> None:
        if self.dp == 0 and self.gpus % (self.tp * self.pp) == 0:
            self.dp = self.gpus // (self.tp * self.pp)

    @property
    def micro_batches(self) -> int:
        """Micro-batches each data-parallel rank runs per optimizer step (m)."""
        return self.global_batch // (self.dp * self.micro_batch) if self.dp else 0


@dataclass
class StepTime:
    """Seconds of one optimizer step on the slowest GPU, by cause (see :func:`predict`)."""

    compute: float = 0.0  # GEMMs, attention, elementwise, recompute, loss: every micro-batch on one stage
    tp: float = 0.0  # exposed tensor-parallel collectives
    ep: float = 0.0  # expert-parallel all-to-alls
    pp: float = 0.0  # pipeline send/recv
    bubble: float = 0.0  # idle pipeline ranks
    dp: float = 0.0  # exposed data-parallel gathers / reductions
    optimizer: float = 0.0  # the AdamW update

    @property
    def total(self) -> float:
        return self.compute + self.tp + self.ep + self.pp + self.bubble + self.dp + self.optimizer


@dataclass
class Plan:
    model: str
    gpu: GPU
    layout: Layout
    params_total: int
    params_active: int
    software: Software = SOFTWARE["compiled"]
    memory: dict[str, float] = field(default_factory=dict)  # bytes per GPU (the most loaded GPU)
    flops_per_token: int = 0
    predicted_mfu: float = 0.0
    mfu: float = 0.0  # the MFU the step time uses: predicted, or the --mfu override
    mfu_given: bool = False
    time: StepTime = field(default_factory=StepTime)
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
    if lay.pp * lay.chunks > cfg.n_layers:
        errors.append(f"pp {lay.pp} × chunks {lay.chunks} exceeds the {cfg.n_layers} layers")
    if lay.ep > 1 and not cfg.is_moe:
        errors.append("ep > 1 needs an MoE model")
    if cfg.is_moe and cfg.n_experts % lay.ep:
        errors.append(f"{cfg.n_experts} experts not divisible by ep {lay.ep}")
    if lay.dp and lay.dp % lay.ep:
        errors.append(f"ep {lay.ep} must divide dp {lay.dp}")
    if lay.dp and lay.global_batch % (lay.dp * lay.micro_batch):
        errors.append(f"global batch {lay.global_batch} not divisible by dp {lay.dp} × micro-batch "
                      f"{lay.micro_batch}")
    if lay.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
        errors.append(f"activation_checkpointing must be one of {list(ACTIVATION_CHECKPOINTING)}")
    if lay.zero not in (0, 1, 2, 3):
        errors.append("zero must be 0, 1, 2 or 3")
    if lay.schedule not in SCHEDULES:
        errors.append(f"schedule must be one of {list(SCHEDULES)}")
    if lay.schedule == "interleaved" and lay.chunks < 2:
        errors.append(f"an interleaved schedule needs chunks ≥ 2, got {lay.chunks}")
    if lay.schedule == "1f1b" and lay.chunks != 1:
        errors.append(f"chunks {lay.chunks} needs --schedule interleaved (1F1B runs one chunk per rank)")
    return errors


# --- activation memory -------------------------------------------------------------------------------

def norm_kept_bytes(width: float, fused_norm: bool) -> float:
    """What one RMSNorm keeps per token of its input (under sequence parallel: per local token). On CUDA
    ``F.rms_norm`` with matching input and weight dtypes is ``_fused_rms_norm``, one kernel that saves its
    bf16 input and an fp32 rstd (PyTorch aten/src/ATen/native/layer_norm.cpp, ``rms_norm_symint``); on CPU
    it runs the composite, which saves an fp32 copy of the input and the fp32 normalised tensor (seen by
    tests/test_plan_activations.py)."""
    return (2 * width if fused_norm else 8 * width) + 4


def activation_bytes_per_token(cfg: ModelConfig, layer_is_moe: bool, mode: str, tp: int = 1,
                               fused_norm: bool = True) -> float:
    """Bytes one layer keeps for backward per token on one GPU, bf16 compute, under mai.parallel's policy
    ``mode`` and tensor + sequence parallel ``tp``. Counted tensor by tensor from what autograd and the
    checkpoint keep in :class:`mai.model.transformer.Block` (checked against the real block at tp 1 and 2):

    - full: only the block input (sequence-sharded);
    - selective: the block input, every matmul output and flash attention's output + log-sum-exp. The
      row-parallel wo and w2 matmuls produce full [tokens, d] partial sums before their reduce-scatter, so
      those two are not divided by tp;
    - none: what autograd saves: norm inputs, the (all-gathered, so full-width) inputs of the q/k/v and
      w1/w3 matmuls, q/k/v after rotary, the attention output (also wo's input), and SwiGLU's four f-wide
      tensors.
    """
    d, q, kv = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    lse = 4 * cfg.n_heads / tp  # flash attention's fp32 log-sum-exp, one per head
    f, routed = _ffn_widths(cfg, layer_is_moe)
    if mode == "full":
        return 2 * d / tp
    if mode == "selective":
        return 2 * (d / tp + (q + 2 * kv) / tp + q / tp + 2 * f / tp + routed) + 2 * 2 * d + lse
    return (2 * norm_kept_bytes(d, fused_norm) / tp + 2 * 2 * d + 2 * (2 * q + 2 * kv) / tp + lse
            + 2 * 4 * f / tp + 2 * 2 * routed)


def _ffn_widths(cfg: ModelConfig, layer_is_moe: bool) -> tuple[float, float]:
    """(SwiGLU width a token passes through, extra per-token width of MoE routing). An MoE token goes
    through top-k routed experts and the shared ones; routing keeps its permuted copies in and out of the
    experts (top_k·d each) and the router scores (not measured: an estimate by the same rules)."""
    if not layer_is_moe:
        return cfg.ffn_dim, 0.0
    width = (cfg.top_k + cfg.n_shared_experts) * cfg.expert_ffn_dim
    return width, 2 * cfg.top_k * cfg.d_model + cfg.n_experts


# --- compute time ------------------------------------------------------------------------------------

def gemm_seconds(gpu: GPU, m: float, k: float, n: float) -> float:
    """One bf16 [m, k] @ [k, n] GEMM: its FLOPs at the best matmul rate plus its operands' bytes at HBM
    speed (a smooth roofline: small or thin GEMMs are memory-bound)."""
    flops = 2 * m * k * n / gpu.clock
    bytes_moved = 2 * (GEMM_DRAM_REREAD * (m * k + k * n) + m * n)
    return flops / (GEMM_PEAK_FRACTION * gpu.peak_tflops * 1e12) + bytes_moved / _hbm(gpu)


def _hbm(gpu: GPU) -> float:
    return HBM_FRACTION * gpu.hbm_tbps * 1e12


def layer_gemm_seconds(cfg: ModelConfig, gpu: GPU, tokens: float, tp: int, ep: int, moe: bool) -> float:
    """Forward GEMMs of one layer for ``tokens`` on one GPU (backward: 2× these: dX and dW)."""
    d, q, kv = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    t = gemm_seconds(gpu, tokens, d, q / tp) + 2 * gemm_seconds(gpu, tokens, d, kv / tp) \
        + gemm_seconds(gpu, tokens, q / tp, d)
    if not moe:
        return t + 2 * gemm_seconds(gpu, tokens, d, cfg.ffn_dim / tp) + gemm_seconds(gpu, tokens,
                                                                                     cfg.ffn_dim / tp, d)
    local = tokens / tp  # mai.parallel routes each TP rank's own sequence shard (SequenceLocalMoE)
    fe = cfg.expert_ffn_dim
    rows = local * cfg.top_k * ep / cfg.n_experts  # tokens per local expert after the all-to-all
    experts = cfg.n_experts / ep * (2 * gemm_seconds(gpu, rows, d, fe) + gemm_seconds(gpu, rows, fe, d))
    shared = 0.0
    if cfg.n_shared_experts:
        width = cfg.n_shared_experts * fe
        shared = 2 * gemm_seconds(gpu, local, d, width) + gemm_seconds(gpu, local, width, d)
    return t + experts + shared + gemm_seconds(gpu, local, d, cfg.n_experts)


def attention_seconds(cfg: ModelConfig, gpu: GPU, batch: int, seq: int, tp: int) -> float:
    """Flash attention forward + backward of one layer: causal, so half of the 4·T²·hd FLOPs per head run
    forward, and the backward's five matmuls (it recomputes the scores) 2.5× that."""
    forward = 4 * batch * seq * seq * cfg.head_dim * cfg.n_heads / tp / 2
    return 3.5 * forward / (ATTENTION_FRACTION * gpu.clock * gpu.peak_tflops * 1e12)


def elementwise_forward_bytes(cfg: ModelConfig, tp: int, sw: Software, moe: bool) -> float:
    """HBM bytes per token of one layer's memory-bound forward work (see :data:`SOFTWARE`); an MoE
    layer's SwiGLU runs over the top-k routed and the shared experts' widths, on its own sequence shard."""
    d, qk = cfg.d_model / tp, (cfg.n_heads + cfg.n_kv_heads) * cfg.head_dim / tp
    f = _ffn_widths(cfg, moe)[0] / (1 if moe else tp)
    return sw.per_d * d + sw.per_qk * qk + sw.per_f * f


def loss_seconds(cfg: ModelConfig, gpu: GPU, tokens: float, tp: int) -> float:
    """Cross-entropy forward and backward over the vocab-sharded logits (memory-bound)."""
    return tokens * cfg.vocab_size / tp * LOSS_BYTES_PER_LOGIT / _hbm(gpu)


def micro_batch_compute_seconds(cfg: ModelConfig, gpu: GPU, lay: Layout, sw: Software, layers: int,
                                moe_layers: int, head: bool) -> float:
    """One micro-batch forward + backward (+ recompute) through ``layers`` layers on one GPU."""
    tokens = lay.micro_batch * lay.seq_len
    total = 0.0
    for moe, count in ((False, layers - moe_layers), (True, moe_layers)):
        if not count:
            continue
        gemm = layer_gemm_seconds(cfg, gpu, tokens, lay.tp, lay.ep, moe)
        attn = attention_seconds(cfg, gpu, lay.micro_batch, lay.seq_len, lay.tp)
        elem = tokens * elementwise_forward_bytes(cfg, lay.tp, sw, moe) / _hbm(gpu)
        layer = 3 * gemm + attn + 3 * elem  # backward: 2× the forward GEMMs and elementwise passes
        if lay.activation_checkpointing == "selective":
            layer += elem + sw.mm_recompute * gemm  # the cheap ops (and, in torchtitan, half the matmuls)
        elif lay.activation_checkpointing == "full":
            layer += gemm + attn / 3.5 + elem  # the whole forward runs again
        total += count * layer
    if head:
        total += 3 * gemm_seconds(gpu, tokens, cfg.d_model, cfg.vocab_size / lay.tp) \
            + loss_seconds(cfg, gpu, tokens, lay.tp)
    return total


# --- communication -----------------------------------------------------------------------------------

def link_bandwidth(gpu: GPU, group: int, stride: int) -> float:
    """Achieved bytes/s per GPU of a collective over ``group`` ranks ``stride`` apart: NVLink when the
    group lies inside one node, else the per-GPU network link (a ring is as fast as its slowest hop)."""
    inside = group * stride <= gpu.per_node
    return LINK_FRACTION * (gpu.nvlink_gbps if inside else gpu.network_gbps) * 1e9


def ring_seconds(nbytes: float, group: int, bandwidth: float, all_reduce: bool = False) -> float:
    """All-gather / reduce-scatter move (n−1)/n of the data per GPU, all-reduce twice that (ring)."""
    if group <= 1:
        return 0.0
    share = (group - 1) / group * (2 if all_reduce else 1)
    return nbytes * share / bandwidth + COLLECTIVE_LATENCY_S


def tp_seconds(cfg: ModelConfig, gpu: GPU, lay: Layout, moe: bool) -> float:
    """Sequence-parallel TP of one layer and micro-batch: all-gather before and reduce-scatter after
    attention and MLP in forward, the mirror in backward (8 collectives of [tokens, d] bf16; an MoE layer
    routes its own shard, so its MLP has none); recompute repeats the forward gathers (selective) or
    all of the forward's collectives (full)."""
    nbytes = 2 * lay.micro_batch * lay.seq_len * cfg.d_model
    per = ring_seconds(nbytes, lay.tp, link_bandwidth(gpu, lay.tp, 1))
    calls = 4 if moe else 8
    calls += {"none": 0, "selective": 1 if moe else 2, "full": 2 if moe else 4}[lay.activation_checkpointing]
    return calls * per


def ep_seconds(cfg: ModelConfig, gpu: GPU, lay: Layout) -> float:
    """One MoE layer's all-to-alls for one micro-batch: dispatch and combine, forward and backward, each
    moving top-k copies of the rank's tokens, (ep−1)/ep of them to other ranks."""
    if lay.ep <= 1:
        return 0.0
    nbytes = 2 * lay.micro_batch * lay.seq_len / lay.tp * cfg.top_k * cfg.d_model
    bandwidth = link_bandwidth(gpu, lay.ep, lay.tp)
    return 4 * (nbytes * (lay.ep - 1) / lay.ep / bandwidth + COLLECTIVE_LATENCY_S)


def dp_seconds(local_params: float, gpu: GPU, lay: Layout, micro_s: float) -> float:
    """Data-parallel time per step that compute does not hide. ZeRO 3 (FSDP2) gathers bf16 weights in
    forward and again in backward and reduce-scatters fp32 gradients in every micro-batch, prefetching one
    layer ahead: only what exceeds the micro-batch's compute shows. ZeRO 0-2 reduce gradients once per step
    behind the last micro-batch's backward (ZeRO 1-2 also gather the updated bf16 weights behind the next
    forward). Hidden traffic still costs its HBM passes (:data:`DP_HBM_PASSES`), which compute shares."""
    if lay.dp <= 1:
        return 0.0
    bandwidth = link_bandwidth(gpu, lay.dp, lay.tp)
    share = (lay.dp - 1) / lay.dp
    grads = ring_seconds(4 * local_params, lay.dp, bandwidth, all_reduce=lay.zero == 0)
    gather = ring_seconds(2 * local_params, lay.dp, bandwidth)
    if lay.zero == 3:
        hbm = DP_HBM_PASSES * (2 * 2 + 4) * local_params * share / _hbm(gpu)
        return lay.micro_batches * (max(0.0, 2 * gather + grads - micro_s) + hbm)
    exposed = max(0.0, grads - micro_s * 2 / 3)
    moved = 4 * (2 if lay.zero == 0 else 1)
    if lay.zero in (1, 2):
        exposed += max(0.0, gather - micro_s / 3)
        moved += 2
    return exposed + DP_HBM_PASSES * moved * local_params * share / _hbm(gpu)


def bubble_fraction(lay: Layout) -> float:
    """Idle share of a pipeline step: (p−1)/(v·m + p−1), v = 1 for 1F1B."""
    m = lay.micro_batches
    if lay.pp <= 1 or not m:
        return 0.0
    v = lay.chunks if lay.schedule == "interleaved" else 1
    return (lay.pp - 1) / (v * m + lay.pp - 1)


def predict(cfg: ModelConfig, gpu: GPU, lay: Layout, sw: Software, local_params: float) -> StepTime:
    """Step time of the slowest pipeline stage. Overlap, as modelled: FSDP/ZeRO traffic overlaps compute
    (see :func:`dp_seconds`); TP collectives are exposed (the matmul after each waits for its gather, and
    neither MAI nor the anchors' runs overlap them); EP all-to-alls and PP send/recv (the stage's
    activation, sequence-sharded, both directions) are exposed; the bubble stretches everything per
    micro-batch by 1/(1 − bubble)."""
    moe_total = cfg.n_layers - cfg.first_dense_layers if cfg.is_moe else 0
    per_stage = math.ceil(cfg.n_layers / lay.pp)
    moe_stage = math.ceil(moe_total / lay.pp)
    # the last stage also runs the output head and the loss; the first the (free) embedding lookup
    micro = micro_batch_compute_seconds(cfg, gpu, lay, sw, per_stage, min(moe_stage, per_stage),
                                        head=True)
    tp = (per_stage - moe_stage) * tp_seconds(cfg, gpu, lay, False) \
        + moe_stage * tp_seconds(cfg, gpu, lay, True)
    ep = moe_stage * ep_seconds(cfg, gpu, lay)
    pp = 0.0
    if lay.pp > 1:
        act = 2 * lay.micro_batch * lay.seq_len * cfg.d_model / lay.tp
        pp = 2 * lay.chunks * (act / link_bandwidth(gpu, 2, gpu.per_node) + COLLECTIVE_LATENCY_S)
    m = lay.micro_batches
    t = StepTime(compute=m * micro, tp=m * tp, ep=m * ep, pp=m * pp)
    busy = t.compute + t.tp + t.ep + t.pp
    b = bubble_fraction(lay)
    t.bubble = busy * b / (1 - b)
    t.dp = dp_seconds(local_params, gpu, lay, micro)
    optimizer_params = local_params / (lay.dp if lay.zero >= 1 else 1)
    t.optimizer = optimizer_params * ADAM_BYTES_PER_PARAM / _hbm(gpu)
    return t


# --- the plan ----------------------------------------------------------------------------------------

def plan(name: str, gpu: str, layout: Layout, mfu: float | None = None, software: str = "compiled",
         cfg: ModelConfig | None = None) -> Plan:
    """Memory, predicted step time and MFU of preset ``name`` (or of ``cfg``, labelled ``name``) on
    ``layout``; ``mfu`` overrides the prediction for the step time (the prediction is still computed and
    kept in ``predicted_mfu``)."""
    cfg = cfg or model_config(name)
    if gpu not in GPUS:
        raise MaiError(f"unknown GPU '{gpu}' (known: {', '.join(GPUS)})")
    if software not in SOFTWARE:
        raise MaiError(f"unknown software '{software}' (known: {', '.join(SOFTWARE)})")
    if mfu is not None and not 0 < mfu <= 1:
        raise MaiError(f"mfu must be in (0, 1], got {mfu}")
    lay = replace(layout)
    size = count_params(cfg)
    p = Plan(name, GPUS[gpu], lay, size.total, size.active, SOFTWARE[software], errors=check_layout(cfg, lay))
    if lay.dp <= 0 or p.errors:
        return p
    local = _memory(p, cfg)
    p.flops_per_token = train_flops_per_token(cfg, lay.seq_len)
    p.tokens_per_step = lay.global_batch * lay.seq_len
    p.time = predict(cfg, p.gpu, lay, p.software, local)
    p.bubble = bubble_fraction(lay)
    peak = lay.gpus * p.gpu.peak_tflops * 1e12
    p.predicted_mfu = p.flops_per_token * p.tokens_per_step / (p.time.total * peak)
    p.mfu, p.mfu_given = (mfu, True) if mfu is not None else (p.predicted_mfu, False)
    p.step_s = p.flops_per_token * p.tokens_per_step / (peak * p.mfu)
    return p


def _memory(p: Plan, cfg: ModelConfig) -> float:
    """Fill ``p.memory`` (bytes on the most loaded GPU); returns that GPU's parameter count before
    data-parallel sharding (what FSDP gathers and the optimizer updates, summed over its shards)."""
    lay = p.layout
    expert = (cfg.n_layers - cfg.first_dense_layers) * cfg.n_experts * 3 * cfg.d_model * cfg.expert_ffn_dim \
        if cfg.is_moe else 0
    stage = math.ceil(cfg.n_layers / lay.pp) / cfg.n_layers * lay.pp  # uneven stages: the largest one
    local = ((p.params_total - expert) / (lay.tp * lay.pp) + expert / (lay.tp * lay.pp * lay.ep)) * stage
    expert_local = expert / (lay.tp * lay.pp * lay.ep) * stage
    expert_dp = max(1, lay.dp // lay.ep)  # experts are replicated over the dp ranks left after ep
    shard = {0: (1, 1, 1), 1: (1, 1, 0), 2: (1, 0, 0), 3: (0, 0, 0)}[lay.zero]  # which parts stay whole

    def sharded(bytes_per_param: float, whole: int) -> float:
        dense_part = (local - expert_local) * bytes_per_param
        expert_part = expert_local * bytes_per_param
        return dense_part / (1 if whole else lay.dp) + expert_part / (1 if whole else expert_dp)

    p.memory["weights"] = sharded(2, shard[0])
    p.memory["gradients"] = sharded(4, shard[1])
    p.memory["optimizer"] = sharded(12, shard[2])
    if lay.zero == 3:  # two layers gathered at a time (current + prefetch), bf16
        p.memory["weights"] += 2 * 2 * local / max(1, cfg.n_layers // lay.pp)

    # Activations: 1F1B keeps pp micro-batches in flight on the first stage = all layers' worth of one.
    tokens = lay.micro_batch * lay.seq_len
    layers_in_flight = math.ceil(cfg.n_layers / lay.pp) * min(lay.pp, lay.micro_batches or 1)
    moe_share = (cfg.n_layers - cfg.first_dense_layers) / cfg.n_layers if cfg.is_moe else 0.0
    mode = lay.activation_checkpointing
    per_layer = (moe_share * activation_bytes_per_token(cfg, True, mode, lay.tp)
                 + (1 - moe_share) * activation_bytes_per_token(cfg, False, mode, lay.tp))
    p.memory["activations"] = tokens * layers_in_flight * per_layer
    p.memory["logits"] = tokens * cfg.vocab_size / lay.tp * 4 * 2  # fp32 logits and their gradient
    return local


def search(name: str, gpu: str, gpus: int, seq_len: int, global_batch: int, mfu: float | None = None,
           limit: int = 10, software: str = "compiled") -> list[Plan]:
    """Layouts that fit, fastest predicted step first."""
    cfg = model_config(name)
    found = []
    stages = [n for n in (1, 2, 4, 8, 12, 16, 24, 32, 64) if n <= cfg.n_layers]
    eps = [n for n in range(1, cfg.n_experts + 1) if cfg.n_experts % n == 0] if cfg.is_moe else [1]
    for tp, pp, ep, mb, ac, zero, v in itertools.product((1, 2, 4, 8), stages, eps, (1, 2, 4),
                                                        ACTIVATION_CHECKPOINTING, (1, 3), (1, 2)):
        if gpus % (tp * pp) or (pp == 1 and v > 1):
            continue
        lay = Layout(gpus=gpus, tp=tp, pp=pp, ep=ep, micro_batch=mb, seq_len=seq_len,
                     global_batch=global_batch, activation_checkpointing=ac, zero=zero,
                     schedule="interleaved" if v > 1 else "1f1b", chunks=v)
        p = plan(name, gpu, lay, None, software)
        if p.fits:
            found.append(p)
    found.sort(key=lambda p: (p.time.total, p.layout.tp * p.layout.pp, p.memory_total))
    if mfu is not None:  # the override sets the step time, not the ranking
        found = [plan(name, gpu, p.layout, mfu, software) for p in found]
    return found[:limit]


# --- published anchors -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Anchor:
    label: str
    model: str
    gpu: str
    layout: Layout
    software: str
    published_mfu: float
    source: str


def _torchtitan_mfu(tokens_per_s: float) -> float:
    """torchtitan's MFU of Llama-3.1-8B at seq 8192 (its FLOP count = MAI's) against 989 TFLOP/s."""
    return tokens_per_s * train_flops_per_token(PRESETS["8b"], 8192) / 989e12


def _megatron(tp: int, pp: int) -> Layout:
    """Megatron-LM's H100 rows: DP 48 each; assumed (not in the table): 64 sequences of 4096 per DP rank
    (3072 in all, the published batch of the 462B row), micro-batch 1, selective recompute, distributed
    optimizer (ZeRO 1), interleaved 1F1B with 2 chunks per rank where pp > 1."""
    return Layout(gpus=48 * tp * pp, tp=tp, pp=pp, global_batch=3072, seq_len=4096,
                  activation_checkpointing="selective", zero=1,
                  schedule="interleaved" if pp > 1 else "1f1b", chunks=2 if pp > 1 else 1)


TORCHTITAN_8B = Layout(gpus=8, micro_batch=2, seq_len=8192, global_batch=16)  # FSDP 8, selective

# Megatron-LM README (H100 model table, ../shared/REFERENCES.md §2); torchtitan docs/performance.md Table 1
# (8 GPUs, FSDP, local batch 2, seq 8192, selective activation checkpointing).
ANCHORS = [
    Anchor("Megatron-LM 1.7B", "megatron-1.7b", "h100", _megatron(1, 1), "megatron", 0.41,
           "Megatron-LM README"),
    Anchor("Megatron-LM 7.1B", "megatron-7.1b", "h100", _megatron(2, 1), "megatron", 0.47,
           "Megatron-LM README"),
    Anchor("Megatron-LM 70B", "megatron-70b", "h100", _megatron(8, 2), "megatron", 0.42,
           "Megatron-LM README"),
    Anchor("Megatron-LM 462B", "megatron-462b", "h100", _megatron(8, 16), "megatron", 0.47,
           "Megatron-LM README"),
    Anchor("torchtitan Llama-3.1-8B eager", "8b", "h100-96gb-500w", TORCHTITAN_8B, "torchtitan-eager",
           _torchtitan_mfu(5762), "torchtitan docs/performance.md"),
    Anchor("torchtitan Llama-3.1-8B compile", "8b", "h100-96gb-500w", TORCHTITAN_8B, "torchtitan-compiled",
           _torchtitan_mfu(6667), "torchtitan docs/performance.md"),
]


def anchor_plans() -> list[tuple[Anchor, Plan]]:
    return [(a, plan(a.model, a.gpu, a.layout, None, a.software)) for a in ANCHORS]


def format_anchors() -> str:
    """Published vs predicted MFU, as a Markdown table (docs/scale.md)."""
    rows = ["| run | GPUs | layout | software | published MFU | predicted MFU | error |",
            "|---|---|---|---|---|---|---|"]
    for a, p in anchor_plans():
        lay = p.layout
        shape = f"dp {lay.dp} × tp {lay.tp} × pp {lay.pp}" + (f" (v {lay.chunks})" if lay.chunks > 1 else "")
        error = p.predicted_mfu / a.published_mfu - 1
        rows.append(f"| {a.label} | {lay.gpus} | {shape}, mb {lay.micro_batch}, gb {lay.global_batch} | "
                    f"{a.software} | {a.published_mfu:.1%} | {p.predicted_mfu:.1%} | {error:+.1%} |")
    return "\n".join(rows)


# --- output ------------------------------------------------------------------------------------------

def format_plan(p: Plan, tokens: float) -> str:
    lay, gib = p.layout, 2**30
    schedule = f", schedule {lay.schedule}" + (f" × {lay.chunks} chunks" if lay.chunks > 1 else "") \
        if lay.pp > 1 else ""
    lines = [
        f"model             {p.model}: {p.params_total:,} parameters ({p.params_active:,} active)",
        f"cluster           {lay.gpus} × {p.gpu.name} ({p.gpu.peak_tflops:g} TFLOP/s bf16 peak, NVLink "
        f"{p.gpu.nvlink_gbps:g} GB/s, network {p.gpu.network_gbps * 8:g} Gb/s per GPU)",
        f"layout            dp {lay.dp} × tp {lay.tp} × pp {lay.pp}, ep {lay.ep}, "
        f"micro-batch {lay.micro_batch}, "
        f"seq {lay.seq_len}, global batch {lay.global_batch}, checkpointing {lay.activation_checkpointing}, "
        f"ZeRO {lay.zero}{schedule}",
    ]
    lines += [f"  ✗ {e}" for e in p.errors]
    if not p.memory:
        return "\n".join(lines)
    t = p.time
    parts = [("compute", t.compute), ("TP", t.tp), ("EP", t.ep), ("PP", t.pp), ("bubble", t.bubble),
             ("DP", t.dp), ("optimizer", t.optimizer)]
    source = "given by --mfu" if p.mfu_given else "predicted"
    lines += [
        "memory per GPU    " + ", ".join(f"{k} {v / gib:,.1f}" for k, v in p.memory.items())
        + f" = {p.memory_total / gib:,.1f} GiB of {p.gpu.memory_gib:g} "
        + ("(fits)" if p.fits else "(DOES NOT FIT)"),
        f"FLOPs per token   {p.flops_per_token:,} (6·N_active + attention)",
        f"step model        {p.software.name}: " + ", ".join(f"{k} {v:,.2f}" for k, v in parts if v >= 0.005)
        + f" = {t.total:,.2f} s (pipeline bubble {p.bubble:.1%})",
        f"predicted MFU     {p.predicted_mfu:.1%}",
        f"throughput        {p.tflops_per_gpu:,.1f} TFLOP/s per GPU at {p.mfu:.1%} MFU ({source}), "
        f"{p.tokens_per_step / p.step_s:,.0f} tokens/s",
        f"step time         {p.step_s:,.2f} s for {p.tokens_per_step:,} tokens",
        f"training time     {p.days(tokens):,.1f} days for {tokens:,.3g} tokens",
    ]
    return "\n".join(lines)


def format_table(plans: list[Plan], tokens: float) -> str:
    """One line per layout, for ``--search``."""
    head = f"{'dp':>6} {'tp':>3} {'pp':>3} {'v':>2} {'ep':>3} {'mb':>3} {'ckpt':>9} {'zero':>4} " \
           f"{'GiB/GPU':>8} {'bubble':>7} {'MFU':>6} {'step s':>7} {'days':>7}"
    rows = [f"{p.layout.dp:>6} {p.layout.tp:>3} {p.layout.pp:>3} {p.layout.chunks:>2} {p.layout.ep:>3} "
            f"{p.layout.micro_batch:>3} {p.layout.activation_checkpointing:>9} {p.layout.zero:>4} "
            f"{p.memory_total / 2**30:>8.1f} {p.bubble:>7.1%} {p.mfu:>6.1%} {p.step_s:>7.2f} "
            f"{p.days(tokens):>7.1f}" for p in plans]
    return "\n".join([head, *rows])
