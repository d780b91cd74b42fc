"""Log-likelihood of continuations given contexts: the one primitive every benchmark task is built on.

Tokenization follows lm-evaluation-harness exactly (``_encode_pair``): trailing spaces of the context move
to the continuation, the continuation's tokens are those of ``encode(context + continuation)`` after the
first ``len(encode(context))``, and an empty context becomes the BOS (else EOS) token.

The speed comes from sharing the context: all choices of a question are packed into ONE row, a token
tree with the context as its trunk and the choices as branches (a prefix that several choices share is
one branch until they differ), each token at the position of its depth and seeing only its ancestors.
So the context runs once per question instead of once per choice, and a question is one forward pass.
Rows are then packed, longest first, into sequences of up to ``pack_len`` tokens (each question its own
attention block with positions from 0), batched by width, so batches carry little padding and little
attention across blocks; the output head runs on the scored positions only (a context's
last token and each continuation's tokens), not on the whole packed sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mai.model.transformer import Transformer
from mai.tokenizer import MaiTokenizer


@dataclass
class Row:
    """A context and the continuations scored after it; ``owners`` are their request indices.

    The row is fed as a token tree: the context once, then every continuation as a path of a trie, so
    tokens that several continuations share after the context (PIQA's two solutions often differ only
    at the end) are fed once too. The last token of a continuation is only predicted, never fed."""

    context: list[int]
    continuations: list[list[int]]
    owners: list[int]
    fed: list[int] = field(init=False)  # tokens fed, context first
    parents: list[int] = field(init=False)  # index of each fed token's parent (-1 for the first)
    sources: list[list[int]] = field(init=False)  # per continuation: the fed indices that predict it

    def __post_init__(self) -> None:
        self.fed = list(self.context)
        self.parents = list(range(-1, len(self.context) - 1))
        node: dict[tuple[int, ...], int] = {}
        self.sources = []
        for cont in self.continuations:
            src = [len(self.context) - 1]
            for i in range(1, len(cont)):
                key = tuple(cont[:i])
                if key not in node:
                    node[key] = len(self.fed)
                    self.fed.append(cont[i - 1])
                    self.parents.append(src[-1])
                src.append(node[key])
            self.sources.append(src)

    def __len__(self) -> int:
        return len(self.fed)


def tree_mask(parents: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Attention mask (each token sees its ancestors and itself) and positions (depth) of a token tree
    whose parents come before their children."""
    n = len(parents)
    mask = np.zeros((n, n), dtype=bool)
    depth = np.zeros(n, dtype=np.int64)
    for i, parent in enumerate(parents):
        if parent >= 0:
            mask[i] = mask[parent]
            depth[i] = depth[parent] + 1
        mask[i, i] = True
    return mask, depth


class _PackedMask:
    """Stands in for a KV cache: no past, but a per-row attention mask for the packed layout."""

    length = 0

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v

    def attn_mask(self, t: int) -> torch.Tensor:
        return self.mask

    def advance(self, t: int) -> None:
        pass


class LoglikScorer:
    """Scores (context, continuation) pairs: log P(continuation | context) and whether it is greedy."""

    def __init__(self, model: Transformer, tokenizer: MaiTokenizer, batch_tokens: int = 4096,
                 max_length: int | None = None, pack_len: int = 256) -> None:
        self.model, self.tok = model, tokenizer
        self.batch_tokens, self.pack_len = batch_tokens, pack_len
        self.max_length = max_length or model.cfg.max_seq_len
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
            out.append(Row(list(ctx[-max(1, self.max_length + 1 - longest):]), conts, owners))
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

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log-likelihood, is greedy) for each (context, continuation) pair, in order."""
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for batch, width in self.batches(self.bins(self.rows(pairs))):
            for row, scored in zip([r for b in batch for r in b], self._forward(batch, width), strict=True):
                for owner, value in zip(row.owners, scored, strict=True):
                    results[owner] = value
        return results

    def _forward(self, batch: list[list[Row]], width: int) -> list[list[tuple[float, bool]]]:
        b = len(batch)
        tokens = torch.full((b, width), self.tok.pad_id, dtype=torch.long)
        positions = torch.zeros((b, width), dtype=torch.long)
        mask = np.zeros((b, width, width), dtype=bool)
        mask[:, np.arange(width), np.arange(width)] = True  # padding sees itself: no empty softmax rows
        picks = []  # (row number, sequence, predicting position, target token, continuation index)
        n = 0
        for s, rows in enumerate(batch):
            at = 0
            for row in rows:
                block, depth = tree_mask(row.parents)
                span = slice(at, at + len(row))
                tokens[s, span] = torch.tensor(row.fed)
                positions[s, span] = torch.from_numpy(depth)
                mask[s, span, span] = block
                for k, (cont, src) in enumerate(zip(row.continuations, row.sources, strict=True)):
                    picks.extend((n, s, at + i, t, k) for i, t in zip(src, cont, strict=True))
                at += len(row)
                n += 1
        dev = self.device
        hidden = self.model.hidden(tokens.to(dev), cache=_PackedMask(torch.from_numpy(mask)[:, None].to(dev)),  # type: ignore[arg-type]
                                   positions=positions.to(dev))
        seq = torch.tensor([p[1] for p in picks])
        src = torch.tensor([p[2] for p in picks])
        target = torch.tensor([p[3] for p in picks])
        chosen = self.model.head(hidden[seq.to(dev), src.to(dev)]).float().cpu()
        logp = torch.log_softmax(chosen, dim=-1).gather(1, target[:, None])[:, 0]
        greedy = chosen.argmax(-1) == target
        out = [[(0.0, True) for _ in row.continuations] for rows in batch for row in rows]
        for (r, _, _, _, k), lp, g in zip(picks, logp.tolist(), greedy.tolist(), strict=True):
            ll, ok = out[r][k]
            out[r][k] = (ll + lp, ok and g)
        return out
