"""Answer extraction and scoring of generated text, as lm-evaluation-harness 0.4 scores its generative tasks.

Written for mai from the behaviour of these lm-eval files (the tests run lm-eval's own functions beside
these on the same inputs):

- GSM8K (``tasks/gsm8k/gsm8k-cot.yaml``): ``strict-match`` takes the first ``The answer is N.``,
  ``flexible-extract`` the last number-like span; both then compared by ``exact_match`` (``api/metrics.py``)
  after removing ``,``, ``$``, a ``#### `` prefix and a final ``.``, ignoring case.
- MATH (``tasks/minerva_math/utils.py``, after Lewkowycz et al. 2022, appendix D): the answer after
  ``Final Answer: The final answer is``, normalised (units, ``\\text``, ``\\boxed``, shorthand ``\\frac12``);
  equal when the normalised strings are, or when sympy parses both LaTeX strings and their difference
  simplifies to 0.
- SQuAD: the official v1.1 script's normalisation (lower case, no punctuation, no articles) and token F1.
- DROP (``tasks/drop/utils.py``): answers as bags of normalised tokens, numbers canonicalised, predicted
  and gold spans aligned one to one for the best F1, rounded to 2 decimals.
- pass@k: the unbiased estimator of Chen et al. 2021 (Codex), ``1 - C(n-c, k) / C(n, k)``.
"""

from __future__ import annotations

import re
import signal
import string
import threading
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

INVALID = "[invalid]"
GSM8K_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORE = (",", r"\$", "(?s).*#### ", r"\.$")


# --- GSM8K ------------------------------------------------------------------------------------------
def regex_extract(text: str, pattern: re.Pattern[str], which: int) -> str:
    """lm-eval's ``regex`` filter: the ``which``-th match (its first non-empty group), else "[invalid]"."""
    found = pattern.findall(text)
    if not found:
        return INVALID
    match = found[which]
    if isinstance(match, tuple):
        match = next((m for m in match if m), INVALID)
    return match.strip()


def exact_match(prediction: str, reference: str, ignore: Sequence[str] = (),
                ignore_case: bool = False) -> float:
    """lm-eval's ``exact_match``: both strings with the ``ignore`` regexes removed, then compared."""
    for pattern in ignore:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    return float(prediction == reference)


def gsm8k_scores(completion: str, reference: str) -> dict[str, float]:
    """``strict_match`` and ``flexible_extract`` of gsm8k_cot for one completion."""
    strict = regex_extract(completion, GSM8K_STRICT, 0)
    flexible = regex_extract(completion, GSM8K_FLEXIBLE, -1)
    return {"strict_match": exact_match(strict, reference, GSM8K_IGNORE, True),
            "flexible_extract": exact_match(flexible, reference, GSM8K_IGNORE, True)}


# --- MATH (Minerva) ---------------------------------------------------------------------------------
MATH_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""),
                      ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","),
                      ("\\text{m}", "\\text{}")]
MATH_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
                "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
                "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
                "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
                r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots"]
MATH_TIMEOUT_SECONDS = 5.0  # per sympy comparison, as lm-eval
FINAL_ANSWER = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")


def final_answer(completion: str) -> str:
    """The text after "Final Answer: The final answer is" (the Minerva prompt's answer line)."""
    match = FINAL_ANSWER.search(completion + "I hope it is correct.")
    return match.group(1).strip() if match else "[invalidanswer]"


def _strip_units(answer: str) -> str:
    """Unit words: first where whitespace still delimits them (so ``\\left`` keeps its "ft"), after the
    substitutions also where glued on, outside LaTeX command names."""
    for word in filter(str.isalpha, MATH_REMOVED):
        answer = re.sub(rf"(?<!\\)\b{word}\b", "", answer)
    for before, after in MATH_SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expr in MATH_REMOVED:
        if expr.isalpha():
            parts = re.split(r"(\\[a-zA-Z]+)", answer)
            answer = "".join(p if i % 2 else p.replace(expr, "") for i, p in enumerate(parts))
        else:
            answer = answer.replace(expr, "")
    return answer


def normalize_math_answer(answer: str) -> str:
    """Minerva's answer normalisation (as lm-eval's ``normalize_final_answer``)."""
    answer = _strip_units(answer.split("=")[-1])
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for command in ("text", "textbf", "overline"):
        answer = re.sub(rf"(\\{command}\{{)(.*?)(\}})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", answer)
    answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", answer).replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", answer):  # 100,000 (not a tuple such as 0,1)
        answer = answer.replace(",", "")
    return answer


