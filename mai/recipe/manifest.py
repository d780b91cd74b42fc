"""A stage's manifest: what went in (content hashes, the resolved config) and what came out (file hashes).

``key`` is the hash of the stage's resolved config, its input files' contents and the keys of the stages
it reads, so a change anywhere upstream changes every key after it. A finished stage folder holds
``manifest.json``; a rerun skips the stage when the key matches and every listed output still hashes the
same, and refuses (naming the stage) when the manifest is unreadable — it never silently redoes work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mai.errors import MaiError
from mai.fileio import atomic_write_text

MANIFEST = "manifest.json"
FORMAT = "mai-recipe-manifest-v1"


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_files(root: Path) -> list[Path]:
    """Every file under ``root`` (or root itself), sorted, skipping hidden temporaries and the manifest."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def content_hash(paths: Iterable[str | Path]) -> dict[str, str]:
    """{path: sha256 of its content (a folder: of its files' names and hashes)}; a missing path: MaiError."""
    out = {}
    for p in map(Path, paths):
        if not p.exists():
            raise MaiError(f"input not found: {p}")
        if p.is_file():
            out[str(p)] = file_hash(p)
        else:
            h = hashlib.sha256()
            for f in tree_files(p):
                h.update(f"{f.relative_to(p)}\0{file_hash(f)}\n".encode())
            out[str(p)] = h.hexdigest()
    return out


def stage_key(config: dict[str, Any], inputs: dict[str, str], upstream: dict[str, str]) -> str:
    text = json.dumps({"config": config, "inputs": inputs, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def output_hashes(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): file_hash(f) for f in tree_files(folder)}


def write_manifest(folder: Path, stage: str, key: str, config: dict[str, Any], inputs: dict[str, str],
                   upstream: dict[str, str], summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    manifest = {"format": FORMAT, "stage": stage, "key": key, "config": config, "inputs": inputs,
                "upstream": upstream, "summary": summary, "seconds": round(seconds, 2),
                "outputs": output_hashes(folder)}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n")
    return manifest


def read_manifest(folder: Path, stage: str) -> dict[str, Any] | None:
    """The folder's manifest; None when the folder does not exist; MaiError when it exists but its manifest
    is missing, unreadable or not this stage's."""
    if not folder.exists():
        return None
    path = folder / MANIFEST
    fix = f"delete {folder} to redo the stage"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise MaiError(f"stage {stage}: {folder} exists but has no {MANIFEST}; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MaiError(f"stage {stage}: {path} is corrupt ({exc}); {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("stage") != stage:
        raise MaiError(f"stage {stage}: {path} is not a {stage} manifest of this format; {fix}")
    return manifest


def changed_outputs(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """The outputs that are gone or no longer hash as the manifest says (empty: the stage is intact)."""
    now = output_hashes(folder)
    return sorted(name for name, digest in manifest["outputs"].items() if now.get(name) != digest)
