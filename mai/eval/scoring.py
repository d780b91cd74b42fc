"""Log-likelihood of continuations given contexts: the one primitive every benchmark task is built on.

Tokenization follows lm-evaluation-harness exactly (``_encode_pair``): trailing spaces of the context move
to the continuation, the continuation's tokens are those of ``encode(context + continuation)`` after the
first ``len(encode(context))``, and an empty context becomes the BOS (else EOS) token.

The speed comes from sharing: all choices of a question are ONE row, a token tree with the context as
its trunk and the choices as branches (:mod:`mai.eval.token_tree`), each token at the position of its
depth and seeing only its ancestors, so the context runs once per question instead of once per choice.
A long prefix that many questions share (a few-shot prompt) runs once per group of questions: its keys
and values are computed first, and every question's tokens attend to them. Rows are then packed,
longest first, into sequences of up to ``pack_len`` tokens (each question its own attention block),
batched by width, so batches carry little padding and little attention across blocks; the output head
runs once per scored position (a context's last token and each continuation's tokens), not on the whole
packed sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mai.eval.token_tree import PrefixGroup, Row, share_prefixes, tree_mask
from mai.infer.onednn_linear import use_onednn_linears
from mai.model.transformer import Transformer, masked_attention
from mai.tokenizer import MaiTokenizer

PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]


class _PackedMask:
    """Stands in for a KV cache: the packed layout's per-sequence attention mask, and the keys and values
    of a shared prefix (one per layer, [1, kv heads, P, head dim]) that every token attends to."""

    length = 0

    def __init__(self, mask: torch.Tensor, prefix: PrefixKV | None = None) -> None:
        self.mask, self.prefix = mask, prefix

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.prefix:
            pk, pv = self.prefix[layer]
            b = k.shape[0]
            k, v = torch.cat([pk.expand(b, -1, -1, -1), k], 2), torch.cat([pv.expand(b, -1, -1, -1), v], 2)
        return masked_attention(q, k, v, self.mask)

    def advance(self, t: int) -> None:
        pass


class _PrefixRecorder:
    """Stands in for a KV cache while a shared prefix runs (causal, from position 0): keeps each layer's
    keys and values."""

    length = 0

    def __init__(self) -> None:
        self.kv: PrefixKV = []

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.kv.append((k, v))
        return masked_attention(q, k, v, None)

    def advance(self, t: int) -> None:
        pass


class LoglikScorer:
    """Scores (context, continuation) pairs: log P(continuation | context) and whether it is greedy.

    The model's linear layers are switched, in place, to oneDNN's float32 CPU matmul
    (:mod:`mai.infer.onednn_linear`: same weights, faster on many rows, unchanged for training)."""

    def __init__(self, model: Transformer, tokenizer: MaiTokenizer, batch_tokens: int = 4096,
                 max_seq_len: int | None = None, pack_len: int = 256, min_shared: int = 64) -> None:
        self.model, self.tok = use_onednn_linears(model), tokenizer
        self.batch_tokens, self.pack_len, self.min_shared = batch_tokens, pack_len, min_shared
        self.max_seq_len = max_seq_len or model.cfg.max_seq_len
        self.device = next(model.parameters()).device
        self.prefix_id = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """lm-eval's ``_encode_pair`` for every pair, with the Rust batch encoder."""
        split = []
        for ctx, cont in pairs:
            n = len(ctx) - len(ctx.rstrip())
            split.append((ctx[:-n], ctx[-n:] + cont) if n else (ctx, cont))
        contexts = sorted({c for c, _ in split if c})
        ctx_ids = dict(zip(contexts, self.tok.encode_batch(contexts), strict=True))
        wholes = self.tok.encode_batch([c + k for c, k in split])
        out = []
        for (ctx, _), whole in zip(split, wholes, strict=True):
            if not ctx:
                out.append(([self.prefix_id], whole))
            else:
                out.append((ctx_ids[ctx], whole[len(ctx_ids[ctx]):]))
        return out

    def rows(self, pairs: Sequence[tuple[str, str]]) -> list[Row]:
        """Group requests that share a context (the choices of one question) into packed rows."""
        groups: dict[tuple[int, ...], tuple[list[list[int]], list[int]]] = {}
        for i, (ctx, cont) in enumerate(self.encode_pairs(pairs)):
            if not cont:
                raise ValueError(f"request {i} has an empty continuation")
            conts, owners = groups.setdefault(tuple(ctx), ([], []))
            conts.append(cont)
            owners.append(i)
        out = []
        for ctx, (conts, owners) in groups.items():  # keep positions within the context, as lm-eval truncates
            longest = max(len(c) for c in conts)
            out.append(Row(list(ctx[-max(1, self.max_seq_len + 1 - longest):]), conts, owners))
        return out

    def bins(self, rows: list[Row]) -> list[list[Row]]:
        """Pack rows (longest first) into sequences of up to ``pack_len`` tokens (a longer row alone):
        several questions share a sequence, each in its own attention block, so little is padding."""
        bins: list[list[Row]] = []
        room: list[int] = []
        for row in sorted(rows, key=len, reverse=True):
            at = next((i for i, free in enumerate(room) if free >= len(row)), None)
            if at is None:
                bins.append([])
                room.append(max(self.pack_len, len(row)))
                at = len(bins) - 1
            bins[at].append(row)
            room[at] -= len(row)
        return bins

    def batches(self, bins: list[list[Row]]) -> Iterator[tuple[list[list[Row]], int]]:
        """Consecutive bins (widest first) as batches of about ``batch_tokens``, each as wide as its
        fullest bin."""
        batch: list[list[Row]] = []
        width = 0
        for b in bins:
            used = sum(len(r) for r in b)
            if batch and (len(batch) + 1) * max(width, used) > self.batch_tokens:
                yield batch, width
                batch, width = [], 0
            batch.append(b)
            width = max(width, used)
        if batch:
            yield batch, width

    def groups(self, pairs: Sequence[tuple[str, str]]) -> list[PrefixGroup]:
        """The rows of ``pairs``, grouped by the prefixes (of ``min_shared`` tokens or more) they share."""
        return share_prefixes(self.rows(pairs), self.min_shared)

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log-likelihood, is greedy) for each (context, continuation) pair, in order."""
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for group in self.groups(pairs):
            prefix = self._prefix_kv(group.prefix)
            for batch, width in self.batches(self.bins(group.rows)):
                rows = [r for b in batch for r in b]
                for row, scored in zip(rows, self._forward(batch, width, prefix), strict=True):
                    for owner, value in zip(row.owners, scored, strict=True):
                        results[owner] = value
        return results

    def _prefix_kv(self, prefix: list[int]) -> PrefixKV | None:
        if not prefix:
            return None
        recorder = _PrefixRecorder()
        self.model.hidden(torch.tensor([prefix], device=self.device), cache=recorder)  # type: ignore[arg-type]
        return recorder.kv

    def _forward(self, batch: list[list[Row]], width: int,
                 prefix: PrefixKV | None) -> list[list[tuple[float, bool]]]:
        b, p = len(batch), prefix[0][0].shape[2] if prefix else 0
        tokens = torch.full((b, width), self.tok.pad_id, dtype=torch.long)
        positions = torch.zeros((b, width), dtype=torch.long)
        mask = np.zeros((b, width, p + width), dtype=bool)
        mask[:, :, :p] = True  # the shared prefix is every token's first ancestors
        mask[:, np.arange(width), p + np.arange(width)] = True  # padding sees itself: no empty softmax rows
        picks = []  # (row number, sequence, predicting position, target token, continuation index)
        n = 0
        for s, rows in enumerate(batch):
            at = 0
            for row in rows:
                block, depth = tree_mask(row.parents)
                span = slice(at, at + len(row))
                tokens[s, span] = torch.tensor(row.fed)
                positions[s, span] = torch.from_numpy(row.start + depth)
                mask[s, span, p + at:p + at + len(row)] = block
                for k, (cont, src) in enumerate(zip(row.continuations, row.sources, strict=True)):
                    picks.extend((n, s, at + i, t, k) for i, t in zip(src, cont, strict=True))
                at += len(row)
                n += 1
        dev = self.device
        cache = _PackedMask(torch.from_numpy(mask)[:, None].to(dev), prefix)
        hidden = self.model.hidden(tokens.to(dev), cache=cache, positions=positions.to(dev))  # type: ignore[arg-type]
        # A position predicts the next token of every continuation through it: its head runs once.
        flat = torch.tensor([p[1] * width + p[2] for p in picks])
        where, slot = torch.unique(flat, return_inverse=True)
        logits = self.model.head(hidden.reshape(b * width, -1)[where.to(dev)]).float().cpu()
        target = torch.tensor([p[3] for p in picks])
        logp = torch.log_softmax(logits, dim=-1)[slot, target]
        greedy = _is_argmax(logits, slot, target)
        out = [[(0.0, True) for _ in row.continuations] for rows in batch for row in rows]
        for (r, _, _, _, k), lp, g in zip(picks, logp.tolist(), greedy.tolist(), strict=True):
            ll, ok = out[r][k]
            out[r][k] = (ll + lp, ok and g)
        return out


def _is_argmax(logits: torch.Tensor, slot: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Whether ``target[i]`` is ``logits[slot[i]].argmax()`` (the first maximum, as lm-eval's argmax):
    a max over the rows is a fraction of an argmax's cost, and only rows where the target reaches the
    max need the argmax to settle ties."""
    top = logits[slot, target] == logits.amax(-1)[slot]
    ties = top.nonzero()[:, 0]
    top[ties] = logits[slot[ties]].argmax(-1) == target[ties]
    return top
