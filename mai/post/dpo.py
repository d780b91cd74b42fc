"""`mai dpo`: Direct Preference Optimization (Rafailov et al., 2023) on the one trainer.

Each pair is a prompt (OpenAI messages, or a string = one user message) with a ``chosen`` and a
``rejected`` assistant reply, rendered with the chat template; only the reply's tokens count. The
reference model is the starting model, frozen: its log-probabilities of every reply are computed once
before training and stored with the data (the same numbers a second frozen copy would give at each step,
without holding it in memory). The loss is ``-log σ(β·[(π_c − ref_c) − (π_r − ref_r)])``; the implicit
rewards ``β·(π − ref)`` of chosen and rejected, their margin and the share of pairs ranked right are
logged at every step beside the loss.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mai.errors import MaiError
from mai.fileio import atomic_write_text
from mai.post.chat_data import (
    Encoded,
    check_messages,
    chitchat_conversations,
    encode_conversation,
    pack,
    read_jsonl,
)
from mai.post.sft import RowSampler, save_array, targets
from mai.tokenizer import MaiTokenizer
from mai.train.config import RunConfig
from mai.train.trainer import BatchSource, TrainResult, train

Pair = tuple[list[dict[str, str]], str, str]  # prompt messages, chosen, rejected


@dataclass
class DPOOptions:
    """`mai dpo`'s own settings as config fields, saved in the run's config.yaml with the rest."""

    data: list[str] = field(default_factory=list)  # JSONL of {prompt, chosen, rejected}; empty = demo pairs
    beta: float = 0.1  # DPO temperature β
    demo_limit: int = 200  # chitchat demo pairs (when data is empty)


@dataclass
class DPORunConfig(RunConfig):
    dpo: DPOOptions = field(default_factory=DPOOptions)


def read_pairs(path: str | Path) -> list[tuple[Pair, str]]:
    out = []
    for record, where in read_jsonl(path, key=None):
        if not isinstance(record, dict) or not all(k in record for k in ("prompt", "chosen", "rejected")):
            raise MaiError(f"{where}: expected an object with prompt, chosen and rejected")
        prompt = record["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        for key in ("chosen", "rejected"):
            if not isinstance(record[key], str) or not record[key].strip():
                raise MaiError(f"{where}: {key} must be a non-empty string (the assistant's reply)")
        if not isinstance(prompt, list):
            raise MaiError(f"{where}: prompt must be a string or a list of messages")
        check_messages(prompt + [{"role": "assistant", "content": record["chosen"]}], where)
        out.append(((prompt, record["chosen"], record["rejected"]), where))
    if not out:
        raise MaiError(f"{path} holds no preference pairs")
    return out


def demo_pairs(limit: int = 200) -> list[tuple[Pair, str]]:
    """Chitchat demo: the real reply to a first message is chosen, another conversation's reply rejected."""
    convos = list(chitchat_conversations(limit + 1))
    return [(([c[0]], c[1]["content"], convos[i + 1][1]["content"]), f"chitchat-dataset conversation {i}")
            for i, c in enumerate(convos[:-1])]


def encode_pairs(tok: MaiTokenizer, pairs: list[tuple[Pair, str]]) -> tuple[list[Encoded], list[Encoded]]:
    chosen, rejected = [], []
    for (prompt, good, bad), where in pairs:
        for reply, out in ((good, chosen), (bad, rejected)):
            messages = prompt + [{"role": "assistant", "content": reply}]
            out.append(encode_conversation(tok, messages, where, last_only=True))
    return chosen, rejected


