"""`mai grpo`: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) on the one trainer.

Each optimizer step trains on one *rollout*: ``prompts_per_step`` prompts, each answered ``group_size``
times by the current policy through :class:`mai.infer.engine.Engine` (sampled, every completion seeded by
(run seed, rollout, prompt, sample)), scored by verifiable rewards (:mod:`mai.post.rewards`). A
completion's advantage is its reward minus its group's mean, divided by the group's standard deviation
(no value model). The loss is PPO's clipped surrogate on every completion token,
``-min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)`` with ``ρ = π/π_old``, plus ``kl_coef`` times the k3 estimate of
KL(π‖π_ref), ``exp(ref − logπ) − (ref − logπ) − 1``, against the frozen starting model; per-token terms are
averaged over each completion, then over completions (the paper's normalisation).

The rollouts plug into :func:`mai.train.trainer.train` as a :class:`BatchSource` whose sampler generates
them: checkpoints, exact resume, LoRA, logging and export are the trainer's. The policy's log-probs
``π_old`` and the reference's are computed when the rollout is made and stored with it. The trainer reads
one batch ahead (:mod:`mai.train.batches`), so the rollout for step k+1 is sampled while step k's update is
still to come: the behaviour policy is one update behind, which the ratio ρ (and its clipping) corrects
for, as in PPO. With ``iterations`` μ > 1 each rollout serves μ optimizer steps.

Nothing is lost: every rollout is written to ``<out>/rollouts/rollout_NNNNNN.jsonl`` as soon as its
completions exist, and again with rewards, advantages and log-probs once scored. A resumed run (or a rerun
after a reward failed) reads the saved rollouts instead of sampling them again, so it repeats them
exactly; a new rollout is seeded by its index, so one made after a resume is the one the uninterrupted run
would have made from the same weights.

Per step the run logs ``reward_mean``, ``reward_std``, each reward's mean (``reward_<name>``),
``completion_tokens`` (mean length), ``kl`` (mean k3 per token) and ``clip_fraction`` (tokens whose
ratio was clipped) into ``metrics.jsonl`` beside the loss.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mai.errors import MaiError
from mai.eval.generation import run_requests
from mai.fileio import atomic_write_text, read_jsonl_records
from mai.infer.engine import Engine
from mai.infer.sampling import SamplingParams
from mai.post.rewards import RewardError, RewardSet
from mai.tokenizer import MaiTokenizer
from mai.train.config import RunConfig
from mai.train.trainer import BatchSource, TrainResult, train


@dataclass
class GRPOConfig:
    """The ``grpo:`` section of a `mai grpo` config (``grpo.KEY=VALUE`` on the command line)."""

    group_size: int = 8  # G completions per prompt
    prompts_per_step: int = 4  # prompts in each rollout (rows per optimizer step = this × group_size)
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    clip_eps: float = 0.2
    kl_coef: float = 0.04  # β; 0 = no reference model at all
    iterations: int = 1  # μ: optimizer steps on each rollout
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO's mean-only advantage)
    rewards: dict[str, float] = field(default_factory=lambda: {"correct": 1.0, "format": 0.2})
    chat: bool = True  # prompts as one user message in the chat template (False: plain text)
    lora_rank: int = 0  # train LoRA adapters of this rank instead of all weights
    data: list[str] = field(default_factory=list)  # JSONL of {prompt, answer | tests}; [] = arithmetic demo
    demo_problems: int = 2000
    demo_steps: int = 1  # operations per demo problem
    demo_max_value: int = 20
    demo_seed: int = 0

    def validate(self) -> None:
        if self.group_size < 2:
            raise MaiError(f"grpo.group_size {self.group_size}: a group needs at least 2 completions "
                           "(the advantage is relative to the group)")
        if self.prompts_per_step < 1 or self.iterations < 1 or self.max_new_tokens < 1:
            raise MaiError("grpo.prompts_per_step, grpo.iterations and grpo.max_new_tokens must be ≥ 1")
        if self.temperature <= 0:
            raise MaiError(f"grpo.temperature {self.temperature}: GRPO samples, it must be > 0")
        if not 0 < self.clip_eps < 1 or self.kl_coef < 0:
            raise MaiError(f"grpo.clip_eps {self.clip_eps} must be in (0, 1), "
                           f"grpo.kl_coef {self.kl_coef} ≥ 0")


@dataclass
class GRPORunConfig(RunConfig):
    """A run config with its ``grpo`` section; everything else is `mai train`'s."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)


