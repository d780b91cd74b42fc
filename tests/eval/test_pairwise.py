"""Pairwise LLM-as-judge: the verdict parser, the win rate and its bootstrap interval on fixed verdicts, and
the whole loop against a real `mai serve` of SmolLM2 through the official openai client.

A 135M judge gives poor verdicts; the server tests check the mechanics (both orders asked with the answers
swapped, every judgment accounted for as win, loss, tie or malformed, malformed replies named, the
interval around the estimate), not the judge's taste.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from mai.eval.pairwise import (
    VERDICT_SCHEMA,
    Judge,
    Judgment,
    bootstrap_interval,
    judge_pairs,
    parse_verdict,
    summarize,
)


@pytest.mark.parametrize(("reply", "verdict"), [
    ("Answer 1 is more precise. [[1]]", "first"),
    ("I prefer the second one.\n\n[[ 2 ]]", "second"),
    ("Both are fine [[TIE]]", "tie"),
    ("[[B]]", "second"),
    ("2", "second"),
    ("Tie.", "tie"),
    ("verdict: answer 1", "first"),
    ("[[1]] ... on reflection [[1]]", "first"),
    ('{"reason": "it names the city", "verdict": "1"}', "first"),
    ('{"reason": "", "verdict": "tie"}', "tie"),
])
def test_parser_reads_verdicts(reply, verdict):
    assert parse_verdict(reply) == (verdict, "")


@pytest.mark.parametrize(("reply", "why"), [
    ("", "no verdict"),
    ("Answer 1 is good but answer 2 is better", "no verdict"),
    ("[[1]] no wait [[2]]", "contradictory verdicts ['first', 'second']"),
    ("[[3]]", "no verdict"),
    ("12", "no verdict"),
    ("[[", "no verdict"),
    ('{"reason": "cut off', "no verdict"),
    ('{"verdict": "3"}', "no verdict"),
])
def test_parser_refuses_to_guess(reply, why):
    verdict, problem = parse_verdict(reply)
    assert verdict is None and why in problem


def judgments(pairs):
    """Judgments from (verdict order 0, verdict order 1) per prompt."""
    return [Judgment(i, order, "", v, "" if v else "bad")
            for i, p in enumerate(pairs) for order, v in enumerate(p)]


def test_outcomes_follow_the_position_swap():
    # order 0 shows A first, so "first" is a win of A; order 1 shows B first, so "first" is a loss of A
    j = judgments([("first", "second"), ("first", "first"), ("tie", None)])
    assert [x.outcome for x in j] == ["win", "win", "win", "loss", "tie", None]
    s = summarize(j, 3)
    assert (s["wins"], s["losses"], s["ties"], s["malformed"], s["valid"]) == (3, 1, 1, 1, 5)
    assert s["win_rate"] == pytest.approx(3.5 / 5)
    assert s["order_agreement"] == pytest.approx(1 / 2)  # prompt 0 agrees (A wins both), prompt 1 does not
    assert s["first_position_rate"] == pytest.approx(3 / 4)
    assert s["malformed_judgments"] == [{"prompt": 2, "order": "B first", "why": "bad", "reply": ""}]


def test_interval_on_fixed_verdicts():
    all_a = summarize(judgments([("first", "second")] * 20), 20)
    assert all_a["win_rate"] == 1.0 and (all_a["ci_low"], all_a["ci_high"]) == (1.0, 1.0)
    mixed = [("first", "second")] * 12 + [("second", "first")] * 8  # A wins 12 prompts of 20
    s = summarize(judgments(mixed), 20)
    assert s["win_rate"] == pytest.approx(0.6)
    # the bootstrap over 20 prompts of a 0.6 rate: about ±0.21 (binomial sd 0.11 per prompt mean)
    assert 0.35 < s["ci_low"] < 0.5 < 0.7 < s["ci_high"] < 0.85
    wide = bootstrap_interval([[1.0, 1.0]] * 3 + [[0.0, 0.0]] * 2)
    narrow = bootstrap_interval([[1.0, 1.0]] * 300 + [[0.0, 0.0]] * 200)
    assert wide[1] - wide[0] > 3 * (narrow[1] - narrow[0])
    assert bootstrap_interval([[1.0, 0.0]] * 5) == (0.5, 0.5)  # pairs resample together
    assert summarize([], 2)["malformed"] == 0


@pytest.fixture(scope="module")
def judge_url(smollm_gguf):
    pytest.importorskip("uvicorn")
    from mai.serve.catalog import Catalog, KeyEntry, Limits, ModelEntry, SafetyConfig
    from tests.serve.conftest import serve_in_thread

    path = str(smollm_gguf)
    # a grader reads the answers, it serves no user: the content-safety classifier is not its business
    catalog = Catalog(models=[ModelEntry("judge", path, max_batch=8, max_seq_len=1024,
                                         safety=SafetyConfig(classifier="off"))],
                      api_keys=[KeyEntry("sk-judge")], limits=Limits(max_prompt_tokens=900, max_tokens=128))
    yield from serve_in_thread(catalog)


PROMPTS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?"]
GOOD = ["The capital of France is Paris.", "Red is a primary colour.", "2 + 2 = 4."]
BAD = ["I like turtles.", "Bananas.", "The answer is 5."]


@pytest.mark.slow
def test_real_judge_asks_both_orders_and_accounts_for_every_judgment(judge_url):
    """SmolLM2 as the judge, its verdict constrained to JSON: every one of the six is well-formed."""
    asked = []
    judge = Judge(f"{judge_url}/v1", "judge", "sk-judge", max_tokens=80, workers=2, structured=True)
    ask = judge.ask
    judge.ask = lambda messages: (asked.append(messages[-1]["content"]), ask(messages))[1]  # record, then ask
    result = judge_pairs(judge, PROMPTS, GOOD, BAD)
    assert sorted((j.prompt_index, j.order) for j in result) == [(i, o) for i in range(3) for o in (0, 1)]
    for i, prompt in enumerate(PROMPTS):
        shown = [text for text in asked if prompt in text]
        assert len(shown) == 2
        firsts = {text.index(GOOD[i]) < text.index(BAD[i]) for text in shown}
        assert firsts == {True, False}  # once each answer first
    s = summarize(result, 3)
    assert s["wins"] + s["losses"] + s["ties"] == 6 and s["malformed"] == 0, s
    for j in result:
        jsonschema.validate(json.loads(j.reply), VERDICT_SCHEMA)
    assert s["ci_low"] <= s["win_rate"] <= s["ci_high"]
    json.dumps(s)  # the report is plain JSON


@pytest.mark.slow
def test_real_judge_cut_short_gives_named_malformed_verdicts(judge_url):
    # one token cannot hold "[[1]]" (SmolLM2's tokenizer splits it): every reply is malformed, none crash
    judge = Judge(f"{judge_url}/v1", "judge", "sk-judge", max_tokens=1, workers=2)
    s = summarize(judge_pairs(judge, PROMPTS[:2], GOOD[:2], BAD[:2]), 2)
    named = {(m["prompt"], m["order"]) for m in s["malformed_judgments"]}
    assert s["malformed"] == len(named) and s["malformed"] + s["valid"] == 4
    assert s["malformed"] >= 3  # a lone "1" or "2" token would still parse, and may happen once


@pytest.mark.slow
def test_unreachable_judge_is_counted_not_raised():
    from mai.serve.child import free_port

    judge = Judge(f"http://127.0.0.1:{free_port()}/v1", "judge", max_tokens=8, workers=1)
    judge.client = judge.client.with_options(max_retries=0, timeout=5)
    s = summarize(judge_pairs(judge, PROMPTS[:1], GOOD[:1], BAD[:1]), 1)
    assert s["malformed"] == 2 and "the judge request failed: APIConnectionError" in \
        s["malformed_judgments"][0]["why"]


def test_answers_must_match_the_prompts(tmp_path):
    from mai.errors import MaiError
    from mai.eval.judge_answers import read_answers

    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"prompt": "other", "answer": "x"}) + "\n")
    with pytest.raises(MaiError, match="a.jsonl:1: this answer is to another prompt"):
        read_answers(f, ["What?"])
    f.write_text(json.dumps({"answer": "x"}) + "\n")
    with pytest.raises(MaiError, match="has 1 answers for 2 prompts"):
        read_answers(f, ["What?", "Why?"])
