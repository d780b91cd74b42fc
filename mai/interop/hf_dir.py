"""Hugging Face checkpoint directories: ``config.json`` + ``model.safetensors`` (or shards + index).

Reading accepts one file or the sharded layout (``model.safetensors.index.json`` naming the shard of each
tensor); writing produces the same layout, splitting into shards above ``max_shard_bytes`` so that
transformers, vLLM or llama.cpp's converter read the result as they read any Hub checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mai.errors import MaiError
from mai.fileio import atomic_path, atomic_write_text

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MaiError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise MaiError(f"{path} should hold a JSON object")
    return data


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint directory, from its index when sharded."""
    if (path / INDEX).is_file():
        weight_map = read_json(path / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise MaiError(f"{path / INDEX} has no weight_map")
        files = [path / name for name in sorted(set(weight_map.values()))]
    elif (path / SINGLE).is_file():
        files = [path / SINGLE]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise MaiError(f"{path} holds no .safetensors weights")
    for f in files:
        if not f.is_file():
            raise MaiError(f"weight shard {f} named in {INDEX} is missing")
    return files


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint directory ``path`` (float32)."""
    sd: dict[str, torch.Tensor] = {}
    for f in safetensors_files(path):
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError) as exc:
            raise MaiError(f"cannot read weights {f}: {exc}") from exc
        sd.update({k: v.float() for k, v in part.items()})
    return sd


def write_checkpoint(out: Path, config: dict[str, Any], sd: dict[str, torch.Tensor],
                     max_shard_bytes: int = 5 * 2**30) -> None:
    """Write ``config.json`` and the weights (sharded with an index above ``max_shard_bytes``)."""
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in sd.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous()
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        with atomic_path(out / SINGLE) as tmp:
            save_file(shards[0], str(tmp), metadata=meta)
        (out / INDEX).unlink(missing_ok=True)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            with atomic_path(out / name) as tmp:
                save_file(shard, str(tmp), metadata=meta)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in sd.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(out / INDEX, json.dumps(index, indent=2))
        (out / SINGLE).unlink(missing_ok=True)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2))
