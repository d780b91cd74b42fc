"""The layout the scorer feeds: questions as token trees, and few-shot prefixes that questions share.

A question's choices all follow one context, so a :class:`Row` feeds the context once and each choice as
a branch of a trie (a prefix that choices share is one branch until they differ). Across questions, a
few-shot prompt (MMLU's five solved examples per subject) is the same long prefix before every question:
:func:`share_prefixes` finds such prefixes, so the scorer computes their keys and values once per group
and feeds each question only from where it differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np


@dataclass
class Row:
    """A context and the continuations scored after it; ``owners`` are their request indices; ``start``
    is the position of the context's first token (after a shared prefix, its length).

    The last token of a continuation is only predicted, never fed."""

    context: list[int]
    continuations: list[list[int]]
    owners: list[int]
    start: int = 0
    fed: list[int] = field(init=False)  # tokens fed, context first
    parents: list[int] = field(init=False)  # index of each fed token's parent (-1 for the first)
    sources: list[list[int]] = field(init=False)  # per continuation: the fed indices that predict it

    def __post_init__(self) -> None:
        self.fed = list(self.context)
        self.parents = list(range(-1, len(self.context) - 1))
        node: dict[tuple[int, ...], int] = {}
        self.sources = []
        for cont in self.continuations:
            src = [len(self.context) - 1]
            for i in range(1, len(cont)):
                key = tuple(cont[:i])
                if key not in node:
                    node[key] = len(self.fed)
                    self.fed.append(cont[i - 1])
                    self.parents.append(src[-1])
                src.append(node[key])
            self.sources.append(src)

    def __len__(self) -> int:
        return len(self.fed)

    def after(self, n: int) -> Row:
        """The same row with its context's first ``n`` tokens taken away (they are a shared prefix)."""
        return Row(self.context[n:], self.continuations, self.owners, self.start + n)


def tree_mask(parents: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Attention mask (each token sees its ancestors and itself) and depths of a token tree whose
    parents come before their children."""
    n = len(parents)
    mask = np.zeros((n, n), dtype=bool)
    depth = np.zeros(n, dtype=np.int64)
    for i, parent in enumerate(parents):
        if parent >= 0:
            mask[i] = mask[parent]
            depth[i] = depth[parent] + 1
        mask[i, i] = True
    return mask, depth


@dataclass
class PrefixGroup:
    """Rows whose contexts all began with ``prefix`` (cut off them): the prefix runs once for all."""

    prefix: list[int]
    rows: list[Row]


def _common(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def share_prefixes(rows: list[Row], min_shared: int) -> list[PrefixGroup]:
    """Group rows whose contexts begin with the same ``min_shared`` or more tokens. In sorted order a
    group is a run of neighbours, its prefix their common one (short of each context's last token, so
    that every row still feeds one); the runs are chosen to save the most tokens (:func:`_best_runs`).
    Rows that share too little form one group with no prefix."""
    ordered = sorted(rows, key=lambda r: r.context)
    shared = [0] + [min(len(a.context) - 1, len(b.context) - 1, _common(a.context, b.context))
                    for a, b in pairwise(ordered)]
    alone: list[Row] = []
    groups: list[PrefixGroup] = []
    for lo, hi in _best_runs(shared, min_shared):
        if hi - lo == 1:
            alone.append(ordered[lo])
        else:
            n = min(shared[lo + 1:hi])
            groups.append(PrefixGroup(ordered[lo].context[:n], [r.after(n) for r in ordered[lo:hi]]))
    return ([PrefixGroup([], alone)] if alone else []) + groups


def _best_runs(shared: list[int], min_shared: int) -> list[tuple[int, int]]:
    """Split ``0..len(shared)`` into runs [lo, hi) that save the most tokens, where ``shared[k]`` is what
    neighbours k-1 and k share and a run of n rows saves (n - 1) × its smallest ``shared``. A span either
    stays whole or splits where its smallest value sits, the parts solved first (a post-order walk with
    an explicit stack: nested contexts could nest deeper than Python's recursion allows)."""
    if not shared:
        return []
    best: dict[tuple[int, int], tuple[int, list[tuple[int, int]]]] = {}
    todo = [(0, len(shared), False)]
    while todo:
        lo, hi, parts_done = todo.pop()
        if hi - lo == 1:
            best[lo, hi] = (0, [(lo, hi)])
            continue
        low = min(shared[lo + 1:hi])
        cuts = [k for k in range(lo + 1, hi) if shared[k] == low]
        parts = list(zip([lo, *cuts], [*cuts, hi], strict=True))
        if not parts_done:
            todo.append((lo, hi, True))
            todo.extend((a, b, False) for a, b in parts)
            continue
        split_saves = sum(best[part][0] for part in parts)
        whole = (hi - lo - 1) * low
        if low >= min_shared and whole >= split_saves:
            best[lo, hi] = (whole, [(lo, hi)])
        else:
            best[lo, hi] = (split_saves, [run for part in parts for run in best.pop(part)[1]])
    return best[0, len(shared)][1]
