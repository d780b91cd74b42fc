"""``mai safety``: train the hidden-state content classifier of a model, and measure every safety layer."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from mai.errors import MaiError


def _load(model_path: str):
    from mai.infer.load import load_for_inference

    loaded, _ = load_for_inference(model_path, precision="fp32")
    return loaded


def cmd_train(args: argparse.Namespace) -> None:
    from mai.serve.safety_classifier import embed, feature_layers, model_identity, source_group, train
    from mai.serve.safety_eval import CATEGORIES, load_examples, measure

    examples = load_examples(args.data)
    loaded = _load(args.model)
    layers = feature_layers(loaded.cfg.n_layers)
    features = embed(loaded.model, loaded.tokenizer.encode, [ex.text for ex in examples], layers)
    groups = None if args.random_folds else [source_group(ex.note) for ex in examples]
    clf, oof = train(features, [ex.category for ex in examples], layers, groups, folds=args.folds)
    oof_sev = clf.severities_of_probabilities(oof)
    cv = measure(examples, oof_sev, "medium")
    clf.identity = model_identity(loaded.model)
    digest = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()
    clf.info = {"data": str(args.data), "data_sha256": digest,
                "model": args.model, "n": {lab: sum(ex.category == lab for ex in examples)
                                           for lab in (*CATEGORIES, "benign")},
                "cv_medium": {"recall": {c: cv.per_category[c].recall for c in CATEGORIES},
                              "precision": {c: cv.per_category[c].precision for c in CATEGORIES},
                              "benign_fpr": cv.benign_fpr}}
    out = Path(args.out)
    path = out if out.suffix == ".pt" else out / "safety_classifier.pt"
    clf.save(path)
    split = f"{args.folds} random folds" if groups is None else f"{len(set(groups))} sources left out in turn"
    print(f"trained on {len(examples)} examples of {args.data}; cross-validated ({split}) at medium: "
          + ", ".join(f"{c} recall {cv.per_category[c].recall:.2f}" for c in CATEGORIES)
          + f", benign FPR {cv.benign_fpr:.3f}")
    print(f"wrote {path}; serve it with `safety: {{classifier: {path}}}` in the catalog entry")


def _judge_run(args: argparse.Namespace, loaded, examples):
    """The judge's severities on every ``judge_every``-th example and its milliseconds for one request
    alone; ``--judge self`` asks the model under test through an engine (batched, as served)."""
    from concurrent.futures import ThreadPoolExecutor

    from mai.serve.judge import Judge, engine_complete, openai_complete
    from mai.serve.safety_eval import timed

    engine = None
    if args.judge == "self":
        from mai.infer.engine import Engine, token_texts

        tok = loaded.tokenizer
        engine = Engine(loaded.model, tok.decode, tok.stop_ids, max_batch=8,
                        token_texts=token_texts(tok.decode, loaded.cfg.vocab_size))
        engine.start()
        judge = Judge(engine_complete(engine, tok), "self")
    else:
        judge = Judge(openai_complete(args.judge), args.judge)
    try:
        subset = examples[::args.judge_every]
        _, ms = timed(lambda ex: judge.score(ex.text, ex.role), subset[:3])
        with ThreadPoolExecutor(8) as pool:
            sev = list(pool.map(lambda ex: judge.score(ex.text, ex.role), subset))
    finally:
        if engine is not None:
            engine.shutdown()
    return subset, sev, ms


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from mai.fileio import atomic_write_text
    from mai.serve.safety import SafetyFilter
    from mai.serve.safety_classifier import bind
    from mai.serve.safety_eval import combine, load_examples, measure, table, timed

    examples = load_examples(args.data)
    loaded = _load(args.model)
    bound = bind(args.classifier, loaded.model, loaded.tokenizer.encode, args.model)
    if bound is None:
        raise MaiError(f"no safety classifier for {args.model}: give --classifier FILE (`mai safety train`)")
    flt = SafetyFilter()
    rules, rules_ms = timed(lambda ex: flt.score(ex.text), examples)
    clf = bound.score_many([ex.text for ex in examples])
    _, clf_ms = timed(lambda ex: bound.score(ex.text), examples[:args.timing_sample])
    layers = {"rules": rules, "classifier": clf, "rules + classifier (default)": combine(rules, clf)}
    cost = {"rules": rules_ms, "classifier": clf_ms, "rules + classifier (default)": rules_ms + clf_ms}
    judged = None
    if args.judge:
        subset, judge_sev, judge_ms = _judge_run(args, loaded, examples)
        idx = list(range(0, len(examples), args.judge_every))
        judged = (subset, {"judge": judge_sev,
                           "rules + classifier": [layers["rules + classifier (default)"][i] for i in idx],
                           "rules + classifier + judge": combine([rules[i] for i in idx],
                                                                 [clf[i] for i in idx], judge_sev)})
        cost["judge"] = judge_ms
    lines = [f"{len(examples)} examples from {args.data}; model {args.model}; "
             f"CPU {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)"]
    for level in ("low", "medium"):
        lines += ["", f"Blocking at {level}:", "",
                  table({name: measure(examples, sev, level) for name, sev in layers.items()})]
        if judged is not None:
            subset, sevs = judged
            lines += ["", f"Judge subset (every {args.judge_every}th example, {len(subset)}), {level}:", "",
                      table({name: measure(subset, sev, level) for name, sev in sevs.items()})]
    lines += ["", "Milliseconds per request (one text alone): "
              + ", ".join(f"{name} {ms:.1f}" for name, ms in cost.items())]
    text = "\n".join(lines)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


def register(sub) -> None:
    p = sub.add_parser("safety", help="content safety: train the classifier, measure the layers")
    ss = p.add_subparsers(dest="safety_cmd", required=True)
    t = ss.add_parser("train", help="train the per-category classifier on a model's hidden states")
    t.add_argument("--model", required=True, help="the served model (.gguf, HF/mai folder, bundled:smollm2)")
    t.add_argument("--data", required=True, help="labelled JSONL: text, kind, category, note per line")
    t.add_argument("--out", required=True, help="a folder (writes safety_classifier.pt there) or a .pt path")
    t.add_argument("--random-folds", action="store_true",
                   help="random folds instead of one per source (the note before ';'), for the thresholds")
    t.add_argument("--folds", type=int, default=5, help="how many random folds (with --random-folds)")
    t.set_defaults(func=cmd_train)
    e = ss.add_parser("eval", help="precision, recall and benign false positives of each layer, and cost")
    e.add_argument("--model", required=True, help="the served model the classifier reads")
    e.add_argument("--data", required=True, help="labelled JSONL, e.g. mai/serve/data/safety/heldout.jsonl")
    e.add_argument("--classifier", help="a classifier file (default: the shipped one for SmolLM2)")
    e.add_argument("--judge", help="also measure a judge: 'self' (the model itself) or BASE_URL#MODEL")
    e.add_argument("--judge-every", type=int, default=1, help="judge every Nth example only (it is slow)")
    e.add_argument("--timing-sample", type=int, default=40, help="texts timed one by one for the cost")
    e.add_argument("--out", help="also write the tables to this file")
    e.set_defaults(func=cmd_eval)
