"""Exports that never hold the whole model in one process: the trainer's final ``RUN/model`` from a
sharded (FSDP / TP / EP / pipeline) model, and `mai checkpoint export` from a sharded DCP checkpoint.

Both write mai's exported model directory (one ``model.safetensors`` + ``config.json`` + tokenizer,
what generation, serving and `mai convert` read) through :class:`SafetensorsStream`: the header from
the shapes of the model built on meta, then one tensor at a time — gathered from its shards (and sent
to rank 0 from the pipeline stage that holds it), or read from the checkpoint layer by layer.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor

from mai.config import from_dict
from mai.errors import MaiError
from mai.interop.native import FORMAT, stage_model_dir
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer
from mai.parallel.stream_write import SafetensorsStream
from mai.train.checkpoint import list_checkpoints, read_run_state


def model_layout(cfg: ModelConfig) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Name → (dtype, shape) of every tensor of an exported ``cfg`` model (a tied head is not stored)."""
    with torch.device("meta"):
        state = Transformer(cfg).state_dict()
    if cfg.tie_embeddings:
        state.pop("output.weight", None)
    return {name: (t.dtype, tuple(t.shape)) for name, t in state.items()}


def write_model_dir(out: Path, cfg: ModelConfig, tensors: Iterator[tuple[str, torch.Tensor]],
                    tokenizer_dir: Path | None = None) -> Path:
    """Write an exported model directory atomically from ``tensors`` in :class:`SafetensorsStream` order
    (rank 0 writes; the other ranks only iterate :func:`gathered_tensors`, see :func:`export_model`)."""

    def write(path: Path) -> None:
        with SafetensorsStream(path, model_layout(cfg), {"format": FORMAT}) as stream:
            for name, tensor in tensors:
                stream.write(name, tensor)

    return stage_model_dir(out, cfg, tokenizer_dir, write)


def gathered_tensors(model: torch.nn.Module, layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                     group: dist.ProcessGroup | None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of ``layout`` in stream order, whole, on rank 0 (other ranks get nothing but must
    iterate too): a sharded tensor is gathered over its own mesh by the ranks that hold it, and the
    first of them sends it to rank 0 over ``group`` (a CPU group) when rank 0 is in another pipeline
    stage. At most one whole tensor at a time is held."""
    local = model.state_dict()
    rank = dist.get_rank() if dist.is_initialized() else 0
    holders: list[set[str]] = [set(local)]
    if dist.is_initialized():
        holders = [set() for _ in range(dist.get_world_size())]
        dist.all_gather_object(holders, set(local), group=group)
    for name in SafetensorsStream(Path(os.devnull), layout).order:
        owner = next(r for r, keys in enumerate(holders) if name in keys)
        tensor = local.get(name)
        if tensor is not None:
            tensor = (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().cpu()
            if rank == owner != 0:
                dist.send(tensor.contiguous(), dst=0, group=group)
        if rank == 0:
            if owner != 0:
                dtype, shape = layout[name]
                tensor = torch.empty(shape, dtype=dtype)
                dist.recv(tensor, src=owner, group=group)
            yield name, tensor


def export_model(model: torch.nn.Module, cfg: ModelConfig, out: Path, tokenizer_dir: Path | None,
                 group: dist.ProcessGroup | None) -> None:
    """The trainer's final export from every rank (collective): rank 0 streams the file to ``out``.
    A rank that is not 0 passes ``tensors`` through without writing."""
    stream = gathered_tensors(model, model_layout(cfg), group)
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_model_dir(out, cfg, stream, tokenizer_dir)
    else:
        for _ in stream:
            pass


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


def _layer_of(name: str) -> str:
    return name.split(".")[1] if name.startswith("layers.") else ""


def checkpoint_tensors(ckpt: Path, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """The model tensors of a DCP checkpoint in stream order, read one layer at a time (DCP reshards
    whatever number of processes wrote it)."""
    layout = model_layout(cfg)
    names = SafetensorsStream(Path(os.devnull), layout).order
    cached: dict[str, torch.Tensor] = {}
    for name in names:
        if name not in cached:
            cached = {n: torch.empty(layout[n][1], dtype=layout[n][0]) for n in layout
                      if _layer_of(n) == _layer_of(name)}
            _dcp_load(ckpt, cached)
        yield name, cached.pop(name)


def _dcp_load(ckpt: Path, tensors: dict[str, torch.Tensor]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load({"model": tensors}, checkpoint_id=str(ckpt))
    except Exception as exc:  # DCP raises many types for missing or truncated shard files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaiError(f"checkpoint {ckpt} cannot be read: {first[:200]}") from None


def export_checkpoint(path: Path, out: Path, tokenizer_dir: Path | None = None) -> Path:
    """`mai checkpoint export`: one process, no process group, one layer in memory at a time."""
    ckpt = resolve_checkpoint(path)
    cfg = from_dict(ModelConfig, read_run_state(ckpt)["model_config"], "model_config")
    return write_model_dir(Path(out), cfg, checkpoint_tensors(ckpt, cfg), tokenizer_dir)
