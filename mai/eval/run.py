"""``mai eval``: every requested model on every requested task and text set, then table, JSON and chart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mai.errors import MaiError
from mai.eval.harness import run_task
from mai.eval.perplexity import shard_perplexity, text_documents, text_perplexity
from mai.eval.report import plot, table, write_json
from mai.eval.scoring import LoglikScorer
from mai.eval.tasks import get_task


def run_eval(models: Sequence[str], tasks: Sequence[str], out_dir: str | Path, limit: int | None = None,
             texts: Sequence[str] = (), shards: str | None = None, split: str = "val",
             batch_tokens: int = 4096, device: str = "cpu", max_length: int | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate; write ``results.json`` and ``results.png`` into out_dir; return the results dict."""
    from mai.interop import load_model

    chosen = [get_task(t) for t in tasks]  # unknown names fail before any model loads
    if not chosen and not texts and not shards:
        raise MaiError("nothing to evaluate: give --tasks, --text or --shards")
    results: dict[str, dict[str, Any]] = {}
    for path in models:
        loaded = load_model(path)
        if loaded.tokenizer is None:
            raise MaiError(f"{path} carries no tokenizer; evaluation needs one (tokenizer.json beside it)")
        model = loaded.model.to(device)
        length = min(max_length or model.cfg.max_seq_len, model.cfg.max_seq_len)
        scorer = LoglikScorer(model, loaded.tokenizer, batch_tokens, length)
        per_task: dict[str, Any] = {}
        for task in chosen:
            res = run_task(scorer, task, limit)
            per_task[task.name] = res.as_dict()
            echo(f"{Path(path).name}: {task.name} done ({res.n} examples, {res.seconds:.1f} s)")
        with torch.no_grad():
            if texts:
                ppl = text_perplexity(model, loaded.tokenizer, text_documents(texts), length, limit)
                per_task["text"] = ppl.as_dict()
            if shards:
                ppl = shard_perplexity(model, loaded.tokenizer, shards, split, length, limit)
                per_task[f"shards:{split}"] = ppl.as_dict()
        results[str(path)] = per_task
    out = Path(out_dir)
    write_json({"limit": limit, "results": results}, out / "results.json")
    plot(results, out / "results.png")
    echo(table(results))
    return results
