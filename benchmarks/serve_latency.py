"""Serving latency and throughput of ``mai serve`` at several concurrency levels, measured the way vLLM's
``benchmark_serving.py`` does, optionally beside llama.cpp's OpenAI-compatible server on the same GGUF.

Per level, ``--requests-per-level`` streamed /v1/completions requests (prompts: Wikipedia intros of the
default corpus cut to ``--prompt`` tokens, greedy, ``max_tokens`` fixed) are all sent at once (request rate
inf) with at most ``concurrency`` in flight. From each stream: TTFT = first token's arrival − send time;
ITL = the gaps between later token-bearing chunks; TPOT = (latency − TTFT) / (output tokens − 1). Output
tokens come from the server's own count (``stream_options.include_usage``). Request and output-token
throughput divide by the level's wall time. Unless ``--url`` names a running server, the script starts
``mai serve`` on ``bundled:smollm2`` (``--quant``, default gguf: the file's own blocks) on 127.0.0.1 itself
and stops it at the end. ``--system-prompt N`` adds a level where every prompt begins with the same
N-token text (a shared system prompt, what prefix caching serves), at the largest concurrency ≤ 8.

``--peer llama-cpp`` also starts ``python -m llama_cpp.server`` (llama-cpp-python[server]) on the same
GGUF file with the same threads, and runs every level against both servers in turn (mai, then llama.cpp,
level by level, so load from other jobs hits both alike); a last table gives mai ÷ llama.cpp per figure
(below 1 is mai faster for times, above 1 for throughputs). That server runs one request at a time (its
``interrupt_requests`` is turned off, so a new request waits instead of cutting the running one short):
it has no continuous batching or parallel slots, which llama.cpp's C++ ``llama-server --parallel N``
has. Streams without a usage chunk count one output token per text chunk.

    python benchmarks/serve_latency.py [--concurrency 1 8 32] [--max-tokens 64] [--prompt 128]
        [--system-prompt 1000] [--quant gguf] [--threads 2] [--peer llama-cpp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Result:
    ok: bool = False
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str,
                      max_tokens: int) -> Result:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    res = Result()
    usage_tokens = chunks = 0
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    chunks += 1
                    if res.ttft == 0.0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
        res.latency = time.perf_counter() - start
        res.output_tokens = usage_tokens or chunks
        res.ok = res.output_tokens > 0
    except httpx.HTTPError as exc:
        res.error = repr(exc)
    return res


async def run_level(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int):
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def limited(p: str) -> Result:
            async with sem:
                return await one_request(client, url, model, p, max_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in prompts))
        return results, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else float("nan")


def summarize(concurrency: int, results: list[Result], wall: float) -> dict[str, float]:
    ok = [r for r in results if r.ok]
    if len(ok) < len(results):
        print("errors:", [r.error for r in results if not r.ok][:3], file=sys.stderr)
    ttft = [r.ttft * 1000 for r in ok]
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) * 1000 for r in ok if r.output_tokens > 1]
    itl = [g * 1000 for r in ok for g in r.itl]
    out = sum(r.output_tokens for r in ok)
    return {"concurrency": concurrency, "completed": len(ok), "req/s": len(ok) / wall,
            "out tok/s": out / wall,
            "TTFT med": statistics.median(ttft), "TTFT p99": pct(ttft, 99),
            "TPOT med": statistics.median(tpot), "TPOT p99": pct(tpot, 99),
            "ITL med": statistics.median(itl), "ITL p99": pct(itl, 99)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, probe: str, what: str) -> None:
    for _ in range(1200):
        try:
            if httpx.get(f"{url}{probe}").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited before becoming ready")
        time.sleep(0.5)
    raise SystemExit(f"{what} did not become ready")


def start_server(max_batch: int, threads: int, quant: str, max_seq_len: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    catalog = f"/tmp/mai-bench-catalog-{port}.yaml"
    with open(catalog, "w") as f:
        f.write("models:\n  - {name: smol, path: 'bundled:smollm2', "
                f"max_batch: {max_batch}, max_seq_len: {max_seq_len}, quant: {quant}, "
                "safety: {prompt: 'off', completion: 'off'}}\n"  # llama.cpp's server filters nothing
                "limits: {max_waiting: 1024}\n")
    command = [sys.executable, "-m", "mai.cli", "serve", "--catalog", catalog, "--port", str(port)]
    proc = subprocess.Popen(command + (["--threads", str(threads)] if threads else []))
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/health", "mai serve")
    return proc, url


def start_llama_cpp(threads: int, max_seq_len: int) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's OpenAI-compatible server on the bundled GGUF, serving it as ``smol``."""
    from mai.interop.bundled import smollm2_gguf

    port = free_port()
    threads = threads or torch_threads()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
                             "--model_alias", "smol", "--host", "127.0.0.1", "--port", str(port),
                             "--n_threads", str(threads), "--n_threads_batch", str(threads),
                             "--n_ctx", str(max_seq_len), "--n_batch", "512",
                             "--interrupt_requests", "False"])
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/v1/models", "llama_cpp.server")
    return proc, url


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server (default: start mai serve on 127.0.0.1)")
    ap.add_argument("--model", default="smol")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-level", type=int, default=0, help="default: max(8, 2 × concurrency)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128, help="prompt length in (SmolLM2) tokens")
    ap.add_argument("--system-prompt", type=int, default=0,
                    help="also a level whose prompts share a system prompt of this many tokens")
    ap.add_argument("--quant", default="gguf", help="the started mai server's catalog quant")
    ap.add_argument("--threads", type=int, default=0, help="the started servers' threads (0: default)")
    ap.add_argument("--peer", choices=["llama-cpp"], help="also start and measure this server")
    args = ap.parse_args()
    from mai.data.corpus import default_corpus
    from mai.interop import load_model
    from mai.interop.bundled import smollm2_gguf
    from mai.precision import bench_tag, choose_precision

    tok = load_model(smollm2_gguf(), max_seq_len=256).tokenizer
    corpus = list(default_corpus(limit=400))
    texts = [tok.decode(tok.encode(t)[: args.prompt]) for t in corpus]
    levels = [(f"c{c}", c, False) for c in args.concurrency]  # (label, concurrency, shared system prompt)
    system = ""
    if args.system_prompt:
        ids: list[int] = []
        for t in reversed(corpus):
            ids += tok.encode(t + "\n")
        system = tok.decode(ids[: args.system_prompt]) + "\n\n"
        c = max([c for c in args.concurrency if c <= 8] or [min(args.concurrency)])
        levels.append((f"c{c}+shared system {args.system_prompt}", c, True))
    max_seq_len = max(1024, args.prompt + args.system_prompt + args.max_tokens + 64)
    # the started server resolves precision auto for its batch on this machine; an external one is unknown
    tag = bench_tag(choose_precision("auto", "cpu", max(args.concurrency)).name if args.url is None else "?")
    servers: dict[str, tuple[subprocess.Popen | None, str]] = {}
    try:
        if args.url is None:
            servers[f"mai ({args.quant})"] = start_server(max(args.concurrency), args.threads, args.quant,
                                                          max_seq_len)
        else:
            servers["server"] = (None, args.url)
        if args.peer == "llama-cpp":
            servers["llama.cpp (llama_cpp.server)"] = start_llama_cpp(args.threads, max_seq_len)
        rows: dict[str, list[dict]] = {name: [] for name in servers}
        offset = 0
        for label, c, shared in levels:
            n = args.requests_per_level or max(8, 2 * c)
            prompts = texts[offset: offset + n]
            offset += n
            if shared:
                prompts = [system + p for p in prompts]
            for name, (_, url) in servers.items():
                asyncio.run(run_level(url, args.model, prompts[:1], 1, 4))  # warm-up
                results, wall = asyncio.run(run_level(url, args.model, prompts, c, args.max_tokens))
                row = {"server": name, "level": label, **summarize(c, results, wall), "machine": tag}
                rows[name].append(row)
                print(json.dumps(rows[name][-1]), flush=True)
    finally:
        for proc, _ in servers.values():
            if proc is not None:
                stop(proc)
    print(f"\nprompt {args.prompt} tokens (+ {args.system_prompt} shared where the level says so), "
          f"max_tokens {args.max_tokens}, greedy, streamed /v1/completions; times in ms\n")
    print_table([r for name in rows for r in rows[name]])
    if len(rows) == 2:
        (mai_name, mai_rows), (peer_name, peer_rows) = rows.items()
        print(f"\n{mai_name} ÷ {peer_name} (times: below 1 is mai faster; throughputs: above 1)\n")
        ratios = []
        for m, p in zip(mai_rows, peer_rows, strict=True):
            ratio = {k: m[k] / p[k] for k in m if isinstance(m[k], float) and p[k]}
            ratios.append({"level": m["level"], **ratio, "machine": tag})
        print_table(ratios)


if __name__ == "__main__":
    main()
