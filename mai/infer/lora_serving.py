"""LoRA adapters served without merging: many adapters over one base model, in one batch (vLLM's
multi-LoRA, in its plainest form).

:meth:`AdapterBank.add` checks an adapter folder (:func:`mai.post.lora.read_adapter`) against the base
and turns each linear it adapts into a :class:`MultiLoRALinear` holding the (A, B) of every adapter of
that linear. A step's tokens each carry an adapter id (0: the base alone); the runner opens
:meth:`AdapterBank.step` with them, and every adapted linear adds to the base's output, for each adapter
present, the low-rank update of that adapter's tokens (gathered, :func:`mai.post.lora.lora_delta`,
``index_add``). The base output may come from float, int8 or GGUF-block weights alike: the update is
added to whatever the base layer returns. Nothing is merged, so one copy of the base serves every
request, and an adapter costs its rank per token (``2·r·(in + out)`` multiply-adds per adapted linear).

The active groups are kept per thread: /v1/embeddings runs the same model on its own thread meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from mai.errors import MaiError
from mai.post.lora import Adapter, base_fingerprint, lora_delta, read_adapter

Groups = list[tuple[int, torch.Tensor | None]]  # (adapter id, token rows; None = every row)


class MultiLoRALinear(nn.Module):
    """A base linear (of any kind) plus the low-rank updates of the adapters that adapt it."""

    def __init__(self, base: nn.Module, bank: AdapterBank):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.bank = bank
        self.pairs: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}  # adapter id → (A, B, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        groups = self.bank.active()
        if not groups:
            return y
        rows_in, out = x.reshape(-1, self.in_features), y.reshape(-1, self.out_features)
        for adapter, rows in groups:
            pair = self.pairs.get(adapter)
            if pair is None:  # this adapter leaves this linear as it is
                continue
            if rows is None:
                out += lora_delta(rows_in, *pair)
            else:
                out.index_add_(0, rows, lora_delta(rows_in[rows], *pair))
        return out.view(y.shape)

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.pairs)}"


class AdapterBank:
    """The adapters served over one base model, by id (1, 2, … in the order added)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.names: list[str] = []
        self._fingerprint: str | None = None
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, path: str | Path, base_name: str = "the base") -> int:
        """Check the adapter folder at ``path`` against the base and serve it; returns its id. Every
        problem is a MaiError that names the adapter."""
        try:
            adapter = read_adapter(path)
        except MaiError as exc:
            raise MaiError(f"adapter {name}: {exc}") from None
        self._check_base(name, adapter, base_name)
        param = next(self.model.parameters())
        adapter_id = len(self.names) + 1
        for module_name, (a, b) in adapter.weights.items():
            layer = self._adaptable(name, module_name, a, b)
            layer.pairs[adapter_id] = (a.to(param.device, param.dtype), b.to(param.device, param.dtype),
                                       adapter.scale)
        self.names.append(name)
        return adapter_id

    def _check_base(self, name: str, adapter: Adapter, base_name: str) -> None:
        cfg, trained = self.model.cfg, adapter.base
        shape = {k: getattr(cfg, k) for k in ("vocab_size", "d_model", "n_layers")}
        if {k: trained.get(k) for k in shape} != shape:
            raise MaiError(f"adapter {name} ({adapter.path}) was trained on {trained.get('path')} "
                           f"({', '.join(f'{k} {trained.get(k)}' for k in shape)}); {base_name} has "
                           f"{', '.join(f'{k} {v}' for k, v in shape.items())}")
        if self._fingerprint is None:
            self._fingerprint = base_fingerprint(self.model)
        if trained.get("fingerprint") != self._fingerprint:
            raise MaiError(f"adapter {name} ({adapter.path}) was trained on another model than {base_name}: "
                           f"its base {trained.get('path')} has other token embeddings (fingerprint "
                           f"{str(trained.get('fingerprint'))[:19]}…, this one {self._fingerprint[:19]}…)")

    def _adaptable(self, name: str, module_name: str, a: torch.Tensor, b: torch.Tensor) -> MultiLoRALinear:
        """The MultiLoRALinear at ``module_name`` (made on first use) that (A, B) fits."""
        try:
            layer = self.model.get_submodule(module_name)
        except AttributeError:
            raise MaiError(f"adapter {name}: the base has no layer {module_name}") from None
        if not isinstance(layer, MultiLoRALinear):
            if not hasattr(layer, "in_features"):
                raise MaiError(f"adapter {name}: {module_name} of the base is not a linear layer")
            parent, _, attr = module_name.rpartition(".")
            layer = MultiLoRALinear(layer, self)
            setattr(self.model.get_submodule(parent), attr, layer)
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
            raise MaiError(f"adapter {name}: {module_name} maps {a.shape[1]} → {b.shape[0]} features, the "
                           f"base's {layer.in_features} → {layer.out_features}")
        return layer

    def active(self) -> Groups:
        """The calling thread's current groups (empty outside :meth:`step`)."""
        return getattr(self._local, "groups", [])

    @contextmanager
    def step(self, adapters: Sequence[int] | int, device: torch.device | str = "cpu") -> Iterator[None]:
        """Within it, this thread's forward passes add each token's adapter: ``adapters`` holds one id per
        token of the flat batch (0 = none), or is one id for every token."""
        ids = torch.tensor([adapters] if isinstance(adapters, int) else adapters, dtype=torch.long)
        present = ids.unique().tolist()
        if len(present) == 1:  # one adapter (or none) for every token: no gather, no scatter
            groups: Groups = [(present[0], None)] if present[0] else []
        else:
            groups = [(a, (ids == a).nonzero().flatten().to(device)) for a in present if a]
        self._local.groups = groups
        try:
            yield
        finally:
            self._local.groups = []
