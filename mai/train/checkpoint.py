"""Checkpoints that survive a kill at any moment and reshard across process counts.

Model and optimizer state go through ``torch.distributed.checkpoint`` (DCP): each rank writes its own
shards, and a checkpoint saved on N processes loads on M. The run's counters and each rank's sampler and
RNG state sit beside them. Everything is written into ``step_XXXXXXXX.partial`` and renamed to
``step_XXXXXXXX`` only when complete, so the newest complete checkpoint is always intact.

Asynchronous saves run their collectives on a process group of their own (gloo, created once by the
checkpointer): sharing the default group with FSDP's collectives from a background thread interleaves the two
streams of collectives differently on different ranks (the crash at the first checkpoint on 2 ranks),
and NCCL cannot carry the CPU-side coordination anyway. On CUDA the shards are staged into pinned host
memory, reused from one checkpoint to the next.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from mai.errors import MaiError

STATE_FILE = "train_state.json"
# Optimizer state and hyper-parameters keyed by parameter name ("optim.state.layers.3.….exp_avg",
# "optim.param_groups.layers.3.….lr"), not by position in a list of groups: pipeline stages each hold
# other parameters, and a positional ``param_groups.0.params`` list would be one rank's in the file.
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (partial ones are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".partial"))


def remove_partial(root: Path) -> None:
    """Delete what killed writes left behind (``*.partial`` folders); complete checkpoints stay."""
    for p in root.glob("step_*.partial") if root.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)


class Checkpointer:
    """Writes checkpoints from every rank (each call is collective).

    With ``async_save`` the model and optimizer shards are copied to host memory and written by a
    background thread while training goes on; the checkpoint is finished (state file, rename into place,
    pruning) by the next ``save`` or by ``wait``, so a crash meanwhile leaves only a ``.partial`` folder.
    """

    def __init__(self, root: Path, keep: int, async_save: bool = False, pinned: bool = False):
        """Collective when distributed with ``async_save`` (it creates the checkpoint's own gloo group);
        ``pinned``: stage into pinned memory (CUDA)."""
        self.root, self.keep, self.async_save = root, keep, async_save
        # Its own group: no other collective may ever run on it while a background save is in flight.
        self.group = dist.new_group(backend="gloo") if async_save and dist.is_initialized() else None
        self._pending: tuple[Any, Path, Path, dict[str, Any]] | None = None
        self._stager = (DefaultStager(StagingOptions(use_pinned_memory=pinned, use_shared_memory=False,
                                                     use_async_staging=False, use_non_blocking_copy=False))
                        if async_save else None)

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             run_state: dict[str, Any], rank_state: dict[str, Any]) -> Path:
        self.wait()
        rank, _ = _rank_world()
        final = step_dir(self.root, step)
        partial = final.with_name(final.name + ".partial")
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        _barrier()
        with open(partial / f"rank_{rank:05d}.pkl", "wb") as f:
            pickle.dump({**rank_state, "rng": rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        model_sd, optim_sd = get_state_dict(model, optimizer, options=OPTIONS)
        state = {"model": model_sd, "optim": optim_sd}
        with warnings.catch_warnings():  # one process without a process group is a supported DCP mode
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            if self.async_save:
                future = dcp.async_save(state, checkpoint_id=str(partial), process_group=self.group,
                                        async_stager=self._stager)
                self._pending = (future, partial, final, run_state)
                return final
            dcp.save(state, checkpoint_id=str(partial))
        self._finish(partial, final, run_state)
        return final

    def wait(self) -> None:
        """Finish the checkpoint still being written in the background, if any."""
        if self._pending is not None:
            future, partial, final, run_state = self._pending
            self._pending = None
            future.result()
            self._finish(partial, final, run_state)

    def close(self) -> None:
        """Finish any pending save and free the staging buffers."""
        self.wait()
        if self._stager is not None:
            self._stager.close()
            self._stager = None

    def _finish(self, partial: Path, final: Path, run_state: dict[str, Any]) -> None:
        _barrier()
        rank, world = _rank_world()
        if rank == 0:
            step = int(final.name.split("_")[1])
            (partial / STATE_FILE).write_text(json.dumps({**run_state, "step": step, "world_size": world}))
            os.replace(partial, final)  # the moment the checkpoint becomes visible
            for old in list_checkpoints(self.root)[: -self.keep] if self.keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()


def read_run_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MaiError(f"checkpoint {path} is damaged: cannot read {STATE_FILE} ({exc})") from None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    model_config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore model and optimizer (resharding as needed); returns (run state, this rank's state or None
    when the checkpoint was written by a different number of processes)."""
    run_state = read_run_state(path)
    saved_cfg = run_state.get("model_config")
    if saved_cfg != model_config:
        diff = sorted(k for k in set(saved_cfg or {}) | set(model_config)
                      if (saved_cfg or {}).get(k) != model_config.get(k))
        detail = ", ".join(f"{k}: {(saved_cfg or {}).get(k)} vs {model_config.get(k)}" for k in diff[:4])
        raise MaiError(f"checkpoint {path} was made for a different model ({detail}); "
                       "use another train.out_dir or the original model settings")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=OPTIONS)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, checkpoint_id=str(path))
    except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaiError(f"checkpoint {path} is damaged or incomplete: {first[:200]}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=OPTIONS)
    rank, world = _rank_world()
    rank_state = None
    if run_state.get("world_size") == world:
        try:
            with open(path / f"rank_{rank:05d}.pkl", "rb") as f:
                rank_state = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise MaiError(f"checkpoint {path} is damaged: rank {rank} state unreadable ({exc})") from None
        set_rng_state(rank_state.pop("rng"))
    return run_state, rank_state


class RunLock:
    """An exclusive lock on a run directory, held by rank 0 for the life of the process (the kernel drops
    it when the process ends, even by SIGKILL), so two jobs never write one run."""

    NAME = ".lock"

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / self.NAME
        self._file = None

    def acquire(self) -> str | None:
        """Take the lock; None on success, else who holds it (for the error message)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 (held open: the open descriptor is the lock)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            return holder
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        self._file = f
        return None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the lock
            self._file = None
