"""What keeps a long run alive: bad steps skipped on the device, and stop requests agreed by all ranks.

:class:`StepGuard` decides on the device whether an optimizer step is applied: a non-finite loss or
gradient norm, or (``train.loss_spike`` > 0) a loss above ``loss_spike`` × the running mean of good
losses, marks the step bad; the fused AdamW kernel then skips it (``found_inf``) without the host ever
waiting for the GPU. The flags and the length of the current run of bad steps are read by the host only
when it logs, where ``train.max_bad_steps`` consecutive bad steps make the trainer reload the last
checkpoint and continue with the data after the offending batches.

:class:`StopRequest` turns SIGTERM / SIGUSR1 (what torchrun and Slurm send before killing a job) and
``train.max_minutes`` into one decision every rank takes at the same step: the flags meet in an
all-reduce over a CPU (gloo) group, so agreeing costs no GPU synchronisation.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

import torch
import torch.distributed as dist

EMA_DECAY = 0.9  # weight of the old running mean of good losses at each good step


class StepGuard:
    """The device-side verdict on each step (see the module docstring)."""

    def __init__(self, device: torch.device, loss_spike: float):
        self.loss_spike = loss_spike
        self.mean = torch.zeros((), device=device)  # running mean of good losses; 0 = none yet
        self.bad_run = torch.zeros((), device=device)  # consecutive bad steps up to the last one
        self.flags: list[torch.Tensor] = []  # one 0/1 per step since the host last looked

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """1.0 if this step must be skipped, else 0.0 (a device scalar; no host sync)."""
        loss, grad_norm = loss.float(), grad_norm.to(loss.device).float()
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if self.loss_spike > 0:
            bad = bad | ((self.mean > 0) & (loss > self.loss_spike * self.mean))
        updated = torch.where(self.mean > 0, EMA_DECAY * self.mean + (1 - EMA_DECAY) * loss, loss)
        self.mean = torch.where(bad, self.mean, updated)
        self.bad_run = torch.where(bad, self.bad_run + 1, torch.zeros_like(self.bad_run))
        flag = bad.float()
        self.flags.append(flag)
        return flag

    def read(self) -> tuple[list[bool], int]:
        """(bad flag of each step since the last read, consecutive bad steps now): one host sync."""
        if not self.flags:
            return [], 0
        values = torch.stack([*self.flags, self.bad_run]).tolist()
        self.flags = []
        return [v > 0 for v in values[:-1]], int(values[-1])

    def forget(self) -> None:
        """After a reload: the bad run is over and the running mean starts again."""
        self.mean.zero_()
        self.bad_run.zero_()
        self.flags = []


class StopRequest:
    """SIGTERM / SIGUSR1 and a time limit, agreed by every rank (see the module docstring)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, max_minutes: float, group: dist.ProcessGroup | None):
        self.deadline = time.monotonic() + 60 * max_minutes if max_minutes else None
        self.group = group
        self.received: str | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name

    def poll(self) -> str | None:
        """Why every rank stops now ("SIGTERM", "SIGUSR1", "time"), or None; collective when distributed."""
        local = 2 if self.received else int(self.deadline is not None and time.monotonic() > self.deadline)
        if self.group is not None:
            flag = torch.tensor([local])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            local = int(flag.item())
        if local == 2:
            return self.received or "signal"  # a peer got it; this rank may not have yet
        return "time" if local == 1 else None

    def restore(self) -> None:
        """Put back the handlers that were there before (a later signal ends the process as usual)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
