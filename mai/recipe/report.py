"""The run's report: ``RUN/report.md`` and ``RUN/report.html`` (one self-contained file: inline CSS, charts
as base64 PNG from matplotlib) — data funnel, mixture, loss curves, evaluation, teacher vs student, sample
chats and a model card, all read from the stages' manifests and their own files."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from mai.fileio import atomic_write_text
from mai.recipe.config import Recipe

CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
       "text-align:left}th{background:#f3f3f3}img{max-width:100%}pre{white-space:pre-wrap;background:#f7f7f7;"
       "padding:.5em}h2{border-bottom:1px solid #ddd}")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_chart(run: Path, stages: list[str]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {s: _metrics(run / s / "metrics.jsonl") for s in stages}
    rows = {s: r for s, r in rows.items() if any("loss" in x for x in r)}
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3), squeeze=False)
    for ax, (stage, metrics) in zip(axes[0], rows.items(), strict=True):
        for key, style in (("loss", "-"), ("val_loss", "o--")):
            points = [(r["step"], r[key]) for r in metrics if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=key.replace("_", " "))
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend()
    return _png(fig)


def eval_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, float]]:
    """(model, task, metric, value) for the headline numbers of every task."""
    rows = []
    for model, tasks in results.items():
        for task, r in tasks.items():
            for metric in ("acc", "acc_norm", "bits_per_byte", "perplexity", "exact_match", "pass@1"):
                if isinstance(r, dict) and isinstance(r.get(metric), (int, float)):
                    rows.append((model, task, metric, float(r[metric])))
    return rows


def eval_chart(rows: list[tuple[str, str, str, float]]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r[2] in ("acc", "acc_norm", "bits_per_byte")]
    if not rows:
        return None
    labels = sorted({f"{t}\n{m}" for _, t, m, _ in rows})
    models = sorted({r[0] for r in rows})
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(labels)), 3))
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        vals = {f"{t}\n{m}": v for mo, t, m, v in rows if mo == model}
        ax.bar([i + k * width for i in range(len(labels))], [vals.get(lbl, 0) for lbl in labels], width,
               label=model)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, fontsize=8)
    ax.legend()
    return _png(fig)


def _table(head: list[str], rows: list[list[Any]]) -> tuple[str, str]:
    def fmt(v: Any) -> str:
        return f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    md += "".join("| " + " | ".join(fmt(v) for v in r) + " |\n" for r in rows)
    h = "<table><tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in head) + "</tr>"
    h += "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return md, h + "</table>"


def sections(recipe: Recipe, manifests: dict[str, Any]) -> list[tuple[str, str, str, str | None]]:
    """(title, markdown, html, base64 png or None) per section of the report."""
    run = Path(recipe.run_dir)
    out = []
    rows = [[s, m.get("seconds", 0.0), m["key"][:12]] for s, m in manifests.items()]
    out.append(("Stages", *_table(["stage", "seconds", "key"], rows), None))
    for src in ("web", "synth"):
        if src in manifests:
            s = manifests[src]["summary"]
            docs = s["documents"]
            funnel = [["input", docs["input"]]] + [[f"removed by {step}", sum(r.values())]
                                                   for step, r in s["removed_by_step"].items()]
            funnel += [["failed", docs["failed"]], ["kept", docs["kept"]]]
            if "teacher" in s:
                funnel.insert(0, ["teacher requests", s["teacher"]["requests"]])
            out.append((f"Data funnel: {src}", *_table(["step", "documents"], funnel), None))
    if "shards" in manifests:
        rows = [[k, v["documents"], v["train_tokens"], v["val_tokens"], v["weight"]]
                for k, v in manifests["shards"]["summary"].items()]
        out.append(("Mixture", *_table(["source", "documents", "train tokens", "val tokens", "weight"], rows),
                    None))
    trained = [s for s in ("pretrain", "sft", "dpo") if s in manifests]
    if trained:
        rows = [[s, manifests[s]["summary"]["steps"], manifests[s]["summary"]["final_loss"],
                 manifests[s]["summary"]["val_loss"]] for s in trained]
        out.append(("Training", *_table(["stage", "steps", "final train loss", "validation loss"], rows),
                    loss_chart(run, trained)))
    if "eval" in manifests:
        erows = eval_rows(manifests["eval"]["summary"]["results"])
        out.append(("Evaluation", *_table(["model", "task", "metric", "value"], [list(r) for r in erows]),
                    eval_chart(erows)))
        bpb = {m: v for m, t, k, v in erows if t == "text" and k == "bits_per_byte"}
        if bpb:
            text = ", ".join(f"{m} {v:.3f}" for m, v in bpb.items())
            note = manifests["eval"]["summary"].get("pairwise", "")
            if isinstance(note, dict):  # mai.eval.pairwise's summary, the student as model A
                note = (f"student win rate {note['win_rate']:.2f} (95% CI {note['ci_low']:.2f}-"
                        f"{note['ci_high']:.2f}) over {note['prompts']} prompts, both orders; "
                        f"{note['malformed']} malformed judgments; the two orders agree in "
                        f"{note['order_agreement']:.0%} of prompts; the judge is the teacher itself")
            md = f"Held-out web text, bits per byte (lower is better): {text}.\n\nPairwise judge: {note}\n"
            out.append(("Teacher vs student", md, f"<p>{html.escape(md)}</p>", None))
        chats = run / "eval" / "chats.json"
        if chats.is_file():
            convo = json.loads(chats.read_text())
            md = "".join(f"**user:** {c['prompt']}\n\n**student:** {c['student']}\n\n**teacher:** "
                         f"{c['teacher']}\n\n---\n\n" for c in convo)
            h = "".join(f"<pre>user: {html.escape(c['prompt'])}\nstudent: {html.escape(c['student'])}\n"
                        f"teacher: {html.escape(c['teacher'])}</pre>" for c in convo)
            out.append(("Sample chats", md, h, None))
    out.append(("Model card", *model_card(recipe, manifests), None))
    return out


def model_card(recipe: Recipe, manifests: dict[str, Any]) -> tuple[str, str]:
    export = manifests.get("export", {}).get("summary", {})
    data = [s for s in ("web", "synth") if s in manifests]
    rows = [["name", recipe.name], ["parameters", export.get("parameters", "n/a")],
            ["file", f"export/model.gguf ({export.get('qtype')}, {export.get('bytes', 0):,} bytes)"
             if export else "n/a"],
            ["data", ", ".join(data) + (" + chitchat-dataset dialogues (SFT)" if "sft" in manifests else "")],
            ["teacher", (recipe.teacher.base_url or recipe.teacher.model)
             if {"synth", "dpo"} & set(manifests) else "none"],
            ["licence", recipe.licence], ["intended use", recipe.intended_use],
            ["limits", "a tiny model trained for minutes on a CPU: fluent at best in short spans, often "
                       "wrong, not safe without the server's content filter"],
            ["serve", manifests.get("serve", {}).get("summary", {}).get("command", "n/a")]]
    return _table(["field", "value"], rows)


def write_report(recipe: Recipe, manifests: dict[str, Any]) -> tuple[Path, Path]:
    run = Path(recipe.run_dir)
    parts = sections(recipe, manifests)
    md = f"# {recipe.name}: recipe report\n\n" + "".join(
        f"## {t}\n\n{m}\n" + ("\n(chart in report.html)\n\n" if png else "") for t, m, _, png in parts)
    body = "".join(f"<h2>{html.escape(t)}</h2>{h}" + (f'<img alt="{html.escape(t)} chart" '
                                                      f'src="data:image/png;base64,{png}">' if png else "")
                   for t, _, h, png in parts)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(recipe.name)} report"
            f"</title><style>{CSS}</style></head><body><h1>{html.escape(recipe.name)}: recipe report</h1>"
            f"{body}</body></html>\n")
    atomic_write_text(run / "report.md", md)
    atomic_write_text(run / "report.html", page)
    return run / "report.md", run / "report.html"
