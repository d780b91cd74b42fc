"""Documents on disk → token shards: the readers and ``mai data prepare``.

Readers turn inputs into a stream of document texts: ``.txt`` (one document per file, or one per
blank-line-separated block), ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst`` (one JSON object per line, text in
a chosen field) and ``.parquet`` (a chosen string column, read batch by batch); directories are walked in
sorted order.

``prepare`` tokenizes the stream in a pool of processes (each encoding whole batches with the Rust batch
encoder), keeps the input order so the output does not depend on the worker count, sends each document to
train or val by a hash of its text, and writes both splits with :class:`mai.data.shards.ShardWriter`.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from tokenizers import Tokenizer

from mai.data.compressed import open_compressed
from mai.data.shards import ShardWriter, token_dtype
from mai.errors import MaiError
from mai.tokenizer import MaiTokenizer

_KINDS = {".txt": "text", ".txt.gz": "text", ".txt.zst": "text", ".jsonl": "jsonl", ".jsonl.gz": "jsonl",
          ".jsonl.zst": "jsonl", ".jsonl.zstd": "jsonl", ".parquet": "parquet"}
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    return next((kind for suffix, kind in _KINDS.items() if name.endswith(suffix)), None)


def _open_text(path: Path) -> TextIO:
    """Plain, gzip or zstd text (``mai data synth`` and ``mai data run`` write .jsonl.zst)."""
    return io.TextIOWrapper(open_compressed(str(path)), encoding="utf-8")


def _read_text(path: Path, paragraphs: bool, field: str) -> Iterator[str]:
    with _open_text(path) as f:
        text = f.read()
    for part in _PARAGRAPH_BREAK.split(text) if paragraphs else [text]:
        if part.strip():
            yield part.strip()


def _read_jsonl(path: Path, paragraphs: bool, field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MaiError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            text = row.get(field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise MaiError(f"{path}:{lineno}: no text field {field!r} (choose the field with --field)")
            if text.strip():
                yield text


def _read_parquet(path: Path, paragraphs: bool, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise MaiError(f"cannot read parquet file {path}: {exc}") from exc
    if field not in pf.schema_arrow.names:
        raise MaiError(f"{path} has no column {field!r} (it has: {', '.join(pf.schema_arrow.names)}); "
                       "choose the column with --field")
    for batch in pf.iter_batches(batch_size=4096, columns=[field]):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


_READERS = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet}


def input_files(inputs: Sequence[str | Path]) -> list[list[Path]]:
    """The readable files of each input (a file, or a directory walked in sorted order)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise MaiError("no inputs given")
    groups = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = item.rglob("*")
            files = sorted(p for p in found if p.is_file() and _kind(p) and not p.name.startswith("."))
            if not files:
                raise MaiError(f"input directory {item} holds no .txt, .jsonl(.gz/.zst) or .parquet files")
        elif item.is_file():
            if not _kind(item):
                raise MaiError(f"input {item}: unknown file type (use .txt, .jsonl, .jsonl.gz, .jsonl.zst "
                               "or .parquet)")
            files = [item]
        else:
            raise MaiError(f"input {item} does not exist")
        groups.append(files)
    return groups


def read_documents(inputs: Sequence[str | Path], field: str = "text",
                   paragraphs: bool = False) -> Iterator[str]:
    """Yield every document text of the inputs in a fixed order. Each input must hold a document."""
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    groups = input_files(inputs)  # checked now, before the first document is asked for

    def generate() -> Iterator[str]:
        for item, files in zip(inputs, groups, strict=True):
            count = 0
            for path in files:
                try:
                    for text in _READERS[_kind(path)](path, paragraphs, field):
                        count += 1
                        yield text
                except (OSError, EOFError, UnicodeDecodeError) as exc:
                    raise MaiError(f"cannot read {path}: {exc}") from exc
            if count == 0:
                raise MaiError(f"input {item} holds no documents")

    return generate()


def documents(inputs: Sequence[str | Path] | None, field: str = "text",
              paragraphs: bool = False) -> Iterator[str]:
    """The documents of the inputs, or of the default corpus when there are none."""
    if inputs:
        return read_documents(inputs, field, paragraphs)
    from mai.data.corpus import default_corpus, default_corpus_path

    default_corpus_path()  # fail now, not at the first document, when it is not installed
    return default_corpus()


# -- tokenization (runs in worker processes) ------------------------------------------------------------

_worker: tuple[MaiTokenizer, np.dtype, int] | None = None


def _encode(tokenizer: MaiTokenizer, dtype: np.dtype, val_cut: int,
            texts: list[str]) -> list[tuple[np.ndarray, int, int, bool]]:
    """(token ids, UTF-8 bytes, split hash, goes to val) for each text."""
    out = []
    for text, ids in zip(texts, tokenizer.encode_documents(texts), strict=True):
        raw = text.encode("utf-8")
        h = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
        out.append((np.asarray(ids, dtype=dtype), len(raw), h, h < val_cut))
    return out


def _init_worker(tokenizer_file: str, eos_token: str, dtype: np.dtype, val_cut: int) -> None:
    global _worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the pool is the parallelism
    _worker = (MaiTokenizer(Tokenizer.from_file(tokenizer_file), None, eos_token), dtype, val_cut)


