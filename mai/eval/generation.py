"""Run a generative task on a model: batched generation on the shared engine, answer checks, pass@k.

Generation goes through :class:`mai.infer.engine.Engine` (continuous batching, each request with its
own stop strings, token budget and seed), greedy unless ``temperature`` > 0. As lm-eval does, a prompt
is encoded without special tokens and cut from the left to leave room for the answer; ``chat`` wraps it
as one user message in the tokenizer's chat template (lm-eval's ``--apply_chat_template``, few-shot
examples inside that one message). Code tasks run their programs in :mod:`mai.eval.sandbox`.

All of a task's requests are submitted at once and the engine keeps ``batch_size`` of them decoding
(continuous batching: a finished answer's row is refilled at the next step, and the few-shot prefix that
every prompt shares is computed once, through the engine's prefix cache). Finished examples are scored
and appended to a JSON-lines log (``<out>/samples/<model>/<task>.jsonl``, first line the settings),
flushed to disk a batch at a time, so a crash loses at most the answers in flight and one batch, and
running the same command again continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mai.errors import MaiError
from mai.eval.answers import pass_at_k
from mai.eval.gen_tasks import GenExample, GenTask
from mai.eval.sandbox import Limits, require_sandbox, run_programs
from mai.fileio import atomic_write_text
from mai.infer.engine import Engine, Request
from mai.infer.sampling import SamplingParams
from mai.model.transformer import Transformer
from mai.tokenizer import MaiTokenizer

CODE_LIMITS = Limits()  # per program: HumanEval's and MBPP's tests run in well under a second


@dataclass(frozen=True)
class GenSettings:
    """How answers are generated; part of a results log's identity (a resumed run must not mix them)."""

    samples: int = 1  # answers per question (pass@k needs k ≤ samples)
    temperature: float = 0.0
    chat: bool = False
    max_new_tokens: int | None = None  # a cap below the task's own budget (quick runs)
    seed: int = 1234
    batch_size: int = 8  # requests decoded together

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise MaiError(f"--samples must be at least 1, got {self.samples}")
        if self.samples > 1 and self.temperature == 0:
            raise MaiError("--samples > 1 needs --temperature > 0 (greedy answers would all be the same)")

    def identity(self) -> dict[str, Any]:
        """The settings that change answers (batch size does not)."""
        out = asdict(self)
        del out["batch_size"]
        return out


class ResultLog:
    """Per-example records of one model on one task, one JSON line each, appended and synced."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.done = path, {}
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        if lines and _parsed(lines[0]) != header:
            raise MaiError(f"{path} holds results of other settings ({lines[0][:200]}); "
                           "use another --out folder or delete it")
        for line in lines[1:]:
            record = _parsed(line)
            if isinstance(record, dict) and "index" in record:  # else: the line a dying run was writing
                self.done[record["index"]] = record
        # rewritten without a torn last line, atomically: a crash now must not lose the log either
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in [header, *self.done.values()]))

    def add(self, records: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())
        self.done.update((r["index"], r) for r in records)


def _parsed(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def prompt_ids(tok: MaiTokenizer, ex: GenExample, chat: bool, room: int) -> list[int]:
    """The prompt's tokens, cut from the left to ``room`` tokens (lm-eval keeps the end)."""
    text = tok.apply_chat_template([{"role": "user", "content": ex.prompt}]) if chat else ex.prompt
    return tok.encode(text)[-room:]


def generate(engine: Engine, prompts: list[list[int]], params: list[SamplingParams]) -> list[str]:
    """All requests submitted at once and decoded together; the texts in order."""
    return [r.text for r in run_requests(engine, prompts, params)]


def run_requests(engine: Engine, prompts: list[list[int]], params: list[SamplingParams]) -> list[Request]:
    """All requests submitted at once and stepped on this thread to the end; the finished requests in
    order (their texts, token ids and finish reasons). A request that failed is an error."""
    requests = [engine.submit(p, sp) for p, sp in zip(prompts, params, strict=True)]
    while not all(r.done.is_set() for r in requests):
        engine.step()
    _raise_failed(requests)
    return requests


