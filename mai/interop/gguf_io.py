"""Read a GGUF file (llama.cpp's format) into a Hugging Face-style config and state dict.

Tensors are dequantized to float32 with the ``gguf`` package (F32, F16, BF16, Q8_0, Q4_0, Q4_1 and the
other types it knows). llama.cpp's converter stores Llama-architecture Q/K projections with each head's
rotary halves interleaved; we undo that so the weights match Hugging Face's half-split layout. From
there the ordinary HF → mai table (``hf_names``) applies, so GGUF adds only its own names here.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mai.errors import MaiError

# GGUF tensor name → HF name; "{i}" is the layer index.
GGUF_TO_HF: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
_PERMUTED_ARCHS = ("llama",)  # Mistral GGUFs use the llama architecture too
SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")


def gguf_to_hf_name(name: str) -> str | None:
    m = _LAYER.match(name)
    if m:
        hf = GGUF_TO_HF.get(f"blk.{{i}}.{m.group(2)}")
        return hf.format(i=m.group(1)) if hf else None
    return GGUF_TO_HF.get(name)


def rotary_heads(arch: str, hf_name: str, n_heads: int, n_kv_heads: int) -> int | None:
    """The head count whose rotary rows llama.cpp interleaved in tensor ``hf_name`` of a GGUF of ``arch``
    (None: stored as Hugging Face lays it out)."""
    if arch not in _PERMUTED_ARCHS:
        return None
    if hf_name.endswith("q_proj.weight"):
        return n_heads
    return n_kv_heads if hf_name.endswith("k_proj.weight") else None


def unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head interleaving of rotary pairs in a Q or K weight [heads·hd, d]."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_config(fields: dict[str, Any], n_vocab: int, has_output: bool) -> dict[str, Any]:
    """A HF ``config.json`` mapping from GGUF metadata."""
    def get(key: str, default: Any = None) -> Any:
        f = fields.get(f"{arch}.{key}")
        return default if f is None else f.contents()

    arch = fields["general.architecture"].contents()
    if arch not in SUPPORTED_ARCHS:
        raise MaiError(f"GGUF architecture '{arch}' is not supported "
                       f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    if fields.get(f"{arch}.rope.scaling.type") is not None and get("rope.scaling.type") not in ("none", ""):
        raise MaiError(f"GGUF rope scaling '{get('rope.scaling.type')}' is not supported yet")
    heads = get("attention.head_count")
    d = get("embedding_length")
    return {
        "model_type": arch,
        "vocab_size": get("vocab_size", n_vocab),
        "hidden_size": d,
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "intermediate_size": get("feed_forward_length"),
        "head_dim": get("attention.key_length", d // heads),
        "max_position_embeddings": get("context_length", 2048),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "tie_word_embeddings": not has_output,
        "attention_bias": arch == "qwen2",
    }


def open_gguf(path: Path) -> tuple[Any, dict[str, Any]]:
    """(a ``gguf.GGUFReader`` over ``path``, the HF config mapping of its model). The reader is kept for
    the process (by path, size and modification time): parsing a 49k-token vocabulary's metadata takes
    ``gguf.GGUFReader`` ~3 s, and loading a GGUF with its own blocks (quant gguf) reads it twice."""
    stat = Path(path).stat() if Path(path).is_file() else None
    reader, config = _open_gguf(str(path), stat and (stat.st_size, stat.st_mtime_ns))
    return reader, dict(config)


@functools.lru_cache(maxsize=4)
def _open_gguf(path: str, _version: tuple[int, int] | None) -> tuple[Any, dict[str, Any]]:
    try:
        import gguf
    except ImportError as exc:
        raise MaiError("reading GGUF needs the gguf package: pip install 'mai[hf]'") from exc
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise MaiError(f"{path} is not a readable GGUF file: {exc}") from exc
    names = {t.name for t in reader.tensors}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens.data) if tokens is not None else 0
    return reader, gguf_config(reader.fields, n_vocab, "output.weight" in names)


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    """(HF config mapping, HF-named float32 state dict, the reader's ``fields``) of a GGUF file."""
    import gguf

    reader, config = open_gguf(path)
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        hf = gguf_to_hf_name(t.name)
        if hf is None:
            continue
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as exc:
            raise MaiError(f"GGUF tensor {t.name} has type {t.tensor_type.name}, which cannot be "
                           "dequantized yet") from exc
        w = torch.from_numpy(np.array(arr, dtype=np.float32))  # a copy: the reader's arrays map the file
        heads = rotary_heads(config["model_type"], hf, config["num_attention_heads"],
                             config["num_key_value_heads"])
        sd[hf] = w if heads is None else unpermute_rotary(w, heads)
    return config, sd, reader.fields
