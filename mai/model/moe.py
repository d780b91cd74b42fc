"""Mixture-of-Experts feed-forward layer: a top-k token-choice router over SwiGLU experts.

Dropless: every token reaches all of its k experts. Tokens are sorted by expert and each expert runs one
matmul over its contiguous segment (``torch._grouped_mm`` for bf16 where the build has it, else a loop
over experts — never over tokens). Load balancing by an auxiliary loss (Switch Transformer), by the
auxiliary-loss-free expert bias (DeepSeek-V3: the bias only changes which experts are chosen, not their
weights), and an optional router z-loss (ST-MoE). After each forward the layer keeps, for the trainer:
``load`` (tokens per expert) and ``aux_loss`` (weighted aux + z loss, a scalar with gradient).
Parallelism is applied from outside (mai/parallel): it may replace ``experts`` forward and
``global_load`` without touching this file's logic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mai.model.config import ModelConfig
from mai.model.transformer import FeedForward


def grouped_swiglu(x: torch.Tensor, counts: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                   w3: torch.Tensor) -> torch.Tensor:
    """SwiGLU of rows ``x`` [M, d] sorted by expert; ``counts`` [E] rows per expert; w1/w3 [E, d, f],
    w2 [E, f, d]. Returns [M, d] in the same row order. ``torch._grouped_mm`` (bf16 only, and autocast
    does not cover it) where the build has it, else one matmul per expert segment."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w1, w2, w3 = (t.to(dtype) for t in (x, w1, w2, w3))
    if hasattr(torch, "_grouped_mm") and x.dtype == torch.bfloat16 and _aligned(x, w1, w2):
        offsets = torch.cumsum(counts, 0, dtype=torch.int32)
        h = F.silu(torch._grouped_mm(x, w1, offs=offsets)) * torch._grouped_mm(x, w3, offs=offsets)
        return torch._grouped_mm(h, w2, offs=offsets)
    segments = x.split(counts.tolist())
    out = [F.silu(s @ w1[e]) * (s @ w3[e]) @ w2[e] for e, s in enumerate(segments)]
    return torch.cat(out) if out else x


def _aligned(*tensors: torch.Tensor) -> bool:
    """``_grouped_mm`` needs every row stride to be a multiple of 16 bytes."""
    return all(t.shape[-1] * t.element_size() % 16 == 0 for t in tensors)


class GroupedExperts(nn.Module):
    """E SwiGLU experts stored as 3-D weights, so that expert parallelism can shard dim 0."""

    def __init__(self, n_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.w3 = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, d_model))

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return grouped_swiglu(x, counts, self.w1, self.w2, self.w3)


class MoE(nn.Module):
    """Router + routed experts (+ shared experts, which see every token)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k, self.score = cfg.n_experts, cfg.top_k, cfg.moe_score
        self.aux_coef, self.z_coef = cfg.moe_aux_loss_coef, cfg.moe_z_loss_coef
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = GroupedExperts(cfg.n_experts, cfg.d_model, cfg.expert_ffn_dim)
        self.shared = (FeedForward(cfg.d_model, cfg.n_shared_experts * cfg.expert_ffn_dim)
                       if cfg.n_shared_experts else None)
        # Aux-loss-free balancing bias: training state (saved so a resumed run routes the same way), not
        # a weight — no gradient, counted in no parameter total.
        self.register_buffer("expert_bias", torch.zeros(cfg.n_experts), persistent=True)
        # Tokens per expert of the last forward: a buffer, so it lives on the module's device (moved by
        # ``.to``, materialised by ``to_empty``) like the tensors it is summed with; not saved.
        self.register_buffer("load", torch.zeros(cfg.n_experts, dtype=torch.long), persistent=False)
        self.aux_loss = torch.zeros(())

    def reset_buffers(self) -> None:
        """Zero the balancing bias and the load counter (after ``to_empty`` left them uninitialised)."""
        with torch.no_grad():
            self.expert_bias.zero_()
            self.load.zero_()

    def global_load(self, counts: torch.Tensor) -> torch.Tensor:
        """Tokens per expert over every process that shares this batch; one process: ``counts`` itself.
        Data/tensor parallelism overrides this with an all-reduce, so the aux loss is the global one."""
        return counts

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Experts [N, k] and normalised weights [N, k] of tokens ``x`` [N, d], plus router logits."""
        logits = self.router(x).float()
        scores = logits.softmax(-1) if self.score == "softmax" else logits.sigmoid()
        _, experts = torch.topk(scores + self.expert_bias, self.top_k, dim=-1)
        weights = scores.gather(-1, experts)
        if self.top_k > 1:  # top-1 keeps the raw score, else the router would get no gradient (Switch)
            weights = weights / weights.sum(-1, keepdim=True)
        return experts, weights, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        experts, weights, logits = self.route(x)
        counts = torch.bincount(experts.flatten(), minlength=self.n_experts)
        self.load = counts.detach()
        self.aux_loss = self._balance_loss(logits, counts)
        order = experts.flatten().argsort(stable=True)  # slots sorted by expert: contiguous segments
        token = order // self.top_k
        y = self.experts(x[token], counts) * weights.flatten()[order, None].to(x.dtype)
        out = torch.zeros_like(x).index_add_(0, token, y)
        if self.shared is not None:
            out = out + self.shared(x)
        return out.view(shape)

    def _balance_loss(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if self.aux_coef:
            # Switch / DeepSeek form: E · Σ_i f_i · P_i, f_i = share of routing slots that chose expert i
            # (over the global batch, no gradient), P_i = mean normalised score; 1.0 when balanced.
            load = self.global_load(counts).float()
            share = load / load.sum()
            scores = logits.softmax(-1) if self.score == "softmax" else logits.sigmoid()
            probs = (scores / scores.sum(-1, keepdim=True)).mean(0)
            loss = loss + self.aux_coef * self.n_experts * (share * probs).sum()
        if self.z_coef:
            loss = loss + self.z_coef * torch.logsumexp(logits, -1).square().mean()
        return loss


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of the weighted aux + z losses of every MoE layer's last forward (0.0 for a dense model)."""
    return sum((m.aux_loss for m in moe_layers(model)), 0.0)


def moe_load(model: nn.Module) -> torch.Tensor:
    """Tokens per expert of the last forward, one row per MoE layer: [n_moe_layers, E] (int64)."""
    layers = moe_layers(model)
    return torch.stack([m.load for m in layers]) if layers else torch.zeros(0, 0, dtype=torch.long)


@torch.no_grad()
def update_expert_bias(model: nn.Module, load: torch.Tensor, rate: float) -> None:
    """Aux-loss-free balancing (DeepSeek-V3 §2.1.2): raise the bias of under-loaded experts by ``rate``,
    lower the over-loaded ones. ``load`` is :func:`moe_load`, summed over all processes first when
    distributed, so that every process keeps the same bias."""
    for layer, counts in zip(moe_layers(model), load, strict=True):
        counts = counts.float()
        layer.expert_bias += rate * torch.sign(counts.mean() - counts)
