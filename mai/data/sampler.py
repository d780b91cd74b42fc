"""Training batches from token datasets: deterministic, exactly resumable, mixed by weight, split by rank.

Each dataset is cut into windows of ``seq_len + 1`` tokens starting every ``seq_len`` tokens; an epoch of a
dataset visits its windows in a seeded permutation, a fresh one each epoch. Global sample ``g`` comes from
the dataset chosen by a uniform number that depends only on ``(seed, g)`` (a counter-based Philox stream),
so the mixture never depends on history. The only state is the next global sample index and how many
windows each dataset has served, which makes ``state_dict`` tiny and resuming exact.

With ``world_size`` ranks, global batch ``s`` is samples ``[s·B·W, (s+1)·B·W)`` and rank ``r`` takes the
``r``-th slice of ``B`` of them, so the ranks together see exactly the single-process stream with batch
``B·W``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from mai.data.shards import TokenDataset
from mai.errors import MaiError


def _windows(ds: TokenDataset, seq_len: int) -> int:
    """How many windows of seq_len + 1 tokens start at multiples of seq_len."""
    count = (ds.n_tokens - 1) // seq_len
    if count < 1:
        raise MaiError(f"split {ds.split!r} of {ds.dir} has {ds.n_tokens} tokens, fewer than one window of "
                       f"seq_len + 1 = {seq_len + 1}; use more data (a larger --val-fraction for val) "
                       "or a shorter seq_len")
    return count


def _uniforms(seed: int, start: int, count: int) -> np.ndarray:
    """Uniform [0, 1) numbers for global samples start..start+count-1: a pure function of (seed, index)."""
    # Philox is counter-based: counter c yields outputs 4c..4c+3, so sample g reads output g.
    raw = np.random.Philox(key=seed, counter=start // 4).random_raw(start % 4 + count)[start % 4:]
    return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _to_tensors(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(windows.astype(np.int64))
    return tokens[:, :-1], tokens[:, 1:]


class MixtureSampler:
    """Batches of ``(inputs [B, T], targets [B, T])`` int64 tensors drawn from weighted token datasets."""

    def __init__(self, sources: Sequence[tuple[TokenDataset, float]], seq_len: int, batch_size: int,
                 seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not sources:
            raise MaiError("the sampler needs at least one dataset")
        if seq_len < 1 or batch_size < 1:
            raise MaiError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        if seed < 0:
            raise MaiError(f"seed must be a non-negative integer, got {seed}")
        if not 0 <= rank < world_size:
            raise MaiError(f"rank {rank} must lie in [0, world_size={world_size})")
        weights = np.array([float(w) for _, w in sources])
        if not np.all(np.isfinite(weights) & (weights > 0)):
            raise MaiError(f"dataset weights must be positive numbers, got {weights.tolist()}")
        self.datasets = [ds for ds, _ in sources]
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self._n_windows = [_windows(ds, seq_len) for ds in self.datasets]
        self._bounds = np.cumsum(weights / weights.sum())
        self._bounds[-1] = 1.0
        self._sample = 0  # next global sample index
        self._served = [0] * len(self.datasets)  # windows taken from each dataset so far (all ranks)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}  # dataset -> (epoch, permutation)

    def _window_start(self, d: int, position: int) -> int:
        epoch, i = divmod(position, self._n_windows[d])
        cached = self._perms.get(d)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, d, epoch])
            cached = (epoch, rng.permutation(self._n_windows[d]))
            self._perms[d] = cached
        return int(cached[1][i]) * self.seq_len

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_batch = self.batch_size * self.world_size
        choice = np.searchsorted(self._bounds, _uniforms(self.seed, self._sample, global_batch), side="right")
        mine = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        windows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for j, d in enumerate(choice):
            d = int(d)
            if j in mine:
                start = self._window_start(d, self._served[d])
                windows[j - mine.start] = self.datasets[d].get(start, self.seq_len + 1)
            self._served[d] += 1
        self._sample += global_batch
        return _to_tensors(windows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """The position in the stream (JSON-serialisable); the same on every rank."""
        return {"version": 1, "seed": self.seed, "seq_len": self.seq_len, "sample": self._sample,
                "served": list(self._served), "windows": list(self._n_windows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise MaiError(f"unknown sampler state version {state.get('version')!r}")
        mine = {"seed": self.seed, "seq_len": self.seq_len, "windows": list(self._n_windows)}
        for key, value in mine.items():
            if state.get(key) != value:
                raise MaiError(f"cannot resume the data stream: the checkpoint has {key}={state.get(key)!r}, "
                               f"this run has {value!r} (same datasets, seed and seq_len are needed)")
        self._sample = int(state["sample"])
        self._served = [int(n) for n in state["served"]]


class ValidationBatches(Sequence):
    """A fixed list of validation batches: consecutive windows from the start of the dataset.

    Windows start every ``seq_len`` tokens, so each token is predicted once; at most ``max_batches``
    batches of ``batch_size`` windows (the last batch may be smaller when the data runs out).
    """

    def __init__(self, ds: TokenDataset, seq_len: int, batch_size: int, max_batches: int) -> None:
        if seq_len < 1 or batch_size < 1 or max_batches < 1:
            raise MaiError("seq_len, batch_size and max_batches must be positive")
        self.ds, self.seq_len, self.batch_size = ds, seq_len, batch_size
        self.n_windows = min(_windows(ds, seq_len), batch_size * max_batches)

    def __len__(self) -> int:
        return -(-self.n_windows // self.batch_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        first = i * self.batch_size
        count = min(self.batch_size, self.n_windows - first)
        tokens = self.ds.get(first * self.seq_len, count * self.seq_len + 1)
        idx = np.arange(count)[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        return _to_tensors(tokens[idx])
