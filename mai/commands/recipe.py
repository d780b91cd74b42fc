"""``mai recipe run|plan RECIPE.yaml``: web text and a teacher → an evaluated, quantized, served model."""

from __future__ import annotations

import argparse


def _load(args: argparse.Namespace):
    from pathlib import Path

    from mai.recipe.config import load_recipe

    return load_recipe(args.recipe, args.set), Path(args.recipe).resolve().parent


def cmd_recipe_run(args: argparse.Namespace) -> None:
    from mai.recipe.runner import run_recipe

    recipe, base = _load(args)
    run_recipe(recipe, base)
    print(f"report     {recipe.run_dir}/report.html, {recipe.run_dir}/report.md")


def cmd_recipe_plan(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mai.recipe.runner import build_plans, resolve_plan

    recipe, base = _load(args)
    stages = resolve_plan(recipe, build_plans(recipe, base, lambda stage: "http://teacher/v1"))
    if args.cluster:
        from mai.recipe.cluster import cluster_commands

        preset = (recipe.pretrain.config.get("model", {}).get("preset")
                  if recipe.pretrain and isinstance(recipe.pretrain.config, dict) else None)
        print("\n\n".join(cluster_commands(Path(recipe.run_dir), stages, preset)))
        return
    for st in stages:
        p = st.plan
        reads = ", ".join([*p.upstream, *p.inputs]) or "-"
        print(f"{p.name:<10} {st.status}\n  reads    {reads}\n  writes   {Path(recipe.run_dir) / p.name}/: "
              f"{p.outputs}" + ("\n  teacher  yes" if p.teacher else ""))


def register(sub) -> None:
    rec = sub.add_parser("recipe", help="the whole life-cycle as one resumable command (recipes/)")
    rec = rec.add_subparsers(dest="action", required=True)
    for name, func, text in (("run", cmd_recipe_run, "run every stage not already done, then the report"),
                             ("plan", cmd_recipe_plan, "the stages, what they read and write, what is done")):
        p = rec.add_parser(name, help=text)
        p.add_argument("recipe", help="the recipe YAML (see recipes/mai-mini.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. run_dir=runs/x or sft.set=[optim.lr=1e-4]")
        if name == "plan":
            p.add_argument("--cluster", action="store_true",
                           help="each stage's cluster command (Ray for data, Slurm + torchrun training)")
        p.set_defaults(func=func)
