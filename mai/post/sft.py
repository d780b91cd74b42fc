"""`mai sft`: supervised fine-tuning on conversations, on the one trainer (checkpoints, resume, export).

``prepare_sft`` renders and packs the JSONL conversations once into ``<out>/data`` (token rows + loss
mask per split, the tokenizer beside them); ``RowSampler`` serves the rows in a seeded order per epoch and
records its position in every checkpoint, so a killed run resumes exactly. Targets outside the assistant
mask are -100 and carry no loss (:func:`mai.train.trainer.lm_loss`). With ``lora_rank`` the base weights
stay frozen and only LoRA adapters train; they are merged into the exported model ``RUN/model`` and also
kept apart in ``RUN/adapter`` (:func:`mai.post.lora.save_adapter`), which `mai serve` can serve per request
over the base.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mai.errors import MaiError
from mai.fileio import atomic_path, atomic_write_text
from mai.post.chat_data import Encoded, check_messages, encode_conversation, pack, read_jsonl
from mai.tokenizer import MaiTokenizer
from mai.train.config import RunConfig
from mai.train.trainer import BatchSource, TrainResult, train


@dataclass
class SFTOptions:
    """What `mai sft` trains on and how; every flag of the command is a field, so a run's config.yaml repeats
    it (`mai sft --config RUN/config.yaml`)."""

    data: list[str] = field(default_factory=list)  # JSONL conversation files; empty = the chitchat demo
    synth: list[str] = field(default_factory=list)  # `mai data synth` work dirs: instruction data
    lora_rank: int = 0  # 0 = full fine-tuning
    packing: bool = True  # several conversations per row
    demo_limit: int = 400  # conversations of the chitchat demo (when data is empty)


@dataclass
class SFTRunConfig(RunConfig):
    sft: SFTOptions = field(default_factory=SFTOptions)


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, array)


def encode_files(paths: Iterable[str | Path], tok: MaiTokenizer) -> list[Encoded]:
    out = [encode_conversation(tok, check_messages(m, where), where)
           for p in paths for m, where in read_jsonl(p)]
    if not out:
        raise MaiError("the SFT data files hold no conversations")
    return out


def prepare_sft(items: list[Encoded], tok: MaiTokenizer, out_dir: str | Path, seq_len: int,
                val_fraction: float = 0.05, packing: bool = True) -> dict[str, Any]:
    """Pack ``items`` into ``out_dir/{train,val}_{tokens,mask}.npy``; every 1/val_fraction-th goes to val."""
    out = Path(out_dir)
    every = max(2, round(1 / val_fraction)) if val_fraction > 0 else 0
    splits = {"train": [e for i, e in enumerate(items) if not every or i % every != every - 1],
              "val": [e for i, e in enumerate(items) if every and i % every == every - 1] or items[:1]}
    meta: dict[str, Any] = {"seq_len": seq_len, "packing": packing, "tokenizer": tok.fingerprint}
    for split, part in splits.items():
        tokens, mask = pack(part, seq_len + 1, tok.pad_id, packing)
        save_array(out / f"{split}_tokens.npy", tokens)
        save_array(out / f"{split}_mask.npy", mask)
        meta[split] = {"conversations": len(part), "rows": len(tokens),
                       "tokens": int((tokens != tok.pad_id).sum()), "loss_tokens": int(mask.sum())}
    tok.save(out / "tokenizer")
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    return meta


def targets(tokens: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(tokens[:, :-1].astype(np.int64))
    y = torch.from_numpy(np.where(mask[:, 1:], tokens[:, 1:], -100).astype(np.int64))
    return x, y


class RowSampler:
    """Rows in a fresh seeded permutation per epoch; this rank takes every world-th batch slot.

    ``collate(row_indices)`` turns the picked rows into the batch tuple (SFT: inputs and masked targets).
    """

    def __init__(self, rows: int, collate: Callable[[list[int]], tuple[torch.Tensor, ...]], batch: int,
                 seed: int, rank: int = 0, world: int = 1) -> None:
        self.rows, self.collate, self.batch = rows, collate, batch
        self.seed, self.rank, self.world = seed, rank, world
        self.draws = 0  # rows drawn so far by all ranks together

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        picks = []
        for i in range(self.batch):
            epoch, at = divmod(self.draws + i * self.world + self.rank, self.rows)
            picks.append(int(np.random.default_rng([self.seed, epoch]).permutation(self.rows)[at]))
        self.draws += self.batch * self.world
        return self.collate(picks)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rows") != self.rows:
            raise MaiError("the checkpoint was written with other training data; use a new train.out_dir")
        self.draws = int(state["draws"])


def sft_source(data_dir: str | Path, batch_size: int, lora_rank: int = 0, adapter_dir: Path | None = None,
               base: str = "") -> BatchSource:
    """The SFT rows of ``data_dir``; with ``lora_rank``, LoRA adapters that are saved to ``adapter_dir``
    (trained on ``base``) and then merged before the export."""
    data = Path(data_dir)
    arrays = {f"{s}_{k}": np.load(data / f"{s}_{k}.npy")
              for s in ("train", "val") for k in ("tokens", "mask")}
    val = [targets(arrays["val_tokens"][i:i + batch_size], arrays["val_mask"][i:i + batch_size])
           for i in range(0, len(arrays["val_tokens"]), batch_size)]
    adapt = finalize = None
    if lora_rank:
        from mai.post.lora import add_lora, merge_lora, save_adapter

        def adapt(model: torch.nn.Module) -> None:
            add_lora(model, lora_rank)

        def finalize(model: torch.nn.Module) -> None:
            if adapter_dir is not None:
                save_adapter(model, adapter_dir, base)
            merge_lora(model)
    tokens, mask = arrays["train_tokens"], arrays["train_mask"]

    def sampler(seed: int, rank: int, world: int, batch: int) -> RowSampler:
        return RowSampler(len(tokens), lambda rows: targets(tokens[rows], mask[rows]), batch, seed, rank,
                          world)

    return BatchSource(sampler, val, tokenizer_dir=data / "tokenizer", adapt=adapt, finalize=finalize)


def run_sft(cfg: RunConfig, data_files: list[str], lora_rank: int = 0, packing: bool = True,
            demo_limit: int = 400, synth_dirs: Sequence[str] = ()) -> tuple[TrainResult, dict[str, Any]]:
    """Prepare the data (or the chitchat demo set when no files are given), plus the instruction data of
    any ``mai data synth`` runs in ``synth_dirs``, and train from train.init_from."""
    from mai.interop import load_model
    from mai.post.chat_data import chitchat_conversations, synth_conversations

    if not cfg.train.init_from:
        raise MaiError("SFT needs a model to start from: --model PATH (or train.init_from=PATH)")
    tok = load_model(cfg.train.init_from).tokenizer
    if tok is None:
        raise MaiError(f"{cfg.train.init_from} carries no tokenizer; SFT needs its chat template")
    if data_files:
        items = encode_files(data_files, tok)
    else:
        items = [encode_conversation(tok, m, f"chitchat-dataset conversation {i}")
                 for i, m in enumerate(chitchat_conversations(demo_limit))]
        items = [e for e in items if len(e.ids) <= cfg.data.seq_len + 1]  # the demo drops overlong chats
    items += [encode_conversation(tok, m, where) for d in synth_dirs for m, where in synth_conversations(d)]
    data_dir = Path(cfg.train.out_dir) / "data"
    meta = prepare_sft(items, tok, data_dir, cfg.data.seq_len, packing=packing)
    source = sft_source(data_dir, cfg.train.batch_size, lora_rank, Path(cfg.train.out_dir) / "adapter",
                        cfg.train.init_from)
    return train(cfg, source), meta


def run_sft_config(cfg: SFTRunConfig) -> tuple[TrainResult, dict[str, Any]]:
    """:func:`run_sft` with every option taken from the config (which the run saves as config.yaml)."""
    o = cfg.sft
    return run_sft(cfg, o.data, o.lora_rank, o.packing, o.demo_limit, o.synth)
