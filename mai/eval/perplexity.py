"""Perplexity and bits per byte of a model on raw text files or on a token-shard split.

Text is scored the way lm-evaluation-harness scores ``loglikelihood_rolling``: the document's tokens,
after one BOS (else EOS) token, are cut into disjoint windows of ``max_seq_len`` predictions. Bits per
byte divides the total negative log-likelihood by ln 2 and by the UTF-8 size of the text, which makes
models with different tokenizers comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mai.errors import MaiError
from mai.model.transformer import Transformer
from mai.tokenizer import MaiTokenizer


@dataclass
class Perplexity:
    nll: float  # total negative log-likelihood, nats
    tokens: int
    bytes: int
    documents: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / max(1, self.tokens))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(1, self.bytes)

    def as_dict(self) -> dict[str, float]:
        return {"perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte, "tokens": self.tokens,
                "bytes": self.bytes, "documents": self.documents}


def text_documents(paths: Iterable[str | Path]) -> Iterator[str]:
    """Each .txt file is one document; each line of a .jsonl file with a "text" field is one."""
    import json

    for p in map(Path, paths):
        if not p.is_file():
            raise MaiError(f"no text file at {p}")
        if p.suffix == ".jsonl":
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        yield json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise MaiError(f"{p}:{n}: expected a JSON object with a text field ({exc})") from None
        else:
            yield p.read_text(encoding="utf-8")


@torch.no_grad()
def score_tokens(model: Transformer, docs: Iterable[tuple[list[int], int]], prefix_id: int,
                 max_seq_len: int, limit: int | None = None) -> Perplexity:
    """Total NLL of each token list (with its byte count) after ``prefix_id``, in disjoint windows."""
    device = next(model.parameters()).device
    total = Perplexity(0.0, 0, 0, 0)
    for ids, nbytes in docs:
        if limit is not None and total.documents >= limit:
            break
        seq = torch.tensor([prefix_id, *ids], dtype=torch.long)
        for start in range(0, len(ids), max_seq_len):
            window = seq[start:start + max_seq_len + 1].to(device)
            logits = model(window[None, :-1]).float()[0]
            total.nll -= torch.log_softmax(logits, -1).gather(1, window[1:, None]).sum().item()
        total.tokens += len(ids)
        total.bytes += nbytes
        total.documents += 1
    if total.tokens == 0:
        raise MaiError("no tokens to score: the texts are empty")
    return total


def text_perplexity(model: Transformer, tok: MaiTokenizer, texts: Iterable[str], max_seq_len: int,
                    limit: int | None = None) -> Perplexity:
    docs = ((tok.encode(t), len(t.encode("utf-8"))) for t in texts if t)
    return score_tokens(model, docs, tok.bos_id if tok.bos_id is not None else tok.eos_id, max_seq_len, limit)


def shard_perplexity(model: Transformer, tok: MaiTokenizer, path: str | Path, split: str, max_seq_len: int,
                     limit: int | None = None) -> Perplexity:
    """Held-out documents of a token-shard directory (made with this model's tokenizer)."""
    from mai.data.shards import TokenDataset

    ds = TokenDataset(path, split)
    if ds.vocab_size > model.cfg.vocab_size:
        raise MaiError(f"{path} was tokenized with a vocabulary of {ds.vocab_size}, larger than the model's "
                       f"{model.cfg.vocab_size}: it was made with another tokenizer")

    def docs() -> Iterator[tuple[list[int], int]]:
        for i in range(len(ds.doc_ends)):
            ids = ds.document(i).tolist()
            yield ids, len(tok.decode(ids, skip_special=False).encode("utf-8"))
    return score_tokens(model, docs(), tok.eos_id, max_seq_len, limit)
