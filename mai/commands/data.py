"""``mai tokenizer train`` and ``mai data …``: documents → filtered, deduplicated, tokenized shards."""

from __future__ import annotations

import argparse
import sys


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from mai.data.prepare import documents
    from mai.tokenizer import train_tokenizer

    tok = train_tokenizer(documents(args.input, args.field, args.paragraphs), args.vocab_size, args.out)
    print(f"tokenizer  {args.out} (vocab {tok.vocab_size:,}, eos id {tok.eos_id}, "
          f"sha256 {tok.fingerprint[:16]})")


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mai.data.prepare import documents, prepare
    from mai.tokenizer import load_tokenizer, train_tokenizer

    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        texts = documents(args.input, args.field, args.paragraphs)
        tok_dir = Path(args.out) / "tokenizer"
        print(f"training a {args.vocab_size:,}-token tokenizer on the inputs into {tok_dir}", file=sys.stderr)
        tok = train_tokenizer(texts, args.vocab_size, tok_dir)
    print(prepare(args.input, tok, args.out, val_fraction=args.val_fraction, workers=args.workers,
                  field=args.field, paragraphs=args.paragraphs))


def cmd_data_run(args: argparse.Namespace) -> None:
    from mai.data.pipeline import load_spec, run_pipeline

    overrides = list(args.set)
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    if args.executor is not None:
        overrides.append(f"executor={args.executor}")
    report = run_pipeline(load_spec(args.pipeline, overrides), update=args.update)
    print(f"report     {report['work_dir']}/report.json")


def cmd_data_inspect(args: argparse.Namespace) -> None:
    from mai.data.pipeline.inspect import inspect_work_dir

    print(inspect_work_dir(args.work_dir, args.step, args.sample, args.seed, args.chars))


def cmd_data_quality_train(args: argparse.Namespace) -> None:
    from mai.data.pipeline.quality import load_quality_config, train_quality

    cfg = load_quality_config(args.config, args.set)
    report = train_quality(cfg)
    print(f"labelled   {report['labelled']:,} of {report['documents']:,} documents "
          f"({report['good']:,} scored >= {report['threshold']} by the teacher)")
    print(f"held out   {report['held_out']:,} documents: accuracy {report['held_out_accuracy']:.3f} "
          f"(majority class {report['majority_baseline']:.3f})")
    print(f"model      {cfg.out_dir}/model.npz")


def cmd_data_synth(args: argparse.Namespace) -> None:
    from mai.data.pipeline.synth.config import load_synth_config
    from mai.data.pipeline.synth.run import run_synth

    report = run_synth(load_synth_config(args.config, args.set))
    print(f"documents  {report['output_dir']}")


def _add_input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", action="extend", default=None, metavar="PATH",
                   help=".txt / .jsonl(.gz/.zst) / .parquet files or directories (default: Wikipedia)")
    p.add_argument("--field", default="text", help="the JSONL field / Parquet column holding the text")
    p.add_argument("--paragraphs", action="store_true",
                   help="split .txt files into one document per blank-line-separated block")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of a newly trained tokenizer")


def _add_set_flag(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a setting, e.g. {example}")


def register(sub) -> None:
    tokenizer = sub.add_parser("tokenizer", help="tokenizers").add_subparsers(dest="action", required=True)
    tok_train = tokenizer.add_parser("train", help="train a byte-level BPE tokenizer on documents")
    _add_input_flags(tok_train)
    tok_train.add_argument("--out", default="data_cache/tokenizer", help="directory for tokenizer.json")
    tok_train.set_defaults(func=cmd_tokenizer_train)

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="action", required=True)
    prep = data.add_parser("prepare", help="tokenize documents into train/val token shards")
    _add_input_flags(prep)
    prep.add_argument("--tokenizer", default=None,
                      help="a tokenizer directory or tokenizer.json (default: train one into OUT/tokenizer)")
    prep.add_argument("--out", default="data_cache/default", help="the dataset directory to write")
    prep.add_argument("--val-fraction", type=float, default=0.005, help="share of documents for validation")
    prep.add_argument("--workers", type=int, default=2, help="tokenizer processes")
    prep.set_defaults(func=cmd_data_prepare)

    drun = data.add_parser("run", help="run a data pipeline (filters, dedup, tokenize) from a YAML file")
    drun.add_argument("pipeline", help="the pipeline YAML (see configs/data/)")
    _add_set_flag(drun, "workers=4 or work_dir=runs/x")
    drun.add_argument("--workers", type=int, default=None, help="parallel shard workers")
    drun.add_argument("--executor", choices=["local", "ray"], default=None, help="where shards run")
    drun.add_argument("--update", action="store_true",
                      help="the input files changed since WORK_DIR was made: process the added and changed "
                           "files, withdraw the removed files' documents")
    drun.set_defaults(func=cmd_data_run)

    insp = data.add_parser("inspect", help="a run's report, or a sample of what one step removed and why")
    insp.add_argument("work_dir", help="the pipeline's work_dir")
    insp.add_argument("--step", default=None, help="a step label (e.g. c4); without it: the report")
    insp.add_argument("--sample", type=int, default=5, help="documents to show")
    insp.add_argument("--seed", type=int, default=0, help="which sample (the same seed, the same documents)")
    insp.add_argument("--chars", type=int, default=600, help="characters of each text to show")
    insp.set_defaults(func=cmd_data_inspect)

    quality = data.add_parser("quality", help="model-based quality filter")
    quality = quality.add_subparsers(dest="quality_action", required=True)
    qtrain = quality.add_parser("train", help="teacher-labelled documents → a fastText quality classifier")
    qtrain.add_argument("config", help="YAML: inputs, out_dir, teacher {base_url, model, …}, threshold")
    _add_set_flag(qtrain, "teacher.base_url=http://127.0.0.1:8000/v1")
    qtrain.set_defaults(func=cmd_data_quality_train)

    synth = data.add_parser("synth", help="generate documents with a teacher model (OpenAI-compatible API)")
    synth.add_argument("config", help="the synth YAML (see configs/data/synth.yaml)")
    _add_set_flag(synth, "teacher.base_url=http://127.0.0.1:8000/v1")
    synth.set_defaults(func=cmd_data_synth)
