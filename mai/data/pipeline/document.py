"""The unit that flows through a data pipeline, and the outcome of one step on it.

A pipeline accounts for every input document: it ends kept, removed by a named step with a reason, or
failed with an error. Those three outcomes are the only ones, so the run report's counts always add up.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Document:
    """One document: a run-unique ``id``, its ``text`` and free-form JSON-safe ``metadata``."""

    id: str
    text: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "metadata": self.metadata}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Document:
        return cls(id=str(data["id"]), text=data["text"], metadata=dict(data.get("metadata") or {}))


@dataclasses.dataclass
class Removed:
    """A document that a step (or a reader, for empty or unextractable input) decided not to keep."""

    id: str
    step: str
    reason: str


@dataclasses.dataclass
class Failed:
    """A record that could not be read or processed; it stands in for the document(s) it would have been."""

    id: str
    step: str
    error: str


def document_or_empty(id_: str, text: str, metadata: dict[str, Any],
                      note: str | None = None) -> Document | Removed:
    """A document, or a removal by step ``read`` when there is no text. ``note`` names a repaired encoding
    (``metadata["repaired"]``); the executor counts it in the report's notes."""
    if note:
        metadata["repaired"] = note
    if not text.strip():
        return Removed(id_, "read", "empty")
    return Document(id_, text, metadata)
