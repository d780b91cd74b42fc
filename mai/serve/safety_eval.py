"""Precision and recall of the content filter per category on a labelled set of texts.

The bundled set (``mai/serve/data/safety_eval.jsonl``, written for this project) holds one JSON object per
line, ``{"text": ..., "categories": ["violence"]}`` (``[]`` for safe text): 50 texts per category and
125 safe ones, many of them hard negatives ("kill the process", sex education, news about violence,
suicide prevention). A category counts as predicted when the filter blocks it at ``block_at``.

    python -m mai.serve.safety_eval [--data FILE] [--block-at low] [--judge BASE_URL#MODEL]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mai.counts import Score
from mai.errors import MaiError
from mai.serve.judge import Judge
from mai.serve.safety import CATEGORIES, SafetyFilter

DEFAULT_DATA = Path(__file__).parent / "data" / "safety_eval.jsonl"


def load_set(path: str | Path = DEFAULT_DATA) -> list[tuple[str, set[str]]]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            rows.append((str(item["text"]), set(item["categories"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MaiError(f"{path}:{n}: expected {{\"text\": ..., \"categories\": [...]}} ({exc})") from None
        unknown = rows[-1][1] - set(CATEGORIES)
        if unknown:
            raise MaiError(f"{path}:{n}: unknown categories {sorted(unknown)}; use {list(CATEGORIES)}")
    return rows


def evaluate(flt: SafetyFilter, rows: list[tuple[str, set[str]]], block_at: str = "low",
             judge: Judge | None = None) -> dict[str, Score]:
    """Per-category counts; ``"safe"`` scores the texts with no category (positive = nothing blocked)."""
    scores = {c: Score() for c in (*CATEGORIES, "safe")}
    for text, truth in rows:
        predicted = set(flt.check(text, block_at, judge).blocked)
        for c in CATEGORIES:
            s = scores[c]
            s.tp += c in predicted and c in truth
            s.fp += c in predicted and c not in truth
            s.fn += c not in predicted and c in truth
        clean, was_clean = not predicted, not truth
        scores["safe"].tp += clean and was_clean
        scores["safe"].fp += clean and not was_clean
        scores["safe"].fn += not clean and was_clean
    return scores


def table(scores: dict[str, Score]) -> str:
    lines = ["| category | precision | recall | TP | FP | FN |", "|---|---|---|---|---|---|"]
    for c, s in scores.items():
        lines.append(f"| {c} | {s.precision:.2f} | {s.recall:.2f} | {s.tp} | {s.fp} | {s.fn} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a JSONL file of labelled texts")
    parser.add_argument("--block-at", default="low", choices=["low", "medium", "high"])
    parser.add_argument("--no-classifier", action="store_true", help="rules only")
    parser.add_argument("--judge", help="also ask a judge model: BASE_URL#MODEL")
    args = parser.parse_args(argv)
    judge = None
    if args.judge:
        from mai.serve.judge import openai_complete

        judge = Judge(openai_complete(args.judge), args.judge)
    rows = load_set(args.data)
    scores = evaluate(SafetyFilter(use_classifier=not args.no_classifier), rows, args.block_at, judge)
    print(f"{len(rows)} texts from {args.data}, blocking at {args.block_at}"
          f"{', judge ' + args.judge if judge else ''}")
    print(table(scores))


if __name__ == "__main__":
    try:
        main()
    except MaiError as exc:
        raise SystemExit(f"error: {exc}") from None
