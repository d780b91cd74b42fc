"""``mai generate`` and ``mai chat``: one model in the terminal, streaming as tokens arrive."""

from __future__ import annotations

import argparse
import sys

from mai.commands.flags import add_precision_flag


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
    add_precision_flag(p)


def register(sub) -> None:
    gen = sub.add_parser("generate", help="complete a prompt, streaming to the terminal")
    _add_sampling_flags(gen, temperature=0.8)
    gen.add_argument("--prompt", required=True)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="talk to a model with its chat template")
    _add_sampling_flags(chat, temperature=0.7)
    chat.add_argument("--system", default=None, help="a system message")
    chat.set_defaults(func=cmd_chat)
