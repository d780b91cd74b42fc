"""`mai eval --judge`: model A's and model B's answers to a prompt set compared pairwise by a judge
(:mod:`mai.eval.pairwise`: both orders, ties, malformed verdicts named, a bootstrap interval).

Every judgment is appended to ``OUT/judgments.jsonl`` as it arrives (first line: the judge's settings), so
a run that stops loses at most the requests in flight; running it again asks only what is missing there —
and again what failed as a request, since a judge that did not answer may answer now. A reply without a
verdict is a verdict of its own (malformed) and is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mai.errors import MaiError
from mai.eval.generation import GenSettings, ResultLog
from mai.eval.judge_answers import answers, read_prompts
from mai.eval.judge_endpoint import JudgeEndpoint, JudgeSettings
from mai.eval.pairwise import Judge, Judgment, judge_pairs, summarize

ANSWER_TOKENS = 256  # answer length of models A and B unless gen.max_new_tokens says otherwise


def _row(j: Judgment, prompts: list[str], answers_a: list[str], answers_b: list[str]) -> dict[str, Any]:
    i = j.prompt_index
    return {"index": 2 * i + j.order, "prompt_index": i, "order": j.order, "prompt": prompts[i],
            "answer_a": answers_a[i], "answer_b": answers_b[i], "reply": j.reply, "verdict": j.verdict,
            "outcome_for_a": j.outcome, "problem": j.problem}


def _kept(log: ResultLog, prompts: list[str], answers_a: list[str],
          answers_b: list[str]) -> dict[tuple[int, int], Judgment]:
    """Judgments in the log of these very prompts and answers, except failed requests."""
    kept = {}
    for rec in log.done.values():
        i, order = divmod(rec["index"], 2)
        if i < len(prompts) and (rec["prompt"], rec["answer_a"], rec["answer_b"]) == \
                (prompts[i], answers_a[i], answers_b[i]):
            j = Judgment(i, order, rec["reply"], rec["verdict"], rec["problem"])
            if not j.request_failed:
                kept[i, order] = j
    return kept


def run_judge(s: JudgeSettings, out: Path, limit: int | None, gen: GenSettings, precision: str = "auto",
              device: str = "cpu", echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Answers of A and B, then the judgments; the summary (with who was compared and by whom)."""
    if not (s.a and s.b):
        raise MaiError("--judge compares two answer sets: give --a and --b (models, or .jsonl answer files)")
    prompts = read_prompts(s.prompts, limit)
    endpoint = JudgeEndpoint(s, out / "logs" / "judge.log", echo)
    endpoint.check()  # a wrong judge fails before any answer is generated
    budget = gen.max_new_tokens or ANSWER_TOKENS
    answers_a = answers(s.a, prompts, budget, gen.batch_size, out / "answers" / "a.jsonl", precision, device)
    answers_b = answers(s.b, prompts, budget, gen.batch_size, out / "answers" / "b.jsonl", precision, device)
    log = ResultLog(out / "judgments.jsonl",
                    {"judge": s.model, "catalog": s.catalog, "max_tokens": s.max_tokens,
                     "structured": s.structured})
    done = _kept(log, prompts, answers_a, answers_b)
    if done:
        echo(f"judge      {len(done)} of {2 * len(prompts)} judgments already in {log.path}, continuing")
    try:
        url, name, key = endpoint.open()
        judge = Judge(url, name, key, s.max_tokens, s.workers, s.structured)
        judgments = judge_pairs(judge, prompts, answers_a, answers_b, done,
                                lambda j: log.add([_row(j, prompts, answers_a, answers_b)]))
    finally:
        endpoint.close()
    if all(j.request_failed for j in judgments):
        raise MaiError(f"every request to the judge {s.model} failed, e.g. {judgments[0].problem[:300]} "
                       f"(all in {log.path})")
    summary = {"a": s.a, "b": s.b, "judge": s.model, "judge_model": name, "judgments_file": str(log.path),
               **summarize(judgments, len(prompts))}
    echo(f"judge      A {s.a} vs B {s.b}: win rate of A (ties count half) {summary['win_rate']:.3f}, 95% CI "
         f"[{summary['ci_low']:.3f}, {summary['ci_high']:.3f}] over {summary['valid']} judgments of "
         f"{summary['prompts']} prompts in both orders: A {summary['wins']}, B {summary['losses']}, "
         f"tie {summary['ties']}, malformed {summary['malformed']}; the orders agree on "
         f"{summary['order_agreement']:.0%} of prompts")
    named = summary["malformed_judgments"]
    for m in named[:5]:
        echo(f"malformed  prompt {m['prompt']} ({m['order']}): {m['why']}")
    if len(named) > 5:
        echo(f"malformed  {len(named) - 5} more in {log.path}")
    return summary