def _raise_failed(requests: list[Request]) -> None:
    for r in requests:
        if r.finish_reason == "error":
            raise MaiError(f"generation failed: {r.error or 'the engine reported an error'}")


def as_finished(engine: Engine, groups: dict[int, list[Request]], at_least: int) -> Iterator[list[int]]:
    """Step the engine (on this thread) until every group of submitted requests is done; yield the keys
    of finished groups, ``at_least`` at a time (the rest at the end). A request that failed is an error."""
    pending, ready = dict(groups), []
    while pending:
        engine.step()
        for key in [k for k, reqs in pending.items() if all(r.done.is_set() for r in reqs)]:
            _raise_failed(pending.pop(key))
            ready.append(key)
        if len(ready) >= at_least or (ready and not pending):
            yield ready
            ready = []


def score_examples(task: GenTask, examples: list[GenExample], completions: list[list[str]],
                   limits: Limits) -> list[dict[str, Any]]:
    """Per example: its metrics (answer checks averaged over samples, or pass@k of its programs)."""
    if task.program is None:
        assert task.score is not None
        out = []
        for ex, texts in zip(examples, completions, strict=True):
            scores = [task.score(ex, t) for t in texts]
            out.append({"metrics": {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}})
        return out
    programs = [task.program(ex, t) for ex, texts in zip(examples, completions, strict=True) for t in texts]
    outcomes = iter(run_programs(programs, limits))
    out = []
    for texts in completions:
        runs = [next(outcomes) for _ in texts]
        passed = sum(r.passed for r in runs)
        ks = [k for k in (1, 10, 100) if k <= len(texts)]
        out.append({"metrics": {f"pass@{k}": pass_at_k(len(texts), passed, k) for k in ks},
                    "runs": [{"passed": r.passed, "returncode": r.returncode, "timed_out": r.timed_out,
                              "stderr": r.stderr[-300:]} for r in runs]})
    return out


def aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every metric over the examples, with its standard error."""
    metrics: dict[str, float] = {}
    n = len(records)
    for name in records[0]["metrics"] if records else []:
        values = np.array([r["metrics"][name] for r in records])
        metrics[name] = float(values.mean())
        metrics[f"{name}_stderr"] = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return metrics


def run_gen_task(model: Transformer, tok: MaiTokenizer, task: GenTask, limit: int | None,
                 settings: GenSettings, log_path: Path, limits: Limits = CODE_LIMITS,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate and score the examples not yet in the log; the task's metrics over all of them."""
    start = time.perf_counter()
    if task.program is not None:
        require_sandbox()  # before any generation: the answers could not be checked
    examples = task.examples(limit)
    # no limit in the header: examples are the first N, so a larger --limit extends a finished run
    log = ResultLog(log_path, {"task": task.name, **settings.identity()})
    engine = Engine(model, tok.decode, tok.stop_ids if settings.chat else [tok.eos_id],
                    max_batch=settings.batch_size)
    todo = [i for i in range(len(examples)) if i not in log.done]
    if len(todo) < len(examples):
        echo(f"{task.name}: {len(examples) - len(todo)} examples already in {log_path}, continuing")
    requests = {}
    for i in todo:
        ex = examples[i]
        budget = min(ex.max_tokens, settings.max_new_tokens or ex.max_tokens, engine.max_seq_len - 1)
        ids = prompt_ids(tok, ex, settings.chat, engine.max_seq_len - budget)
        requests[i] = [engine.submit(ids, SamplingParams(max_tokens=budget, temperature=settings.temperature,
                                                          stop=ex.stop, seed=settings.seed + 1000 * i + s))
                       for s in range(settings.samples)]
    for done in as_finished(engine, requests, max(1, settings.batch_size // settings.samples)):
        per = [[r.text for r in requests.pop(i)] for i in done]
        scored = score_examples(task, [examples[i] for i in done], per, limits)
        log.add([{"index": i, "completions": c, **s} for i, c, s in zip(done, per, scored, strict=True)])
    records = [log.done[i] for i in range(len(examples))]
    return {"task": task.name, "n": len(records), "seconds": time.perf_counter() - start,
            **aggregate(records)}
