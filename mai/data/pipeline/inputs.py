"""Input identity: every input file is known by its path and a fingerprint of its content.

A work directory records, in ``inputs.json``, which files each shard was made from (size, mtime and an
xxh64 hash: of the whole file up to 1 MiB, else of its first and last 256 KiB) and the order in which
the shards were run. A rerun compares the files it finds now with that record. Positions in a sorted file
list are never used as identities: adding one file would otherwise shift every later shard onto another
file's markers, so the new file's documents would never be read and another file's would be emitted twice.

When the files differ the run refuses, naming the added, removed and changed files — or, with
``update``, the executor withdraws the outputs of removed and changed shards and processes exactly the
new and changed files (see :meth:`mai.data.pipeline.executor.PipelineRun.apply_changes`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import xxhash

from mai.errors import MaiError

FULL_HASH_BYTES = 1 << 20  # files up to 1 MiB are hashed whole
EDGE_BYTES = 1 << 18  # larger ones: their first and last 256 KiB (with size and mtime)
MANIFEST = "inputs.json"
VERSION = 1


def file_key(path: str) -> str:
    """A short, stable name for one input file (its absolute path hashed), used in shard keys and ids."""
    return xxhash.xxh64_hexdigest(os.path.abspath(path).encode("utf-8", "surrogateescape"))[:12]


def fingerprint(path: str) -> dict[str, Any]:
    """Size, mtime and a content hash of ``path``; ``full`` says whether the hash covers every byte."""
    st = os.stat(path)
    h = xxhash.xxh64()
    with open(path, "rb") as fh:
        if st.st_size <= FULL_HASH_BYTES:
            h.update(fh.read())
        else:
            h.update(fh.read(EDGE_BYTES))
            fh.seek(-EDGE_BYTES, os.SEEK_END)
            h.update(fh.read(EDGE_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": h.hexdigest(),
            "full": st.st_size <= FULL_HASH_BYTES}


def refresh(path: str, old: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """(the file's fingerprint now, whether its content is the recorded one).

    Unchanged size and mtime are trusted without reading the file (a resume stays cheap). A file whose
    mtime moved but whose whole-file hash is the same (copied, touched) is unchanged; for a large file,
    whose hash covers only its edges, a moved mtime counts as a change: reading it again is cheaper than
    losing an edit in its middle.
    """
    st = os.stat(path)
    if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
        return old, True
    new = fingerprint(path)
    same = bool(old) and old["size"] == new["size"] and old["hash"] == new["hash"] and new["full"]
    return new, same


@dataclasses.dataclass
class InputChanges:
    """How the files found now differ from a work directory's record, by file and by shard."""

    added: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    changed: list[str] = dataclasses.field(default_factory=list)
    new_shards: list[str] = dataclasses.field(default_factory=list)
    gone_shards: list[str] = dataclasses.field(default_factory=list)
    changed_shards: list[str] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new_shards or self.gone_shards or self.changed_shards)

    def describe(self) -> str:
        """One line: '1 added (c.jsonl), 2 changed (a.jsonl, b.jsonl)'."""
        def short(path: str) -> str:
            rel = os.path.relpath(path)
            return path if rel.startswith("..") else rel

        def part(word: str, files: list[str]) -> str:
            more = f", … {len(files) - 5} more" if len(files) > 5 else ""
            names = ", ".join(map(short, files[:5])) + more
            return f"{len(files)} {word} ({names})"

        parts = [part(w, f) for w, f in (("added", self.added), ("removed", self.removed),
                                          ("changed", self.changed)) if f]
        return "; ".join(parts) or f"{len(self.changed_shards)} shard(s) regrouped"


@dataclasses.dataclass
class Manifest:
    """The record of a work directory's inputs: shard → {source, files: {path: fingerprint}}, run order."""

    shards: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    order: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, work: Path) -> Manifest | None:
        path = work / MANIFEST
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != VERSION:
            raise MaiError(f"{path} was written by another version of mai; use a new work_dir")
        return cls(data["shards"], data["order"])

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "order": self.order, "shards": self.shards}

    def paths(self) -> dict[str, str]:
        """File key → path, for showing ids (``SOURCE:FILEKEY:OFFSET``) with their file."""
        return {file_key(p): p for s in self.shards.values() for p in s["files"]}


def compare(old: Manifest | None, current: dict[str, tuple[str, tuple[str, ...]]]) -> tuple[Manifest,
                                                                                           InputChanges]:
    """The manifest of the ``current`` shards (key → (source, files), in listing order) and its changes.

    The run order keeps the recorded order of the shards that remain and appends new shards at the end, so
    cross-shard decisions already taken (which copy of a duplicate was first) stay valid.
    """
    old = old or Manifest()
    new = Manifest()
    changes = InputChanges()
    old_files = {p: fp for s in old.shards.values() for p, fp in s["files"].items()}
    for key, (source, files) in current.items():
        recorded = old.shards.get(key)
        fps, same = {}, recorded is not None and set(recorded["files"]) == set(files)
        for path in files:
            fps[path], unchanged = refresh(path, old_files.get(path))
            same = same and unchanged
            if path not in old_files:
                changes.added.append(path)
            elif not unchanged:
                changes.changed.append(path)
        new.shards[key] = {"source": source, "files": fps}
        if recorded is None:
            changes.new_shards.append(key)
        elif not same:
            changes.changed_shards.append(key)
    changes.added, changes.changed = list(dict.fromkeys(changes.added)), list(dict.fromkeys(changes.changed))
    now_files = {p for _, files in current.values() for p in files}
    changes.removed = sorted(p for p in old_files if p not in now_files)
    changes.gone_shards = [k for k in old.order if k not in current]
    new.order = [k for k in old.order if k in current] + [k for k in current if k not in old.shards]
    return new, changes
