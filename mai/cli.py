"""The ``mai`` command. Thin on purpose: each subcommand parses its flags and calls one library function.

User errors (:class:`mai.errors.MaiError`) become one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time

from mai.errors import MaiError


def cmd_model_info(args: argparse.Namespace) -> None:
    import torch

    from mai.model.presets import count_params, get_preset, train_flops_per_token
    from mai.model.transformer import Transformer

    cfg = get_preset(args.preset)
    start = time.perf_counter()
    with torch.device("meta"):  # shapes only: a 500B model costs no memory here
        model = Transformer(cfg)
    built = sum(p.numel() for p in model.parameters())
    size = count_params(cfg)
    if built != size.total:
        raise MaiError(f"internal: module has {built:,} parameters but the formula says {size.total:,}")
    seq = args.seq_len or cfg.max_seq_len
    print(f"preset            {args.preset}")
    print(f"shape             d={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads}/{cfg.n_kv_heads} "
          f"head_dim={cfg.head_dim} ffn={cfg.ffn_dim} vocab={cfg.vocab_size} tied={cfg.tie_embeddings}")
    if cfg.is_moe:
        print(f"experts           {cfg.n_experts} routed (top-{cfg.top_k}) + {cfg.n_shared_experts} shared, "
              f"expert ffn={cfg.expert_ffn_dim}, first {cfg.first_dense_layers} layers dense")
    print(f"parameters        {size.total:,}")
    if cfg.is_moe:
        print(f"active parameters {size.active:,}")
    print(f"weights (bf16)    {size.bf16_bytes:,} bytes ({size.bf16_bytes / 2**30:,.1f} GiB)")
    print(f"train FLOPs/token {train_flops_per_token(cfg, seq):,} (seq_len {seq})")
    print(f"built on meta in  {time.perf_counter() - start:.2f} s")


def cmd_train(args: argparse.Namespace) -> None:
    from mai.config import load_yaml, resolve
    from mai.train.config import RunConfig
    from mai.train.trainer import train

    base = load_yaml(args.config) if args.config else {}
    cfg = resolve(RunConfig, base, args.overrides)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        stopped = (f" of {result.planned_steps} (stopped by train.max_minutes={cfg.train.max_minutes:g})"
                   if result.steps < result.planned_steps else "")
        print(f"steps                 {result.steps}{stopped}")
        print(f"final train loss      {result.final_loss:.4f} nats/token")
        print(f"validation loss       {result.val_loss:.4f} nats/token")
        print(f"unigram entropy       {result.unigram_entropy:.4f} nats/token (the no-context baseline)")
        mfu = f"{100 * result.mfu:.1f}%" if math.isfinite(result.mfu) else "unknown (peak not trusted)"
        print(f"throughput            {result.tokens_per_s:,.0f} tokens/s in {result.precision}, MFU {mfu}")
        print(f"model                 {result.out_dir / 'model'}")
        print(f"loss curve            {result.out_dir / 'loss.png'}")


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from mai.data.prepare import documents
    from mai.tokenizer import train_tokenizer

    tok = train_tokenizer(documents(args.input, args.field, args.paragraphs), args.vocab_size, args.out)
    print(f"tokenizer  {args.out} (vocab {tok.vocab_size:,}, eos id {tok.eos_id}, "
          f"sha256 {tok.fingerprint[:16]})")


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mai.data.prepare import documents, prepare
    from mai.tokenizer import load_tokenizer, train_tokenizer

    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        texts = documents(args.input, args.field, args.paragraphs)
        tok_dir = Path(args.out) / "tokenizer"
        print(f"training a {args.vocab_size:,}-token tokenizer on the inputs into {tok_dir}", file=sys.stderr)
        tok = train_tokenizer(texts, args.vocab_size, tok_dir)
    print(prepare(args.input, tok, args.out, val_fraction=args.val_fraction, workers=args.workers,
                  field=args.field, paragraphs=args.paragraphs))


def cmd_data_run(args: argparse.Namespace) -> None:
    from mai.data.pipeline import load_spec, run_pipeline

    overrides = list(args.set)
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    if args.executor is not None:
        overrides.append(f"executor={args.executor}")
    report = run_pipeline(load_spec(args.pipeline, overrides), update=args.update)
    print(f"report     {report['work_dir']}/report.json")


def cmd_data_inspect(args: argparse.Namespace) -> None:
    from mai.data.pipeline.inspect import inspect_work_dir

    print(inspect_work_dir(args.work_dir, args.step, args.sample, args.seed, args.chars))


def cmd_data_quality_train(args: argparse.Namespace) -> None:
    from mai.data.pipeline.quality import load_quality_config, train_quality

    cfg = load_quality_config(args.config, args.set)
    report = train_quality(cfg)
    print(f"labelled   {report['labelled']:,} of {report['documents']:,} documents "
          f"({report['good']:,} scored >= {report['threshold']} by the teacher)")
    print(f"held out   {report['held_out']:,} documents: accuracy {report['held_out_accuracy']:.3f} "
          f"(majority class {report['majority_baseline']:.3f})")
    print(f"model      {cfg.out_dir}/model.npz")


def cmd_data_synth(args: argparse.Namespace) -> None:
    from mai.data.pipeline.synth.config import load_synth_config
    from mai.data.pipeline.synth.run import run_synth

    report = run_synth(load_synth_config(args.config, args.set))
    print(f"documents  {report['output_dir']}")


def _add_input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", action="extend", default=None, metavar="PATH",
                   help=".txt / .jsonl(.gz/.zst) / .parquet files or directories (default: Wikipedia)")
    p.add_argument("--field", default="text", help="the JSONL field / Parquet column holding the text")
    p.add_argument("--paragraphs", action="store_true",
                   help="split .txt files into one document per blank-line-separated block")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of a newly trained tokenizer")


def cmd_plan(args: argparse.Namespace) -> None:
    from mai.plan import Layout, format_anchors, format_plan, format_table, plan, search

    if args.anchors:
        print(format_anchors())
        return
    if not args.preset or not args.gpus:
        raise MaiError("mai plan needs --preset and --gpus (or --anchors for the published-runs table)")
    if args.search:
        plans = search(args.preset, args.gpu, args.gpus, args.seq_len, args.global_batch, args.mfu,
                       software=args.software)
        if not plans:
            raise MaiError(f"no layout of {args.preset} fits on {args.gpus} × {args.gpu}; add GPUs")
        mfu = "predicted MFU" if args.mfu is None else f"{args.mfu:.0%} MFU"
        print(f"layouts of {args.preset} that fit on {args.gpus} × {args.gpu} at {mfu}, fastest first:")
        print(format_table(plans, args.tokens))
        return
    layout = Layout(gpus=args.gpus, dp=args.dp, tp=args.tp, pp=args.pp, ep=args.ep,
                    micro_batch=args.micro_batch, seq_len=args.seq_len, global_batch=args.global_batch,
                    activation_checkpointing=args.activation_checkpointing, zero=args.zero,
                    schedule=args.schedule, chunks=args.chunks)
    print(format_plan(plan(args.preset, args.gpu, layout, args.mfu, args.software), args.tokens))


def _sampling_params(args: argparse.Namespace):
    from mai.infer.sampling import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                          stop=list(args.stop or []))


def _load_for_generation(args: argparse.Namespace):
    """(model, tokenizer, compiled decoder or None) for ``args.model``: any checkpoint
    `mai.interop.load_model` reads (mai export, run, HF directory, GGUF), quantized as ``args.quant``."""
    from mai.infer.load import load_for_inference

    loaded, _ = load_for_inference(args.model, args.quant, args.precision)
    model = loaded.model
    decoder = None
    if args.compile:
        from mai.infer.compiled_decode import CompiledDecoder

        decoder = CompiledDecoder(model)
    return model, loaded.tokenizer, decoder


def cmd_generate(args: argparse.Namespace) -> None:
    from mai.infer.generate import Generation

    model, tok, decoder = _load_for_generation(args)
    params = _sampling_params(args)
    prompt_ids = tok.encode(args.prompt, add_bos=tok.bos_id is not None)
    gen = Generation(model, tok.decode, prompt_ids, params, stop_ids=tok.stop_ids, decoder=decoder)
    print(args.prompt, end="", flush=True)
    for delta in gen:
        print(delta, end="", flush=True)
    print(f"\n[{len(gen.token_ids)} tokens, finish_reason={gen.finish_reason}]", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    from mai.infer.generate import Generation

    model, tok, decoder = _load_for_generation(args)
    params = _sampling_params(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("chat: type a message, an empty line or Ctrl-D ends", file=sys.stderr)
    for line in sys.stdin:
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.strip()})
        prompt_ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
        gen = Generation(model, tok.decode, prompt_ids, params, stop_ids=tok.stop_ids, decoder=decoder)
        print("assistant: ", end="", flush=True)
        for delta in gen:
            print(delta, end="", flush=True)
        print(flush=True)
        messages.append({"role": "assistant", "content": gen.text})


def cmd_convert(args: argparse.Namespace) -> None:
    from mai.interop import export_hf, load_model

    loaded = load_model(args.source)
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


def cmd_serve(args: argparse.Namespace) -> None:
    from mai.serve.catalog import Catalog, KeyEntry, ModelEntry, load_catalog

    if args.catalog:
        catalog = load_catalog(args.catalog)
    elif args.model:
        catalog = Catalog([ModelEntry(name=args.name, path=args.model, max_len=args.max_len,
                                      quant=args.quant, precision=args.precision)])
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


def _add_sampling_flags(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--model", required=True, help="runs/demo/model, a HF dir, a .gguf or bundled:smollm2")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=temperature)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="a stop string (repeatable)")
    p.add_argument("--quant", default="none", choices=["none", "int8", "gguf"],
                   help="int8: weight-only int8 linears; gguf: keep a .gguf file's Q4_0/Q4_1/Q8_0 weights")
    p.add_argument("--compile", action="store_true",
                   help="decode through torch.compile (a static KV cache; the first token waits to compile)")
    _add_precision_flag(p)


def _add_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="compute dtype; auto: bf16 only where it measures faster on this machine")


def _tuning_config(args: argparse.Namespace):
    """The run config of `mai sft` / `mai dpo`: --config, dotted overrides, and --model as train.init_from."""
    from mai.config import load_yaml, resolve
    from mai.train.config import RunConfig

    base = load_yaml(args.config) if args.config else {}
    overrides = list(args.overrides) + ([f"train.init_from={args.model}"] if args.model else [])
    return resolve(RunConfig, base, overrides)


def _add_tuning_flags(p: argparse.ArgumentParser, demo_config: str, model_help: str, data_help: str) -> None:
    """The flags `mai sft` and `mai dpo` share; see :func:`_tuning_config`."""
    p.add_argument("--config", help=f"a YAML run config (see {demo_config})")
    p.add_argument("--model", help=f"{model_help} (mai export, run dir, HF dir, .gguf, bundled:smollm2)")
    p.add_argument("--data", action="append", default=[], help=data_help)
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")


def cmd_sft(args: argparse.Namespace) -> None:
    from mai.post.sft import run_sft

    result, meta = run_sft(_tuning_config(args), args.data, args.lora_rank, not args.no_packing,
                           synth_dirs=args.synth)
    print(f"data          {meta['train']['conversations']} conversations in {meta['train']['rows']} rows, "
          f"{meta['train']['loss_tokens']:,} assistant tokens")
    print(f"steps         {result.steps}, train loss {result.final_loss:.4f}, "
          f"validation loss {result.val_loss:.4f}")
    print(f"model         {result.out_dir / 'model'}")


def cmd_dpo(args: argparse.Namespace) -> None:
    from mai.post.dpo import run_dpo

    result, meta = run_dpo(_tuning_config(args), args.data, args.beta)
    print(f"data          {meta['train']['pairs']} preference pairs, {meta['val']['pairs']} for validation")
    print(f"steps         {result.steps}, loss {result.final_loss:.4f}, "
          f"validation loss {result.val_loss:.4f}")
    print(f"metrics       {result.out_dir / 'metrics.jsonl'} (reward_margin, reward_accuracy per step)")
    print(f"model         {result.out_dir / 'model'}")


def cmd_eval(args: argparse.Namespace) -> None:
    from mai.eval.generation import GenSettings
    from mai.eval.run import run_eval

    tasks = [t for t in (args.tasks or "").split(",") if t]
    gen = GenSettings(args.samples, args.temperature, args.chat, args.max_new_tokens, args.seed,
                      args.batch_size)
    run_eval(args.models, tasks, args.out, args.limit, args.text, args.shards, args.split, args.batch_tokens,
             args.device, args.max_length, precision=args.precision, gen=gen)
    print(f"results    {args.out}/results.json, {args.out}/results.png")
    if args.contamination:
        from mai.eval.decontam import contamination
        from mai.eval.report import write_json

        report = contamination(tasks, args.contamination, args.ngram, args.limit)
        for name, r in report.items():
            print(f"contamination  {name:<14} {r['contaminated']:>6} of {r['examples']:>6} examples "
                  f"({r['percent']:.2f}%) share a {r['ngram']}-gram with the training shards")
        write_json(report, f"{args.out}/contamination.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mai", description="Build and own a language model end to end.")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="model presets").add_subparsers(dest="action", required=True)
    info = model.add_parser("info", help="exact parameter count, bf16 bytes and FLOPs of a preset")
    info.add_argument("--preset", required=True)
    info.add_argument("--seq-len", type=int, default=None, help="sequence length for the FLOP count")
    info.set_defaults(func=cmd_model_info)

    tr = sub.add_parser("train", help="train a model (launch with torchrun for several processes)")
    tr.add_argument("--config", help="a YAML run config (see configs/)")
    tr.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    tr.set_defaults(func=cmd_train)

    pl = sub.add_parser("plan", help="per-GPU memory, step time and days of a cluster run, on paper")
    pl.add_argument("--preset", help="a model preset, or megatron-1.7b/7.1b/70b/462b (published anchors)")
    pl.add_argument("--gpu", default="h100", help="h100, h200, a100, b200 or h100-96gb-500w")
    pl.add_argument("--gpus", type=int, help="number of GPUs")
    pl.add_argument("--dp", type=int, default=0, help="data parallel (0 = gpus / (tp·pp))")
    pl.add_argument("--tp", type=int, default=1)
    pl.add_argument("--pp", type=int, default=1)
    pl.add_argument("--ep", type=int, default=1, help="expert parallel, taken from dp")
    pl.add_argument("--micro-batch", type=int, default=1)
    pl.add_argument("--seq-len", type=int, default=4096)
    pl.add_argument("--global-batch", type=int, default=1024, help="sequences per optimizer step")
    pl.add_argument("--activation-checkpointing", default="selective", choices=["none", "selective", "full"])
    pl.add_argument("--zero", type=int, default=3, help="0-3; 3 = FSDP (all state sharded)")
    pl.add_argument("--schedule", default="1f1b", choices=["1f1b", "interleaved"], help="pipeline schedule")
    pl.add_argument("--chunks", type=int, default=1, help="model chunks per pipeline rank (interleaved: ≥ 2)")
    pl.add_argument("--software", default="compiled", help="compiled (MAI with parallel.compile), eager, "
                    "megatron, torchtitan-compiled or torchtitan-eager: sets the kernel-fusion model")
    pl.add_argument("--mfu", type=float, default=None,
                    help="override the predicted model FLOPs utilisation for the step time")
    pl.add_argument("--anchors", action="store_true",
                    help="print predicted vs published MFU of Megatron-LM's and torchtitan's runs")
    pl.add_argument("--tokens", type=float, default=15e12, help="token budget for the days estimate")
    pl.add_argument("--search", action="store_true", help="list the layouts that fit, best first")
    pl.set_defaults(func=cmd_plan)

    gen = sub.add_parser("generate", help="complete a prompt, streaming to the terminal")
    _add_sampling_flags(gen, temperature=0.8)
    gen.add_argument("--prompt", required=True)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="talk to a model with its chat template")
    _add_sampling_flags(chat, temperature=0.7)
    chat.add_argument("--system", default=None, help="a system message")
    chat.set_defaults(func=cmd_chat)

    conv = sub.add_parser("convert", help="write a GGUF file, HF directory or mai run as a HF directory")
    conv.add_argument("source", help="a .gguf file, a Hugging Face directory, or a mai run/model directory")
    conv.add_argument("--out", required=True, help="the Hugging Face directory to write")
    conv.add_argument("--max-shard-gb", type=float, default=5.0, help="shard the weights above this size")
    conv.set_defaults(func=cmd_convert)

    ck = sub.add_parser("checkpoint", help="training checkpoints")
    ck = ck.add_subparsers(dest="action", required=True)
    exp = ck.add_parser("export", help="a sharded DCP checkpoint → one model.safetensors (a model directory)")
    exp.add_argument("checkpoint", help="a step_XXXXXXXX folder, or a run's out_dir (newest complete one)")
    exp.add_argument("out", help="output model directory")
    exp.add_argument("--tokenizer", help="tokenizer folder to copy beside the weights")
    exp.set_defaults(func=cmd_checkpoint_export)

    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat, completions, moderations)")
    srv.add_argument("--catalog", help="a YAML/JSON catalog of models, API keys and limits")
    srv.add_argument("--model", help="serve one model: a .gguf, HF or mai directory, or bundled:smollm2")
    srv.add_argument("--name", default="default", help="the model name clients send (with --model)")
    srv.add_argument("--max-len", type=int, default=2048, help="context length served (with --model)")
    srv.add_argument("--quant", default="none", choices=["none", "int8"], help="int8 weights (with --model)")
    _add_precision_flag(srv)
    srv.add_argument("--api-key", help="require this Bearer key (adds to the catalog's keys)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--threads", type=int, default=0,
                     help="torch CPU threads (0: torch's default; 1 helps on a CPU shared with other jobs)")
    srv.set_defaults(func=cmd_serve)

    tokenizer = sub.add_parser("tokenizer", help="tokenizers").add_subparsers(dest="action", required=True)
    tok_train = tokenizer.add_parser("train", help="train a byte-level BPE tokenizer on documents")
    _add_input_flags(tok_train)
    tok_train.add_argument("--out", default="data_cache/tokenizer", help="directory for tokenizer.json")
    tok_train.set_defaults(func=cmd_tokenizer_train)

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="action", required=True)
    prep = data.add_parser("prepare", help="tokenize documents into train/val token shards")
    _add_input_flags(prep)
    prep.add_argument("--tokenizer", default=None,
                      help="a tokenizer directory or tokenizer.json (default: train one into OUT/tokenizer)")
    prep.add_argument("--out", default="data_cache/default", help="the dataset directory to write")
    prep.add_argument("--val-fraction", type=float, default=0.005, help="share of documents for validation")
    prep.add_argument("--workers", type=int, default=2, help="tokenizer processes")
    prep.set_defaults(func=cmd_data_prepare)
    drun = data.add_parser("run", help="run a data pipeline (filters, dedup, tokenize) from a YAML file")
    drun.add_argument("pipeline", help="the pipeline YAML (see configs/data/)")
    drun.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a pipeline setting, e.g. workers=4 or work_dir=runs/x")
    drun.add_argument("--workers", type=int, default=None, help="parallel shard workers")
    drun.add_argument("--executor", choices=["local", "ray"], default=None, help="where shards run")
    drun.add_argument("--update", action="store_true",
                      help="the input files changed since WORK_DIR was made: process the added and changed "
                           "files, withdraw the removed files' documents")
    drun.set_defaults(func=cmd_data_run)
    insp = data.add_parser("inspect", help="a run's report, or a sample of what one step removed and why")
    insp.add_argument("work_dir", help="the pipeline's work_dir")
    insp.add_argument("--step", default=None, help="a step label (e.g. c4); without it: the report")
    insp.add_argument("--sample", type=int, default=5, help="documents to show")
    insp.add_argument("--seed", type=int, default=0, help="which sample (the same seed, the same documents)")
    insp.add_argument("--chars", type=int, default=600, help="characters of each text to show")
    insp.set_defaults(func=cmd_data_inspect)
    quality = data.add_parser("quality", help="model-based quality filter")
    quality = quality.add_subparsers(dest="quality_action", required=True)
    qtrain = quality.add_parser("train", help="teacher-labelled documents → a fastText quality classifier")
    qtrain.add_argument("config", help="YAML: inputs, out_dir, teacher {base_url, model, …}, threshold")
    qtrain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. teacher.base_url=http://127.0.0.1:8000/v1")
    qtrain.set_defaults(func=cmd_data_quality_train)
    synth = data.add_parser("synth", help="generate documents with a teacher model (OpenAI-compatible API)")
    synth.add_argument("config", help="the synth YAML (see configs/data/synth.yaml)")
    synth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. teacher.base_url=http://127.0.0.1:8000/v1")
    synth.set_defaults(func=cmd_data_synth)

    sft = sub.add_parser("sft", help="supervised fine-tuning on chat conversations (OpenAI messages JSONL)")
    _add_tuning_flags(sft, "configs/sft_demo.yaml", "weights to start from",
                      "a JSONL file of conversations (repeat for more); none = the chitchat-dataset demo")
    sft.add_argument("--synth", action="append", default=[],
                     help="WORK_DIR of a `mai data synth` run: its kept documents join as instruction data")
    sft.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0 = full)")
    sft.add_argument("--no-packing", action="store_true", help="one conversation per row")
    sft.set_defaults(func=cmd_sft)

    dpo = sub.add_parser("dpo", help="preference tuning (DPO) on chosen/rejected pairs, frozen reference")
    _add_tuning_flags(dpo, "configs/dpo_demo.yaml", "start and reference model",
                      "JSONL of {prompt, chosen, rejected} (repeatable); none = chitchat demo pairs")
    dpo.add_argument("--beta", type=float, default=0.1, help="DPO temperature β")
    dpo.set_defaults(func=cmd_dpo)

    ev = sub.add_parser("eval", help="benchmarks (lm-eval conventions), perplexity and bits per byte")
    ev.add_argument("models", nargs="+", help="model paths: .gguf, HF dir, mai export, run dir")
    ev.add_argument("--tasks", default="", help="comma list: hellaswag,arc_easy,arc_challenge,piqa,"
                    "winogrande,boolq,mmlu,mmlu_5shot,lambada; generative: gsm8k,humaneval,mbpp,"
                    "minerva_math_500,drop,squad, or a .jsonl file of {prompt, answer}")
    ev.add_argument("--limit", type=int, default=None, help="first N examples per task (per MMLU subject)")
    ev.add_argument("--text", nargs="*", default=[], help=".txt / .jsonl files for perplexity and bits/byte")
    ev.add_argument("--shards", default=None, help="token-shard directory for held-out perplexity")
    ev.add_argument("--split", default="val", help="split of --shards")
    ev.add_argument("--batch-tokens", type=int, default=4096, help="tokens per forward batch")
    ev.add_argument("--max-length", type=int, default=None, help="context window (default: the model's)")
    ev.add_argument("--device", default="cpu")
    _add_precision_flag(ev)
    ev.add_argument("--out", default="runs/eval", help="folder for results.json and results.png")
    ev.add_argument("--contamination", action="append", default=[], metavar="SHARD_DIR",
                    help="report the task examples sharing an n-gram with these training shards (repeatable)")
    ev.add_argument("--ngram", type=int, default=13, help="n-gram length of the contamination report")
    ev.add_argument("--samples", type=int, default=1, help="generative tasks: answers per question (pass@k)")
    ev.add_argument("--temperature", type=float, default=0.0, help="generative tasks: 0 = greedy")
    ev.add_argument("--chat", action="store_true", help="generative tasks: prompt through the chat template")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="generative tasks: at most N tokens")
    ev.add_argument("--batch-size", type=int, default=8, help="generative tasks: requests decoded together")
    ev.add_argument("--seed", type=int, default=1234, help="generative tasks: sampling seed")
    ev.set_defaults(func=cmd_eval)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
