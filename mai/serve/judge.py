"""The optional model-based safety judge: a Llama Guard 3-style prompt sent to any chat model.

The prompt lists Llama Guard 3's hazard taxonomy (S1–S14, from Meta's Llama Guard 3 model card) and asks
for ``safe`` or ``unsafe`` plus the violated codes on a second line. Codes map onto the filter's four
categories (S1 violent crimes, S9 indiscriminate weapons → violence; S3 sex-related crimes, S4 child
sexual exploitation, S12 sexual content → sexual; S10 hate → hate; S11 suicide & self-harm → self_harm);
the other codes are outside what this filter reports and are ignored. A flagged category gets severity
``JUDGE_SEVERITY`` (medium), which the rules may raise but never lower.

The model is reached through a ``complete(prompt) -> reply`` function: :func:`openai_complete` for any
OpenAI-compatible endpoint through the official ``openai`` client, or the server's own engine for a model
it serves (``mai.serve.app``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from mai.errors import MaiError

TAXONOMY = {
    "S1": "Violent Crimes", "S2": "Non-Violent Crimes", "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation", "S5": "Defamation", "S6": "Specialized Advice", "S7": "Privacy",
    "S8": "Intellectual Property", "S9": "Indiscriminate Weapons", "S10": "Hate",
    "S11": "Suicide & Self-Harm", "S12": "Sexual Content", "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}
TO_CATEGORY = {"S1": "violence", "S9": "violence", "S3": "sexual", "S4": "sexual", "S12": "sexual",
               "S10": "hate", "S11": "self_harm"}
JUDGE_SEVERITY = 4
_CODE = re.compile(r"\bS(1[0-4]|[1-9])\b")


def judge_prompt(text: str, role: str) -> str:
    """The instruction for one message; ``role`` is "User" (a prompt) or "Agent" (a completion)."""
    categories = "\n".join(f"{code}: {name}." for code, name in TAXONOMY.items())
    return (
        f"Task: Check if there is unsafe content in '{role}' messages in conversations according to our "
        "safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{role}: {text}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
    )


def parse_verdict(reply: str) -> dict[str, int]:
    """Severity per category from the judge's reply; an unclear reply counts as safe."""
    lines = [ln.strip().lower() for ln in reply.strip().splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("unsafe"):
        return {}
    codes = _CODE.findall(reply.upper())
    return {TO_CATEGORY[f"S{c}"]: JUDGE_SEVERITY for c in codes if f"S{c}" in TO_CATEGORY}


class Judge:
    """Asks a chat model, through ``complete``, which categories a text violates."""

    def __init__(self, complete: Callable[[str], str], name: str):
        self.complete, self.name = complete, name

    def score(self, text: str, role: str = "User") -> dict[str, int]:
        return parse_verdict(self.complete(judge_prompt(text, role)))


def openai_complete(spec: str, api_key: str | None = None, timeout: float = 30.0) -> Callable[[str], str]:
    """``spec`` is ``BASE_URL#MODEL`` (e.g. ``http://127.0.0.1:8001/v1#llama-guard``); greedy, short.
    The key comes from ``api_key``, else the ``MAI_JUDGE_API_KEY`` environment variable."""
    base_url, sep, model = spec.partition("#")
    if not sep or not base_url.startswith(("http://", "https://")) or not model:
        raise MaiError(f"judge_model '{spec}' is neither a served model name nor BASE_URL#MODEL "
                       "(e.g. http://127.0.0.1:8001/v1#llama-guard)")
    try:
        import openai
    except ImportError:
        raise MaiError("a remote judge needs the openai client: pip install 'mai[serve]'") from None
    key = api_key or os.environ.get("MAI_JUDGE_API_KEY") or "none"
    client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=1)

    def complete(prompt: str) -> str:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                               temperature=0, max_tokens=16)
        return reply.choices[0].message.content or ""

    return complete


def engine_complete(engine, tokenizer) -> Callable[[str], str]:
    """A model served in this process answers the judge prompt through its own engine, greedy and short,
    batched with the other requests it decodes."""
    from mai.infer.sampling import SamplingParams

    def complete(prompt: str) -> str:
        ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                             add_generation_prompt=True))
        return engine.generate(ids, SamplingParams(max_tokens=16, temperature=0)).text

    return complete
