"""What `mai eval --judge` compares: a prompt set, and each side's answers to it — a JSONL file of answers,
or a model answering greedily in its chat template on the shared engine.

A model's answers are logged batch by batch (:class:`mai.eval.generation.ResultLog`), so a run stopped while
they were being generated continues from the last finished batch.
"""

from __future__ import annotations

from pathlib import Path

from mai.errors import MaiError
from mai.fileio import read_jsonl_records

CHITCHAT_PROMPTS = 50  # openers of chitchat-dataset judged when no prompt file (and no --limit) is given


def read_prompts(path: str | None, limit: int | None) -> list[str]:
    """A JSONL of strings or ``{"prompt": ...}``; none = the first user turns of chitchat-dataset."""
    if path is None:
        from mai.post.chat_data import chitchat_conversations

        return [c[0]["content"] for c in chitchat_conversations(limit or CHITCHAT_PROMPTS)]
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


def answers(source: str, prompts: list[str], max_new_tokens: int, batch: int, log_path: Path,
            precision: str = "auto", device: str = "cpu") -> list[str]:
    """``source``'s answers: a ``.jsonl`` answers file, or a model (any path `mai.interop` loads) whose
    answers not yet in ``log_path`` are generated, ``batch`` decoding together and logged as they finish."""
    if source.endswith(".jsonl"):
        return read_answers(Path(source), prompts)
    from mai.eval.generation import ResultLog, as_finished
    from mai.infer.engine import Engine
    from mai.infer.load import load_for_inference
    from mai.infer.sampling import SamplingParams

    log = ResultLog(log_path, {"model": source, "max_new_tokens": max_new_tokens, "precision": precision})
    todo = [i for i, p in enumerate(prompts) if log.done.get(i, {}).get("prompt") != p]
    if todo:
        loaded, _ = load_for_inference(source, precision=precision, device=device)
        tok = loaded.tokenizer
        engine = Engine(loaded.model, tok.decode, tok.stop_ids, max_batch=batch,
                        max_seq_len=loaded.cfg.max_seq_len)
        greedy = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        requests = {i: [engine.submit(tok.encode(tok.apply_chat_template(
            [{"role": "user", "content": prompts[i]}])), greedy)] for i in todo}
        for done in as_finished(engine, requests, batch):  # all queued, `batch` decoding together
            log.add([{"index": i, "prompt": prompts[i], "answer": requests[i][0].text} for i in done])
    return [log.done[i]["answer"] for i in range(len(prompts))]
