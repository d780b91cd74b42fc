"""Turn a sharded DCP training checkpoint (written by any number of processes) into one model file.

Runs in one process without a process group: DCP reshards on load. The result is mai's exported model
directory (one ``model.safetensors`` + ``config.json`` + tokenizer), which generation, serving and
`mai convert` (to Hugging Face) read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from mai.config import from_dict
from mai.errors import MaiError
from mai.interop.native import save_native
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer
from mai.train.checkpoint import list_checkpoints, read_run_state


def resolve_checkpoint(path: Path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest complete one of a run directory."""
    path = Path(path)
    if (path / ".metadata").is_file():
        return path
    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if not found:
        raise MaiError(f"no complete DCP checkpoint at {path} (give a step_XXXXXXXX folder or a run's "
                       "out_dir)")
    return found[-1]


def export_checkpoint(path: Path, out: Path, tokenizer_dir: Path | None = None) -> Path:
    ckpt = resolve_checkpoint(path)
    cfg = from_dict(ModelConfig, read_run_state(ckpt)["model_config"], "model_config")
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cpu")  # every tensor is overwritten by the checkpoint
    state = model.state_dict()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load({"model": state}, checkpoint_id=str(ckpt))
    except Exception as exc:  # DCP raises many types for missing or truncated shard files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaiError(f"checkpoint {ckpt} cannot be read: {first[:200]}") from None
    return save_native(state, cfg, Path(out), tokenizer_dir)
