"""A Llama-style decoder in one readable file.

Token embedding → n × [RMSNorm → grouped-query attention with rotary positions → residual,
RMSNorm → SwiGLU MLP → residual] → RMSNorm → output head. No biases by default (Qwen2's q/k/v biases
and Qwen3's per-head q/k norms are options for imported models); optional tied embeddings.
Parallelism, compilation, mixed precision and checkpointing are applied from outside (mai/parallel,
mai/train); generation passes a cache (:class:`AttentionCache`) that keeps past keys and values.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mai.model.config import ModelConfig


def llama3_scaled(inv_freq: torch.Tensor, factor: float, low: float, high: float,
                  original: int) -> torch.Tensor:
    """Llama 3.1's rope scaling: wavelengths longer than original/low are stretched by ``factor``, those
    shorter than original/high kept, and the band between blended smoothly (Meta's reference rule)."""
    wavelen = 2 * math.pi / inv_freq
    smooth = ((original / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def rope_tables(head_dim: int, max_seq_len: int, theta: float, device=None,
                cfg: ModelConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape [max_seq_len, head_dim] in the half-split layout (pairs i and i + head_dim/2);
    ``cfg`` supplies Llama 3.1 rope scaling when its ``rope_scaling_factor`` is set."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    if cfg is not None and cfg.rope_scaling_factor:
        inv_freq = llama3_scaled(inv_freq, cfg.rope_scaling_factor, cfg.rope_low_freq_factor,
                                 cfg.rope_high_freq_factor, cfg.rope_original_max_len)
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def eager_inference() -> bool:
    """No autograd graph to keep and no compiled graph being traced (evaluation, serving). Then
    elementwise steps may write into their own fresh inputs: each saves a new activation-sized buffer,
    whose first touch costs page faults (SwiGLU's product in place made SmolLM2's PIQA scoring 4% faster
    on CPU); and ops without a backward or a compiler lowering may run (:mod:`mai.infer.onednn_linear`)."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, hd] by position; cos/sin are [T, hd] (or broadcastable)."""
    half = x.shape[-1] // 2
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if not eager_inference():
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin
    rotated = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    rotated[..., :half].neg_()
    return rotated.mul_(sin).addcmul_(x, cos)


class AttentionCache(Protocol):
    """The one interface between the model and any KV cache: the model hands each layer's new queries,
    keys and values to the cache, which stores the keys/values and returns the attention output — so a
    cache decides what every token sees (one shared length, rows at different lengths, blocks of a paged
    pool: :mod:`mai.infer.kv_cache`) and the model knows nothing of the layout. ``length`` is the next
    position when the caller passes no explicit positions."""

    length: int

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store ``k``/``v`` [B, kv heads, T, hd] of ``layer``; return attention [B, heads, T, hd]."""
        ...

    def advance(self, t: int) -> None:
        """``t`` tokens went through every layer."""
        ...


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA of ``q`` over ``k``/``v`` (grouped queries allowed) under ``mask``; None means causal from
    position 0 (or one token that sees everything)."""
    gqa = k.shape[1] != q.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class KVCache:
    """Past keys and values for every layer, filled left to right; ``length`` is the next position.

    All rows share one length: a single sequence or equal rows (a draft model's cache, the engine's
    one-token probe). The serving engine's paged cache is :mod:`mai.infer.kv_cache`.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_seq_len: int, device=None, dtype=torch.float32):
        shape = (batch, cfg.n_kv_heads, max_seq_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.length = 0
        self.max_seq_len = max_seq_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values at positions [length, length + T) and return all of them so far."""
        t = k.shape[2]
        self.k[layer][:, :, self.length : self.length + t] = k
        self.v[layer][:, :, self.length : self.length + t] = v
        end = self.length + t
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def attn_mask(self, t: int) -> torch.Tensor | None:
        """Mask for ``t`` new tokens: None when plain causal attention is right (from position 0, or one
        token that sees everything); else token i sees all past plus new tokens ≤ i."""
        if self.length == 0 or t == 1:
            return None
        return torch.ones(t, self.length + t, dtype=torch.bool, device=self.k[0].device).tril(self.length)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        mask = self.attn_mask(q.shape[2])
        return masked_attention(q, *self.update(layer, k, v), mask)

    def advance(self, t: int) -> None:
        self.length += t


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.attn_bias)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attn_bias)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attn_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: AttentionCache | None):
        b, t, _ = x.shape
        # -1 instead of the head count lets tensor parallelism shard heads without touching this code.
        q = self.wq(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            y = cache.attend(self.layer, q, k, v)
        elif t > 1 and _explicit_attention(q):
            y = causal_attention(q, k, v)
        else:  # causal from position 0 (training, scoring)
            y = masked_attention(q, k, v, None)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


EXPLICIT_ATTENTION_MAX_LEN = 1024


def _explicit_attention(q: torch.Tensor) -> bool:
    """Whether causal attention should be written out instead of calling SDPA: only inside a compiled
    graph on CPU, for short sequences. There SDPA's flash kernel is opaque to the compiler and slow at
    small sizes (21% of a compiled training step at T = 256, for ~7% of its FLOPs), while the explicit
    form is two batched matmuls with the scaling, mask and softmax fused between them: the compiled
    training benchmark runs 1.18x -> 1.30x of eager transformers at one thread (docs/benchmarks.md). The
    [T, T] scores it keeps are why it stops at ``EXPLICIT_ATTENTION_MAX_LEN``; GPUs keep SDPA."""
    return (q.device.type == "cpu" and q.shape[2] <= EXPLICIT_ATTENTION_MAX_LEN
            and torch.compiler.is_compiling())


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d + causal mask) v, the softmax in float32; k/v heads repeat for grouped queries."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    t = q.shape[2]
    scores = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(q.shape[-1]))
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if eager_inference():
            return self.w2(F.silu(self.w1(x), inplace=True).mul_(self.w3(x)))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.is_moe and layer >= cfg.first_dense_layers:
            from mai.model.moe import MoE  # imported lazily: dense models never need it

            self.feed_forward: nn.Module = MoE(cfg)
        else:
            self.feed_forward = FeedForward(cfg.d_model, cfg.ffn_dim)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        if eager_inference():  # x is this block's own sum now
            return x.add_(self.feed_forward(self.ffn_norm(x)))
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # A ModuleDict keyed by layer index keeps names stable when layers are split or wrapped.
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.reset_parameters()

    def init_rule(self, name: str, p: torch.Tensor) -> float | str:
        """How parameter ``name`` starts: "zeros", "ones", or the σ of a Normal(0, σ). Residual output
        projections are scaled by 1/√(2·n_layers) (GPT-2) so the residual stream's variance stays flat
        with depth. One rule for this init and for the sharded one of the trainer (mai.parallel.init)."""
        std = self.cfg.init_std
        if name.endswith(".bias"):
            return "zeros"
        if p.dim() == 1:
            return "ones"
        if name.endswith(("wo.weight", "w2.weight", "experts.w2")):  # projections into the residual
            return std / math.sqrt(2 * self.cfg.n_layers)
        return std

    def reset_parameters(self) -> None:
        """Every parameter by :meth:`init_rule`; rotary tables rebuilt (they are not saved)."""
        for name, p in self.named_parameters():
            if p.device.type == "meta":
                continue
            rule = self.init_rule(name, p)
            if rule == "zeros":
                nn.init.zeros_(p)
            elif rule == "ones":
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, rule)
        self.init_rope()

    def init_rope(self, device=None) -> None:
        device = device or self.tok_embeddings.weight.device
        if device.type == "meta":
            return
        self.rope_cos, self.rope_sin = rope_tables(
            self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta, device, self.cfg
        )

    def forward(self, tokens: torch.Tensor, cache: AttentionCache | None = None,
                positions: torch.Tensor | None = None, last_only: bool = False,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] for ``tokens`` [B, T] placed after ``cache.length`` earlier tokens, or at
        ``positions`` [B, T] when rows stand at different positions (the batched engine). ``last_only``
        gives [B, 1, vocab] for the last position, all that generation needs (it skips the output head's
        work on the rest of a prompt); ``logits_at`` [S] gives [B, S, vocab] at those indices only (the
        engine's flat batch of many requests, where each samples after its own last token)."""
        h = self.hidden(tokens, cache, positions)
        if logits_at is not None:
            return self.head(h[:, logits_at])
        return self.head(h[:, -1:] if last_only else h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from final hidden states: the last norm and the output projection."""
        return self.output(self.norm(h))

    def hidden(self, tokens: torch.Tensor, cache: AttentionCache | None = None,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, T, d] after the last block, before :meth:`head` — for callers that need logits
        at a few positions only (benchmark scoring), where the output head dominates the cost."""
        t = tokens.shape[1]
        start = cache.length if cache is not None and positions is None else 0
        # The explicit-positions check reads a tensor value, which a compiled graph cannot; the compiled
        # decoder (mai.infer.compiled_decode) checks its capacity against max_seq_len instead.
        end = start + t if positions is None or torch.compiler.is_compiling() else int(positions.max()) + 1
        if end > self.rope_cos.shape[0]:
            raise ValueError(f"sequence of {end} tokens exceeds max_seq_len {self.rope_cos.shape[0]}")
        if positions is None:
            cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        else:  # [B, 1, T, hd]: one row of angles per sequence, broadcast over heads
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h, cos, sin, cache)
        if cache is not None:
            cache.advance(t)
        return h
