"""Exact and MinHash near-dedup across the whole run (not only within a shard), checked against exact
Jaccard similarity and against datasketch's MinHash on the same texts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from mai.data.pipeline import InputConfig, PipelineSpec, run_pipeline
from mai.data.pipeline.files import read_jsonl
from mai.data.pipeline.minhash import MinHasher, jaccard
from mai.data.pipeline.textstats import normalize


def edit(text: str, fraction: float, seed: int) -> str:
    """Replace a fraction of the words with new ones."""
    rng = random.Random(seed)
    ws = text.split()
    for i in rng.sample(range(len(ws)), int(len(ws) * fraction)):
        ws[i] = f"zq{rng.randrange(10**6)}"
    return " ".join(ws)


def test_signature_estimates_jaccard_like_datasketch(wiki: list[str]) -> None:
    from datasketch import MinHash

    hasher = MinHasher()
    errors, peer_errors = [], []
    for i, frac in enumerate([0.0, 0.02, 0.05, 0.1, 0.2, 0.4]):
        a, b = wiki[i], edit(wiki[i], frac, i)
        true = jaccard(a, b)
        ours = float(np.mean(hasher.signature(a) == hasher.signature(b)))
        peer = []
        for t in (a, b):
            m = MinHash(num_perm=112, seed=1)
            ws = normalize(t).split()
            m.update_batch([" ".join(ws[j:j + 5]).encode() for j in range(len(ws) - 4)])
            peer.append(m)
        errors.append(abs(ours - true))
        peer_errors.append(abs(peer[0].jaccard(peer[1]) - true))
    assert max(errors) < 0.15 and np.mean(errors) < 0.07
    assert np.mean(errors) < np.mean(peer_errors) + 0.05  # as accurate as the peer library


def test_lsh_catches_near_duplicates_and_spares_different_texts(wiki: list[str]) -> None:
    hasher = MinHasher()

    def hit(a: str, b: str) -> bool:
        return bool(set(hasher.band_keys(a)) & set(hasher.band_keys(b)))

    near = [hit(t, edit(t, 0.02, k)) for k, t in enumerate(wiki[:40])]  # Jaccard ≈ 0.85-0.9
    far = [hit(a, b) for a, b in zip(wiki[:100], wiki[100:200], strict=True)]
    assert sum(near) >= 36 and sum(far) == 0


def test_dedup_spans_shards_and_keeps_the_first(tmp_path: Path, wiki: list[str]) -> None:
    shard_docs = [wiki[0:20], wiki[20:40], wiki[40:60]]
    shard_docs[1].append(wiki[3])  # exact copy of a shard-0 document
    near = wiki[5].split()
    near[len(near) // 2] = "zebra"
    shard_docs[2].append(" ".join(near))  # near copy of a shard-0 document (one word differs)
    shard_docs[2].append(wiki[21] + "  ")  # copy of a shard-1 document (whitespace differs)
    for i, docs in enumerate(shard_docs):
        (tmp_path / f"{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    spec = PipelineSpec(name="d", work_dir=str(tmp_path / "w"), workers=2,
                        inputs=[InputConfig(source="s", reader="jsonl", paths=[str(tmp_path / "*.jsonl")])],
                        steps=[{"type": "exact_dedup"}, {"type": "minhash_dedup"}])
    report = run_pipeline(spec, log=None)
    assert report["documents"] == {"input": 63, "kept": 60, "removed": 3, "failed": 0}
    assert report["removed_by_step"] == {"exact_dedup": {"exact_duplicate": 2},
                                         "minhash_dedup": {"near_duplicate": 1}}
    kept = [r["text"] for p in sorted(Path(report["output_dir"]).rglob("*.zst")) for r in read_jsonl(p)]
    assert sorted(kept) == sorted(wiki[0:60])  # the first of each group survives (the copies differ)


def test_decontam_removes_every_leak_and_allows_only_what_it_is_told(tmp_path: Path, wiki: list[str]) -> None:
    """A question that leaked into 12 documents is removed from all 12 (GPT-3's silent "more than 10
    documents is boilerplate" rule removed none); allowing is explicit and listed in the report."""
    boiler = "this article is licensed under the creative commons attribution share alike license v4"
    leak = "the answer to the riddle of the sphinx is a man who crawls walks and then uses a cane"
    (tmp_path / "eval.jsonl").write_text(json.dumps({"q": boiler}) + "\n" + json.dumps({"q": leak}) + "\n")
    docs = [t + "\n\n" + boiler.capitalize() + "." for t in wiki[:12]]  # boilerplate in 12 documents
    docs += [wiki[20 + i] + " Indeed " + (leak.upper() if i % 2 else leak) + "." for i in range(12)]  # in 12
    docs += wiki[40:43]
    for i in range(3):
        (tmp_path / f"{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[i::3]))
    inputs = [InputConfig(source="s", reader="jsonl", paths=[str(tmp_path / "*.jsonl")])]

    def run(work: str, **settings: object) -> dict:
        step = {"type": "decontam", "files": [str(tmp_path / "eval.jsonl")], **settings}
        return run_pipeline(PipelineSpec(name="d", work_dir=str(tmp_path / work), workers=2, inputs=inputs,
                                         steps=[step]), log=None)

    assert run("w")["removed_by_step"] == {"decontam": {"eval_13gram_overlap": 24}}
    by_phrase = run("phrase", allow=[boiler.upper()])
    assert by_phrase["removed_by_step"] == {"decontam": {"eval_13gram_overlap": 12}}
    by_count = run("count", allow_ngrams_over=12)  # the leak's n-grams are in 12 documents: not allowed
    assert by_count["removed_by_step"] == {"decontam": {"eval_13gram_overlap": 24}}
    by_count = run("count11", allow_ngrams_over=11)  # now both are "common": both allowed, and listed
    assert by_count["documents"]["kept"] == 27 and "decontam" not in by_count["removed_by_step"]
    allowed = by_count["steps"]["decontam"]
    assert allowed["allowed_ngrams"] == 2 + 6 and {r["documents"] for r in allowed["allowed"]} == {12}
    assert {"ngram": " ".join(boiler.split()[:13]), "documents": 12} in allowed["allowed"]
