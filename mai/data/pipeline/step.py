"""The two kinds of pipeline step.

A :class:`Step` looks at one document at a time: it may rewrite ``doc.text`` or ``doc.metadata`` and
returns ``None`` to keep the document or a short reason string to remove it. Steps run in parallel over
shards. A :class:`GlobalStep` decides against everything seen before it in the whole run (deduplication):
its costly per-document work (``prepare``) runs in parallel, its decisions run shard by shard in a fixed
order, and its state is saved after every finished shard so that a killed run resumes exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from mai.data.pipeline.document import Document


class Step:
    """A per-document filter or transform. Subclasses set ``Config`` (a dataclass) and ``kind``."""

    Config: ClassVar[type]
    kind: ClassVar[str]

    def __init__(self, cfg: Any, label: str | None = None) -> None:
        self.cfg = cfg
        self.label = label or self.kind
        self.save_removed = False  # ``removed: true`` in the step entry: keep removed documents' text

    def __call__(self, doc: Document) -> str | None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the report should say about this step beyond its counts (model used, allow-lists …)."""
        return {}


class GlobalStep(Step):
    """A step whose decision depends on all documents before it in the run (shards in a fixed order).

    A step that needs to see every document before deciding on any (``counts_first = True``) gets each
    one through ``observe`` in a counting pass that precedes the decisions (and is redone on resume).
    """

    counts_first: ClassVar[bool] = False

    def observe(self, doc: Document) -> None:
        """Counting pass, for steps with ``counts_first``."""

    def counted(self) -> None:
        """Called once the counting pass has seen every document."""

    def prepare(self, doc: Document) -> None:
        """Parallel part: compute what the decision needs (hashes, signatures) into ``doc.metadata``."""

    def load_state(self, state_dir: Path, finished: list[str]) -> None:
        """Restore the state left by the ``finished`` shards (in run order) from ``state_dir``."""
        raise NotImplementedError

    def save_state(self, state_dir: Path, shard_key: str) -> None:
        """Persist what shard ``shard_key`` added to the state (atomically, before its marker is written)."""
        raise NotImplementedError
