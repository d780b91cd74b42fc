"""Write a dense Llama-family model (any checkpoint `load_model` reads) as a self-contained GGUF file.

The writer goes through the Hugging Face mapping that `mai convert`'s HF export uses
(``mai_to_hf_state_dict``), applies llama.cpp's rotary row order to Q/K (the inverse of what
``mai.interop.gguf_io`` undoes when reading), and stores the byte-level BPE tokenizer and chat template in
GGUF's own keys, so `mai serve`, `gguf` and transformers load the one file with nothing beside it.
2-D weights take ``qtype`` (Q8_0: 32-value blocks with one scale); norms stay F32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mai.errors import MaiError
from mai.fileio import atomic_path
from mai.interop.hf_names import mai_to_hf_state_dict
from mai.interop.load import LoadedModel
from mai.model.config import ModelConfig

# HF tensor name (after "model.layers.{i}.") → GGUF name (after "blk.{i}.")
_LAYER = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
          "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
          "self_attn.o_proj.weight": "attn_output.weight",
          "post_attention_layernorm.weight": "ffn_norm.weight",
          "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
          "mlp.down_proj.weight": "ffn_down.weight"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
CONTROL, NORMAL = 3, 1  # llama.cpp token types


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face's half-split rotary rows → llama.cpp's interleaved order, per head."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    if hf in _TOP:
        return _TOP[hf]
    parts = hf.split(".", 3)  # model, layers, i, rest
    if len(parts) == 4 and parts[3] in _LAYER:
        return f"blk.{parts[2]}.{_LAYER[parts[3]]}"
    raise MaiError(f"tensor {hf} has no GGUF name in the llama architecture")


def _check(cfg: ModelConfig) -> None:
    if cfg.is_moe or cfg.qk_norm or cfg.attn_bias or cfg.rope_scaling_factor:
        raise MaiError("GGUF export supports plain Llama-shaped models (no MoE, qk-norm, q/k/v biases or "
                       "rope scaling)")


def _tokenizer(writer, loaded: LoadedModel) -> None:
    tok = loaded.tokenizer
    if tok is None:
        raise MaiError(f"{loaded.source} carries no tokenizer; a GGUF file needs one")
    spec = json.loads(tok.tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or spec.get("pre_tokenizer", {}).get("type") != "ByteLevel":
        raise MaiError("GGUF export writes byte-level BPE tokenizers only")
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    specials = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if t in specials else NORMAL for t in tokens])
    writer.add_token_merges(merges)
    for name, setter in (("bos_id", writer.add_bos_token_id), ("eos_id", writer.add_eos_token_id),
                         ("pad_id", writer.add_pad_token_id)):
        value = getattr(tok, name, None)
        if value is not None:
            setter(int(value))
    writer.add_add_bos_token(False)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def write_gguf(loaded: LoadedModel, out: str | Path, qtype: str = "Q8_0", name: str = "mai") -> Path:
    """Write ``loaded`` to ``out`` atomically and return the path."""
    import gguf

    cfg = loaded.cfg
    _check(cfg)
    kind = gguf.GGMLQuantizationType[qtype]
    weights = {k: v.detach().float().cpu() for k, v in loaded.model.state_dict().items()}
    sd = mai_to_hf_state_dict(weights, cfg)
    out = Path(out)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(name)
        w.add_block_count(cfg.n_layers)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.d_model)
        w.add_feed_forward_length(cfg.ffn_dim)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7}[qtype])  # llama.cpp's LLAMA_FTYPE values
        _tokenizer(w, loaded)
        for hf, t in sd.items():
            if hf == "lm_head.weight" and cfg.tie_embeddings:
                continue
            if hf.endswith("q_proj.weight"):
                t = permute_rotary(t, cfg.n_heads)
            elif hf.endswith("k_proj.weight"):
                t = permute_rotary(t, cfg.n_kv_heads)
            arr = t.numpy().astype(np.float32)
            tkind = kind if arr.ndim == 2 and arr.shape[-1] % 32 == 0 else gguf.GGMLQuantizationType.F32
            w.add_tensor(gguf_name(hf), gguf.quants.quantize(arr, tkind), raw_dtype=tkind)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def transformers_logits_gap(path: Path, ours: torch.nn.Module, ids: list[int]) -> float | None:
    """Largest |logit difference| between mai's and transformers' reading of the GGUF at ``path`` on ``ids``
    (None when transformers is not installed)."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                  dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        return float((ours(x) - theirs(x).logits).abs().max())
