"""Join the process group and build the DeviceMesh of a run, after validating the layout.

Mesh dimensions, outermost first: ``pp`` (pipeline stages), ``dp_replicate`` (HSDP replicas),
``dp_shard_mod_ep`` and ``ep`` (which together form the FSDP shard group ``dp_shard``), and ``tp``
(innermost, so tensor-parallel ranks share a node). :class:`Meshes` keeps the views the rest of
mai.parallel needs, each built once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from mai.model.config import ModelConfig
from mai.parallel.config import ParallelConfig

DIMS = ("pp", "dp_replicate", "dp_shard_mod_ep", "ep", "tp")


@dataclass
class Meshes:
    world: DeviceMesh  # the 5-D mesh
    dp: DeviceMesh  # every data-parallel rank (the sampler's world); tp peers share data
    fsdp: DeviceMesh  # FSDP2 mesh: dp_shard, or (dp_replicate, dp_shard) for HSDP
    experts_fsdp: DeviceMesh  # FSDP2 mesh of expert weights: the dp ranks left after ep
    ep: DeviceMesh
    tp: DeviceMesh
    pp: DeviceMesh
    stage: DeviceMesh  # the ranks of one pipeline stage (every dimension but pp): MoE load sums

    def size(self) -> int:
        return self.world.size()


def build_mesh(cfg: ParallelConfig, world_size: int, device_type: str = "cpu",
               model: ModelConfig | None = None) -> Meshes:
    """Validate ``cfg`` (and ``model``'s shapes) first, then init the process group (gloo on CPU, nccl on
    GPU) if needed and build the meshes."""
    cfg = cfg.resolve(world_size)
    if model is not None:
        cfg.check_model(model)
    if not dist.is_initialized():
        kwargs = init_kwargs(device_type, cfg.timeout_minutes)
        if world_size == 1 and "MASTER_ADDR" not in os.environ:  # one process, not started by torchrun
            dist.init_process_group(store=dist.HashStore(), rank=0, world_size=1, **kwargs)
        else:
            dist.init_process_group(**kwargs)
    sizes = (cfg.pp, cfg.dp_replicate, cfg.dp_shard // cfg.ep, cfg.ep, cfg.tp)
    world = init_device_mesh(device_type, sizes, mesh_dim_names=DIMS)
    dp_shard = world["dp_shard_mod_ep", "ep"]._flatten("dp_shard")
    dp = world["dp_replicate", "dp_shard_mod_ep", "ep"]._flatten("dp")
    stage = world["dp_replicate", "dp_shard_mod_ep", "ep", "tp"]._flatten("stage")
    hsdp = cfg.dp_replicate > 1
    return Meshes(world=world, dp=dp, fsdp=world["dp_replicate", "dp_shard"] if hsdp else dp_shard,
                  experts_fsdp=world["dp_replicate", "dp_shard_mod_ep"] if hsdp else world["dp_shard_mod_ep"],
                  ep=world["ep"], tp=world["tp"], pp=world["pp"], stage=stage)


def init_kwargs(device_type: str, timeout_minutes: float) -> dict[str, Any]:
    """Arguments of ``init_process_group``: gloo on CPU; on GPU nccl bound to this process's device
    (``device_id`` makes NCCL create its communicator eagerly and lets it skip device guessing), with a
    timeout after which a stuck collective fails the job rather than hanging it."""
    kwargs: dict[str, Any] = {"backend": "gloo", "timeout": timedelta(minutes=timeout_minutes)}
    if device_type == "cuda":
        kwargs.update(backend="nccl", device_id=torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    return kwargs


def data_parallel_coords(mesh: Meshes) -> tuple[int, int]:
    """(rank, size) of this process among the data-parallel ranks: tensor-parallel peers share data."""
    return mesh.dp.get_local_rank(), mesh.dp.size()
