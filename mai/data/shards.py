"""The on-disk token format that ``mai data prepare`` writes and ``mai train`` reads.

A dataset directory holds, per split, shards ``{split}_{i:05d}.bin`` (raw little-endian uint16 tokens when
the vocabulary has at most 65,536 entries, else uint32; REFERENCES §4) with a ``{split}_{i:05d}.idx`` of
little-endian uint64 cumulative document ends, plus one ``meta.json`` that lists every shard with its token
count, document count and checksum. Every file is written to a temporary name and renamed into place, and a
shard enters ``meta.json`` only after both of its files are complete, so a killed writer never leaves a
half shard listed. Each document is followed by the EOS token, and shards end on document boundaries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mai.errors import MaiError
from mai.fileio import atomic_path, atomic_write_text

FORMAT = "mai-tokens"
VERSION = 1
CHECKSUM = "blake2b-128"
_HASH_BYTES = 16
_VERIFY_CHUNK = 1 << 24  # bytes hashed at a time when verifying


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds every id of a vocabulary of up to 65,536 tokens; larger ones need uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MaiError(f"cannot read {path}: {exc}; the token dataset is damaged, prepare it again") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("splits"), dict):
        raise MaiError(f"{path} is not a mai token dataset description (format {FORMAT!r} expected)")
    if meta.get("version") != VERSION:
        raise MaiError(f"{path} has format version {meta.get('version')}, this mai reads version {VERSION}")
    return meta


class ShardWriter:
    """Write one split of a token dataset, shard by shard; ``close()`` marks the split complete.

    Opening a writer starts the split afresh (its earlier shards are removed); the other split of the
    directory is kept, provided it was made with the same vocabulary, EOS id and tokenizer.
    """

    def __init__(self, out_dir: str | Path, split: str, vocab_size: int, eos_id: int,
                 tokenizer_fingerprint: str | None = None, shard_tokens: int = 2**24) -> None:
        if not split or not split.isidentifier():
            raise MaiError(f"split name {split!r} must be a plain word such as 'train' or 'val'")
        if vocab_size < 1 or not 0 <= eos_id < vocab_size:
            raise MaiError(f"eos_id {eos_id} must lie in [0, vocab_size={vocab_size})")
        if shard_tokens < 1:
            raise MaiError(f"shard_tokens must be positive, got {shard_tokens}")
        self.dir = Path(out_dir)
        self.split = split
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.dtype = token_dtype(vocab_size)
        self.shard_tokens = shard_tokens
        self._header = {"format": FORMAT, "version": VERSION, "dtype": self.dtype.name,
                        "vocab_size": vocab_size, "eos_id": eos_id, "tokenizer": tokenizer_fingerprint}
        self._shards: list[dict[str, Any]] = []
        self.n_tokens = 0  # written so far, EOS included
        self.n_docs = 0
        self._file: Any = None
        self._closed = False
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start_split()

    # -- meta.json ---------------------------------------------------------------------------------
    def _meta_path(self) -> Path:
        return self.dir / "meta.json"

    def _write_meta(self, complete: bool) -> None:
        """Merge this split into meta.json as it is on disk now (a writer of the other split may share it)."""
        path = self._meta_path()
        meta = _read_meta(path) if path.exists() else {**self._header, "splits": {}}
        meta["splits"][self.split] = {"complete": complete, "shards": self._shards}
        atomic_write_text(path, json.dumps(meta, indent=1) + "\n")

    def _start_split(self) -> None:
        path = self._meta_path()
        if path.exists():
            meta = _read_meta(path)
            for key, value in self._header.items():
                if meta.get(key) != value:
                    raise MaiError(f"{path} was written with {key}={meta.get(key)!r}, this writer has "
                                   f"{value!r}; write to another directory or delete this one")
            for old in meta["splits"].get(self.split, {}).get("shards", []):
                (self.dir / old["file"]).unlink(missing_ok=True)
                (self.dir / old["index"]).unlink(missing_ok=True)
        for stale in self.dir.glob(f".{self.split}_*.tmp"):
            stale.unlink()
        self._write_meta(complete=False)

    # -- writing -----------------------------------------------------------------------------------
    def _open_shard(self) -> None:
        name = f"{self.split}_{len(self._shards):05d}"
        self._bin = self.dir / f"{name}.bin"
        self._tmp = self.dir / f".{name}.bin.{os.getpid()}.tmp"
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - stays open across add_document calls
        self._hash = hashlib.blake2b(digest_size=_HASH_BYTES)
        self._ends: list[int] = []
        self._n = 0

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document's token ids followed by EOS."""
        if self._closed:
            raise MaiError("ShardWriter is closed")
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise MaiError(f"a document must be a flat sequence of integer token ids, got shape {arr.shape} "
                           f"dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.vocab_size):
            raise MaiError(f"token ids must lie in [0, {self.vocab_size}), "
                           f"got {int(arr.min())}..{int(arr.max())}")
        if self._file is not None and self._n + arr.size + 1 > self.shard_tokens:
            self._finish_shard()
        if self._file is None:
            self._open_shard()
        data = np.append(arr.astype(self.dtype), np.array([self.eos_id], dtype=self.dtype)).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._n += arr.size + 1
        self._ends.append(self._n)
        self.n_tokens += arr.size + 1
        self.n_docs += 1

    def _finish_shard(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        index = self._bin.with_suffix(".idx")
        with atomic_path(index) as tmp:
            np.asarray(self._ends, dtype="<u8").tofile(tmp)
        os.replace(self._tmp, self._bin)
        self._shards.append({"file": self._bin.name, "index": index.name, "n_tokens": self._n,
                             "n_docs": len(self._ends), "checksum": f"{CHECKSUM}:{self._hash.hexdigest()}"})
        self._write_meta(complete=False)

    def close(self) -> None:
        """Finish the last shard and mark the split complete in meta.json. Safe to call twice."""
        if self._closed:
            return
        if self._file is not None:
            self._finish_shard()
        self._write_meta(complete=True)
        self._closed = True

    def abort(self) -> None:
        """Drop the shard in progress; the split stays marked incomplete."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class TokenDataset:
    """All shards of one split, memory-mapped read-only and addressed as one long token array."""

    def __init__(self, path: str | Path, split: str = "train", verify: bool = False) -> None:
        self.dir = Path(path)
        self.split = split
        if not self.dir.is_dir():
            raise MaiError(f"token dataset {self.dir} does not exist (make one with `mai data prepare`)")
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            raise MaiError(f"{meta_path} is missing: {self.dir} is not a token dataset "
                           "(make one with `mai data prepare`)")
        meta = _read_meta(meta_path)
        if split not in meta["splits"]:
            have = ", ".join(meta["splits"]) or "none"
            raise MaiError(f"{self.dir} has no split {split!r} (it has: {have})")
        info = meta["splits"][split]
        if not info.get("complete"):
            raise MaiError(f"split {split!r} of {self.dir} is incomplete (its writer stopped before "
                           "finishing); prepare the data again")
        try:
            self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
            self.vocab_size = int(meta["vocab_size"])
            self.eos_id = int(meta["eos_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MaiError(f"{meta_path} is damaged ({exc}); prepare the data again") from exc
        self.tokenizer_fingerprint: str | None = meta.get("tokenizer")
        self._tokens: list[np.memmap] = []
        self._ends: list[np.ndarray] = []
        for shard in info["shards"]:
            self._open_shard(shard, verify)
        sizes = [len(t) for t in self._tokens]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.n_tokens = int(self._starts[-1])
        self.n_docs = sum(len(e) for e in self._ends)

    def _open_shard(self, shard: dict[str, Any], verify: bool) -> None:
        bin_path, idx_path = self.dir / shard["file"], self.dir / shard["index"]
        for p in (bin_path, idx_path):
            if not p.exists():
                raise MaiError(f"shard file {p} listed in meta.json is missing; prepare the data again")
        n_tokens, n_docs = int(shard["n_tokens"]), int(shard["n_docs"])
        size = bin_path.stat().st_size
        if size != n_tokens * self.dtype.itemsize:
            raise MaiError(f"{bin_path} has {size} bytes, meta.json says {n_tokens} tokens "
                           f"of {self.dtype.name}: the shard is truncated or damaged")
        size = idx_path.stat().st_size
        if size != n_docs * 8:
            raise MaiError(f"{idx_path} has {size} bytes, expected {n_docs} uint64 offsets")
        if verify:
            digest = hashlib.blake2b(digest_size=_HASH_BYTES)
            with open(bin_path, "rb") as f:
                while chunk := f.read(_VERIFY_CHUNK):
                    digest.update(chunk)
            if shard.get("checksum") != f"{CHECKSUM}:{digest.hexdigest()}":
                raise MaiError(f"{bin_path} fails its checksum: the shard is damaged; prepare the data again")
        tokens = np.memmap(bin_path, dtype=self.dtype, mode="r") if n_tokens else np.zeros(0, self.dtype)
        ends = np.fromfile(idx_path, dtype="<u8")
        if n_docs and (int(ends[-1]) != n_tokens or np.any(np.diff(ends.astype(np.int64)) <= 0)):
            raise MaiError(f"{idx_path} does not describe {bin_path.name}: its document ends are damaged")
        if n_tokens:  # a cheap range check: a strided sample of at most ~64k tokens, plus the last one
            sample = np.append(tokens[:: max(1, n_tokens // 65536)], tokens[-1])
            top = int(sample.max())
            if top >= self.vocab_size:
                raise MaiError(f"{bin_path} holds token id {top} >= vocab_size {self.vocab_size}: "
                               "the shard is damaged or from another tokenizer")
        self._tokens.append(tokens)
        self._ends.append(ends)

    def __len__(self) -> int:
        return self.n_tokens

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the split, read across shard boundaries."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) out of range for {self.n_tokens} tokens")
        out = np.empty(length, dtype=self.dtype)
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        done = 0
        while done < length:
            offset = start + done - int(self._starts[shard])
            take = min(length - done, len(self._tokens[shard]) - offset)
            out[done:done + take] = self._tokens[shard][offset:offset + take]
            done += take
            shard += 1
        return out

    @functools.cached_property
    def doc_ends(self) -> np.ndarray:
        """Global end offset (exclusive, after the EOS) of every document, as int64."""
        parts = [e.astype(np.int64) + s for e, s in zip(self._ends, self._starts[:-1], strict=True)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def document(self, i: int) -> np.ndarray:
        """The token ids of document ``i`` without its EOS."""
        ends = self.doc_ends
        start = int(ends[i - 1]) if i > 0 else 0
        return self.get(start, int(ends[i]) - start - 1)

    def token_counts(self) -> np.ndarray:
        """How often each token id occurs in the split (length vocab_size)."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for tokens in self._tokens:
            for lo in range(0, len(tokens), _VERIFY_CHUNK):
                counts += np.bincount(tokens[lo:lo + _VERIFY_CHUNK], minlength=self.vocab_size)
        return counts


def unigram_entropy(ds: TokenDataset) -> float:
    """Entropy of the split's token frequencies in nats per token: the loss of the best context-free model."""
    counts = ds.token_counts()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
