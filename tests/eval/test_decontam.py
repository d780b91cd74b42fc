"""The contamination report counts exactly the evaluation examples planted in a training shard set."""

from __future__ import annotations

import json

from mai.data.corpus import default_corpus
from mai.data.prepare import prepare
from mai.eval.decontam import contamination, example_text
from mai.eval.tasks import get_task
from mai.interop import load_model


def test_planted_examples_are_found(tiny_dir, benchdata, tmp_path):
    examples = get_task("hellaswag").load(8)
    docs = list(default_corpus(limit=100))
    docs[10] += " " + example_text(examples[0])  # a leak inside a longer document
    docs.append(example_text(examples[3]).upper())  # normalisation: case does not hide it
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    tok = load_model(tiny_dir).tokenizer
    tok.save(tmp_path / "shards" / "tokenizer")
    prepare([src], tok, tmp_path / "shards", val_fraction=0.0, workers=1)
    report = contamination(["hellaswag"], [tmp_path / "shards"], limit=8)["hellaswag"]
    assert report == {"examples": 8, "contaminated": 2, "percent": 25.0, "ngram": 13}
