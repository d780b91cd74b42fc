"""The first step for teacher generations: drop empty, too short (Cosmopedia: under 150 tokens) or,
optionally, truncated ones, using the token counts the teacher reported."""

from __future__ import annotations

import dataclasses

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step


@dataclasses.dataclass
class TeacherOutputConfig:
    min_completion_tokens: int = 150
    drop_truncated: bool = False


class TeacherOutputCheck(Step):
    Config = TeacherOutputConfig
    kind = "teacher_output"

    def __call__(self, doc: Document) -> str | None:
        prov = doc.metadata.get("provenance") or {}
        tokens = (prov.get("usage") or {}).get("completion_tokens")
        if tokens is None:
            tokens = round(len(doc.text.split()) * 1.3)  # no usage reported: estimate from words
        if tokens < self.cfg.min_completion_tokens:
            return "too_short"
        if self.cfg.drop_truncated and prov.get("finish_reason") == "length":
            return "truncated"
        return None
