"""Chat replies of the student (the engine's generation path, in process) and of the teacher (over its
OpenAI API), both greedy, for DPO pairs (teacher chosen, student rejected) and the report's sample chats."""

from __future__ import annotations

from typing import Any

from mai.errors import MaiError
from mai.interop.load import LoadedModel


def first_turns(n: int, skip: int = 500) -> list[str]:
    """First user messages of chitchat conversations, after the first ``skip`` (beyond what the SFT demo's
    default ``demo_limit`` reads, so DPO and the sample chats ask the student something new)."""
    import itertools

    from mai.post.chat_data import chitchat_conversations

    turns = (c[0]["content"] for c in itertools.islice(chitchat_conversations(), skip, None))
    return list(itertools.islice((t for t in turns if t.strip()), n))


def student_replies(loaded: LoadedModel, prompts: list[str], max_tokens: int) -> list[str]:
    from mai.infer.generate import Generation
    from mai.infer.sampling import SamplingParams

    tok = loaded.tokenizer
    if tok is None or not tok.chat_template:
        raise MaiError(f"{loaded.source} has no chat template; the student cannot chat")
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    out = []
    for prompt in prompts:
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]))
        ids = ids[-(loaded.cfg.max_seq_len - max_tokens):]
        out.append(Generation(loaded.model, tok.decode, ids, params, stop_ids=tok.stop_ids).run().strip())
    return out


def teacher_replies(base_url: str, model: str, prompts: list[str], max_tokens: int) -> list[str]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", timeout=300, max_retries=2)
    out = []
    for prompt in prompts:
        try:
            reply = client.chat.completions.create(model=model, max_tokens=max_tokens, temperature=0.0,
                                                   messages=[{"role": "user", "content": prompt}])
        except openai.APIError as exc:
            raise MaiError(f"the teacher at {base_url} failed: {exc}") from None
        out.append((reply.choices[0].message.content or "").strip())
    return out


def teacher_student_pairs(student: str, base_url: str, model: str, n: int, max_tokens: int,
                          seq_len: int) -> list[dict[str, Any]]:
    """DPO pairs on ``n`` chitchat prompts; a pair is left out where either reply is empty, both agree, or
    the longer of them does not fit ``seq_len`` tokens in the student's chat template."""
    from mai.interop import load_model
    from mai.post.chat_data import encode_conversation

    loaded = load_model(student)
    prompts = first_turns(n)
    good = teacher_replies(base_url, model, prompts, max_tokens)
    bad = student_replies(loaded, prompts, max_tokens)
    rows = []
    for p, g, b in zip(prompts, good, bad, strict=True):
        longest = max(len(encode_conversation(loaded.tokenizer, [{"role": "user", "content": p},
                                                                 {"role": "assistant", "content": r}],
                                              "pair").ids) for r in (g, b))
        if g and b and g != b and longest <= seq_len + 1:
            rows.append({"prompt": p, "chosen": g, "rejected": b})
    if not rows:
        raise MaiError(f"no usable preference pairs among {n} prompts (empty or equal replies, or longer "
                       f"than data.seq_len {seq_len}); raise dpo.prompts or data.seq_len")
    return rows
