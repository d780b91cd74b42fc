"""Training stages on the one trainer: pretraining (`mai train`), SFT (`mai sft`) and DPO (`mai dpo`), each
from its command's typed run config with the recipe's paths filled in; the run's own checkpoints make a
killed stage resume where it stopped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mai.config import from_dict
from mai.errors import MaiError
from mai.fileio import atomic_write_text
from mai.recipe.config import Recipe
from mai.recipe.stage import StagePlan
from mai.recipe.stages_data import text_dirs
from mai.train.trainer import TrainResult

TRAIN_STAGES = ("pretrain", "sft", "dpo")


def _result(result: TrainResult, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"steps": result.steps, "final_loss": result.final_loss, "val_loss": result.val_loss,
            "tokens_per_s": result.tokens_per_s, "precision": result.precision,
            **({"data": meta} if meta else {})}


def student_before(recipe: Recipe, run: Path, stage: str) -> tuple[str | None, list[str]]:
    """(model the stage starts from, the stage that made it) — the last enabled training stage before it."""
    order = TRAIN_STAGES[: TRAIN_STAGES.index(stage)] if stage in TRAIN_STAGES else TRAIN_STAGES
    done = [s for s in order if getattr(recipe, s) is not None]
    return (str(run / done[-1]), [done[-1]]) if done else (None, [])


def _with(data: dict[str, Any], path: str, value: Any) -> None:
    from mai.config import merge

    merge(data, path.split("."), value)


def _init(data: dict[str, Any], recipe: Recipe, run: Path, stage: str) -> list[str]:
    """Fill train.init_from from the previous training stage; returns the stages read (or the user's
    own init_from, which then counts as an input file)."""
    start, upstream = student_before(recipe, run, stage)
    if start is not None:
        _with(data, "train.init_from", start)
    elif not data.get("train", {}).get("init_from"):
        raise MaiError(f"stage {stage}: no model to start from; enable an earlier training stage or set "
                       "train.init_from")
    return upstream


def _inputs(data: dict[str, Any], upstream: list[str]) -> list[str]:
    init = data.get("train", {}).get("init_from")
    return [init] if init and not upstream and not str(init).startswith("bundled:") else []


def pretrain_plan(recipe: Recipe, run: Path, section: dict[str, Any]) -> StagePlan:
    from mai.train.config import RunConfig
    from mai.train.trainer import train

    weights = recipe.shards.weights if recipe.shards else {}
    sources = [s for s in text_dirs(recipe, run) if weights.get(s, 0) > 0]
    if recipe.shards is None or not sources:
        raise MaiError("stage pretrain: needs the shards stage with a positive weight for web or synth")

    def config_at(out: Path, vocab: int | None) -> RunConfig:
        data = json.loads(json.dumps(section))
        mix = [{"path": str(run / "shards" / s), "weight": weights[s]} for s in sources]
        _with(data, "data.sources", mix)
        _with(data, "tokenizer", str(run / "tokenizer" / "tokenizer"))
        _with(data, "train.out_dir", str(out))
        if vocab is not None and not data.get("train", {}).get("init_from"):
            _with(data, "model.vocab_size", vocab)
        return from_dict(RunConfig, data, "pretrain.config")

    config_at(run / "pretrain", None).validate()

    def work(out: Path) -> dict[str, Any]:
        from mai.tokenizer import load_tokenizer

        vocab = load_tokenizer(run / "tokenizer" / "tokenizer").vocab_size
        return _result(train(config_at(out, vocab)))

    return StagePlan("pretrain", section, _inputs(section, []), ["shards", "tokenizer"], work,
                     "model/, checkpoints/, metrics.jsonl, config.yaml")


def sft_plan(recipe: Recipe, run: Path, section: dict[str, Any]) -> StagePlan:
    from mai.post.sft import SFTRunConfig, run_sft_config

    data = json.loads(json.dumps(section))
    upstream = _init(data, recipe, run, "sft")
    if recipe.synth is not None:
        _with(data, "sft.synth", [*data.get("sft", {}).get("synth", []), str(run / "synth")])
        upstream.append("synth")
    from_dict(SFTRunConfig, data, "sft.config").validate()

    def work(out: Path) -> dict[str, Any]:
        d = json.loads(json.dumps(data))
        _with(d, "train.out_dir", str(out))
        result, meta = run_sft_config(from_dict(SFTRunConfig, d, "sft.config"))
        return _result(result, meta)

    inputs = _inputs(data, upstream) + list(data.get("sft", {}).get("data", []))
    return StagePlan("sft", section, inputs, upstream, work, "model/, checkpoints/, metrics.jsonl, "
                     "config.yaml")


def dpo_plan(recipe: Recipe, run: Path, section: dict[str, Any], teacher_url: Callable[[], str]) -> StagePlan:
    from mai.post.dpo import DPORunConfig, run_dpo_config

    cfg = recipe.dpo
    assert cfg is not None
    data = json.loads(json.dumps(section))
    upstream = _init(data, recipe, run, "dpo")
    from_dict(DPORunConfig, data, "dpo.config").validate()

    def work(out: Path) -> dict[str, Any]:
        from mai.recipe.pairs import teacher_student_pairs

        pairs = out / "pairs.jsonl"
        if not pairs.is_file():  # written whole, once: a resumed stage trains on the same pairs
            seq_len = from_dict(DPORunConfig, data, "dpo.config").data.seq_len
            rows = teacher_student_pairs(data["train"]["init_from"], teacher_url(), recipe.teacher.name,
                                         cfg.prompts, cfg.max_tokens, seq_len)
            atomic_write_text(pairs, "".join(json.dumps(r) + "\n" for r in rows))
        d = json.loads(json.dumps(data))
        _with(d, "train.out_dir", str(out))
        _with(d, "dpo.data", [*d.get("dpo", {}).get("data", []), str(pairs)])
        result, meta = run_dpo_config(from_dict(DPORunConfig, d, "dpo.config"))
        return _result(result, meta)

    config = {**section, "prompts": cfg.prompts, "max_tokens": cfg.max_tokens,
              "teacher_model": recipe.teacher.base_url or recipe.teacher.model}
    return StagePlan("dpo", config, _inputs(data, upstream), upstream, work,
                     "pairs.jsonl, model/, checkpoints/, metrics.jsonl, config.yaml", teacher=True)
