"""One walk for the places that change a model's layers after it is built (int8 quantization, oneDNN
linears, LoRA adapters and their merge): each submodule is offered to a rule that may return its
replacement."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def swap_children(root: nn.Module, replace: Callable[[str, nn.Module], nn.Module | None]) -> int:
    """Set, in place, every submodule of ``root`` (by its attribute name and module) for which ``replace``
    returns a module to that module; returns how many were replaced. The modules are listed before any
    change, so a replacement is not itself offered again."""
    swapped = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            new = replace(name, child)
            if new is not None:
                setattr(parent, name, new)
                swapped += 1
    return swapped
