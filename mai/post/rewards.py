"""Verifiable rewards for `mai grpo`: programs that check a completion, so RL needs no learned judge.

- ``correct``: 1 when the completion's final answer equals the item's ``answer`` as a number. The final
  answer is the last ``#### N`` line, else the last ``\\boxed{N}``, else (lm-eval's gsm8k flexible-extract,
  :mod:`mai.eval.answers`) the last number in the text.
- ``format``: 1 when the completion states its answer in the checkable form (``#### N`` or ``\\boxed{…}``).
- ``unit_tests``: 1 when the completion's program (its fenced code block, else its text) followed by the
  item's ``tests`` exits 0 in :mod:`mai.eval.sandbox` (namespaces, no network, CPU/memory limits).
- ``module:function``: a user's Python reward, ``function(item, completion) -> float`` (a reward model
  wrapped as a function plugs in here).

Rewards are weighted and summed (:class:`RewardSet`). A reward that raises, or returns something that is
not a finite number, is a :class:`RewardError` that names the reward, the item and the completion: a
long RL run must say which datum broke it.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mai.errors import MaiError
from mai.eval.answers import GSM8K_FLEXIBLE, INVALID, last_boxed, regex_extract

ANSWER_LINE = re.compile(r"####\s*(-?[$0-9.,]*[0-9])")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

# A batch reward: (items, completions) -> one float per completion, in order.
BatchReward = Callable[[Sequence[dict[str, Any]], Sequence[str]], list[float]]


class RewardError(MaiError):
    """A reward function failed on one completion; the message names the reward, item and completion."""


def final_answer(completion: str) -> str | None:
    """The answer a completion commits to: last ``#### N``, else last ``\\boxed{}``, else last number."""
    lines = ANSWER_LINE.findall(completion)
    if lines:
        return lines[-1]
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    loose = regex_extract(completion, GSM8K_FLEXIBLE, -1)
    return None if loose == INVALID else loose


def as_number(text: str) -> float | None:
    """``"1,234."`` → 1234.0, ``"$5"`` → 5.0; None when no number is there."""
    found = NUMBER.search(text.replace(",", "").replace("$", ""))
    return float(found.group()) if found else None


def correct(item: dict[str, Any], completion: str) -> float:
    said = final_answer(completion)
    got, want = (as_number(said) if said else None), as_number(str(item["answer"]))
    return float(got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9))


def answer_format(item: dict[str, Any], completion: str) -> float:
    return float(bool(ANSWER_LINE.search(completion)) or last_boxed(completion) is not None)


def unit_tests(items: Sequence[dict[str, Any]], completions: Sequence[str]) -> list[float]:
    """Each completion's program plus its item's ``tests``, run in the sandbox two at a time."""
    from mai.eval.gen_tasks import code_block
    from mai.eval.sandbox import run_programs

    programs = [f"{code_block(text)}\n\n{item['tests']}\n"
                for item, text in zip(items, completions, strict=True)]
    return [float(outcome.passed) for outcome in run_programs(programs)]


BUILTIN: dict[str, Callable[[dict[str, Any], str], float]] = {"correct": correct, "format": answer_format}
NEEDS = {"correct": "answer", "unit_tests": "tests"}  # the item field each built-in reward checks against


def user_reward(spec: str) -> Callable[[dict[str, Any], str], float]:
    """``package.module:function`` imported; a clear error when it is not there."""
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise MaiError(f"reward {spec!r}: cannot import {name} from {module} ({exc})") from None
    if not callable(fn):
        raise MaiError(f"reward {spec!r} is not callable")
    return fn


def describe(item: dict[str, Any], index: int) -> str:
    name = item.get("id", f"#{index}")
    return f"item {name} (prompt {str(item.get('prompt', ''))[:60]!r})"


def checked(value: Any, name: str, item: dict[str, Any], index: int, k: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise RewardError(f"reward {name!r} returned {value!r} for {describe(item, index)}, completion {k}; "
                          "rewards must be finite numbers")
    return number


@dataclass
class RewardSet:
    """Named rewards with weights; :meth:`score` gives each completion's total and every component."""

    weights: dict[str, float]

    def __post_init__(self) -> None:
        if not self.weights:
            raise MaiError("grpo.rewards is empty: name at least one reward (correct, format, unit_tests, "
                           "or module:function)")
        self.functions: dict[str, Callable[[dict[str, Any], str], float] | None] = {}
        for name in self.weights:
            if name in BUILTIN:
                self.functions[name] = BUILTIN[name]
            elif name == "unit_tests":
                self.functions[name] = None  # batched: the sandbox runs programs in parallel
            elif ":" in name:
                self.functions[name] = user_reward(name)
            else:
                raise MaiError(f"unknown reward {name!r}: use correct, format, unit_tests or module:function")

    def check_items(self, items: Sequence[tuple[dict[str, Any], str]]) -> None:
        """Before any generation: every item has the fields its rewards need (and the sandbox runs)."""
        for name, field in NEEDS.items():
            if name in self.weights:
                missing = next((where for item, where in items if field not in item), None)
                if missing is not None:
                    raise MaiError(f"{missing}: reward {name!r} needs a {field!r} field")
        if "unit_tests" in self.weights:
            from mai.eval.sandbox import require_sandbox

            require_sandbox()

    def score(self, items: Sequence[dict[str, Any]], completions: Sequence[str],
              indices: Sequence[int]) -> tuple[list[float], dict[str, list[float]]]:
        """(weighted totals, {reward: values}) for completion k of item ``items[k]``; ``indices`` are the
        items' positions in the data (for error messages)."""
        parts: dict[str, list[float]] = {}
        for name, fn in self.functions.items():
            if fn is None:
                try:
                    values = unit_tests(items, completions)
                except MaiError:
                    raise
                except Exception as exc:
                    raise RewardError(f"reward {name!r} failed on this step's completions: "
                                      f"{type(exc).__name__}: {exc}") from exc
            else:
                values = []
                for k, (item, text) in enumerate(zip(items, completions, strict=True)):
                    try:
                        value = fn(item, text)
                    except Exception as exc:
                        raise RewardError(f"reward {name!r} failed on {describe(item, indices[k])}, "
                                          f"completion {k} ({text[:60]!r}): {type(exc).__name__}: "
                                          f"{exc}") from exc
                    values.append(value)
            parts[name] = [checked(v, name, item, indices[k], k)
                           for k, (v, item) in enumerate(zip(values, items, strict=True))]
        totals = [sum(self.weights[n] * parts[n][k] for n in parts) for k in range(len(completions))]
        return totals, parts
