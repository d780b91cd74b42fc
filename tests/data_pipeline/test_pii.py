"""The phone rule measured on a labelled set with real text (tests/data_pipeline/pii_eval.py): it must not
fire on years, dates, ISBNs, registry ranges or numbers in prose, and must find phone numbers of every
region in international format and most in national format."""

from __future__ import annotations

import pytest

from mai.data.pipeline.document import Document
from mai.data.pipeline.registry import build_steps

pytest.importorskip("phonenumbers")


def test_phone_rule_precision_and_recall() -> None:
    from tests.data_pipeline.pii_eval import evaluate, labelled_set, total

    scores = evaluate()
    sizes = {group: len(cases) for group, cases in labelled_set().items()}
    assert sizes["Wikipedia sentences (real)"] > 500 and sizes["IANA pages (real)"] > 100
    for group in ("written negatives", "IANA pages (real)", "Wikipedia sentences (real)"):
        assert scores[group].fp == 0, group
    assert scores["international"].recall >= 0.97 and scores["national"].recall >= 0.8
    assert total(scores).precision >= 0.99


def test_the_years_of_the_issue_stay() -> None:
    doc = Document("d", "In 1914 1918 1939 the borders moved; call 020 7946 0958 or (555) 123-4567.", {})
    build_steps([{"type": "pii"}])[0](doc)
    assert doc.text == "In 1914 1918 1939 the borders moved; call <phone> or <phone>."
