"""LLM-as-judge pairwise evaluation: which of two models answers a prompt set better, by a judge model.

Every prompt is judged twice, with the answers in both positions (model A first, then model B first),
because judges favour one position (Zheng et al. 2023, MT-Bench, measured it); a verdict is "first",
"second" or a tie, turned into a win, loss or tie of model A. A judgment counts 1 for a win, ½ for a tie,
0 for a loss; the win rate of A is their mean over all well-formed judgments, and its 95% interval is a
bootstrap over *prompts* (a prompt's two judgments are resampled together, as they are not independent).
The report also gives how often the two orders agree and how often the judge picked the first position.

The judge is any OpenAI-compatible chat endpoint (the official ``openai`` client with ``base_url``), such
as a model served by ``mai serve`` on 127.0.0.1. A judge reply without a clear verdict, or a request that
failed, does not stop the run: it is counted as malformed and named (prompt, order, reply) in the report.
With ``structured`` the reply is asked for as JSON under :data:`VERDICT_SCHEMA` (``response_format``
json_schema, which mai serve, vLLM and OpenAI constrain the decoding to): a short reason, then the verdict,
so even a small judge that ignores the bracket convention gives a well-formed verdict.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mai.errors import MaiError

JUDGE_SYSTEM = (
    "You are a strict, impartial judge. You see a user's question and two answers, Answer 1 and Answer 2. "
    "Decide which answer is more helpful, correct and clear. Their order is random: do not let it, or "
    "their length, sway you. End your reply with exactly one verdict: [[1]] if Answer 1 is better, [[2]] "
    "if Answer 2 is better, [[tie]] if they are equally good.")

VERDICT = re.compile(r"\[\[\s*(1|2|tie|a|b|c)\s*\]\]", re.IGNORECASE)
LOOSE = re.compile(r"^\W*(?:verdict\W*)?(1|2|tie|answer 1|answer 2)\W*$", re.IGNORECASE)
REQUEST_FAILED = "the judge request failed"
VERDICT_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["reason", "verdict"],
                  "properties": {"reason": {"type": "string", "maxLength": 160},
                                 "verdict": {"type": "string", "enum": ["1", "2", "tie"]}}}
MEANING = {"1": "first", "a": "first", "answer 1": "first", "2": "second", "b": "second",
           "answer 2": "second", "tie": "tie", "c": "tie"}


def judge_messages(prompt: str, first: str, second: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"[Question]\n{prompt}\n\n[Answer 1]\n{first}\n\n[Answer 2]\n{second}"
                                        "\n\nWhich answer is better? Give your verdict as [[1]], [[2]] or "
                                        "[[tie]]."}]


def parse_verdict(reply: str) -> tuple[str | None, str]:
    """("first" | "second" | "tie", "") or (None, why): the bracketed verdicts must agree; a reply that is
    only a verdict (``"2"``, ``"Tie."``), or a JSON object of :data:`VERDICT_SCHEMA`, counts too; anything
    else is malformed, never guessed."""
    structured = _json_verdict(reply)
    if structured is not None:
        return structured, ""
    found = {MEANING[m.lower()] for m in VERDICT.findall(reply)}
    if len(found) == 1:
        return found.pop(), ""
    if len(found) > 1:
        return None, f"contradictory verdicts {sorted(found)}"
    loose = LOOSE.match(reply.strip())
    if loose:
        return MEANING[loose.group(1).lower()], ""
    return None, "no verdict ([[1]], [[2]] or [[tie]]) in the reply"


def _json_verdict(reply: str) -> str | None:
    try:
        value = json.loads(reply)
    except ValueError:
        return None
    verdict = value.get("verdict") if isinstance(value, dict) else None
    return MEANING.get(verdict.strip().lower()) if isinstance(verdict, str) else None


@dataclass
class Judgment:
    """One judge call. ``order`` 0: model A's answer shown first; 1: model B's first."""

    prompt_index: int
    order: int
    reply: str
    verdict: str | None  # first | second | tie | None (malformed)
    problem: str = ""

    @property
    def outcome(self) -> str | None:
        """win | loss | tie for model A, None when malformed."""
        if self.verdict is None or self.verdict == "tie":
            return self.verdict
        a_first = self.order == 0
        return "win" if (self.verdict == "first") == a_first else "loss"

    @property
    def request_failed(self) -> bool:
        """The judge never answered (worth asking again), unlike a reply without a verdict."""
        return self.problem.startswith(REQUEST_FAILED)


SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def bootstrap_interval(per_prompt: Sequence[Sequence[float]], level: float = 0.95, draws: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean judgment score, resampling prompts (each with all its judgments)."""
    groups = [list(g) for g in per_prompt if g]
    if not groups:
        return (float("nan"), float("nan"))
    sums = np.array([sum(g) for g in groups])
    counts = np.array([len(g) for g in groups])
    picks = np.random.default_rng(seed).integers(0, len(groups), size=(draws, len(groups)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarize(judgments: Sequence[Judgment], n_prompts: int, level: float = 0.95) -> dict[str, Any]:
    """Counts, win rate of A with its interval, position agreement and bias, the malformed judgments."""
    per_prompt: list[list[float]] = [[] for _ in range(n_prompts)]
    outcomes: dict[int, dict[int, str | None]] = {}
    counts = {"win": 0, "loss": 0, "tie": 0}
    for j in judgments:
        outcomes.setdefault(j.prompt_index, {})[j.order] = j.outcome
        if j.outcome is not None:
            counts[j.outcome] += 1
            per_prompt[j.prompt_index].append(SCORE[j.outcome])
    valid = sum(counts.values())
    both = [o for o in outcomes.values() if o.get(0) is not None and o.get(1) is not None]
    decided = [j for j in judgments if j.verdict in ("first", "second")]
    low, high = bootstrap_interval(per_prompt, level)
    return {
        "prompts": n_prompts, "judgments": len(judgments), "valid": valid,
        "wins": counts["win"], "losses": counts["loss"], "ties": counts["tie"],
        "win_rate": (counts["win"] + 0.5 * counts["tie"]) / valid if valid else float("nan"),
        "ci_level": level, "ci_low": low, "ci_high": high,
        "order_agreement": sum(o[0] == o[1] for o in both) / len(both) if both else float("nan"),
        "first_position_rate": (sum(j.verdict == "first" for j in decided) / len(decided)
                                if decided else float("nan")),
        "malformed": len(judgments) - valid,
        "malformed_judgments": [{"prompt": j.prompt_index, "order": "A first" if j.order == 0 else "B first",
                                 "why": j.problem, "reply": j.reply[:200]}
                                for j in judgments if j.verdict is None],
    }


@dataclass
class Judge:
    """An OpenAI-compatible chat endpoint used as the judge."""

    base_url: str
    model: str
    api_key: str = "none"
    max_tokens: int = 256
    workers: int = 4
    structured: bool = False  # ask for the verdict as JSON under VERDICT_SCHEMA (constrained decoding)
    client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            from openai import OpenAI
        except ImportError:
            raise MaiError("the judge needs the openai client: pip install openai") from None
        self.client = OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=2, timeout=300)

    def ask(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        """(reply, "") or ("", why the request failed): one failed call must not end the evaluation."""
        import openai

        extra: dict[str, Any] = {}
        if self.structured:
            extra["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "verdict", "strict": True, "schema": VERDICT_SCHEMA}}
        try:
            out = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0,
                                                      max_tokens=self.max_tokens, **extra)
        except openai.APIError as exc:
            return "", f"{REQUEST_FAILED}: {type(exc).__name__}: {exc}"
        return out.choices[0].message.content or "", ""


def judge_pairs(judge: Judge, prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str],
                done: Mapping[tuple[int, int], Judgment] | None = None,
                record: Callable[[Judgment], None] | None = None) -> list[Judgment]:
    """Both orders of every prompt's pair, asked concurrently (``judge.workers`` requests in flight), in
    (prompt, order) order. Judgments in ``done`` (by (prompt, order)) are kept, not asked again; ``record``
    gets each new one as it arrives, on this thread, so a caller can save it before the next comes."""
    if not (len(prompts) == len(answers_a) == len(answers_b)) or not prompts:
        raise MaiError(f"pairwise judging needs one answer of each model per prompt: {len(prompts)} prompts, "
                       f"{len(answers_a)} answers of A, {len(answers_b)} of B")
    done = done or {}
    jobs = [(i, order) for i in range(len(prompts)) for order in (0, 1) if (i, order) not in done]

    def one(job: tuple[int, int]) -> Judgment:
        i, order = job
        first, second = (answers_a[i], answers_b[i]) if order == 0 else (answers_b[i], answers_a[i])
        reply, failure = judge.ask(judge_messages(prompts[i], first, second))
        if failure:
            return Judgment(i, order, reply, None, failure)
        verdict, why = parse_verdict(reply)
        return Judgment(i, order, reply, verdict, why)

    found = dict(done)
    pool = ThreadPoolExecutor(max(1, judge.workers))
    try:
        for future in as_completed([pool.submit(one, job) for job in jobs]):
            judgment = future.result()
            found[judgment.prompt_index, judgment.order] = judgment
            if record is not None:
                record(judgment)
    finally:  # interrupted: wait only for the requests in flight, not for the queue
        pool.shutdown(wait=True, cancel_futures=True)
    return [found[i, order] for i in range(len(prompts)) for order in (0, 1)]
