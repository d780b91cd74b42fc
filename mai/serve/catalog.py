"""The serving catalog: which models to serve under which names, API keys with their limits, and limits
on requests. A YAML or JSON file::

    models:
      - name: smollm2              # the `model` field clients send
        path: bundled:smollm2      # a .gguf, a HF directory, a mai run/model directory
        max_batch: 32
        max_seq_len: 2048              # context served (defaults to the model's, capped here)
        quant: gguf                # optional: int8 weight-only linears, or gguf: the .gguf file's own
                                   # Q4_0/Q4_1/Q8_0 blocks (default none: float weights)
        compile: true              # optional: decode steps as compiled graphs (default false: eager)
        pooling: mean              # /v1/embeddings: mean of the tokens' final states, or last (token)
        adapters:                  # LoRA adapters (RUN/adapter of `mai sft --lora-rank R`) served over
          - name: smollm2-pirate   # this one base without merging, each under its own model name; a
            path: runs/pirate/adapter   # request's `model` picks one; they share batches with the base
        safety: {prompt: medium, completion: medium}   # block at this severity and above (or "off")
                                   # judge_model: a served name or http://host:port/v1#model (optional)
    api_keys:                      # none: the API is open (fine on 127.0.0.1)
      - key: sk-local-1
        requests_per_minute: 60
        tokens_per_minute: 20000
        safety: {prompt: low}      # a key may be stricter (or laxer) than the model
    limits: {max_body_bytes: 1048576, max_prompt_tokens: 4096, max_tokens: 2048, max_waiting: 256,
             body_timeout_seconds: 30, drain_seconds: 30}

An adapter is listed in /v1/models with ``parent`` = its base's name and shares that entry's engine,
settings, safety and speculative decoding; one whose folder is missing, was trained on another base, or
whose shapes do not fit is a load error that names it (/health says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mai.config import from_dict, load_yaml
from mai.errors import MaiError
from mai.infer.quant import QUANT_MODES


@dataclass
class SafetyConfig:
    prompt: str = "medium"  # lowest severity that blocks: low | medium | high | off
    completion: str = "medium"
    # a Llama Guard-style judge (mai.serve.judge): a served model name, or BASE_URL#MODEL of any
    # OpenAI-compatible server (key from MAI_JUDGE_API_KEY); asked about prompts and whole non-streamed
    # completions; streams are screened mid-way by the rules and classifier only
    judge_model: str | None = None
    # the hidden-state classifier (mai.serve.safety_classifier, from `mai safety train`): a .pt path,
    # "off", or unset = the one shipped for SmolLM2-135M-Instruct when this model is that model
    classifier: str | None = None


@dataclass
class SpeculativeConfig:
    """Speculative decoding of one served model (mai.infer.speculative): greedy answers stay exactly
    the same, sampled ones keep their distribution; /metrics counts drafted and accepted tokens."""

    method: Literal["off", "ngram", "draft"] = "off"  # ngram: prompt lookup; draft: a smaller model
    draft_model: str | None = None  # method draft: another catalog model's name, with the same vocabulary
    tokens: int = 4  # drafted per request and step


@dataclass
class AdapterEntry:
    """A LoRA adapter folder (mai.post.lora) served over its model entry's base under ``name``."""

    name: str
    path: str


@dataclass
class ModelEntry:
    name: str
    path: str
    max_batch: int = 32
    max_seq_len: int = 2048
    # "int8": weight-only int8 linears (mai.infer.quant); "gguf": a .gguf file's own blocks
    # (mai.infer.gguf_quant). Either runs any batch through the VNNI kernel where the CPU has one.
    quant: str = "none"
    # decode-only steps as torch.compile graphs, one per (rows, key width) bucket (mai.infer.compiled_decode):
    # faster batch-1 and small-batch decoding; the first request of each bucket waits for its compile
    compile: bool = False
    precision: str = "auto"  # auto: bf16 only where it wins on a decode batch of 8 rows (mai.precision)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    pooling: Literal["mean", "last"] = "mean"  # how /v1/embeddings pools the final hidden states
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    adapters: list[AdapterEntry] = field(default_factory=list)  # mai.infer.lora_serving

    def served_names(self) -> list[str]:
        """The `model` names this entry answers to: its own, then its adapters'."""
        return [self.name, *(a.name for a in self.adapters)]


@dataclass
class KeyEntry:
    key: str
    requests_per_minute: int = 0  # 0 = unlimited
    tokens_per_minute: int = 0
    safety: dict[str, str] = field(default_factory=dict)


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 8192
    max_tokens: int = 4096
    max_waiting: int = 256  # queued requests per model beyond which new ones get 503
    body_timeout_seconds: float = 30.0  # a body not complete by then → 408, connection closed
    drain_seconds: float = 30.0  # on SIGTERM: running requests may finish this long, then are cancelled


@dataclass
class Catalog:
    models: list[ModelEntry]
    api_keys: list[KeyEntry] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.models:
            raise MaiError("the catalog lists no models")
        if self.limits.body_timeout_seconds <= 0 or self.limits.drain_seconds < 0:
            raise MaiError("limits.body_timeout_seconds must be > 0 and limits.drain_seconds ≥ 0")
        names = [m.name for m in self.models]
        served = [n for m in self.models for n in m.served_names()]
        if len(set(served)) != len(served):
            raise MaiError(f"the catalog names a model or adapter twice: {served}")
        for m in self.models:
            if m.quant not in QUANT_MODES:
                raise MaiError(f"model {m.name}: quant '{m.quant}' is not one of {', '.join(QUANT_MODES)}")
            spec = m.speculative
            if spec.method == "draft" and (spec.draft_model not in names or spec.draft_model == m.name):
                raise MaiError(f"model {m.name}: speculative.draft_model must name another model of the "
                               f"catalog ({', '.join(n for n in names if n != m.name) or 'there is none'})")
            if spec.tokens < 1:
                raise MaiError(f"model {m.name}: speculative.tokens must be at least 1, got {spec.tokens}")
            if m.compile and m.adapters:
                raise MaiError(f"model {m.name}: compiled decoding does not apply LoRA adapters; serve its "
                               "adapters with compile: false")
            for level in (m.safety.prompt, m.safety.completion):
                if level not in ("low", "medium", "high", "off"):
                    raise MaiError(f"model {m.name}: safety level '{level}' is not low, medium, high or off")


def load_catalog(path: str | Path) -> Catalog:
    """Read a catalog file (YAML, or JSON which YAML reads too)."""
    return from_dict(Catalog, load_yaml(path), str(path))
