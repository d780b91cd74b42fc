"""Mixture-of-Experts under data, tensor and expert parallelism, applied by swapping module classes.

The swapped classes keep every parameter name, so checkpoints are the same with or without parallelism.
- :class:`DistributedMoE`: the aux loss uses tokens-per-expert summed over all ranks (all-reduce), so it
  equals the single-process loss on the global batch.
- :class:`SequenceLocalMoE` (tensor parallel): each rank routes its own sequence shard through replicated
  router/experts; their gradients are summed over the tp group in backward.
- :class:`ExpertParallelExperts`: experts sharded on dim 0 over the ``ep`` mesh; tokens travel to the rank
  that owns their expert and back with two all-to-alls (differentiable).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.func import functional_call

from mai.model.moe import MoE, grouped_swiglu


class DistributedMoE(MoE):
    load_group = None  # the ranks of this pipeline stage (all ranks without pipeline parallel)

    def global_load(self, counts: torch.Tensor) -> torch.Tensor:
        total = counts.clone()
        dist.all_reduce(total, group=self.load_group)
        return total


class _SumGradOverGroup(torch.autograd.Function):
    """Identity forward; all-reduce (sum) of the gradient over ``group`` in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class SequenceLocalMoE(DistributedMoE):
    tp_mesh: DeviceMesh
    _inside: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._inside:
            return super().forward(x)
        group, tp = self.tp_mesh.get_group(), self.tp_mesh.size()
        # Expert-parallel experts are their own FSDP unit (gathered only when called): they localise
        # their weights themselves, with the same tp gradient sum (``grad_sum_group``).
        own = isinstance(self.experts, ExpertParallelExperts)
        local = {name: _SumGradOverGroup.apply(p.to_local() if isinstance(p, DTensor) else p, group)
                 for name, p in self.named_parameters() if not (own and name.startswith("experts."))}
        self._inside = True
        try:
            out = functional_call(self, local, (x.to_local() if isinstance(x, DTensor) else x,), strict=False)
        finally:
            self._inside = False
        self.aux_loss = self.aux_loss / tp  # each rank holds 1/tp of the tokens of the global mean
        return out


class ExpertParallelExperts(torch.nn.Module):
    """Forward of :class:`mai.model.moe.GroupedExperts` with all-to-all token dispatch (class swap)."""

    ep_mesh: DeviceMesh
    grad_sum_group = None  # the tp group when tensor parallel also runs (see SequenceLocalMoE)

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        group, ep = self.ep_mesh.get_group(), self.ep_mesh.size()
        send = counts.view(ep, -1)  # [destination rank, its local expert]
        recv = funcol.all_to_all_single(send.flatten(), None, None, group)
        recv = recv.wait() if hasattr(recv, "wait") else recv
        recv = recv.view(ep, -1)  # [source rank, my local expert]
        in_splits, out_splits = send.sum(1).tolist(), recv.sum(1).tolist()
        got = funcol.all_to_all_single_autograd(x, out_splits, in_splits, group)
        # Arrived grouped by source rank, then expert: regroup by expert for the grouped matmul.
        local_e = recv.shape[1]
        expert_of_row = torch.arange(local_e, device=x.device).repeat(ep).repeat_interleave(recv.flatten())
        order = expert_of_row.argsort(stable=True)
        w1, w2, w3 = (w.to_local() if isinstance(w, DTensor) else w for w in (self.w1, self.w2, self.w3))
        if self.grad_sum_group is not None:
            w1, w2, w3 = (_SumGradOverGroup.apply(w, self.grad_sum_group) for w in (w1, w2, w3))
        y = grouped_swiglu(got[order], recv.sum(0), w1, w2, w3)
        y = y[order.argsort()]
        return funcol.all_to_all_single_autograd(y, in_splits, out_splits, group)


def shard_experts(experts: torch.nn.Module, ep_mesh: DeviceMesh) -> None:
    """Turn ``experts``' 3-D weights into DTensors sharded on the expert dim and swap in the EP forward."""
    for name, p in list(experts.named_parameters(recurse=False)):
        experts.register_parameter(name, torch.nn.Parameter(distribute_tensor(p.data, ep_mesh, [Shard(0)])))
    experts.__class__ = type("ExpertParallel" + type(experts).__name__,
                             (ExpertParallelExperts, type(experts)), {"ep_mesh": ep_mesh})


def replicate_over(module: torch.nn.Module, mesh: DeviceMesh) -> None:
    """Make ``module``'s parameters Replicate DTensors on ``mesh`` (so all share one mesh under TP)."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if not isinstance(p, DTensor):
                replicated = distribute_tensor(p.data, mesh, [Replicate()])
                sub.register_parameter(name, torch.nn.Parameter(replicated))


def swap_class(module: torch.nn.Module, cls: type, **attrs) -> None:
    """Give ``module`` the behaviour of ``cls`` (a subclass of its class) in place, keeping its state."""
    module.__class__ = cls
    for key, value in attrs.items():
        setattr(module, key, value)
