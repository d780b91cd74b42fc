"""Parallelism applied from outside the model: DeviceMesh, FSDP2, tensor/sequence and expert parallel,
activation checkpointing. The trainer calls :func:`build_mesh` then :func:`parallelize`."""

from mai.parallel.config import ParallelConfig
from mai.parallel.grad import clip_grad_norm_
from mai.parallel.mesh import build_mesh, data_parallel_coords
from mai.parallel.parallelize import loss_context, parallelize

__all__ = ["ParallelConfig", "clip_grad_norm_", "build_mesh", "data_parallel_coords", "loss_context",
           "parallelize"]
