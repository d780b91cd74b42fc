"""The model's typed config: every shape the decoder (dense or Mixture-of-Experts) needs, nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from mai.errors import MaiError


@dataclass
class ModelConfig:
    """Shape of a Llama-style decoder. ``n_kv_heads`` < ``n_heads`` gives grouped-query attention."""

    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn_dim: int = 768
    head_dim: int | None = None  # defaults to d_model // n_heads
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    # Llama 3.1 "llama3" rope scaling (0 = off): low frequencies slowed by this factor, high ones kept,
    # a smooth blend between, relative to the context the model was pretrained at
    rope_scaling_factor: float = 0.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    attn_bias: bool = False  # biases on the q/k/v projections (Qwen2 family)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before rotary (Qwen3 family)
    # Mixture-of-Experts (0 experts = dense); the MoE layer lives in mai/model/moe.py.
    n_experts: int = 0
    top_k: int = 2
    n_shared_experts: int = 0
    expert_ffn_dim: int = 0
    first_dense_layers: int = 0
    moe_score: str = "softmax"  # router scores: "softmax" (Mixtral) or "sigmoid" (DeepSeek-V3)
    moe_aux_loss_coef: float = 0.01  # load-balancing loss weight (Switch Transformer); 0 turns it off
    moe_z_loss_coef: float = 0.0  # router z-loss weight (ST-MoE uses 1e-3); 0 turns it off
    moe_bias_update_rate: float = 0.0  # aux-loss-free balancing step (DeepSeek-V3: 1e-3); 0 turns it off

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise MaiError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise MaiError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise MaiError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise MaiError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.n_experts and not 0 < self.top_k <= self.n_experts:
            raise MaiError(f"top_k {self.top_k} must be between 1 and n_experts {self.n_experts}")
        if self.moe_score not in ("softmax", "sigmoid"):
            raise MaiError(f"moe_score must be 'softmax' or 'sigmoid', got '{self.moe_score}'")
        if self.n_experts and self.expert_ffn_dim <= 0:
            raise MaiError(f"expert_ffn_dim must be positive for an MoE model, got {self.expert_ffn_dim}")

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0
