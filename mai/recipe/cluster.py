"""`mai recipe plan --cluster`: for each stage, the command that runs it on a cluster instead of this box.

The data stages go to Ray (`--executor ray`), training to Slurm + torchrun with the parallel layout that
`mai plan` recommends; each command reads the recipe's resolved stage config, written beside the run by
:func:`write_stage_configs`, so the cluster runs exactly what the local stage would.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from mai.fileio import atomic_write_text
from mai.recipe.runner import PlannedStage

_TORCHRUN = ("srun --nodes=$NODES --ntasks-per-node=1 torchrun --nnodes=$NODES --nproc-per-node=8 "
             "--rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:29500 -m mai.cli")
_LAYOUT = "parallel.tp=$TP parallel.pp=$PP parallel.dp_shard=-1"


def write_stage_configs(run: Path, stages: list[PlannedStage]) -> Path:
    folder = run / "cluster"
    for st in stages:
        atomic_write_text(folder / f"{st.plan.name}.yaml", yaml.safe_dump(st.plan.config, sort_keys=False))
    return folder


def cluster_commands(run: Path, stages: list[PlannedStage], preset: str | None = None) -> list[str]:
    folder = write_stage_configs(run, stages)
    q = shlex.quote
    lines = []
    for st in stages:
        cfg, name = q(str(folder / f"{st.plan.name}.yaml")), st.plan.name
        out = q(str(run / name))
        cmd = {
            "web": f"mai data run {cfg} --executor ray --workers $RAY_WORKERS --set work_dir={out}/work "
                   f"--set output_dir={out}/output --set tokenize=null",
            "synth": f"mai data synth {cfg} --set work_dir={out} --set teacher.base_url=$TEACHER_URL "
                     "--set teacher.concurrency=64",
            "tokenizer": f"mai tokenizer train --input {q(str(run / 'web/output'))} "
                         f"{q(str(run / 'synth/output'))} --vocab-size {st.plan.config.get('vocab_size')} "
                         f"--out {out}/tokenizer",
            "shards": f"mai data prepare --input {q(str(run / 'web/output'))} --tokenizer "
                      f"{q(str(run / 'tokenizer/tokenizer'))} --out {out}/web --workers $CPUS",
            "pretrain": f"{_TORCHRUN} train --config {cfg} train.out_dir={out} {_LAYOUT}",
            "sft": f"{_TORCHRUN} sft --config {cfg} train.out_dir={out} {_LAYOUT}",
            "dpo": f"{_TORCHRUN} dpo --config {cfg} train.out_dir={out} {_LAYOUT}",
            "eval": f"mai eval --config {cfg} --set out={out} --device cuda",
            "export": f"python -c 'from mai.interop import load_model; from mai.interop.gguf_write import "
                      f"write_gguf; write_gguf(load_model(\"{run}/dpo\"), \"{run}/export/model.gguf\")'",
            "serve": f"mai serve --catalog {out}/catalog.yaml --host 0.0.0.0 --api-key $KEY",
        }[name]
        lines.append(f"# {name}\n{cmd}")
        if name == "pretrain":
            lines[-1] = (f"# pretrain: pick TP/PP from the planner first\n"
                         f"mai plan --preset {preset or 'demo'} --gpus $GPUS --gpu h100\n{cmd}")
    return lines
