"""Serving latency and throughput of ``mai serve`` at several concurrency levels, measured the way vLLM's
``benchmark_serving.py`` does.

Per level, ``--requests-per-level`` streamed /v1/completions requests (prompts: Wikipedia intros of the
default corpus cut to ``--prompt`` tokens, greedy, ``max_tokens`` fixed) are all sent at once (request rate
inf) with at most ``concurrency`` in flight. From each stream: TTFT = first token's arrival − send time;
ITL = the gaps between later token-bearing chunks; TPOT = (latency − TTFT) / (output tokens − 1). Output
tokens come from the server's own count (``stream_options.include_usage``). Request and output-token
throughput divide by the level's wall time. Unless ``--url`` names a running server, the script starts
``mai serve --model bundled:smollm2`` on 127.0.0.1 itself and stops it at the end.

    python benchmarks/serve_latency.py [--concurrency 1 8 32] [--max-tokens 64] [--prompt 128]
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
                    res.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    if res.ttft == 0.0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
        res.latency = time.perf_counter() - start
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


def start_server(max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    catalog = f"/tmp/mai-bench-catalog-{port}.yaml"
    with open(catalog, "w") as f:
        f.write("models:\n  - {name: smol, path: 'bundled:smollm2', "
                f"max_batch: {max_batch}, max_len: 1024}}\n"
                "limits: {max_waiting: 1024}\n")
    proc = subprocess.Popen([sys.executable, "-m", "mai.cli", "serve", "--catalog", catalog,
                             "--port", str(port), "--threads", str(threads)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("mai serve exited before becoming healthy")
        time.sleep(0.5)
    raise SystemExit("mai serve did not become healthy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server (default: start mai serve on 127.0.0.1)")
    ap.add_argument("--model", default="smol")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-level", type=int, default=0, help="default: max(8, 2 × concurrency)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128, help="prompt length in (SmolLM2) tokens")
    ap.add_argument("--threads", type=int, default=0, help="the started server's torch threads (0: default)")
    args = ap.parse_args()
    from mai.data.corpus import default_corpus
    from mai.interop import load_model
    from mai.interop.bundled import smollm2_gguf
    from mai.precision import bench_tag, choose_precision

    tok = load_model(smollm2_gguf(), max_seq_len=256).tokenizer
    texts = [tok.decode(tok.encode(t)[: args.prompt]) for t in default_corpus(limit=400)]
    proc = None
    url = args.url
    # the started server resolves precision auto for its batch on this machine; an external one is unknown
    tag = bench_tag(choose_precision("auto", "cpu", max(args.concurrency)).name if url is None else "?")
    if url is None:
        proc, url = start_server(max(args.concurrency), args.threads)
    try:
        rows = []
        offset = 0
        for c in args.concurrency:
            n = args.requests_per_level or max(8, 2 * c)
            prompts = texts[offset: offset + n]
            offset += n
            asyncio.run(run_level(url, args.model, prompts[:1], 1, 4))  # warm-up
            results, wall = asyncio.run(run_level(url, args.model, prompts, c, args.max_tokens))
            rows.append({**summarize(c, results, wall), "machine": tag})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(f"\nprompt {args.prompt} tokens, max_tokens {args.max_tokens}, greedy, streamed /v1/completions; "
          "times in ms\n")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