def sequence_logp(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of log P(target) over the positions whose target is not -100, per row."""
    keep = y != -100
    logp = torch.log_softmax(logits.float(), -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
    return (logp * keep).sum(-1)


@torch.no_grad()
def reference_logps(model: torch.nn.Module, tokens: np.ndarray, mask: np.ndarray,
                    batch: int = 8) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(tokens), batch):
        x, y = targets(tokens[i:i + batch], mask[i:i + batch])
        out.append(sequence_logp(model(x), y))
    return torch.cat(out).numpy()


def dpo_objective(beta: float) -> Callable[[Callable, tuple], tuple[torch.Tensor, dict[str, float]]]:
    def objective(model_fn: Callable[[torch.Tensor], torch.Tensor],
                  batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        xc, yc, xr, yr, ref_c, ref_r = batch
        pc, pr = sequence_logp(model_fn(torch.cat([xc, xr])), torch.cat([yc, yr])).chunk(2)
        reward_c, reward_r = beta * (pc - ref_c), beta * (pr - ref_r)
        margin = reward_c - reward_r
        loss = -F.logsigmoid(margin).mean()
        return loss, {"reward_chosen": reward_c.mean().item(), "reward_rejected": reward_r.mean().item(),
                      "reward_margin": margin.mean().item(),
                      "reward_accuracy": (margin > 0).float().mean().item()}
    return objective


def prepare_dpo(pairs: list[tuple[Pair, str]], tok: MaiTokenizer, reference: torch.nn.Module, out_dir: Path,
                seq_len: int, val_fraction: float = 0.1) -> dict[str, Any]:
    chosen, rejected = encode_pairs(tok, pairs)
    every = max(2, round(1 / val_fraction))
    meta: dict[str, Any] = {"seq_len": seq_len}
    for split in ("train", "val"):
        keep = [i for i in range(len(pairs)) if (i % every == every - 1) == (split == "val")] or [0]
        for name, items in (("chosen", chosen), ("rejected", rejected)):
            tokens, mask = pack([items[i] for i in keep], seq_len + 1, tok.pad_id, packing=False)
            save_array(out_dir / f"{split}_{name}_tokens.npy", tokens)
            save_array(out_dir / f"{split}_{name}_mask.npy", mask)
            save_array(out_dir / f"{split}_{name}_ref.npy", reference_logps(reference, tokens, mask))
        meta[split] = {"pairs": len(keep)}
    tok.save(out_dir / "tokenizer")
    return meta


def dpo_source(data_dir: Path, beta: float, batch_size: int) -> BatchSource:
    arrays = {p.stem: np.load(p) for p in data_dir.glob("*.npy")}

    def collate(split: str, rows: list[int]) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        for name in ("chosen", "rejected"):
            out.extend(targets(arrays[f"{split}_{name}_tokens"][rows], arrays[f"{split}_{name}_mask"][rows]))
        return (*out, *(torch.from_numpy(arrays[f"{split}_{n}_ref"][rows]) for n in ("chosen", "rejected")))

    n_val = len(arrays["val_chosen_tokens"])
    val = [collate("val", list(range(i, min(i + batch_size, n_val)))) for i in range(0, n_val, batch_size)]

    def sampler(seed: int, rank: int, world: int, batch: int) -> RowSampler:
        return RowSampler(len(arrays["train_chosen_tokens"]), lambda rows: collate("train", rows), batch,
                          seed, rank, world)

    return BatchSource(sampler, val, dpo_objective(beta), data_dir / "tokenizer")


def run_dpo(cfg: RunConfig, data_files: list[str], beta: float = 0.1,
            demo_limit: int = 200) -> tuple[TrainResult, dict[str, Any]]:
    from mai.interop import load_model

    if not cfg.train.init_from:
        raise MaiError("DPO needs a model to start from: --model PATH (or train.init_from=PATH)")
    reference = load_model(cfg.train.init_from)
    if reference.tokenizer is None:
        raise MaiError(f"{cfg.train.init_from} carries no tokenizer; DPO needs its chat template")
    pairs = [p for f in data_files for p in read_pairs(f)] if data_files else demo_pairs(demo_limit)
    data_dir = Path(cfg.train.out_dir) / "data"
    meta = prepare_dpo(pairs, reference.tokenizer, reference.model, data_dir, cfg.data.seq_len)
    atomic_write_text(data_dir / "meta.json", json.dumps({**meta, "beta": beta}, indent=1) + "\n")
    del reference
    return train(cfg, dpo_source(data_dir, beta, cfg.train.batch_size)), meta


def run_dpo_config(cfg: DPORunConfig) -> tuple[TrainResult, dict[str, Any]]:
    """:func:`run_dpo` with every option taken from the config (which the run saves as config.yaml)."""
    return run_dpo(cfg, cfg.dpo.data, cfg.dpo.beta, cfg.dpo.demo_limit)
