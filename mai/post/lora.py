"""LoRA (Hu et al., 2021): train low-rank updates ``W + (alpha/r)·B·A`` of the attention and MLP matrices
while the base weights stay frozen; ``merge`` folds the updates into plain ``nn.Linear`` weights, so the
exported model serves like any other (no adapter code at inference).

The updates can also be kept apart, as an adapter folder (:func:`save_adapter`) that a server applies
per request over one shared base (:mod:`mai.infer.lora_serving`)::

    adapter.safetensors   LAYER.lora_a [rank, in], LAYER.lora_b [out, rank] for every adapted linear
                          (LAYER: the linear's module name, e.g. layers.0.attention.wq)
    adapter.json          {"format": "mai-lora-v1", "rank", "alpha", "targets",
                           "base": {"path", "fingerprint", "vocab_size", "d_model", "n_layers"}}

The base's fingerprint hashes its token embeddings (frozen during LoRA training, never quantized when
served, and the same bits in float32 and bf16), so serving an adapter over another base is an error."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from mai.errors import MaiError
from mai.fileio import atomic_dir
from mai.model.swap import swap_children

TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
ADAPTER_FORMAT = "mai-lora-v1"
WEIGHTS_FILE, CONFIG_FILE = "adapter.safetensors", "adapter.json"


def lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """The low-rank update of a linear's output: ``(x · Aᵀ · Bᵀ) · alpha/r``, never forming ``B·A``."""
    return (x @ a.t() @ b.t()) * scale


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # B = 0: training starts at the base model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + lora_delta(x, self.lora_a, self.lora_b, self.scale)

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a * self.scale).to(self.base.weight.dtype)
        self.base.weight.requires_grad_(True)
        return self.base


def add_lora(model: nn.Module, rank: int, alpha: float | None = None,
             targets: tuple[str, ...] = TARGETS) -> int:
    """Freeze every parameter and wrap the target linears; returns the number of trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    swap_children(model, lambda name, child: LoRALinear(child, rank, alpha or 2.0 * rank)
                  if name in targets and isinstance(child, nn.Linear) else None)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> None:
    """Replace every LoRALinear by its base linear with the update added in; unfreeze everything."""
    swap_children(model, lambda _, child: child.merged() if isinstance(child, LoRALinear) else None)
    for p in model.parameters():
        p.requires_grad_(True)


def base_fingerprint(model: nn.Module) -> str:
    """What identifies a base model to its adapters: SHA-256 of its token embeddings rounded to bf16."""
    weight = model.get_submodule("tok_embeddings").weight
    if hasattr(weight, "full_tensor"):  # a DTensor (sharded training): every rank gathers it
        weight = weight.full_tensor()
    bits = weight.detach().to(torch.bfloat16).cpu().contiguous().view(torch.int16).numpy()
    return "sha256:" + hashlib.sha256(bits.tobytes()).hexdigest()


def save_adapter(model: nn.Module, out: str | Path, base_path: str) -> Path | None:
    """Write the adapter folder of a model whose LoRALinears trained on ``base_path`` (before the merge);
    under torch.distributed every rank gathers, rank 0 writes (and gets the path, the others None)."""
    tensors: dict[str, torch.Tensor] = {}
    lora = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not lora:
        raise MaiError("the model has no LoRA adapters to save")
    for name, m in lora:
        for part in ("lora_a", "lora_b"):
            t = getattr(m, part).detach()
            t = t.full_tensor() if hasattr(t, "full_tensor") else t
            tensors[f"{name}.{part}"] = t.float().cpu().contiguous()
    cfg = model.cfg
    meta = {"format": ADAPTER_FORMAT, "rank": lora[0][1].rank, "alpha": lora[0][1].alpha,
            "targets": sorted({name.rsplit(".", 1)[-1] for name, _ in lora}),
            "base": {"path": str(base_path), "fingerprint": base_fingerprint(model),
                     "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "n_layers": cfg.n_layers}}
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": ADAPTER_FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(out)


@dataclass
class Adapter:
    """An adapter folder as read: its settings and, per adapted linear's module name, (A, B)."""

    path: Path
    rank: int
    alpha: float
    base: dict[str, Any]
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def read_adapter(path: str | Path) -> Adapter:
    """Read and check an adapter folder (every A is [rank, in], every B [out, rank] of the stated rank)."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise MaiError(f"{path} is not a LoRA adapter folder ({CONFIG_FILE} and {WEIGHTS_FILE}; "
                       "`mai sft --lora-rank R` writes one to RUN/adapter)")
    meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != ADAPTER_FORMAT:
        raise MaiError(f"{path / CONFIG_FILE}: format {meta.get('format')!r} is not {ADAPTER_FORMAT}")
    rank, tensors = int(meta["rank"]), load_file(str(path / WEIGHTS_FILE))
    weights = {}
    for key in sorted(k for k in tensors if k.endswith(".lora_a")):
        name = key.removesuffix(".lora_a")
        a, b = tensors[key], tensors.get(f"{name}.lora_b")
        if b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise MaiError(f"{path}: {name} is not a rank-{rank} pair (lora_a {tuple(a.shape)}, lora_b "
                           f"{None if b is None else tuple(b.shape)})")
        weights[name] = (a, b)
    if not weights or len(tensors) != 2 * len(weights):
        raise MaiError(f"{path / WEIGHTS_FILE} does not hold lora_a / lora_b pairs only")
    return Adapter(path, rank, float(meta["alpha"]), meta["base"], weights)