def _encode_in_worker(texts: list[str]) -> list[tuple[np.ndarray, int, int, bool]]:
    assert _worker is not None
    return _encode(*_worker, texts)


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- prepare ----------------------------------------------------------------------------------------------

@dataclass
class PrepareSummary:
    out_dir: Path
    documents: int
    train_docs: int
    val_docs: int
    train_tokens: int  # EOS separators included
    val_tokens: int
    text_bytes: int
    seconds: float

    @property
    def bytes_per_token(self) -> float:
        content = self.train_tokens + self.val_tokens - self.documents
        return self.text_bytes / max(content, 1)

    def __str__(self) -> str:
        return "\n".join([
            f"dataset         {self.out_dir}",
            f"documents       {self.documents:,} (train {self.train_docs:,}, val {self.val_docs:,})",
            f"tokens          {self.train_tokens + self.val_tokens:,} (train {self.train_tokens:,}, "
            f"val {self.val_tokens:,}; one EOS per document included)",
            f"text            {self.text_bytes:,} bytes, {self.bytes_per_token:.2f} bytes per token",
            f"time            {self.seconds:.1f} s",
        ])


def _clear_dataset(out: Path) -> None:
    """Remove an earlier dataset's files (only the names this format uses) so the new one starts clean."""
    for path in out.glob("*"):
        if re.fullmatch(r"(train|val)_\d{5}\.(bin|idx)", path.name):
            path.unlink()
    (out / "meta.json").unlink(missing_ok=True)


def prepare(inputs: Sequence[str | Path] | None, tokenizer: MaiTokenizer, out_dir: str | Path,
            val_fraction: float = 0.005, workers: int = 2, field: str = "text", paragraphs: bool = False,
            shard_tokens: int = 2**24, batch_docs: int = 256) -> PrepareSummary:
    """Tokenize the inputs (or the default corpus) into train/val token shards in out_dir.

    A document goes to val when the 64-bit blake2b hash of its text falls in the lowest ``val_fraction``
    of the range; if none does, the train document with the lowest hash moves to val, so val is never empty.
    """
    if not 0 <= val_fraction < 1:
        raise MaiError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    if workers < 1 or batch_docs < 1:
        raise MaiError(f"workers and batch_docs must be positive, got {workers} and {batch_docs}")
    start = time.perf_counter()
    texts = documents(inputs, field, paragraphs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_dataset(out)
    dtype = token_dtype(tokenizer.vocab_size)
    val_cut = int(val_fraction * 2**64)
    n_docs = n_bytes = 0
    held: tuple[int, np.ndarray] | None = None  # lowest-hash train document, kept back for an empty val

    with contextlib.ExitStack() as stack:
        spec = {"vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                "tokenizer_fingerprint": tokenizer.fingerprint, "shard_tokens": shard_tokens}
        train = stack.enter_context(ShardWriter(out, "train", **spec))
        val = stack.enter_context(ShardWriter(out, "val", **spec))

        def consume(results: list[tuple[np.ndarray, int, int, bool]]) -> None:
            nonlocal n_docs, n_bytes, held
            for ids, nbytes, h, to_val in results:
                n_docs += 1
                n_bytes += nbytes
                if to_val:
                    val.add_document(ids)
                elif held is None or h < held[0]:
                    if held is not None:
                        train.add_document(held[1])
                    held = (h, ids)
                else:
                    train.add_document(ids)

        if workers == 1:
            for batch in _batches(texts, batch_docs):
                consume(_encode(tokenizer, dtype, val_cut, batch))
        else:
            # spawn, not fork: the parent may hold Rust worker threads. The tokenizer goes to the workers as
            # a file, so that a worker that cannot start is reported (BrokenProcessPool) rather than leaving
            # the parent blocked on a large pickle in the spawn pipe.
            tok_file = out / f".tokenizer.{os.getpid()}.json"
            tokenizer.tokenizer.save(str(tok_file))
            stack.callback(tok_file.unlink, missing_ok=True)
            pool = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(str(tok_file), tokenizer.eos_token, dtype, val_cut)))
            pending: collections.deque[Future] = collections.deque()
            try:
                for batch in _batches(texts, batch_docs):
                    pending.append(pool.submit(_encode_in_worker, batch))
                    if len(pending) >= 2 * workers:  # bounded read-ahead, results taken in input order
                        consume(pending.popleft().result())
                while pending:
                    consume(pending.popleft().result())
            except BrokenProcessPool as exc:
                raise MaiError("the tokenizer worker processes could not start or died; run with --workers 1 "
                               "(or from a script guarded by `if __name__ == '__main__':`)") from exc
            finally:
                for future in pending:
                    future.cancel()
        if held is not None:
            (val if val.n_docs == 0 else train).add_document(held[1])
        if train.n_docs == 0:
            raise MaiError(f"the inputs hold {n_docs} document(s): need at least 2 (train and val)")
    return PrepareSummary(out, n_docs, train.n_docs, val.n_docs, train.n_tokens, val.n_tokens, n_bytes,
                          time.perf_counter() - start)
