"""``mai eval-judge``: two models' answers to a prompt set, compared pairwise by an LLM judge."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mai.errors import MaiError


def read_prompts(path: str | None, limit: int) -> list[str]:
    """A JSONL of strings or ``{"prompt": ...}``; none = the first user turns of chitchat-dataset."""
    if path is None:
        from mai.post.chat_data import chitchat_conversations

        return [c[0]["content"] for c in chitchat_conversations(limit)]
    from mai.fileio import read_jsonl_records

    out = []
    for record, where in read_jsonl_records(path):
        text = record.get("prompt") if isinstance(record, dict) else record
        if not isinstance(text, str) or not text.strip():
            raise MaiError(f"{where}: expected a prompt string or an object with a \"prompt\" string")
        out.append(text)
    if not out:
        raise MaiError(f"{path} holds no prompts")
    return out[:limit]


def read_answers(path: Path, prompts: list[str]) -> list[str]:
    """One ``{"answer": ...}`` (optionally with its ``prompt``, which must match) per prompt, in order."""
    from mai.fileio import read_jsonl_records

    out = []
    for (record, where), prompt in zip(read_jsonl_records(path), prompts, strict=False):
        if not isinstance(record, dict) or not isinstance(record.get("answer"), str):
            raise MaiError(f"{where}: expected an object with an \"answer\" string")
        if record.get("prompt", prompt) != prompt:
            raise MaiError(f"{where}: this answer is to another prompt than prompt {len(out) + 1} of the set")
        out.append(record["answer"])
    if len(out) < len(prompts):
        raise MaiError(f"{path} has {len(out)} answers for {len(prompts)} prompts")
    return out


def model_answers(source: str, prompts: list[str], max_new_tokens: int, batch: int) -> list[str]:
    """A JSONL answers file, or a model (any path `mai.interop` loads) answering greedily on the engine."""
    if source.endswith(".jsonl"):
        return read_answers(Path(source), prompts)
    from mai.eval.generation import generate
    from mai.infer.engine import Engine
    from mai.infer.load import load_for_inference
    from mai.infer.sampling import SamplingParams

    loaded, _ = load_for_inference(source)
    tok = loaded.tokenizer
    engine = Engine(loaded.model, tok.decode, tok.stop_ids, max_batch=batch,
                    max_seq_len=loaded.cfg.max_seq_len)
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in prompts]
    budget = [SamplingParams(max_tokens=max_new_tokens, temperature=0.0) for _ in prompts]
    return generate(engine, ids, budget)


def cmd_eval_judge(args: argparse.Namespace) -> None:
    from mai.eval.pairwise import Judge, judge_pairs, summarize
    from mai.fileio import atomic_write_text

    prompts = read_prompts(args.prompts, args.limit)
    answers_a = model_answers(args.a, prompts, args.max_new_tokens, args.batch_size)
    answers_b = model_answers(args.b, prompts, args.max_new_tokens, args.batch_size)
    judge = Judge(args.judge, args.judge_model, args.api_key, args.judge_max_tokens, args.workers)
    judgments = judge_pairs(judge, prompts, answers_a, answers_b)
    report = {"a": args.a, "b": args.b, "judge": args.judge, "judge_model": args.judge_model,
              **summarize(judgments, len(prompts))}
    out = Path(args.out)
    atomic_write_text(out / "judgments.jsonl", "".join(
        json.dumps({"prompt": prompts[j.prompt_index], "order": j.order,
                    "answer_a": answers_a[j.prompt_index], "answer_b": answers_b[j.prompt_index],
                    "reply": j.reply, "verdict": j.verdict,
                    "outcome_for_a": j.outcome, "problem": j.problem}) + "\n" for j in judgments))
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    print(f"A {args.a} vs B {args.b}: win rate of A {report['win_rate']:.3f} "
          f"[{report['ci_low']:.3f}, {report['ci_high']:.3f}] over {report['valid']} judgments "
          f"({report['wins']} wins, {report['ties']} ties, {report['losses']} losses), "
          f"{report['malformed']} malformed; the orders agree on {report['order_agreement']:.0%} of prompts")
    print(f"report        {out / 'report.json'}")


def register(sub) -> None:
    p = sub.add_parser("eval-judge", help="pairwise LLM-as-judge: win rate of model A over model B, both "
                                          "answer orders, with a bootstrap interval")
    p.add_argument("--a", required=True, help="model A: a path mai loads, or a JSONL of {answer} per prompt")
    p.add_argument("--b", required=True, help="model B (the baseline), the same way")
    p.add_argument("--prompts", help="JSONL of prompts (strings or {prompt}); none = chitchat-dataset "
                                                "openers")
    p.add_argument("--limit", type=int, default=50, help="at most this many prompts")
    p.add_argument("--judge", required=True,
                   help="the judge's OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (mai serve)")
    p.add_argument("--judge-model", required=True, help="the judge's model name at that endpoint")
    p.add_argument("--api-key", default="none", help="the judge endpoint's key")
    p.add_argument("--judge-max-tokens", type=int, default=256)
    p.add_argument("--workers", type=int, default=4, help="judge requests in flight")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length of local models")
    p.add_argument("--batch-size", type=int, default=8, help="answers decoded together by local models")
    p.add_argument("--out", default="runs/judge", help="folder for report.json and judgments.jsonl")
    p.set_defaults(func=cmd_eval_judge)
