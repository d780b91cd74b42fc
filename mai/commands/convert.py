"""``mai convert`` and ``mai checkpoint export``: model files in and out of MAI's formats."""

from __future__ import annotations

import argparse


def cmd_convert(args: argparse.Namespace) -> None:
    from mai.interop import export_hf, load_model

    loaded = load_model(args.source)
    if args.to == "gguf":
        from mai.interop.gguf_write import write_gguf

        out = write_gguf(loaded, args.out, args.qtype)
        print(f"wrote {out} ({loaded.kind} → GGUF {args.qtype}, tokenizer and chat template inside)")
        return
    out = export_hf(loaded, args.out, max_shard_bytes=int(args.max_shard_gb * 2**30))
    tok = "with tokenizer" if loaded.tokenizer is not None else "no tokenizer found"
    print(f"wrote {out} ({loaded.kind} → Hugging Face, {sum(p.numel() for p in loaded.model.parameters()):,} "
          f"parameters, {tok})")


def cmd_checkpoint_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mai.parallel.export import export_checkpoint, resolve_checkpoint

    ckpt = resolve_checkpoint(Path(args.checkpoint))
    out = export_checkpoint(ckpt, Path(args.out), Path(args.tokenizer) if args.tokenizer else None)
    print(f"wrote {out} from {ckpt}")


def register(sub) -> None:
    conv = sub.add_parser("convert", help="a GGUF file, HF directory or mai run → a HF directory or a GGUF")
    conv.add_argument("source", help="a .gguf file, a Hugging Face directory, or a mai run/model directory")
    conv.add_argument("--out", required=True, help="the Hugging Face directory (or .gguf file) to write")
    conv.add_argument("--to", choices=["hf", "gguf"], default="hf", help="the output format")
    conv.add_argument("--qtype", default="Q8_0", choices=["Q8_0", "F32"],
                      help="--to gguf: the 2-D weights' type (norms stay F32)")
    conv.add_argument("--max-shard-gb", type=float, default=5.0, help="shard the weights above this size")
    conv.set_defaults(func=cmd_convert)

    ck = sub.add_parser("checkpoint", help="training checkpoints")
    ck = ck.add_subparsers(dest="action", required=True)
    exp = ck.add_parser("export", help="a sharded DCP checkpoint → one model.safetensors (a model directory)")
    exp.add_argument("checkpoint", help="a step_XXXXXXXX folder, or a run's out_dir (newest complete one)")
    exp.add_argument("out", help="output model directory")
    exp.add_argument("--tokenizer", help="tokenizer folder to copy beside the weights")
    exp.set_defaults(func=cmd_checkpoint_export)
