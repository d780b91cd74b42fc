"""Named model sizes, from a CPU demo to MAI-1, with exact parameter and FLOP accounting.

The closed-form counts below are checked in the tests against the real module built on the meta
device, so a preset's advertised size is the size of the model that trains.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mai.errors import MaiError
from mai.model.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # Trains on 2 CPU cores in minutes (README's main job).
    "demo": ModelConfig(vocab_size=8192, d_model=256, n_layers=6, n_heads=4, n_kv_heads=4, ffn_dim=768,
                        max_seq_len=256),
    # SmolLM2-135M's shape (HF config of HuggingFaceTB/SmolLM2-135M): 134,515,008 parameters, tied.
    "135m": ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
                        max_seq_len=2048, rope_theta=100000.0, tie_embeddings=True),
    # Llama-3.2-1B's shape (Meta model card / HF config): 1,235,814,400 parameters, tied.
    "1b": ModelConfig(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
                      max_seq_len=8192, rope_theta=500000.0, tie_embeddings=True),
    # Llama-3.1-8B's shape: 8,030,261,248 parameters.
    "8b": ModelConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                      max_seq_len=8192, rope_theta=500000.0),
    # Llama-3.1-405B's shape, the published check of the formula: 405,853,388,800 parameters.
    "405b": ModelConfig(vocab_size=128256, d_model=16384, n_layers=126, n_heads=128, n_kv_heads=8,
                        ffn_dim=53248, max_seq_len=8192, rope_theta=500000.0),
    # MAI-1 dense: splits cleanly under TP 8 (18 heads, 1 KV head, 7680 FFN columns per rank).
    "mai-1-500b": ModelConfig(vocab_size=128256, d_model=18432, n_layers=120, n_heads=144, n_kv_heads=8,
                              head_dim=128, ffn_dim=61440, max_seq_len=8192, rope_theta=500000.0),
    # A Mixture-of-Experts that trains on CPU: 8 experts, top-2, one shared expert, first layer dense.
    "moe-demo": ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=768,
                            max_seq_len=256, n_experts=8, top_k=2, n_shared_experts=1, expert_ffn_dim=256,
                            first_dense_layers=1),
    # MAI-1 MoE (DeepSeek-V3-like layout with GQA attention): 192 routed experts divide by EP 8…96.
    "mai-1-moe": ModelConfig(vocab_size=129280, d_model=7168, n_layers=61, n_heads=56, n_kv_heads=8,
                             head_dim=128, ffn_dim=18432, max_seq_len=4096, rope_theta=10000.0,
                             n_experts=192, top_k=8, n_shared_experts=1, expert_ffn_dim=2048,
                             first_dense_layers=3,
                             # DeepSeek-V3's balancing (paper §2.1.2): sigmoid scores, bias updates at
                             # rate 1e-3, and only a tiny auxiliary loss (α = 1e-4)
                             moe_score="sigmoid", moe_bias_update_rate=1e-3, moe_aux_loss_coef=1e-4),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A copy of preset ``name`` with ``overrides`` applied; an unknown name is a :class:`MaiError`."""
    if name not in PRESETS:
        raise MaiError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return replace(PRESETS[name], **overrides)


@dataclass
class ModelSize:
    """Exact parameter counts: ``active`` counts only top-k routed experts per token (= total if dense)."""

    total: int
    active: int
    embedding: int  # the input token table, which costs no matmul FLOPs

    @property
    def bf16_bytes(self) -> int:
        return 2 * self.total


def count_params(cfg: ModelConfig) -> ModelSize:
    """Closed-form parameter count of :class:`mai.model.transformer.Transformer` built from ``cfg``."""
    d, h = cfg.d_model, cfg.head_dim
    attention = d * cfg.n_heads * h * 2 + d * cfg.n_kv_heads * h * 2  # wq + wo, wk + wv
    if cfg.attn_bias:
        attention += (cfg.n_heads + 2 * cfg.n_kv_heads) * h
    norms = 2 * d + (2 * h if cfg.qk_norm else 0)
    dense_layer = attention + 3 * d * cfg.ffn_dim + norms
    total = active = 0
    for layer in range(cfg.n_layers):
        if cfg.is_moe and layer >= cfg.first_dense_layers:
            shared = cfg.n_shared_experts * 3 * d * cfg.expert_ffn_dim
            router = cfg.n_experts * d  # every router weight is used for every token
            base = attention + shared + router + norms
            total += base + cfg.n_experts * 3 * d * cfg.expert_ffn_dim
            active += base + cfg.top_k * 3 * d * cfg.expert_ffn_dim
        else:
            total += dense_layer
            active += dense_layer
    embedding = cfg.vocab_size * d
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    outer = embedding + head + d  # + final norm
    return ModelSize(total=total + outer, active=active + outer, embedding=embedding)


def train_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6·N + 12·L·H·hd·T (PaLM paper, appendix B), N = active parameters that
    take part in a matmul (everything but the input embedding lookup), T = sequence length."""
    size = count_params(cfg)
    t = seq_len or cfg.max_seq_len
    matmul_params = size.active - size.embedding
    if cfg.tie_embeddings:  # the tied table is also the output head: its matmul counts
        matmul_params += size.embedding
    return 6 * matmul_params + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * t
