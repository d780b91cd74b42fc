"""The token shard format: round trips, document index, validation, and no half shard after a kill."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mai.data.shards import ShardWriter, TokenDataset, unigram_entropy
from mai.errors import MaiError


def _docs(vocab: int, n: int, seed: int = 0, low: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, vocab, size=int(rng.integers(0, 40))) for _ in range(n)]


def _write(path: Path, docs: list[np.ndarray], vocab: int = 1000, split: str = "train", **kw) -> None:
    with ShardWriter(path, split, vocab, eos_id=1, **kw) as w:
        for d in docs:
            w.add_document(d)


@pytest.mark.parametrize(("vocab", "dtype"), [(1000, "<u2"), (65536, "<u2"), (70000, "<u4")])
def test_round_trip_across_shards(tmp_path: Path, vocab: int, dtype: str) -> None:
    docs = _docs(vocab, 60)
    docs[3] = np.array([vocab - 1, 0, 65535 % vocab])  # the largest id fits the dtype
    _write(tmp_path, docs, vocab, tokenizer_fingerprint="abc", shard_tokens=100)
    stream = np.concatenate([np.append(d, 1) for d in docs])
    ds = TokenDataset(tmp_path, "train", verify=True)
    assert (ds.n_tokens, ds.n_docs, ds.dtype, ds.vocab_size, ds.eos_id) == (len(stream), 60, np.dtype(dtype),
                                                                           vocab, 1)
    assert ds.tokenizer_fingerprint == "abc"
    bins = sorted(tmp_path.glob("train_*.bin"))
    assert len(bins) > 5 and bins[0].name == "train_00000.bin"
    raw = np.concatenate([np.fromfile(b, dtype=dtype) for b in bins])  # raw little-endian, nothing else
    assert np.array_equal(raw, stream)
    for start, length in [(0, len(stream)), (95, 30), (len(stream) - 1, 1), (7, 0)]:
        assert np.array_equal(ds.get(start, length), stream[start:start + length])
    for i, d in enumerate(docs):
        assert np.array_equal(ds.document(i), d)
    assert np.array_equal(ds.doc_ends, np.cumsum([len(d) + 1 for d in docs]))
    with pytest.raises(IndexError):
        ds.get(len(stream) - 3, 4)


def test_index_files_and_meta(tmp_path: Path) -> None:
    docs = [np.arange(2, 2 + n) for n in (5, 3, 120, 4)]
    _write(tmp_path, docs, shard_tokens=12)
    meta = json.loads((tmp_path / "meta.json").read_text())
    shards = meta["splits"]["train"]["shards"]
    # shards end on document boundaries; a document longer than shard_tokens gets a shard of its own
    assert [(s["n_tokens"], s["n_docs"]) for s in shards] == [(10, 2), (121, 1), (5, 1)]
    assert list(np.fromfile(tmp_path / "train_00000.idx", dtype="<u8")) == [6, 10]
    assert all(s["checksum"].startswith("blake2b-128:") for s in shards)
    assert (meta["format"], meta["version"], meta["dtype"], meta["eos_id"]) == ("mai-tokens", 1, "uint16", 1)


def test_splits_share_meta_and_rewriting_one_keeps_the_other(tmp_path: Path) -> None:
    _write(tmp_path, _docs(1000, 30), shard_tokens=50)
    _write(tmp_path, _docs(1000, 5, seed=1), split="val")
    _write(tmp_path, _docs(1000, 4, seed=2), shard_tokens=50)  # rewrite train, smaller
    assert TokenDataset(tmp_path, "val").n_docs == 5
    assert TokenDataset(tmp_path, "train").n_docs == 4
    assert len(list(tmp_path.glob("train_*.bin"))) == len(json.loads(
        (tmp_path / "meta.json").read_text())["splits"]["train"]["shards"])  # old shards removed
    with pytest.raises(MaiError, match="vocab_size=1000.*2000"):
        ShardWriter(tmp_path, "val", 2000, eos_id=1)


def test_writer_rejects_bad_documents(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "train", 100, eos_id=1) as w:
        for bad in ([5, 100], [-1], [[1, 2]], [0.5]):
            with pytest.raises(MaiError):
                w.add_document(bad)
        w.add_document([])
    assert TokenDataset(tmp_path, "train").get(0, 1).tolist() == [1]
    with pytest.raises(MaiError, match="eos_id"):
        ShardWriter(tmp_path, "val", 100, eos_id=100)


def test_damaged_datasets_are_named(tmp_path: Path) -> None:
    with pytest.raises(MaiError, match="does not exist"):
        TokenDataset(tmp_path / "none", "train")
    with pytest.raises(MaiError, match="meta.json is missing"):
        TokenDataset(tmp_path, "train")
    _write(tmp_path, _docs(1000, 40), shard_tokens=200)
    with pytest.raises(MaiError, match="no split 'val'"):
        TokenDataset(tmp_path, "val")
    shard = tmp_path / "train_00001.bin"
    good = shard.read_bytes()

    shard.write_bytes(good[:-2])  # truncated by one token
    with pytest.raises(MaiError, match="train_00001.bin has .* truncated"):
        TokenDataset(tmp_path, "train")

    flipped = bytearray(good)
    flipped[10] ^= 0x01  # a changed token that still looks plausible
    shard.write_bytes(bytes(flipped))
    TokenDataset(tmp_path, "train")
    with pytest.raises(MaiError, match="train_00001.bin fails its checksum"):
        TokenDataset(tmp_path, "train", verify=True)

    shard.write_bytes(b"\xff\xff" * (len(good) // 2))  # ids >= vocab_size
    with pytest.raises(MaiError, match="train_00001.bin holds token id 65535 >= vocab_size 1000"):
        TokenDataset(tmp_path, "train")

    shard.unlink()
    with pytest.raises(MaiError, match="train_00001.bin listed in meta.json is missing"):
        TokenDataset(tmp_path, "train")

    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(MaiError, match="meta.json"):
        TokenDataset(tmp_path, "train")


def test_failed_writer_leaves_split_incomplete(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "train", 1000, eos_id=1, shard_tokens=50) as w:
        for d in _docs(1000, 20):
            w.add_document(d)
        raise RuntimeError("boom")
    with pytest.raises(MaiError, match="incomplete"):
        TokenDataset(tmp_path, "train")
    assert not list(tmp_path.glob(".*.tmp"))


def test_killed_writer_lists_only_complete_shards(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from mai.data.shards import ShardWriter
        w = ShardWriter({str(tmp_path)!r}, "train", 1000, eos_id=1, shard_tokens=100)
        for i in range(1000):
            w.add_document(np.full(30, 2 + i % 900))
            if i == 17:  # mid-way through a shard
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    split = meta["splits"]["train"]
    assert split["complete"] is False
    assert [s["n_docs"] for s in split["shards"]] == [3] * 5  # 18 documents written, 15 in finished shards
    assert len(list(tmp_path.glob(".train_*.tmp"))) == 1  # the half shard, never listed
    with pytest.raises(MaiError, match="incomplete"):
        TokenDataset(tmp_path, "train")
    for s in split["shards"]:  # every listed shard is whole
        assert (tmp_path / s["file"]).stat().st_size == 2 * s["n_tokens"]
    _write(tmp_path, _docs(1000, 3), shard_tokens=100)  # a new writer clears the leftovers
    assert not list(tmp_path.glob(".*.tmp"))
    assert TokenDataset(tmp_path, "train").n_docs == 3


def test_unigram_entropy_matches_a_direct_count(tmp_path: Path) -> None:
    docs = _docs(50, 200)
    _write(tmp_path, docs, vocab=50, shard_tokens=500)
    counts = Counter(np.concatenate([np.append(d, 1) for d in docs]).tolist())
    total = sum(counts.values())
    expected = -sum(c / total * math.log(c / total) for c in counts.values())
    assert unigram_entropy(TokenDataset(tmp_path, "train")) == pytest.approx(expected, rel=1e-12)
    _write(tmp_path / "uniform", [np.arange(2, 10)] * 3, vocab=10)  # 9 equally common ids
    assert unigram_entropy(TokenDataset(tmp_path / "uniform", "train")) == pytest.approx(math.log(9))
