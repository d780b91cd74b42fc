"""``mai serve``: the OpenAI-compatible HTTP server over a catalog of models (or one model)."""

from __future__ import annotations

import argparse
import signal
import sys

from mai.commands.flags import add_precision_flag
from mai.errors import MaiError


def cmd_serve(args: argparse.Namespace) -> None:
    from mai.serve.catalog import AdapterEntry, Catalog, KeyEntry, ModelEntry, load_catalog

    if args.catalog and args.lora_modules:
        raise MaiError("--lora-modules goes with --model; a catalog lists a model's adapters under it")
    if args.catalog:
        catalog = load_catalog(args.catalog)
    elif args.model:
        if any("=" not in spec for spec in args.lora_modules):
            raise MaiError("--lora-modules takes NAME=PATH (an adapter folder, e.g. RUN/adapter of mai sft)")
        adapters = [AdapterEntry(*spec.split("=", 1)) for spec in args.lora_modules]
        catalog = Catalog([ModelEntry(name=args.name, path=args.model, max_seq_len=args.max_seq_len,
                                      quant=args.quant, precision=args.precision, adapters=adapters)])
    else:
        raise MaiError("give --catalog FILE or --model PATH (e.g. --model bundled:smollm2)")
    if args.api_key:
        catalog.api_keys.append(KeyEntry(key=args.api_key))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        import uvicorn

        from mai.serve.app import create_app
    except ImportError as exc:
        raise MaiError(f"serving needs the serve extra: pip install 'mai[serve]' ({exc})") from None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not catalog.api_keys:
        print(f"warning: serving on {args.host} without API keys", file=sys.stderr)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler found before: exit 0 there
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(create_app(catalog), host=args.host, port=args.port, log_level="warning")


def register(sub) -> None:
    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat, completions, moderations)")
    srv.add_argument("--catalog", help="a YAML/JSON catalog of models, API keys and limits")
    srv.add_argument("--model", help="serve one model: a .gguf, HF or mai directory, or bundled:smollm2")
    srv.add_argument("--name", default="default", help="the model name clients send (with --model)")
    srv.add_argument("--max-seq-len", type=int, default=2048, help="context length served (with --model)")
    srv.add_argument("--quant", default="none", choices=["none", "int8", "gguf"],
                     help="int8 weights, or a .gguf file's own Q4_0/Q4_1/Q8_0 blocks (with --model)")
    srv.add_argument("--lora-modules", nargs="+", action="extend", default=[], metavar="NAME=PATH",
                     help="LoRA adapters served over --model under their own names (vLLM's flag)")
    add_precision_flag(srv)
    srv.add_argument("--api-key", help="require this Bearer key (adds to the catalog's keys)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--threads", type=int, default=0,
                     help="torch CPU threads (0: torch's default; 1 helps on a CPU shared with other jobs)")
    srv.set_defaults(func=cmd_serve)
