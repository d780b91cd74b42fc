"""Prompts for the teacher: topic × style × audience templates, or one prompt per seed document.

Each prompt carries the values that made it, so every generated document records its provenance.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from mai.data.pipeline.readers import open_binary
from mai.data.pipeline.synth.config import PromptConfig
from mai.errors import MaiError

TEMPLATE_ID = "topic-style-audience-v1"
SEED_TEMPLATE_ID = "seed-document-v1"

STYLE_INSTRUCTIONS = {
    "textbook": "Write a section of a textbook",
    "story": "Write a short story that teaches",
    "blog": "Write a blog post",
    "how-to": "Write a step-by-step how-to guide",
}


@dataclasses.dataclass
class Prompt:
    messages: list[dict[str, str]]
    template: str
    fields: dict[str, Any]


def topic_prompt(topic: str, style: str, audience: str) -> str:
    lead = STYLE_INSTRUCTIONS.get(style, f"Write a {style}")
    return (f"{lead} about {topic} for {audience}. Be accurate and clear, explain with concrete examples, "
            f"and write in plain prose without a title.")


def seed_prompt(seed: str, style: str, audience: str) -> str:
    lead = STYLE_INSTRUCTIONS.get(style, f"Write a {style}")
    return (f"Here is an extract from a web page:\n\n{seed}\n\n{lead} for {audience} on the subject of the "
            "extract. Do not copy it; explain the ideas in your own words, in plain prose without a title.")


def _seeds(cfg: PromptConfig) -> list[str]:
    seeds = []
    for path in cfg.seed_files:
        with open_binary(path) as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    text = row.get(cfg.seed_key) if isinstance(row, dict) else None
                    if isinstance(text, str) and text.strip():
                        seeds.append(text.strip()[: cfg.seed_chars])
    return seeds


def build_prompts(cfg: PromptConfig) -> list[Prompt]:
    """All prompts, in a fixed order (the same on every run, so the cache and resume line up)."""
    prompts = []
    if cfg.mode == "templates":
        if not cfg.topics:
            raise MaiError("synth.prompts.topics is empty: list topics, or use mode: seeds with seed_files")
        for topic, style, audience in itertools.product(cfg.topics, cfg.styles, cfg.audiences):
            prompts.append(Prompt([{"role": "user", "content": topic_prompt(topic, style, audience)}],
                                  TEMPLATE_ID, {"topic": topic, "style": style, "audience": audience}))
    else:
        seeds = _seeds(cfg)
        if not seeds:
            raise MaiError("synth.prompts.seed_files hold no seed documents")
        combos = list(itertools.product(cfg.styles, cfg.audiences))
        for i, seed in enumerate(seeds):
            style, audience = combos[i % len(combos)]
            prompts.append(Prompt([{"role": "user", "content": seed_prompt(seed, style, audience)}],
                                  SEED_TEMPLATE_ID, {"seed_index": i, "style": style, "audience": audience}))
    out = [dataclasses.replace(p, fields={**p.fields, "sample": k})
           for p in prompts for k in range(cfg.generations_per_prompt)]
    return out[: cfg.limit] if cfg.limit is not None else out
