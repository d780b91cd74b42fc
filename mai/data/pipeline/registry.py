"""Built-in steps by name, and building steps from their declarations (``{type: NAME, ...settings}``).

``type`` may also be ``package.module:Class`` for a user's own :class:`Step`; ``label`` renames a step in
the report (needed when one kind appears twice); ``removed: true`` keeps the documents the step removes,
with their text and reason, in ``WORK_DIR/removed/LABEL/`` (``mai data inspect`` shows them).
"""

from __future__ import annotations

import importlib
from typing import Any

from mai.config import from_dict
from mai.data.pipeline.c4 import C4BadWords, C4Filter
from mai.data.pipeline.decontam import Decontaminate
from mai.data.pipeline.dedup import ExactDedup, MinHashDedup
from mai.data.pipeline.fineweb import FineWebFilter
from mai.data.pipeline.gopher import GopherQuality, GopherRepetition
from mai.data.pipeline.langid import LangIdFilter
from mai.data.pipeline.pii import PiiRedactor
from mai.data.pipeline.quality import QualityFilter
from mai.data.pipeline.step import Step
from mai.data.pipeline.synth.check import TeacherOutputCheck
from mai.data.pipeline.unicode_fix import UnicodeFix
from mai.data.pipeline.urls import UrlFilter
from mai.errors import MaiError

STEPS: dict[str, type[Step]] = {cls.kind: cls for cls in (
    UrlFilter, UnicodeFix, LangIdFilter, GopherQuality, GopherRepetition, C4Filter, C4BadWords, FineWebFilter,
    PiiRedactor, QualityFilter, ExactDedup, MinHashDedup, Decontaminate, TeacherOutputCheck)}


def step_class(name: str) -> type[Step]:
    if name in STEPS:
        return STEPS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise MaiError(f"step type '{name}' cannot be imported: {exc}") from None
        if isinstance(cls, type) and issubclass(cls, Step):
            return cls
        raise MaiError(f"step type '{name}' is not a mai.data.pipeline.step.Step subclass")
    raise MaiError(f"unknown step type '{name}' (built-in: {', '.join(sorted(STEPS))}; "
                   "or package.module:Class)")


def build_steps(entries: list[dict[str, Any]]) -> list[Step]:
    steps = []
    for i, entry in enumerate(entries):
        settings = dict(entry)
        cls = step_class(settings.pop("type"))
        label = settings.pop("label", None) or cls.kind
        save_removed = settings.pop("removed", False)
        if not isinstance(save_removed, bool):
            raise MaiError(f"steps[{i}]({cls.kind}).removed: expected true or false, got {save_removed!r}")
        step = cls(from_dict(cls.Config, settings, f"steps[{i}]({cls.kind})"), label)
        step.save_removed = save_removed
        steps.append(step)
    labels = [s.label for s in steps]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise MaiError(f"step label '{dupes[0]}' is used twice; give one of them its own 'label'")
    return steps
