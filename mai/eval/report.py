"""Results of ``mai eval`` as a text table, a JSON file and a bar chart comparing models per task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mai.fileio import atomic_path, atomic_write_text

# fractions shown in % with their standard error
SCORES = ("acc", "acc_norm", "strict_match", "flexible_extract", "exact_match", "f1", "pass@1", "pass@10",
          "pass@100")


def headline(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The number a chart shows for one task: acc_norm when reported, else acc, else a generative task's
    first metric (GSM8K strict match, pass@1, exact match, F1), else bits per byte."""
    for name in ("acc_norm", "acc", "strict_match", "pass@1", "exact_match", "f1", "bits_per_byte"):
        if name in metrics:
            return name, float(metrics[name])
    return None


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """``results[model][task] = metrics`` as aligned text rows, a column per metric that some task has."""
    present = {name for tasks in results.values() for m in tasks.values() for name in m}
    cols = [c for c in ("n", *SCORES, "perplexity", "bits_per_byte", "seconds") if c in present]
    lines = [f"{'model':<28} {'task':<16} " + " ".join(f"{c:>13}" for c in cols)]
    for model, tasks in results.items():
        for task, m in tasks.items():
            cells = []
            for c in cols:
                v = m.get(c)
                if v is None:
                    cells.append(f"{'-':>13}")
                elif c in SCORES:
                    err = m.get(f"{c}_stderr")
                    cells.append(f"{100 * v:>7.2f}±{100 * err:<5.2f}" if err is not None
                                 else f"{100 * v:>13.2f}")
                elif c == "n":
                    cells.append(f"{int(v):>13d}")
                else:
                    cells.append(f"{v:>13.3f}")
            lines.append(f"{Path(model).name[:28]:<28} {task:<16} " + " ".join(cells))
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    atomic_write_text(path, json.dumps(results, indent=1) + "\n")
    return Path(path)


def plot(results: dict[str, dict[str, dict[str, Any]]], path: str | Path) -> Path:
    """Grouped bars: one group per task, one bar per model, the headline metric (in %, or bits/byte)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for m in results.values() for t in m))
    models = list(results)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(tasks) * max(1, len(models)) ** 0.5), 4))
    for i, model in enumerate(models):
        xs, ys = [], []
        for j, task in enumerate(tasks):
            h = headline(results[model].get(task, {}))
            if h:
                xs.append(j + i * width)
                ys.append(100 * h[1] if h[0] != "bits_per_byte" else h[1])
        ax.bar(xs, ys, width, label=Path(model).name)
    labels = []
    for task in tasks:
        h = next((headline(results[m][task]) for m in models if task in results[m]), None)
        labels.append(f"{task}\n({h[0]})" if h else task)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(tasks))], labels, fontsize=8)
    ax.set_ylabel("score (%) / bits per byte")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
