"""The training sampler: determinism, epochs without replacement, exact resume, mixing, rank slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mai.data.sampler import MixtureSampler, ValidationBatches
from mai.data.shards import ShardWriter, TokenDataset
from mai.errors import MaiError

T = 8


def _dataset(path: Path, first: int, n_tokens: int) -> TokenDataset:
    """One long document: the token at position p is first + p (then EOS 0), so a token names its place."""
    with ShardWriter(path, "train", 60000, eos_id=0, shard_tokens=97) as w:  # small shards: windows span them
        for lo in range(first, first + n_tokens - 1, 50):
            w.add_document(np.arange(lo, min(lo + 50, first + n_tokens - 1)))
    return TokenDataset(path, "train")


def _plain(path: Path, first: int, n_tokens: int) -> TokenDataset:
    with ShardWriter(path, "train", 60000, eos_id=0, shard_tokens=97) as w:
        w.add_document(np.arange(first, first + n_tokens - 1))
    return TokenDataset(path, "train")


@pytest.fixture()
def a(tmp_path: Path) -> TokenDataset:
    return _plain(tmp_path / "a", 1, 401)  # 50 windows of T + 1 tokens


@pytest.fixture()
def b(tmp_path: Path) -> TokenDataset:
    return _plain(tmp_path / "b", 30000, 161)  # 20 windows


def _take(sampler: MixtureSampler, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [sampler.next_batch() for _ in range(n)]


def _same(xs: list, ys: list) -> bool:
    if len(xs) != len(ys):
        return False
    return all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(xs, ys, strict=True))


def test_batches_are_shifted_windows(a: TokenDataset) -> None:
    x, y = MixtureSampler([(a, 1.0)], T, 4, seed=0).next_batch()
    assert x.shape == y.shape == (4, T) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = x[:, 0] - 1  # token = position + 1
    assert torch.all(starts % T == 0)
    assert torch.equal(y, x + 1)  # each row is a contiguous slice of the data


def test_windows_spanning_shards_and_documents(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "multi", 1, 401)
    assert len(ds._tokens) > 3 and ds.n_docs > 3
    grid = {tuple(ds.get(k * T, T + 1).tolist()) for k in range((ds.n_tokens - 1) // T)}
    assert len(grid) == 50
    seen = set()
    for x, y in _take(MixtureSampler([(ds, 1.0)], T, 5, seed=3), 10):
        for row_x, row_y in zip(x, y, strict=True):
            window = tuple(torch.cat([row_x, row_y[-1:]]).tolist())
            assert window in grid
            seen.add(window)
    assert seen == grid  # one epoch visits every window once, EOS separators included


def test_deterministic_and_seeded(a: TokenDataset, b: TokenDataset) -> None:
    def make(seed: int) -> MixtureSampler:
        return MixtureSampler([(a, 2.0), (b, 1.0)], T, 3, seed=seed)

    assert _same(_take(make(5), 20), _take(make(5), 20))
    assert not _same(_take(make(5), 20), _take(make(6), 20))


def test_each_epoch_is_a_new_permutation_without_replacement(a: TokenDataset) -> None:
    sampler = MixtureSampler([(a, 1.0)], T, 10, seed=1)
    epochs = []
    for _ in range(3):
        starts = torch.cat([x[:, 0] - 1 for x, _ in _take(sampler, 5)]).tolist()  # 50 windows = one epoch
        assert sorted(starts) == list(range(0, 400, T))
        epochs.append(starts)
    assert epochs[0] != epochs[1] != epochs[2]


def test_resume_is_exact(a: TokenDataset, b: TokenDataset) -> None:
    def make() -> MixtureSampler:
        return MixtureSampler([(a, 1.0), (b, 3.0)], T, 4, seed=11)

    never_stopped = make()
    reference = _take(never_stopped, 40)  # several epochs of b
    first = make()
    _take(first, 17)
    state = json.loads(json.dumps(first.state_dict()))  # it must survive JSON
    resumed = make()
    resumed.load_state_dict(state)
    assert _same(_take(resumed, 23), reference[17:])
    assert len(json.dumps(state)) < 300


def test_resume_refuses_other_data(a: TokenDataset, b: TokenDataset) -> None:
    state = MixtureSampler([(a, 1.0)], T, 4, seed=1).state_dict()
    with pytest.raises(MaiError, match="windows"):
        MixtureSampler([(b, 1.0)], T, 4, seed=1).load_state_dict(state)
    with pytest.raises(MaiError, match="seed"):
        MixtureSampler([(a, 1.0)], T, 4, seed=2).load_state_dict(state)


def test_mixing_follows_the_weights(a: TokenDataset, b: TokenDataset) -> None:
    sampler = MixtureSampler([(a, 3.0), (b, 1.0)], T, 50, seed=0)
    from_b = torch.cat([x[:, 0] >= 30000 for x, _ in _take(sampler, 80)]).double().mean().item()
    assert from_b == pytest.approx(0.25, abs=0.03)  # 4000 draws: std 0.007


def test_rank_slices_union_is_the_single_stream(a: TokenDataset, b: TokenDataset) -> None:
    world, per_rank = 3, 2
    single = _take(MixtureSampler([(a, 1.0), (b, 1.0)], T, per_rank * world, seed=4), 12)
    ranks = [_take(MixtureSampler([(a, 1.0), (b, 1.0)], T, per_rank, seed=4, rank=r, world_size=world), 12)
             for r in range(world)]
    for step in range(12):
        assert torch.equal(torch.cat([ranks[r][step][0] for r in range(world)]), single[step][0])
        assert torch.equal(torch.cat([ranks[r][step][1] for r in range(world)]), single[step][1])


def test_stream_does_not_depend_on_batch_size(a: TokenDataset, b: TokenDataset) -> None:
    small = torch.cat([x for x, _ in _take(MixtureSampler([(a, 1.0), (b, 2.0)], T, 2, seed=9), 30)])
    large = torch.cat([x for x, _ in _take(MixtureSampler([(a, 1.0), (b, 2.0)], T, 6, seed=9), 10)])
    assert torch.equal(small, large)


def test_bad_arguments(a: TokenDataset, tmp_path: Path) -> None:
    for weight in (0.0, -1.0, float("nan")):
        with pytest.raises(MaiError, match="positive"):
            MixtureSampler([(a, 1.0), (a, weight)], T, 2, seed=0)
    short = _plain(tmp_path / "short", 1, T)
    with pytest.raises(MaiError, match="fewer than one window"):
        MixtureSampler([(short, 1.0)], T, 2, seed=0)
    with pytest.raises(MaiError, match="rank"):
        MixtureSampler([(a, 1.0)], T, 2, seed=0, rank=2, world_size=2)


def test_validation_batches_are_fixed_consecutive_windows(a: TokenDataset) -> None:
    val = ValidationBatches(a, T, 4, max_batches=3)
    assert len(val) == 3
    starts = torch.cat([x[:, 0] - 1 for x, _ in val]).tolist()
    assert starts == list(range(0, 12 * T, T))
    assert _same(list(val), list(ValidationBatches(a, T, 4, max_batches=3)))
    tail = ValidationBatches(a, T, 16, max_batches=10)  # 50 windows: 16 + 16 + 16 + 2
    assert [x.shape[0] for x, _ in tail] == [16, 16, 16, 2]
    x, y = tail[3]
    assert torch.equal(x[1], torch.from_numpy(a.get(49 * T, T).astype(np.int64)))
    assert torch.equal(y[1], torch.from_numpy(a.get(49 * T + 1, T).astype(np.int64)))  # ends with EOS
