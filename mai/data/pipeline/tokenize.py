"""The pipeline's last step: kept documents → one token dataset per source, for ``mai train`` to mix.

Shards are encoded in parallel (the tokenizer's Rust batch encoder) into
``WORK/tokens/TOKENIZER/SHARD.npz``, with a marker each; then, per source and in shard order,
:class:`mai.data.shards.ShardWriter` packs them into ``OUT/SOURCE`` with a train and a val split. A document
goes to val when the 64-bit blake2b hash of its text falls below ``val_fraction`` (the rule of
``mai data prepare``; at least one document when the fraction is positive). Packing is cheap and always
redone, so it needs no resume of its own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mai.data.pipeline.files import is_done, mark_done, read_jsonl
from mai.fileio import atomic_path

if TYPE_CHECKING:
    from mai.data.pipeline.executor import MapShards, PipelineRun

BATCH = 256


def text_hash64(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def tokens_dir(run: PipelineRun, fingerprint: str) -> Path:
    """Encoded shards, per tokenizer: switching tokenizers never reuses ids made by another one."""
    return run.work / "tokens" / fingerprint[:16]


def _encode_in_worker(task: tuple[dict[str, Any], str]) -> str:
    from mai.data.pipeline.executor import run_for
    from mai.tokenizer import load_tokenizer

    spec_json, key = task
    run = run_for(spec_json)
    tok = load_tokenizer(run.spec.tokenize.tokenizer)  # type: ignore[union-attr]
    ids: list[np.ndarray] = []
    lens, hashes = [], []
    batch: list[str] = []

    def flush() -> None:
        for seq in tok.encode_documents(batch):
            ids.append(np.asarray(seq, dtype=np.uint32))
            lens.append(len(seq))
        batch.clear()

    for row in read_jsonl(run.docs_path(len(run.stages) - 1, key)):
        batch.append(row["text"])
        hashes.append(text_hash64(row["text"]))
        if len(batch) == BATCH:
            flush()
    flush()
    folder = tokens_dir(run, tok.fingerprint)
    with atomic_path(folder / f"{key}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, ids=np.concatenate(ids) if ids else np.zeros(0, np.uint32),
                 lens=np.asarray(lens, dtype=np.int64), hashes=np.asarray(hashes, dtype=np.uint64))
    mark_done(folder, key)
    return key


def tokenize_outputs(run: PipelineRun, map_shards: MapShards) -> dict[str, Any]:
    """Encode every shard not yet encoded, then pack each source; returns token counts per source."""
    from mai.data.shards import ShardWriter
    from mai.tokenizer import load_tokenizer

    cfg = run.spec.tokenize
    assert cfg is not None
    tok = load_tokenizer(cfg.tokenizer)
    folder = tokens_dir(run, tok.fingerprint)
    pending = [s.key for s in run.shards if not is_done(folder, s.key)]
    list(map_shards(_encode_in_worker, [(run.spec_json, k) for k in pending]))
    cut = int(cfg.val_fraction * 2**64)
    result: dict[str, Any] = {}
    for source in dict.fromkeys(inp.source for inp in run.spec.inputs):
        parts = [np.load(folder / f"{s.key}.npz") for s in run.shards if run.source(s.key) == source]
        hashes = np.concatenate([p["hashes"] for p in parts]) if parts else np.zeros(0, np.uint64)
        is_val = hashes < np.uint64(cut) if cut else np.zeros(hashes.size, bool)
        if cut and hashes.size > 1 and not is_val.any():
            is_val[int(hashes.argmin())] = True
        out = Path(cfg.out_dir) / source
        splits = ["train", "val"] if is_val.any() else ["train"]
        writers = {split: ShardWriter(out, split, tok.vocab_size, tok.eos_id, tok.fingerprint,
                                      cfg.shard_tokens) for split in splits}
        n = 0
        for part in parts:
            ends = np.cumsum(part["lens"])
            for end, length in zip(ends, part["lens"], strict=True):
                writers["val" if is_val[n] else "train"].add_document(part["ids"][end - length:end])
                n += 1
        for w in writers.values():
            w.close()
        result[source] = {"dir": str(out), "docs": n,
                          "train_tokens": writers["train"].n_tokens,
                          "val_tokens": writers["val"].n_tokens if "val" in writers else 0}
    return result
