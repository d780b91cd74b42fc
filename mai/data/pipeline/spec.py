"""A pipeline declaration: inputs (one reader each), an ordered list of steps, and where results go.

The same declaration comes from YAML (``mai data run PIPELINE.yaml``) or from Python, and serves both
executors (local processes and Ray). Step entries are ``{type: NAME, ...settings}``; NAME is a built-in
step (see :mod:`mai.data.pipeline.registry`) or ``package.module:Class`` for a user's own step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from mai.config import from_dict, load_yaml, merge, parse_override
from mai.data.pipeline.extract import ExtractConfig
from mai.errors import MaiError

ReaderName = Literal["text", "jsonl", "parquet", "warc", "corpus"]


@dataclasses.dataclass
class InputConfig:
    """One source of documents. Every file is one shard (text directories: ``files_per_shard`` files)."""

    source: str
    reader: ReaderName
    paths: list[str] = dataclasses.field(default_factory=list)  # files, directories or glob patterns
    text_key: str = "text"  # JSONL / Parquet field holding the text
    id_key: str = "id"  # kept as metadata["source_id"] when present
    files_per_shard: int = 256  # text reader
    shards: int = 4  # corpus reader: the default corpus is split into this many shards
    limit: int | None = None  # corpus reader: first N documents only (demos, tests)
    extract: ExtractConfig = dataclasses.field(default_factory=ExtractConfig)  # warc reader: HTML → text


@dataclasses.dataclass
class TokenizeConfig:
    """Final step: tokenize kept documents into one token dataset per source (``mai train`` mixes them)."""

    tokenizer: str  # a tokenizer directory or tokenizer.json
    out_dir: str
    shard_tokens: int = 2**24
    val_fraction: float = 0.005


@dataclasses.dataclass
class PipelineSpec:
    name: str
    work_dir: str  # markers, intermediate files, the ledger of removed/failed documents, the report
    inputs: list[InputConfig]
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    output_dir: str | None = None  # kept documents as JSONL.zst per source; defaults to WORK_DIR/output
    tokenize: TokenizeConfig | None = None
    workers: int = 2
    executor: Literal["local", "ray"] = "local"

    def __post_init__(self) -> None:
        if not self.inputs:
            raise MaiError("pipeline: 'inputs' is empty; declare at least one {source, reader, paths}")
        if self.workers < 1:
            raise MaiError(f"pipeline.workers must be >= 1, got {self.workers}")
        for i, step in enumerate(self.steps):
            if not isinstance(step, dict) or not isinstance(step.get("type"), str):
                raise MaiError(f"pipeline.steps[{i}] must be a mapping with a 'type' "
                               "(for example type: gopher_quality)")

    @property
    def out(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(self.work_dir) / "output"


def load_spec(path: str | Path, overrides: list[str] | None = None) -> PipelineSpec:
    """Read a pipeline YAML file, apply dotted ``key=value`` overrides, and validate it."""
    data = load_yaml(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        merge(data, keys, value)
    return from_dict(PipelineSpec, data, "pipeline")
