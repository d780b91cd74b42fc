"""Data pipeline throughput: MAI vs datatrove, same steps, same input, same invocation.

Steps on both sides: language ID (py3langid, English ≥ 0.65 — datatrove's own LanguageFilter needs a
fastText model download, so it gets the same py3langid model through a LambdaFilter), Gopher repetition +
quality, C4 (without the terminal-punctuation line rule, as FineWeb), FineWeb (duplicate-line chars 0.1,
the paper's value), MinHash near-dedup (5-grams, 14 × 8) and tokenization with the same tokenizer.json.
Input: the default corpus (10,033 Wikipedia intros) as JSONL. One worker process on each side and one
tokenizer thread, so the numbers are per core. Wall time covers reading, every step and writing.

    python benchmarks/data_throughput.py [--rounds 3] [--limit N] 2>datatrove.log

Results go to stdout; datatrove logs its progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers' batch encoder: one thread on both sides
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_input(folder: Path, limit: int | None, shards: int) -> tuple[int, int]:
    from mai.data.corpus import default_corpus

    texts = list(default_corpus(limit))
    folder.mkdir(parents=True)
    for k in range(shards):
        with open(folder / f"part-{k}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(k, len(texts), shards):
                fh.write(json.dumps({"id": str(i), "text": texts[i]}) + "\n")
    return len(texts), sum(len(t.encode("utf-8")) for t in texts)


def run_mai(inp: Path, work: Path, tokenizer: Path) -> dict:
    from mai.data.pipeline import InputConfig, PipelineSpec, TokenizeConfig, run_pipeline

    spec = PipelineSpec(
        name="bench", work_dir=str(work / "work"), workers=1,
        inputs=[InputConfig(source="wiki", reader="jsonl", paths=[str(inp / "*.jsonl")])],
        steps=[{"type": "langid"}, {"type": "gopher_repetition"}, {"type": "gopher_quality"},
               {"type": "c4", "drop_lines_without_terminal_punct": False}, {"type": "fineweb"},
               {"type": "minhash_dedup"}],
        tokenize=TokenizeConfig(tokenizer=str(tokenizer), out_dir=str(work / "tokens"), val_fraction=0.0))
    start = time.perf_counter()
    report = run_pipeline(spec, log=None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "kept": report["documents"]["kept"],
            "tokens": report["tokens"]["wiki"]["train_tokens"]}


def _english(doc) -> bool:  # datatrove LambdaFilter: the same py3langid model and threshold as MAI
    from mai.data.pipeline.langid import detect

    lang, score = detect(doc.text)
    return lang == "en" and score >= 0.65


def run_datatrove(inp: Path, work: Path, tokenizer: Path) -> dict:
    import datatrove.utils.hashes.xxhash as dt_xxhash
    import xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LambdaFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    # xxhash 4 stopped hashing str; datatrove 0.10 still passes str. Encode first, as xxhash 3 did inside.
    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    w = str(work)
    stages = [
        [JsonlReader(str(inp)), LambdaFilter(_english), GopherRepetitionFilter(), GopherQualityFilter(),
         C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter(char_duplicates_ratio=0.1),
         JsonlWriter(f"{w}/filtered", compression=None), MinhashDedupSignature(f"{w}/sigs", config=cfg)],
        [MinhashDedupBuckets(f"{w}/sigs", f"{w}/buckets", config=cfg)],
        [MinhashDedupCluster(f"{w}/buckets", f"{w}/remove", config=cfg)],
        [JsonlReader(f"{w}/filtered"), MinhashDedupFilter(f"{w}/remove"),
         DocumentTokenizer(f"{w}/tokens", str(tokenizer / "tokenizer.json"), eos_token="<|eos|>",
                           shuffle_documents=False)],
    ]
    start = time.perf_counter()
    executor = None
    for i, stage in enumerate(stages):
        tasks = 14 if i == 1 else 1  # the bucket stage runs one task per band (datatrove's layout)
        executor = LocalPipelineExecutor(stage, tasks=tasks, workers=1, logging_dir=f"{w}/logs{i}",
                                         depends=executor)
    executor.run()  # runs the stages it depends on first
    seconds = time.perf_counter() - start
    stats = json.loads(Path(w, "logs3", "stats.json").read_text())
    tokens = next(s["stats"]["tokens"] for s in stats if "TOKENIZER" in s["name"])
    return {"seconds": seconds, "kept": tokens["n"], "tokens": tokens["total"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N corpus documents only")
    args = parser.parse_args()

    from mai.data.corpus import default_corpus
    from mai.tokenizer import train_tokenizer

    root = Path(tempfile.mkdtemp(prefix="mai-data-bench-"))
    try:
        n_docs, n_bytes = write_input(root / "input", args.limit, shards=4)
        train_tokenizer(default_corpus(2000), 8192, root / "tokenizer")
        results: dict[str, list[dict]] = {"mai": [], "datatrove": []}
        for r in range(args.rounds):
            for name, fn in (("mai", run_mai), ("datatrove", run_datatrove)):
                work = root / f"{name}-{r}"
                results[name].append(fn(root / "input", work, root / "tokenizer"))
                shutil.rmtree(work, ignore_errors=True)
                res = results[name][-1]
                print(f"round {r} {name:<9} {res['seconds']:7.2f} s  kept {res['kept']:,} documents, "
                      f"{res['tokens']:,} tokens", flush=True)
        print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"input {n_docs:,} documents, {n_bytes / 1e6:.2f} MB; one process per side")
        med = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
        print(f"{'':<10} {'median s':>9} {'docs/s/core':>12} {'MB/s/core':>10} {'kept':>7}")
        for name in ("mai", "datatrove"):
            sec = med[name]
            print(f"{name:<10} {sec:9.2f} {n_docs / sec:12,.0f} {n_bytes / 1e6 / sec:10.3f} "
                  f"{results[name][0]['kept']:>7}")
        print(f"ratio (MAI throughput / datatrove throughput): {med['datatrove'] / med['mai']:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
