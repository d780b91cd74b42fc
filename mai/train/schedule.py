"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD).

WSD keeps the peak rate for most of the run and decays only at the end, so a run can be extended
or branched before its decay (MiniCPM paper, §4).
"""

from __future__ import annotations

import math

from mai.train.config import OptimConfig


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = total - int(total * cfg.decay_fraction)
    if step < decay_start:
        return cfg.lr
    progress = (step - decay_start) / max(1, total - decay_start)
    return cfg.lr - (cfg.lr - floor) * min(1.0, progress)