# --- prompts --------------------------------------------------------------------------------------------
def read_items(path: str | Path) -> list[tuple[dict[str, Any], str]]:
    """``{"prompt": str | messages, "answer"?: …, "tests"?: str, "id"?: …}`` per line, with its place."""
    out = []
    for record, where in read_jsonl_records(path):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), (str, list)):
            raise MaiError(f"{where}: expected an object with a prompt (a string or a list of messages)")
        out.append(({"id": where, **record}, where))
    if not out:
        raise MaiError(f"{path} holds no prompts")
    return out


def prompt_ids(tok: MaiTokenizer, item: dict[str, Any], chat: bool) -> list[int]:
    prompt = item["prompt"]
    if not chat:
        if not isinstance(prompt, str):
            raise MaiError(f"{item['id']}: grpo.chat=false needs a text prompt, not messages")
        return tok.encode(prompt, add_bos=True)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))


def turn_end_id(tok: MaiTokenizer, chat: bool) -> int:
    """The token that ends an answer: the chat template's end-of-turn token (what a served chat stops on),
    or EOS for plain text. Generation stops on it alone, so a completion that stopped ends with it."""
    if not chat:
        return tok.eos_id
    rendered = tok.encode(tok.apply_chat_template([{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": "a"}], False))
    return next((i for i in reversed(rendered) if i in tok.stop_ids), tok.eos_id)


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: no collisions between nearby tuples)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


# --- rollouts -------------------------------------------------------------------------------------------
def token_logps(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """log π(y_t | x_≤t) of the temperature-scaled distribution that sampling used; 0 where y is -100."""
    logits = model(x).float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
    return logp * (y != -100)


@dataclass
class Rollout:
    """One step's completions as training rows (prompt + completion, targets only on the completion)."""

    x: torch.Tensor
    y: torch.Tensor
    old: torch.Tensor
    ref: torch.Tensor
    advantages: torch.Tensor
    stats: dict[str, float]


class RolloutMaker:
    """Samples, scores and stores rollouts; holds the live policy (handed over by the trainer's ``adapt``
    hook) and the frozen reference."""

    def __init__(self, cfg: GRPOConfig, items: list[dict[str, Any]], tok: MaiTokenizer,
                 reference: torch.nn.Module | None, out_dir: Path, max_seq_len: int) -> None:
        self.cfg, self.items, self.tok, self.reference = cfg, items, tok, reference
        self.dir, self.max_seq_len = out_dir / "rollouts", max_seq_len
        self.rewards = RewardSet(cfg.rewards)
        self.rewards.check_items([(it, it["id"]) for it in items])
        self.end_id = turn_end_id(tok, cfg.chat)
        self.prompts = [prompt_ids(tok, it, cfg.chat) for it in items]
        for it, ids in zip(items, self.prompts, strict=True):
            if len(ids) + cfg.max_new_tokens > max_seq_len:
                raise MaiError(f"{it['id']}: the prompt is {len(ids)} tokens; with grpo.max_new_tokens "
                               f"{cfg.max_new_tokens} that exceeds data.seq_len {max_seq_len - 1} + 1")
        self.policy: torch.nn.Module | None = None

    def picks(self, seed: int, index: int) -> list[int]:
        """The prompts of rollout ``index``: a seeded permutation of the items per epoch."""
        n, out = len(self.items), []
        for k in range(index * self.cfg.prompts_per_step, (index + 1) * self.cfg.prompts_per_step):
            epoch, at = divmod(k, n)
            out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[at]))
        return out

    def path(self, index: int) -> Path:
        return self.dir / f"rollout_{index:06d}.jsonl"

    def make(self, seed: int, index: int) -> Rollout:
        settings = self.settings(seed)
        records = self.load(index, settings)
        if records is None:
            records = self.sample(seed, index)
            self.save(index, records, settings, scored=False)
        if "advantage" not in records[0]:
            self.score(records, index)
            self.log_probs(records)
            self.save(index, records, settings, scored=True)
        return self.rows(records)

    def settings(self, seed: int) -> dict[str, Any]:
        """What decides a rollout's completions and scores: a saved one is reused only under the same."""
        c = self.cfg
        return {"seed": seed, "items": len(self.items), "group_size": c.group_size,
                "prompts_per_step": c.prompts_per_step, "max_new_tokens": c.max_new_tokens,
                "temperature": c.temperature, "top_p": c.top_p, "chat": c.chat, "rewards": c.rewards,
                "scale_rewards": c.scale_rewards}

    def load(self, index: int, settings: dict[str, Any]) -> list[dict[str, Any]] | None:
        path = self.path(index)
        if not path.is_file():
            return None
        lines = path.read_text(encoding="utf-8").splitlines()
        header, records = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
        if header.get("settings") != settings or len(records) != header.get("rows"):
            raise MaiError(f"{path} was made with other settings ({header.get('settings')}); use a new "
                           "train.out_dir, or the settings it was made with")
        return records

    def save(self, index: int, records: list[dict[str, Any]], settings: dict[str, Any], scored: bool) -> None:
        header = {"rollout": index, "rows": len(records), "scored": scored, "settings": settings}
        atomic_write_text(self.path(index), "".join(json.dumps(r) + "\n" for r in [header, *records]))

    def sample(self, seed: int, index: int) -> list[dict[str, Any]]:
        """``group_size`` completions of each picked prompt, all decoded together on the engine."""
        if self.policy is None:
            raise MaiError("internal: the GRPO sampler has no policy model (the adapt hook did not run)")
        cfg, out, prompts, params = self.cfg, [], [], []
        engine = Engine(self.policy, self.tok.decode, [self.end_id],
                        max_batch=cfg.prompts_per_step * cfg.group_size, max_seq_len=self.max_seq_len)
        for p, item_index in enumerate(self.picks(seed, index)):
            for g in range(cfg.group_size):
                params.append(SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                             top_p=cfg.top_p, seed=seed_of(seed, index, p, g)))
                prompts.append(self.prompts[item_index])
                out.append({"item": item_index, "group": p, "sample": g, "seed": params[-1].seed})
        try:
            requests = run_requests(engine, prompts, params)
        except MaiError as exc:
            raise MaiError(f"rollout {index}: {exc}") from None
        for record, req in zip(out, requests, strict=True):
            ended = req.finish_reason == "stop"
            record.update(text=req.text, completion_ids=[*req.token_ids, *([self.end_id] if ended else [])],
                          finish_reason=req.finish_reason)
        return out

    def score(self, records: list[dict[str, Any]], index: int) -> None:
        """Rewards, then advantages relative to each prompt's group."""
        items = [self.items[r["item"]] for r in records]
        try:
            totals, parts = self.rewards.score(items, [r["text"] for r in records],
                                               [r["item"] for r in records])
        except RewardError as exc:
            raise RewardError(f"{exc} — the {len(records)} completions of rollout {index} are kept in "
                              f"{self.path(index)}; the same command continues from them") from exc
        rewards = np.array(totals, dtype=np.float64).reshape(-1, self.cfg.group_size)
        centred = rewards - rewards.mean(1, keepdims=True)
        if self.cfg.scale_rewards:
            centred /= rewards.std(1, ddof=1, keepdims=True) + 1e-4
        for k, r in enumerate(records):
            r.update(reward=totals[k], rewards={n: v[k] for n, v in parts.items()},
                     advantage=float(centred.flat[k]))

    @torch.no_grad()
    def log_probs(self, records: list[dict[str, Any]]) -> None:
        """π_old (the policy now, which sampled them) and π_ref per completion token, in fp32."""
        x, y = self.targets(records)
        device = next(self.policy.parameters()).device
        x, y = x.to(device), y.to(device)
        models = [("old_logps", self.policy)] + ([("ref_logps", self.reference)] if self.reference else [])
        for key, model in models:
            logp = torch.cat([token_logps(model, x[i:i + 8], y[i:i + 8], self.cfg.temperature)
                              for i in range(0, len(x), 8)]).cpu()
            for r, row, keep in zip(records, logp, y.cpu() != -100, strict=True):
                r[key] = row[keep].tolist()

    def targets(self, records: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.prompts[r["item"]] + r["completion_ids"] for r in records]
        width = max(len(row) for row in rows)
        tokens = torch.full((len(rows), width), self.tok.pad_id, dtype=torch.long)
        y = torch.full((len(rows), width - 1), -100, dtype=torch.long)
        for i, (row, r) in enumerate(zip(rows, records, strict=True)):
            tokens[i, :len(row)] = torch.tensor(row)
            start = len(self.prompts[r["item"]]) - 1  # first target that is a completion token
            y[i, start:len(row) - 1] = tokens[i, start + 1:len(row)]
        return tokens[:, :-1], y

    def rows(self, records: list[dict[str, Any]]) -> Rollout:
        x, y = self.targets(records)
        keep = y != -100

        def spread(key: str) -> torch.Tensor:
            out = torch.zeros(y.shape, dtype=torch.float32)
            for i, r in enumerate(records):
                if key in r:
                    out[i, keep[i]] = torch.tensor(r[key], dtype=torch.float32)
            return out

        rewards = np.array([r["reward"] for r in records])
        stats = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                 "completion_tokens": float(np.mean([len(r["completion_ids"]) for r in records]))}
        stats.update({f"reward_{n}": float(np.mean([r["rewards"][n] for r in records]))
                      for n in records[0]["rewards"]})
        advantages = torch.tensor([r["advantage"] for r in records], dtype=torch.float32)
        return Rollout(x, y, spread("old_logps"), spread("ref_logps"), advantages, stats)


