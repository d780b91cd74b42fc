"""Answer checks of the generative tasks equal lm-evaluation-harness's own functions on the same inputs,
and known values where lm-eval's metric needs the network (SQuAD, pass@k)."""

from __future__ import annotations

import math

import pytest
import yaml

from mai.eval import answers
from mai.eval.lm_eval_tasks import lm_eval_tasks_dir

GSM8K_COMPLETIONS = [
    " She has 16 - 3 - 4 = 9 eggs. 9 * 2 = 18. The answer is 18.\n\n",
    " The answer is $1,250.",  # strict: no match ("$" is not in its number class); flexible: "$1,250."
    " 5 + 4 = 9 toys. The answer is 9",  # no final character after the number: strict fails
    " It costs $18.00 in total.",  # flexible: the last number-like span
    " I do not know.",
    " The answer is -3.5. Then 7 more.",
    " #### 42",
]
GSM8K_REFERENCES = ["18", "1250", "9", "18", "5", "-3.5", "42"]


def lm_eval_gsm8k(completion: str, reference: str) -> dict[str, float]:
    """lm-eval's gsm8k_cot filters (from its YAML) and exact_match, run as lm-eval runs them."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    cfg = yaml.safe_load((lm_eval_tasks_dir() / "gsm8k" / "gsm8k-cot.yaml").read_text())
    metric = {k: v for k, v in cfg["metric_list"][0].items()
              if k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
    out = {}
    for flt in cfg["filter_list"]:
        regex = flt["filter"][0]
        got = RegexFilter(regex["regex_pattern"], regex.get("group_select", 0)).apply([[completion]], [{}])
        out[flt["name"].replace("-", "_")] = float(
            exact_match_hf_evaluate([list(got)[0][0]], [reference], **metric)["exact_match"])
    return out


@pytest.mark.parametrize(("completion", "reference"), list(zip(GSM8K_COMPLETIONS, GSM8K_REFERENCES,
                                                                          strict=True)))
def test_gsm8k_extraction_equals_lm_eval(completion, reference):
    pytest.importorskip("lm_eval")
    assert answers.gsm8k_scores(completion, reference) == lm_eval_gsm8k(completion, reference)


def test_gsm8k_known_cases():
    assert answers.gsm8k_scores(GSM8K_COMPLETIONS[0], "18") == {"strict_match": 1.0, "flexible_extract": 1.0}
    assert answers.gsm8k_scores(GSM8K_COMPLETIONS[2], "9") == {"strict_match": 0.0, "flexible_extract": 1.0}
    assert answers.gsm8k_scores(GSM8K_COMPLETIONS[4], "5") == {"strict_match": 0.0, "flexible_extract": 0.0}


MATH_ANSWERS = ["\\frac12", "10\\text{ inches}", "\\$5.00", "100,000", "0,1",
                "\\left( 3, \\frac{\\pi}{2} \\right)", "x = 5", "\\sqrt2", "\\sqrt[3]8", "90^\\circ",
                "\\boxed{7}", "\\text{(C)}", "5 \\text{ cm}^2", "2\\pi cm", "\\dfrac{3}{4}", "\\mbox{and} 4",
                "\\textbf{12}", "a 6 ft"]


@pytest.fixture(scope="module")
def minerva():
    pytest.importorskip("lm_eval")
    pytest.importorskip("antlr4")
    pytest.importorskip("math_verify")
    from lm_eval.tasks.minerva_math import utils

    return utils


@pytest.mark.parametrize("answer", MATH_ANSWERS)
def test_math_normalisation_equals_lm_eval(minerva, answer):
    assert answers.normalize_math_answer(answer) == minerva.normalize_final_answer(answer)


def test_math_gold_answers_equal_lm_eval(minerva, benchdata):
    """lm-eval's ``process_docs`` gold (normalised last box of the solution) for 100 MATH-500 problems."""
    from mai.eval.gen_tasks import minerva_math_500

    for ex in minerva_math_500(100):
        want = minerva.normalize_final_answer(minerva.remove_boxed(minerva.last_boxed_only_string(
            ex.doc["solution"])))
        assert ex.reference == want


@pytest.mark.parametrize(("completion", "gold"), [
    (" So $x=2$.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    (" Final Answer: The final answer is $0.5$. I hope it is correct.", "\\frac{1}{2}"),  # sympy: equal
    (" Final Answer: The final answer is $\\frac12$.", "\\frac{1}{2}"),  # no "I hope": still found
    (" Final Answer: The final answer is $(3,\\frac{\\pi}{2})$. I hope it is correct.",
     "\\left(3,\\frac{\\pi}{2}\\right)"),
    (" The answer is 7.", "7"),  # no answer line
    (" Final Answer: The final answer is $8$. I hope it is correct.", "7"),
])
def test_math_exact_match_equals_lm_eval(minerva, completion, gold):
    ours = answers.math_scores(completion, answers.normalize_math_answer(gold))["exact_match"]
    theirs = minerva.process_results({"answer": minerva.normalize_final_answer(gold), "solution": gold},
                                     [completion])["exact_match"]
    assert ours == theirs


DROP_CASES = [
    ("2", [("2",)]), ("two", [("2",)]), ("2.0 field goals", [("2",)]), ("the Lions", [("Lions",)]),
    ("swedish and german", [("swedish",), ("german", "swedish")]), ("Matt Prater", [("Prater",)]),
    ("", [("3",)]), ("1998", [("", ), ("1998",)]), ("Bucs-Lions", [("Lions",)]),
]


@pytest.mark.parametrize(("prediction", "golds"), DROP_CASES)
def test_drop_scores_equal_lm_eval(prediction, golds):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks.drop.utils import process_results

    theirs = process_results({"answers": golds}, [prediction])
    assert answers.drop_scores(prediction, golds) == {"exact_match": theirs["em"], "f1": theirs["f1"]}


def test_squad_known_values():
    """The official SQuAD v1.1 evaluation's normalisation and token F1."""
    assert answers.squad_scores("The Denver Broncos!", ["Denver Broncos"]) == {"exact_match": 1.0, "f1": 1.0}
    got = answers.squad_scores("Saint Bernadette", ["Saint Bernadette Soubirous", "Lourdes"])
    assert got["exact_match"] == 0.0 and got["f1"] == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))
    assert answers.squad_scores("nothing here", ["23 years", "23"]) == {"exact_match": 0.0, "f1": 0.0}


@pytest.mark.parametrize(("n", "c"), [(1, 0), (1, 1), (10, 0), (10, 3), (20, 19), (200, 7)])
def test_pass_at_k_is_the_unbiased_estimator(n, c):
    for k in (1, 5, 10, 100):
        if k <= n:
            want = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert answers.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
    assert answers.pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_a_slow_equivalence_check_is_cut_off_and_counts_as_different(monkeypatch):
    import time

    monkeypatch.setattr(answers, "_sympy_equal", lambda a, b: time.sleep(30) or True)
    monkeypatch.setattr(answers, "MATH_TIMEOUT_SECONDS", 0.2)
    assert answers.math_equivalent("x", "y") is False  # interrupted, not True after 30 s
