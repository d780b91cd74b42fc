"""The one table between Hugging Face Llama-family names and mai's, for configs and weights.

Everything that reads or writes HF checkpoints (safetensors directories, GGUF via its HF-style names,
export for transformers) goes through these functions, so a new family is one more entry here.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from mai.errors import MaiError
from mai.model.config import ModelConfig

# HF per-layer suffix → mai per-layer suffix (after "model.layers.{i}." and "layers.{i}." respectively).
LAYER_NAMES: dict[str, str] = {
    "input_layernorm.weight": "attention_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "self_attn.q_proj.bias": "attention.wq.bias",
    "self_attn.k_proj.bias": "attention.wk.bias",
    "self_attn.v_proj.bias": "attention.wv.bias",
    "self_attn.q_norm.weight": "attention.q_norm.weight",
    "self_attn.k_norm.weight": "attention.k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
}
TOP_NAMES: dict[str, str] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # SmolLM checkpoints are model_type "llama"

_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_MAI_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_MAI_TO_HF_LAYER = {v: k for k, v in LAYER_NAMES.items()}
_MAI_TO_HF_TOP = {v: k for k, v in TOP_NAMES.items()}


def hf_config_to_mai(hf: dict[str, Any], max_seq_len: int | None = None) -> ModelConfig:
    """A :class:`ModelConfig` from a HF ``config.json`` mapping of a supported family."""
    model_type = hf.get("model_type", "llama")
    if model_type not in SUPPORTED_TYPES:
        known = ", ".join(SUPPORTED_TYPES)
        raise MaiError(f"model_type '{model_type}' is not supported (supported: {known})")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or rope
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "llama3", None):
        raise MaiError(f"rope scaling '{kind}' is not supported yet (supported: default, llama3)")
    llama3 = {}
    if kind == "llama3":
        llama3 = dict(rope_scaling_factor=float(scaling["factor"]),
                      rope_low_freq_factor=float(scaling["low_freq_factor"]),
                      rope_high_freq_factor=float(scaling["high_freq_factor"]),
                      rope_original_max_len=int(scaling["original_max_position_embeddings"]))
    return ModelConfig(
        **llama3,
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        ffn_dim=hf["intermediate_size"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        max_seq_len=max_seq_len or hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attn_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
        qk_norm=model_type == "qwen3",
    )


def mai_config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A HF ``config.json`` mapping that transformers loads as the matching family."""
    if cfg.is_moe:
        raise MaiError("exporting Mixture-of-Experts models to Hugging Face format is not supported")
    model_type = "qwen3" if cfg.qk_norm else "qwen2" if cfg.attn_bias else "llama"
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]
    scaling = {"rope_scaling": {
        "rope_type": "llama3", "factor": cfg.rope_scaling_factor, "low_freq_factor": cfg.rope_low_freq_factor,
        "high_freq_factor": cfg.rope_high_freq_factor,
        "original_max_position_embeddings": cfg.rope_original_max_len}} if cfg.rope_scaling_factor else {}
    return {
        **scaling,
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "intermediate_size": cfg.ffn_dim,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.attn_bias,
        "mlp_bias": False,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }


def hf_to_mai_name(name: str) -> str | None:
    """mai's name for HF tensor ``name``; None for tensors mai does not use (e.g. rotary caches)."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    m = _HF_LAYER.match(name)
    if m and m.group(2) in LAYER_NAMES:
        return f"layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"
    return None


def mai_to_hf_name(name: str) -> str:
    if name in _MAI_TO_HF_TOP:
        return _MAI_TO_HF_TOP[name]
    m = _MAI_LAYER.match(name)
    if m and m.group(2) in _MAI_TO_HF_LAYER:
        return f"model.layers.{m.group(1)}.{_MAI_TO_HF_LAYER[m.group(2)]}"
    raise MaiError(f"tensor '{name}' has no Hugging Face name (Mixture-of-Experts export is not supported)")


def hf_to_mai_state_dict(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a HF state dict to mai's; a tied model gets its output head from the embedding."""
    sd = {new: t for name, t in hf_sd.items() if (new := hf_to_mai_name(name)) is not None}
    if cfg.tie_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    return sd


def mai_to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename mai's state dict to HF names; a tied model stores its table once (no lm_head)."""
    out = {mai_to_hf_name(name): t for name, t in sd.items()}
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out
