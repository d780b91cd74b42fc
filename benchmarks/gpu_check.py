"""One-GPU check of MAI's GPU path, under 10 minutes on an H100/H200, with a JSON summary.

1. ``throughput``: trains the ``1b`` preset (4 of its 16 layers) and ``moe-demo`` with ``mai train``'s own
   loop in bf16 with ``train.compile=true``; reports tokens/s, MFU and peak memory next to
   :func:`mai.plan.plan`'s prediction for the same single-GPU layout. (One GPU runs without FSDP: fp32
   master weights under bf16 autocast, while the planner's memory assumes FSDP's bf16 compute copies,
   so its memory is an estimate of a different layout; its MFU is for the same work.)
2. ``kill_resume``: starts ``mai train`` as a process, SIGKILLs it after its first complete checkpoint,
   then runs the same command again, which must resume from that checkpoint and finish.
3. ``async_checkpoint``: a run with ``train.async_checkpoint=true`` that writes several checkpoints, then
   a longer run of the same command that resumes from the last one.
4. ``pipeline``: pipeline parallel where mai has ``parallel.pp``; otherwise skipped with the reason.

Every length is fixed (steps, layers, batch), so the real run's time is bounded by construction; the
shell wrapper adds a hard ``timeout``. ``--dry-run`` runs all of it on CPU with tiny shapes in seconds
(CI runs it: tests/test_plan_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mai.config import resolve
from mai.data.shards import ShardWriter
from mai.parallel import ParallelConfig
from mai.plan import Layout, plan
from mai.train.checkpoint import list_checkpoints
from mai.train.config import RunConfig
from mai.train.trainer import train

VOCAB = 8192  # the token shards' vocabulary (every model here has at least this many rows)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything that bounds the run's time."""

    seq: int
    batch: int
    steps: int  # throughput runs (the first log interval includes compilation and is left out)
    log_every: int
    vocab: int
    model_overrides: dict  # extra model.* overrides per preset (dry run: tiny shapes)
    demo_steps: int  # kill-and-resume and async runs (demo preset, no compile)
    ckpt_every: int


REAL = Sizes(seq=2048, batch=8, steps=60, log_every=10, vocab=VOCAB,
             model_overrides={"1b": {"n_layers": 4}, "moe-demo": {"max_seq_len": 2048},
                              "demo": {"max_seq_len": 2048}},
             demo_steps=300, ckpt_every=50)
TINY = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128, "vocab_size": 512,
        "max_seq_len": 64}
DRY = Sizes(seq=32, batch=2, steps=4, log_every=2, vocab=512,
            model_overrides={"1b": TINY, "moe-demo": {**TINY, "expert_ffn_dim": 32}, "demo": TINY},
            demo_steps=100, ckpt_every=10)