class RolloutSampler:
    """The trainer's sampler: micro-batch ``k`` of optimizer step ``s`` is a slice of rollout ``s // μ``.

    Its state is the number of micro-batches drawn, so a checkpoint resumes at the same rollout and slice.
    """

    def __init__(self, maker: RolloutMaker, seed: int, batch: int, grad_accum: int) -> None:
        self.maker, self.seed, self.batch, self.grad_accum = maker, seed, batch, grad_accum
        self.draws = 0
        self._current: tuple[int, Rollout] | None = None

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        step, chunk = divmod(self.draws, self.grad_accum)
        index = step // self.maker.cfg.iterations
        if self._current is None or self._current[0] != index:
            self._current = (index, self.maker.make(self.seed, index))
        ro = self._current[1]
        rows = slice(chunk * self.batch, (chunk + 1) * self.batch)
        width = int((ro.y[rows] != -100).any(0).nonzero().max()) + 1  # drop the slice's all-padding tail
        stats = torch.tensor([list(ro.stats.values())], dtype=torch.float32).expand(self.batch, -1)
        self.draws += 1
        return (ro.x[rows, :width], ro.y[rows, :width], ro.old[rows, :width], ro.ref[rows, :width],
                ro.advantages[rows], stats)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "items": len(self.maker.items)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("items") != len(self.maker.items):
            raise MaiError("the checkpoint was written with other GRPO prompts; use a new train.out_dir")
        self.draws = int(state["draws"])
        self._current = None


