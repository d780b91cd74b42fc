"""mai's own exported model directory: ``model.safetensors`` (mai tensor names), ``config.json`` (the
ModelConfig plus a format marker) and the tokenizer files. `mai train` writes it; generation and
serving load it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mai.config import from_dict
from mai.errors import MaiError
from mai.fileio import atomic_dir
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer

FORMAT = "mai-native-v1"


def save_native(state_dict: dict[str, torch.Tensor], cfg: ModelConfig, out: Path,
                tokenizer_dir: Path | None = None) -> Path:
    """Write an exported model directory atomically from a whole state dict (see :func:`stage_model_dir`)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if cfg.tie_embeddings:
        tensors.pop("output.weight", None)  # the same storage as tok_embeddings.weight
    return stage_model_dir(out, cfg, tokenizer_dir,
                           lambda path: save_file(tensors, str(path), metadata={"format": FORMAT}))


def stage_model_dir(out: Path, cfg: ModelConfig, tokenizer_dir: Path | None,
                    write_weights: Callable[[Path], None]) -> Path:
    """An exported model directory (``model.safetensors`` written by ``write_weights``, ``config.json``,
    the tokenizer's files) staged in ``OUT.partial`` and renamed into place when complete, so a reader
    never sees half a model and an old one is replaced whole."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        write_weights(tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, **asdict(cfg)}, indent=2))
        if tokenizer_dir is not None:
            for f in Path(tokenizer_dir).iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
    return out


def is_native(path: Path) -> bool:
    cfg = Path(path) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("format") == FORMAT
    except json.JSONDecodeError:
        return False


def load_native(path: Path, device: str | torch.device = "cpu") -> Transformer:
    """The model of an exported directory, in eval mode."""
    path = Path(path)
    if not is_native(path):
        raise MaiError(f"{path} is not a mai model directory (expected config.json with format {FORMAT})")
    data = json.loads((path / "config.json").read_text())
    data.pop("format")
    cfg = from_dict(ModelConfig, data, "config.json")
    try:
        tensors = load_file(str(path / "model.safetensors"), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated or missing files
        raise MaiError(f"{path / 'model.safetensors'} cannot be read: {exc}") from None
    with torch.device("meta"):  # no random init: every weight comes from the file
        model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.init_rope(torch.device(device))
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "output.weight")]
    if missing or unexpected:
        raise MaiError(f"{path}: weights do not match the config (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")
    return model.eval()
