"""Join the process group and build the DeviceMesh of a run, after validating the layout.

Mesh dimensions, outermost first: ``dp_replicate`` (HSDP replicas), ``dp_shard_mod_ep`` and ``ep`` (which
together form the FSDP shard group ``dp_shard``), and ``tp`` (innermost, so tensor-parallel ranks share a
node). Flattened views: ``dp_shard``, ``dp`` (every data-parallel rank: the sampler's world).
"""

from __future__ import annotations

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from mai.model.config import ModelConfig
from mai.parallel.config import ParallelConfig

DIMS = ("dp_replicate", "dp_shard_mod_ep", "ep", "tp")


def build_mesh(cfg: ParallelConfig, world_size: int, device_type: str = "cpu",
               model: ModelConfig | None = None) -> DeviceMesh:
    """Validate ``cfg`` (and ``model``'s shapes) first, then init the process group (gloo on CPU, nccl on
    GPU) if needed and return the 4-D mesh with its flattened ``dp_shard`` and ``dp`` views."""
    cfg = cfg.resolve(world_size)
    if model is not None:
        cfg.check_model(model)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    sizes = (cfg.dp_replicate, cfg.dp_shard // cfg.ep, cfg.ep, cfg.tp)
    mesh = init_device_mesh(device_type, sizes, mesh_dim_names=DIMS)
    mesh["dp_shard_mod_ep", "ep"]._flatten("dp_shard")
    mesh["dp_replicate", "dp_shard_mod_ep", "ep"]._flatten("dp")
    return mesh


def data_parallel_coords(mesh: DeviceMesh) -> tuple[int, int]:
    """(rank, size) of this process among the data-parallel ranks: tensor-parallel peers share data."""
    dp = mesh["dp"]
    return dp.get_local_rank(), dp.size()