def last_boxed(solution: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\boxed x``, ``\\fbox{...}``) of a solution."""
    if "\\boxed " in solution:
        return solution.split("\\boxed ")[-1].split("$")[0]
    start = solution.rfind("\\boxed")
    if start < 0 and (start := solution.rfind("\\fbox")) < 0:
        return None
    depth = 0
    for i in range(start, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        if solution[i] == "}" and depth == 0:
            inner = solution[start:i + 1]
            return inner[inner.index("{") + 1:-1]
    return None


def _within(seconds: float, fn: Callable[[], bool]) -> bool:
    """``fn()``, interrupted by TimeoutError after ``seconds`` (on the main thread: sympy's simplify can run
    for ever on a long generated answer; lm-eval allows 5 s too)."""
    if threading.current_thread() is not threading.main_thread():
        return fn()

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sympy_equal(a: str, b: str) -> bool:
    from sympy import simplify
    from sympy.parsing.latex import parse_latex

    return bool(simplify(parse_latex(a) - parse_latex(b)) == 0)


def math_equivalent(a: str, b: str) -> bool:
    """Normalised answers equal as strings, or as sympy expressions of their LaTeX (when parseable)."""
    if a and a == b:
        return True
    try:
        return _within(MATH_TIMEOUT_SECONDS, lambda: _sympy_equal(a, b))
    except Exception:  # noqa: BLE001  (unparseable, too slow, or antlr4 missing: not shown equal)
        return False


def math_scores(completion: str, gold_answer: str) -> dict[str, float]:
    return {"exact_match": float(math_equivalent(normalize_math_answer(final_answer(completion)),
                                                 gold_answer))}


# --- SQuAD ------------------------------------------------------------------------------------------
def squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_f1(prediction: str, gold: str) -> float:
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """Best exact match and F1 over the gold answers (the official SQuAD v1.1 evaluation)."""
    return {"exact_match": max(float(squad_normalize(prediction) == squad_normalize(g)) for g in golds),
            "f1": max(squad_f1(prediction, g) for g in golds)}


# --- DROP -------------------------------------------------------------------------------------------
def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _drop_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in set(string.punctuation))
    if _is_number(token):
        token = str(float(token))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", token).split())


def _drop_bags(spans: Sequence[str]) -> tuple[list[str], list[set[str]]]:
    normalized = [" ".join(t for t in map(_drop_token, re.split(" |-", span)) if t.strip()).strip()
                  for span in spans]
    return normalized, [set(n.split()) for n in normalized]


def _bag_f1(pred: set[str], gold: set[str]) -> float:
    common = len(gold & pred)
    precision = common / len(pred) if pred else 1.0
    recall = common / len(gold) if gold else 1.0
    return 0.0 if precision == recall == 0.0 else 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], pred: set[str]) -> bool:
    """A gold bag with numbers only matches a predicted bag that shares one of them."""
    gold_numbers = {w for w in gold if _is_number(w)}
    return not gold_numbers or bool(gold_numbers & {w for w in pred if _is_number(w)})


def drop_metrics(predicted: Sequence[str], gold: Sequence[str]) -> tuple[float, float]:
    """Exact match and F1 of predicted spans against one gold answer's spans."""
    from scipy.optimize import linear_sum_assignment

    (pred_norm, pred_bags), (gold_norm, gold_bags) = _drop_bags(predicted), _drop_bags(gold)
    em = float(set(pred_norm) == set(gold_norm) and len(pred_norm) == len(gold_norm))
    scores = np.zeros([len(gold_bags), len(pred_bags)])
    for i, g in enumerate(gold_bags):
        for j, p in enumerate(pred_bags):
            if _numbers_agree(g, p):
                scores[i, j] = _bag_f1(p, g)
    best = np.zeros(max(len(gold_bags), len(pred_bags)))
    for row, col in zip(*linear_sum_assignment(-scores), strict=True):
        best[row] = max(best[row], scores[row, col])
    return em, round(float(np.mean(best)), 2)


def drop_scores(prediction: str, golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Best exact match and F1 over the gold answers that are not empty (as lm-eval's drop)."""
    em = f1 = 0.0
    for gold in golds:
        if gold and gold[0].strip():
            e, f = drop_metrics([prediction], gold)
            em, f1 = max(em, e), max(f1, f)
    return {"exact_match": em, "f1": f1}


# --- pass@k -----------------------------------------------------------------------------------------
def pass_at_k(n: int, correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (``correct`` of them right) is right:
    ``1 - C(n-c, k) / C(n, k)``, as a product (no huge binomials)."""
    if n - correct < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - correct + 1, n + 1)))
