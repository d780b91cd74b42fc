"""The ``mai data synth`` config: teacher endpoint and limits, prompt source, and the pipeline after it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from mai.config import from_dict, load_yaml, merge, parse_override
from mai.data.pipeline.spec import TokenizeConfig


@dataclasses.dataclass
class TeacherConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "teacher"
    api_key: str | None = None  # or set the variable named by api_key_env
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.6  # Cosmopedia's sampling settings (REFERENCES §4)
    top_p: float = 0.95
    max_tokens: int = 1024
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_s: float = 1.0  # first retry delay; doubles each time, with jitter, capped at 60 s
    concurrency: int = 8
    rpm: float = 600.0  # requests per minute
    tpm: float = 500_000.0  # prompt + completion tokens per minute


@dataclasses.dataclass
class PromptConfig:
    mode: Literal["templates", "seeds"] = "templates"
    topics: list[str] = dataclasses.field(default_factory=list)
    styles: list[str] = dataclasses.field(default_factory=lambda: ["textbook", "story", "blog", "how-to"])
    audiences: list[str] = dataclasses.field(
        default_factory=lambda: ["young children", "high school students", "college students", "researchers"])
    seed_files: list[str] = dataclasses.field(default_factory=list)  # JSONL (.gz/.zst) of seed documents
    seed_key: str = "text"
    seed_chars: int = 2000  # seed text cut to this many characters in the prompt
    limit: int | None = None  # at most this many prompts
    generations_per_prompt: int = 1  # > 1 asks again with a different sampling seed


@dataclasses.dataclass
class SynthConfig:
    name: str
    work_dir: str
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    prompts: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    min_completion_tokens: int = 150  # Cosmopedia drops generations under 150 tokens
    drop_truncated: bool = False  # drop generations that hit max_tokens
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # the same steps as `mai data run`
    tokenize: TokenizeConfig | None = None
    workers: int = 1


def load_synth_config(path: str | Path, overrides: list[str] | None = None) -> SynthConfig:
    data = load_yaml(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        merge(data, keys, value)
    return from_dict(SynthConfig, data, "synth")