def write_tokens(root: Path, vocab: int, n_docs: int = 400, doc_len: int = 4096) -> Path:
    """Random token shards (train and val) so the check needs no corpus, tokenizer or network."""
    rng = np.random.default_rng(0)
    for split, docs in (("train", n_docs), ("val", max(8, n_docs // 20))):
        with ShardWriter(root, split, vocab, eos_id=0) as writer:
            for _ in range(docs):
                writer.add_document(rng.integers(1, vocab, doc_len))
    return root


def overrides(data: Path, out: Path, sizes: Sizes, preset: str, device: str, extra: dict) -> list[str]:
    """``mai train`` dotted overrides of one run."""
    model = {"preset": preset, **sizes.model_overrides.get(preset, {})}
    args = [f"model.{k}={v}" for k, v in model.items()]
    args += [f"data.sources=[{{path: {data}}}]", f"data.seq_len={sizes.seq}", "data.val_batches=2",
             f"train.out_dir={out}", f"train.batch_size={sizes.batch}", f"train.device={device}",
             "train.progress=false", "train.eval_every=100000", "optim.warmup_steps=2"]
    return args + [f"{k}={v}" for k, v in extra.items()]


def gpu_key(device: torch.device) -> str:
    """The planner's name for this GPU (H100 unless it is an H200)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return "h200" if "H200" in name else "h100"


def throughput(preset: str, data: Path, root: Path, sizes: Sizes, device: torch.device) -> dict:
    """Train ``preset`` in this process through ``mai.train.train`` and compare with the planner."""
    out = root / f"throughput_{preset}"
    on_gpu = device.type == "cuda"
    extra = {"train.max_steps": sizes.steps, "train.log_every": sizes.log_every, "train.ckpt_every": 100000,
             # bf16 as on any GPU; a CPU dry run keeps auto (bf16 is a slow path on AVX2-only CPUs)
             "train.precision": "bf16" if on_gpu else "auto", "train.compile": str(on_gpu).lower(),
             "train.resume": "false"}
    cfg = resolve(RunConfig, {}, overrides(data, out, sizes, preset, device.type, extra))
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "tokens_per_s" in r][1:]  # the first interval includes compilation
    tok_s = statistics.median(r["tokens_per_s"] for r in timed)
    mfus = [r["mfu"] for r in timed if r.get("mfu") is not None]
    model_cfg = cfg.model_config()
    layout = Layout(gpus=1, micro_batch=sizes.batch, seq_len=sizes.seq, global_batch=sizes.batch,
                    activation_checkpointing="none", zero=0)
    predicted = plan(preset, gpu_key(device), layout, cfg=model_cfg,
                     software="compiled" if on_gpu else "eager")
    return {"preset": preset, "overrides": sizes.model_overrides.get(preset, {}), "steps": result.steps,
            "seq": sizes.seq, "batch": sizes.batch, "precision": result.precision,
            "compile": on_gpu, "tokens_per_s": tok_s, "mfu": statistics.median(mfus) if mfus else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None,
            "final_loss": result.final_loss, "wall_s": wall,
            "predicted": {"gpu": predicted.gpu.name, "mfu": predicted.predicted_mfu,
                          "tokens_per_s": predicted.tokens_per_step / predicted.time.total,
                          "memory_gib": predicted.memory_total / 2**30}}


def mai_train(args: list[str], **popen) -> subprocess.Popen:
    """``mai train`` in its own process (the real CLI), output captured."""
    return subprocess.Popen([sys.executable, "-m", "mai.cli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"mai train exited {proc.returncode}:\n{out[-3000:]}")
    return out


def last_step(out: Path) -> int:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return max(r["step"] for r in rows)


def kill_resume(data: Path, root: Path, sizes: Sizes, device: str, timeout: float) -> dict:
    """SIGKILL a run once its first checkpoint is complete; the same command must resume and finish."""
    out = root / "kill_resume"
    args = overrides(data, out, sizes, "demo", device, {"train.max_steps": sizes.demo_steps,
                                                         "train.ckpt_every": sizes.ckpt_every,
                                                         "train.log_every": sizes.ckpt_every})
    proc = mai_train(args)
    deadline = time.monotonic() + timeout
    while not list_checkpoints(out / "checkpoints"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"no checkpoint before the kill (exit {proc.returncode}):\n"
                               f"{proc.communicate()[0][-3000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = list_checkpoints(out / "checkpoints")[-1].name
    log = finish(mai_train(args), timeout)
    resumed = "resumed from" in log and killed_at in log
    return {"killed_after": killed_at, "exit_code_of_killed": proc.returncode, "resumed": resumed,
            "final_step": last_step(out), "planned_steps": sizes.demo_steps,
            "ok": resumed and proc.returncode == -signal.SIGKILL and last_step(out) == sizes.demo_steps}


def async_checkpoint(data: Path, root: Path, sizes: Sizes, device: str) -> dict:
    """Checkpoints written in the background, then a longer run of the same config that resumes from the
    last of them (both in this process, through ``mai.train.train``)."""
    out = root / "async_checkpoint"
    steps = 3 * sizes.ckpt_every
    extra = {"train.async_checkpoint": "true", "train.ckpt_every": sizes.ckpt_every,
             "train.log_every": sizes.ckpt_every}

    def run(max_steps: int) -> tuple[int, str]:
        args = overrides(data, out, sizes, "demo", device, {**extra, "train.max_steps": max_steps})
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            steps_done = train(resolve(RunConfig, {}, args)).steps
        return steps_done, printed.getvalue()

    run(steps)
    saved = [p.name for p in list_checkpoints(out / "checkpoints")]
    final, printed = run(steps + sizes.ckpt_every)
    resumed = f"step_{steps:08d} at step {steps}" in printed
    return {"checkpoints": saved, "resumed": resumed, "final_step": final,
            "ok": f"step_{steps:08d}" in saved and resumed and final == steps + sizes.ckpt_every}


def pipeline(data: Path, root: Path, sizes: Sizes, timeout: float) -> dict:
    """pp 2 through torchrun where mai has ``parallel.pp``. Two pipeline ranks cannot share one GPU
    under NCCL, so the stages run as two CPU (gloo) processes: this checks the API, not GPU speed."""
    if "pp" not in {f.name for f in dataclasses.fields(ParallelConfig)}:
        return {"skipped": "mai.parallel.ParallelConfig has no `pp` field yet (pipeline parallel not "
                           "implemented); nothing to run"}
    out = root / "pipeline"
    args = overrides(data, out, sizes, "demo", "cpu", {"train.max_steps": 4, "train.log_every": 2,
                                                        "train.ckpt_every": 100000, "parallel.pp": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "mai.cli", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        return {"ok": False, "error": proc.stderr[-2000:]}
    return {"ok": last_step(out) == 4, "device": "cpu (gloo), 2 processes", "final_step": last_step(out)}


def report(summary: dict) -> str:
    lines = ["| model | tokens/s | MFU | peak memory | predicted MFU | predicted tokens/s | predicted "
             "memory |", "|---|---|---|---|---|---|---|"]
    for r in summary["throughput"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "?"
        mem = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "-"
        p = r["predicted"]
        lines.append(f"| {r['preset']} {r['overrides'] or ''} | {r['tokens_per_s']:,.0f} | {mfu} | {mem} | "
                     f"{p['mfu']:.1%} | {p['tokens_per_s']:,.0f} | {p['memory_gib']:.1f} GiB |")
    for name in ("kill_resume", "async_checkpoint", "pipeline"):
        lines.append(f"{name}: {json.dumps(summary[name])}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks the script in seconds")
    ap.add_argument("--out", default="runs/gpu_check", help="folder for the runs and summary.json")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run with --dry-run to check the script on CPU")
    sizes, device = (DRY, torch.device("cpu")) if args.dry_run else (REAL, torch.device("cuda"))
    root = Path(args.out)
    for old in root.glob("*"):  # runs of an earlier check would be resumed instead of started
        if old.is_dir() and old.name != "tokens":
            shutil.rmtree(old)
    data = write_tokens(root / "tokens", sizes.vocab, n_docs=40 if args.dry_run else 400,
                        doc_len=256 if args.dry_run else 4096)
    started = time.perf_counter()
    summary: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "dry_run": args.dry_run,
                     "throughput": [throughput(p, data, root, sizes, device) for p in ("1b", "moe-demo")]}
    summary["kill_resume"] = kill_resume(data, root, sizes, device.type, timeout=180)
    summary["async_checkpoint"] = async_checkpoint(data, root, sizes, device.type)
    summary["pipeline"] = pipeline(data, root, sizes, timeout=180)
    summary["wall_s"] = time.perf_counter() - started
    path = root / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    print(report(summary))
    print(f"summary: {path} ({summary['wall_s']:.0f} s)")
    failed = [k for k in ("kill_resume", "async_checkpoint", "pipeline") if summary[k].get("ok") is False]
    if failed:
        raise SystemExit(f"error: {', '.join(failed)} failed (see {path})")


if __name__ == "__main__":
    main()
