"""The recipe file: a run folder, an optional teacher, and the stages in their fixed order.

Each stage section is optional (absent or null = not run) and holds the same typed config its own command
reads (a pipeline YAML for `mai data run`, a run config for `mai train` / `mai sft` / `mai dpo`, an eval
config for `mai eval`), given inline or as a file path, plus dotted ``set:`` overrides. Every section is
resolved when the recipe loads, so an unknown stage or key is an error before anything runs.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Literal

from mai.config import from_dict, load_yaml, merge, parse_override
from mai.errors import MaiError

STAGES = ("web", "synth", "tokenizer", "shards", "pretrain", "sft", "dpo", "eval", "export", "serve")
Section = str | dict[str, Any]  # a YAML file path, or the mapping itself


@dataclasses.dataclass
class TeacherConfig:
    """The teacher the synth, DPO and eval stages ask: started by the recipe with `mai serve` on 127.0.0.1
    (a free port, waited for via /health, stopped at the end, also on failure), or ``base_url`` of a
    running OpenAI-compatible server."""

    model: str = "bundled:smollm2"
    base_url: str | None = None
    name: str = "teacher"  # the model name requests send
    max_seq_len: int = 2048
    threads: int = 1  # torch threads of the served teacher
    startup_timeout_s: float = 600.0


@dataclasses.dataclass
class WebStage:
    pipeline: Section  # `mai data run`'s pipeline; work_dir, output_dir and tokenize are set by the recipe
    set: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SynthStage:
    config: Section  # `mai data synth`'s config; work_dir, teacher.base_url/model and tokenize set here
    set: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TokenizerStage:
    vocab_size: int = 4096
    max_documents: int | None = None  # train on the first N documents of the mixture (None: all)


@dataclasses.dataclass
class ShardsStage:
    """Token shards per source and their share of pretraining (``data.sources`` weights of `mai train`)."""

    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"web": 0.7, "synth": 0.3})
    val_fraction: float = 0.02


@dataclasses.dataclass
class TrainStage:
    """`mai train` / `mai sft` / `mai dpo`: the run config (out_dir, data and init_from are the recipe's)."""

    config: Section = dataclasses.field(default_factory=dict)
    set: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DPOStage(TrainStage):
    prompts: int = 16  # chitchat first turns; the teacher's reply is chosen, the student's rejected
    max_tokens: int = 64  # per reply, both models greedy (so a rerun asks and answers the same)


@dataclasses.dataclass
class EvalStage:
    config: Section = dataclasses.field(default_factory=dict)  # `mai eval`'s EvalConfig; models set here
    set: list[str] = dataclasses.field(default_factory=list)
    teacher: bool = True  # evaluate the teacher's model beside the student (bits per byte compare)
    held_out_docs: int = 200  # web validation documents as a text set (comparable across tokenizers)
    chats: int = 4  # sample chats of the student (and teacher) shown in the report
    contamination: bool = True  # report benchmark examples sharing a 13-gram with the student's shards
    # the sample chats judged pairwise (mai.eval.pairwise, both orders) by the teacher itself, its verdict
    # constrained to JSON ({reason, verdict}): a small teacher is a weak judge biased towards its own
    # answers (the report shows its order agreement beside the win rate); two judge replies per chat
    judge: bool = True
    judge_max_tokens: int = 96


@dataclasses.dataclass
class ExportStage:
    qtype: Literal["F32", "F16", "Q8_0"] = "Q8_0"  # GGUF tensor type of the 2-D weights
    check: bool = True  # load the GGUF with transformers too and record the largest logit difference


@dataclasses.dataclass
class ServeStage:
    name: str = "mai-mini"
    entry: dict[str, Any] = dataclasses.field(default_factory=dict)  # more catalog ModelEntry fields


@dataclasses.dataclass
class Recipe:
    name: str
    run_dir: str
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    web: WebStage | None = None
    synth: SynthStage | None = None
    tokenizer: TokenizerStage | None = None
    shards: ShardsStage | None = None
    pretrain: TrainStage | None = None
    sft: TrainStage | None = None
    dpo: DPOStage | None = None
    eval: EvalStage | None = None
    export: ExportStage | None = None
    serve: ServeStage | None = None
    licence: str = "unknown"  # model card: the licence of the weights
    intended_use: str = "a demonstration of the MAI life-cycle; not for production use"

    def enabled(self) -> list[str]:
        return [s for s in STAGES if getattr(self, s) is not None]


def section(value: Section, overrides: list[str], where: str, base_dir: Path) -> dict[str, Any]:
    """A stage's mapping: inline, or a YAML file's (relative to the recipe), with ``set:`` applied."""
    if isinstance(value, str):
        path = Path(value)
        data = load_yaml(path if path.is_absolute() or path.exists() else base_dir / path)
    else:
        data = copy.deepcopy(value)
    for text in overrides:
        keys, parsed = parse_override(text)
        merge(data, keys, parsed)
    if not isinstance(data, dict):
        raise MaiError(f"{where}: expected a mapping")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; ``overrides`` are dotted keys into it (``sft.set=[optim.lr=1e-4]``)."""
    data = load_yaml(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        merge(data, keys, value)
    unknown = [k for k in data if k not in {f.name for f in dataclasses.fields(Recipe)}]
    if unknown:
        raise MaiError(f"recipe {path}: unknown stage or key '{unknown[0]}' (stages: {', '.join(STAGES)})")
    recipe = from_dict(Recipe, data, "recipe")
    if not recipe.enabled():
        raise MaiError(f"recipe {path}: no stage is enabled (stages: {', '.join(STAGES)})")
    return recipe
