"""Log-likelihood of continuations given contexts: the one primitive every benchmark task is built on.

Tokenization follows lm-evaluation-harness exactly (``_encode_pair``): trailing spaces of the context move
to the continuation, the continuation's tokens are those of ``encode(context + continuation)`` after the
first ``len(encode(context))``, and an empty context becomes the BOS (else EOS) token.

The speed comes from sharing the context: all choices of a question are packed into ONE row,
``context + choice1 + choice2 + ...``, with each choice placed at the positions right after the context
and an attention mask that lets a choice see the context and itself only. So the context runs once per
question instead of once per choice, and a question is one forward pass. Rows are then packed, longest
first, into sequences of ``pack_len`` tokens (each question its own attention block with positions from 0),
so batches carry almost no padding; only the scored positions' logits become log-probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mai.model.transformer import Transformer
from mai.tokenizer import MaiTokenizer


@dataclass
class Row:
    """A context and the continuations packed after it; ``owners`` are their request indices."""

    context: list[int]
    continuations: list[list[int]]
    owners: list[int]

    def __len__(self) -> int:
        return len(self.context) + sum(len(c) - 1 for c in self.continuations)


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
                 max_length: int | None = None, pack_len: int = 512) -> None:
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
        rows: dict[tuple[int, ...], Row] = {}
        for i, (ctx, cont) in enumerate(self.encode_pairs(pairs)):
            if not cont:
                raise ValueError(f"request {i} has an empty continuation")
            key = tuple(ctx)
            row = rows.setdefault(key, Row(ctx, [], []))
            row.continuations.append(cont)
            row.owners.append(i)
        out = []
        for row in rows.values():  # keep positions within the model's context, as lm-eval truncates
            longest = max(len(c) for c in row.continuations)
            row.context = row.context[-max(1, self.max_length + 1 - longest):]
            out.append(row)
        return out

    def bins(self, rows: list[Row]) -> tuple[list[list[Row]], int]:
        """Pack rows (longest first) into sequences of one width: several questions share a sequence, each
        in its own attention block, so almost nothing is padding."""
        rows = sorted(rows, key=len, reverse=True)
        width = max([self.pack_len] + [len(r) for r in rows[:1]])
        bins: list[list[Row]] = []
        room: list[int] = []
        for row in rows:
            at = next((i for i, free in enumerate(room) if free >= len(row)), None)
            if at is None:
                bins.append([])
                room.append(width)
                at = len(bins) - 1
            bins[at].append(row)
            room[at] -= len(row)
        return bins, width

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log-likelihood, is greedy) for each (context, continuation) pair, in order."""
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        bins, width = self.bins(self.rows(pairs))
        per_batch = max(1, self.batch_tokens // width)
        for i in range(0, len(bins), per_batch):
            batch = bins[i:i + per_batch]
            for row, scored in zip([r for b in batch for r in b], self._forward(batch, width), strict=True):
                for owner, value in zip(row.owners, scored, strict=True):
                    results[owner] = value
        return results

    def _forward(self, batch: list[list[Row]], width: int) -> list[list[tuple[float, bool]]]:
        b = len(batch)
        tokens = torch.full((b, width), self.tok.pad_id, dtype=torch.long)
        positions = torch.zeros((b, width), dtype=torch.long)
        block = torch.full((b, width), -1, dtype=torch.long)  # which question; -1 = padding
        segment = torch.zeros((b, width), dtype=torch.long)  # 0 = context, k = continuation k
        picks = []  # (row number, sequence, predicting position, target token, continuation index)
        n = 0
        for s, rows in enumerate(batch):
            at = 0
            for q, row in enumerate(rows):
                c = len(row.context)
                tokens[s, at:at + c] = torch.tensor(row.context)
                positions[s, at:at + c] = torch.arange(c)
                block[s, at:at + len(row)] = q
                last_ctx = at + c - 1
                at += c
                for k, cont in enumerate(row.continuations, start=1):
                    body = cont[:-1]  # the last token is predicted, never fed
                    tokens[s, at:at + len(body)] = torch.tensor(body, dtype=torch.long)
                    positions[s, at:at + len(body)] = torch.arange(c, c + len(body))
                    segment[s, at:at + len(body)] = k
                    sources = [last_ctx] + list(range(at, at + len(body)))
                    picks.extend((n, s, src, t, k - 1) for src, t in zip(sources, cont, strict=True))
                    at += len(body)
                n += 1
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same_block = block[:, :, None] == block[:, None, :]
        seg_q, seg_k = segment[:, :, None], segment[:, None, :]
        mask = causal & same_block & ((seg_k == 0) | (seg_k == seg_q))
        dev = self.device
        logits = self.model(tokens.to(dev), cache=_PackedMask(mask[:, None].to(dev)),  # type: ignore[arg-type]
                            positions=positions.to(dev))
        seq = torch.tensor([p[1] for p in picks])
        src = torch.tensor([p[2] for p in picks])
        target = torch.tensor([p[3] for p in picks])
        chosen = logits[seq.to(dev), src.to(dev)].float().cpu()
        logp = torch.log_softmax(chosen, dim=-1).gather(1, target[:, None])[:, 0]
        greedy = chosen.argmax(-1) == target
        out = [[(0.0, True) for _ in row.continuations] for rows in batch for row in rows]
        for (r, _, _, _, k), lp, g in zip(picks, logp.tolist(), greedy.tolist(), strict=True):
            ll, ok = out[r][k]
            out[r][k] = (ll + lp, ok and g)
        return out
