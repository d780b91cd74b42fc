"""Load a checkpoint ready to generate or score: weights, quantization and compute precision in one call.

Generation, chat, serving and evaluation all load this way, so each picks its dtype by the same
measurement (mai.precision) for the shape of its own work: batch-1 decoding is a matrix-vector product
where bf16 can lose even on a CPU with fast bf16 matmuls (0.42× fp32 on an AVX-512 bf16 core), while
scoring thousands of tokens at once gains there (2-5×).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mai.errors import MaiError
from mai.infer.quant import apply_quant
from mai.interop import LoadedModel, load_model
from mai.precision import DECODE_ROWS, Precision, resolve


def load_for_inference(path: str | Path, quant: str = "none", precision: str = "auto",
                       rows: int = DECODE_ROWS, max_seq_len: int | None = None,
                       device: str = "cpu") -> tuple[LoadedModel, Precision]:
    """``path`` loaded (any format :func:`mai.interop.load_model` reads), quantized as ``quant`` and cast
    to the precision resolved for matmuls of about ``rows`` rows on ``device``; the choice is reported once.

    Quantization runs on the float32 weights (the GGUF block check compares bit for bit); casting then
    touches only floating-point tensors, so int8 codes and GGUF blocks stay as they are and compute in
    the activations' dtype."""
    loaded = load_model(path, max_seq_len)
    if loaded.tokenizer is None:
        raise MaiError(f"{path} has no tokenizer files (tokenizer.json); generation and scoring need one")
    choice = resolve(precision, device, rows)
    model = apply_quant(loaded.model, quant, loaded.source).to(device)
    if choice.dtype != torch.float32:
        model = model.to(choice.dtype)
    return dataclasses.replace(loaded, model=model.eval()), choice