# --- the objective --------------------------------------------------------------------------------------
def grpo_objective(cfg: GRPOConfig, stat_names: Sequence[str]):
    """(model_fn, batch) → (loss, extras): clipped surrogate plus β·k3 KL, per completion then per batch."""

    def objective(model_fn: Callable[[torch.Tensor], torch.Tensor],
                  batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        x, y, old, ref, advantages, stats = batch
        keep = (y != -100).float()
        logp = token_logps(model_fn, x, y, cfg.temperature)
        ratio = torch.exp(logp - old)
        adv = advantages[:, None]
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
        log_ref_ratio = ref - logp
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1 if cfg.kl_coef else torch.zeros_like(logp)
        per_token = (-surrogate + cfg.kl_coef * kl) * keep
        loss = (per_token.sum(-1) / keep.sum(-1).clamp(min=1)).mean()
        clipped = ((ratio < 1 - cfg.clip_eps) & (adv < 0)) | ((ratio > 1 + cfg.clip_eps) & (adv > 0))
        tokens = keep.sum().clamp(min=1)
        extras = dict(zip(stat_names, stats[0].tolist(), strict=True))
        extras.update(kl=float((kl.detach() * keep).sum() / tokens),
                      clip_fraction=float((clipped.float() * keep).sum() / tokens))
        return loss, extras

    return objective


def grpo_source(maker: RolloutMaker, cfg: GRPOConfig, tokenizer_dir: Path, grad_accum: int) -> BatchSource:
    from mai.post.lora import add_lora, merge_lora

    def adapt(model: torch.nn.Module) -> None:  # the trainer's model, before its optimizer exists
        if cfg.lora_rank:
            add_lora(model, cfg.lora_rank)
        maker.policy = model

    stat_names = ["reward_mean", "reward_std", "completion_tokens", *(f"reward_{n}" for n in cfg.rewards)]
    def sampler(seed: int, rank: int, world: int, batch: int) -> RolloutSampler:
        return RolloutSampler(maker, seed, batch, grad_accum)

    return BatchSource(sampler=sampler, val_batches=[], objective=grpo_objective(cfg, stat_names),
                       tokenizer_dir=tokenizer_dir, adapt=adapt,
                       finalize=merge_lora if cfg.lora_rank else None)


def load_items(cfg: GRPOConfig) -> list[dict[str, Any]]:
    if cfg.data:
        return [item for path in cfg.data for item, _ in read_items(path)]
    from mai.post.arith import arithmetic_problems

    return arithmetic_problems(cfg.demo_problems, cfg.demo_seed, cfg.demo_steps, cfg.demo_max_value)


def run_grpo(cfg: GRPORunConfig) -> tuple[TrainResult, dict[str, Any]]:
    """Train ``cfg.train.init_from`` with GRPO; the rows per optimizer step are one rollout."""
    from mai.interop import load_model

    g = cfg.grpo
    g.validate()
    if not cfg.train.init_from:
        raise MaiError("GRPO needs a model to start from: --model PATH (or train.init_from=PATH)")
    if cfg.parallel:
        raise MaiError("mai grpo runs in one process for now (its rollouts use the local engine); "
                       "remove the parallel settings")
    rows = g.prompts_per_step * g.group_size
    if cfg.train.global_batch not in (0, rows) or rows % cfg.train.batch_size or cfg.train.grad_accum != 1:
        raise MaiError(f"a GRPO step trains on grpo.prompts_per_step × grpo.group_size = {rows} completions: "
                       f"train.batch_size ({cfg.train.batch_size}) must divide it; leave train.global_batch "
                       "and train.grad_accum unset")
    cfg.train.global_batch = rows
    start = load_model(cfg.train.init_from)
    if start.tokenizer is None:
        raise MaiError(f"{cfg.train.init_from} carries no tokenizer; GRPO needs it to read the answers")
    reference = start.model.float().eval().requires_grad_(False) if g.kl_coef else None
    out_dir = Path(cfg.train.out_dir)
    if not cfg.train.resume and (out_dir / "rollouts").is_dir():
        raise MaiError(f"{out_dir / 'rollouts'} holds the rollouts of an earlier run, which a run started "
                       "over (train.resume=false) must not reuse: delete it or use a new train.out_dir")
    items = load_items(g)
    maker = RolloutMaker(g, items, start.tokenizer, reference, out_dir, cfg.data.seq_len + 1)
    tok_dir = out_dir / "data" / "tokenizer"
    start.tokenizer.save(tok_dir)
    result = train(cfg, grpo_source(maker, g, tok_dir, cfg.grad_accum(1)))
    return result, {"prompts": len(items), "rows_per_step": rows, "rollouts": str(maker.dir)}
