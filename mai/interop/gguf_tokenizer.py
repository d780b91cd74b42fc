"""A Hugging Face ``tokenizers`` tokenizer rebuilt from a GGUF file's own vocabulary metadata.

GGUF stores a byte-level BPE as ``tokenizer.ggml.tokens`` / ``merges`` / ``token_type`` plus a
pre-tokenizer name (``tokenizer.ggml.pre``) that llama.cpp maps to split rules. We rebuild the same
pipeline so a GGUF model needs no second download, then save it as ``tokenizer.json`` +
``tokenizer_config.json`` (with the chat template from the file), which ``mai.tokenizer`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from mai.errors import MaiError
from mai.fileio import atomic_write_text

CONTROL = 3  # llama.cpp's token type for special/control tokens (1 = normal, 4 = user-defined)
USER_DEFINED = 4

# Split rules per ``tokenizer.ggml.pre`` value; the regexes are the ones llama.cpp's llama-vocab.cpp uses
# for these names (facts, not code). "gpt2" is the byte-level default rule.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre in ("gpt2", "default", ""):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):  # single digits, then the GPT-2 rule
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    rule = {"llama-bpe": _LLAMA3, "llama3": _LLAMA3, "qwen2": _QWEN2}.get(pre)
    if rule is None:
        raise MaiError(f"GGUF tokenizer pre-tokenizer '{pre}' is not supported (supported: gpt2, smollm, "
                       "starcoder, refact, llama-bpe, qwen2); convert the model from its Hugging Face files")
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(rule), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _field(fields: dict[str, Any], key: str, default: Any = None) -> Any:
    f = fields.get(key)
    return default if f is None else f.contents()


def gguf_tokenizer(fields: dict[str, Any]) -> tuple[Tokenizer, dict[str, Any]]:
    """(tokenizer, tokenizer_config mapping) from a ``gguf.GGUFReader``'s ``fields``."""
    kind = _field(fields, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise MaiError(f"GGUF tokenizer model '{kind}' is not supported (only byte-level BPE, 'gpt2'); "
                       "convert the model from its Hugging Face files instead")
    tokens: list[str] = _field(fields, "tokenizer.ggml.tokens")
    types: list[int] = _field(fields, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in _field(fields, "tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(_field(fields, "tokenizer.ggml.pre", "gpt2"))
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types, strict=True) if ty in (CONTROL, USER_DEFINED)]
    tok.add_special_tokens(specials)

    def name(key: str) -> str | None:
        i = _field(fields, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name("bos"),
        "eos_token": name("eos"),
        "pad_token": name("padding"),
        "unk_token": name("unknown"),
        "add_bos_token": bool(_field(fields, "tokenizer.ggml.add_bos_token", False)),
        "chat_template": _field(fields, "tokenizer.chat_template"),
    }
    return tok, config


def save_tokenizer_files(out_dir: Path, tok: Tokenizer, config: dict[str, Any]) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``out_dir`` (atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "tokenizer.json", tok.to_str())
    atomic_write_text(out_dir / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
