"""Serving robustness through real HTTP on 127.0.0.1: no request takes the engine down, no input gives a
5xx, slow bodies time out, parameters are validated to OpenAI's ranges, token limits hold under
concurrency, usage adds up with the Prometheus counters, and a non-streamed request whose client goes
away is cancelled. Most tests use the tiny random model (the subject is the server); the batch repro of
issue 15 uses SmolLM2."""

import asyncio
import json
import re
import socket
import threading

import pytest

from mai.serve.catalog import Limits
from mai.serve.protocol import ChatRequest, CompletionRequest, ModelContext

from .conftest import TOKEN_KEYS, http_client

openai = pytest.importorskip("openai")
httpx = http_client()
pytestmark = pytest.mark.slow

Q = [{"role": "user", "content": "What is the capital of France?"}]
NO_STOP = {"1": -100, "6": -100}  # the tiny tokenizer's <|eos|> and <|end|>: answers run to max_tokens
H = {"Authorization": "Bearer sk-tiny"}


def _post(url, path, body=None, content=None, headers=None):
    return httpx.post(f"{url}{path}", json=body, content=content, headers={**H, **(headers or {})},
                      timeout=60)


def _assert_openai_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"], err
    if param is not None:
        assert err["param"] == param, err
    return err


def _metric(url, name, **labels):
    """The sum of Prometheus samples ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if m and m[1] == name:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m[2]))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m[3])
    return total


# --- 15.1: one request's parameters cannot take the engine down ------------------------------------
def test_tiny_top_p_and_temperature_beside_a_running_batch(server_url):
    """Issue 15's repro: while two requests decode, chat requests with top_p 1e-50 and a tiny
    temperature succeed, the two finish normally, and the engine goes on serving."""
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="sk-test", max_retries=0, timeout=120)

    def stream(results):
        s = client.chat.completions.create(model="smol", messages=Q, max_tokens=30, temperature=1.0,
                                           seed=1, stream=True)
        reasons = [c.choices[0].finish_reason for c in s if c.choices and c.choices[0].finish_reason]
        results.append(reasons)

    results: list = []
    threads = [threading.Thread(target=stream, args=(results,)) for _ in range(2)]
    for t in threads:
        t.start()
    odd = [dict(top_p=1e-50), dict(temperature=1e-30),
           dict(top_p=1e-50, temperature=2.0, presence_penalty=-2.0, frequency_penalty=2.0,
                logit_bias={"28": 100, "29": -100}, extra_body={"top_k": 1})]
    for extra in odd:
        r = client.chat.completions.create(model="smol", messages=Q, max_tokens=8, **extra)
        assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content
    for t in threads:
        t.join(120)
    assert len(results) == 2 and all(r and r[-1] in ("stop", "length") for r in results), results
    assert httpx.get(f"{server_url}/health").json()["status"] == "ok"
    again = client.chat.completions.create(model="smol", messages=Q, max_tokens=5, temperature=0)
    assert again.choices[0].message.content


# --- 15.2: no 5xx from input, slow bodies time out -------------------------------------------------
def test_lone_surrogates_and_odd_bodies_are_openai_shaped_400s(tiny_url):
    surrogate = [
        ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
         "messages.0.content"),
        ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": '
         '[{"type": "text", "text": "\\udfff"}]}]}', "messages.0.content"),
        ("/v1/completions", '{"model": "tiny", "prompt": "\\ud800"}', "prompt.0"),
        ("/v1/completions", '{"model": "tiny", "prompt": ["x\\udc00"]}', "prompt.0"),
        ("/v1/completions", '{"model": "\\ud800", "prompt": "x"}', "model"),
        ("/v1/completions", '{"model": "tiny", "prompt": "x", "stop": ["\\ud800"]}', "stop.0"),
        ("/v1/moderations", '{"input": ["fine", "\\ud800"]}', "input.1"),
    ]
    for path, raw, param in surrogate:
        err = _assert_openai_error(_post(tiny_url, path, content=raw.encode()), 400, param)
        assert "surrogate" in err["message"]
    ok = _post(tiny_url, "/v1/completions", content=b'{"model": "tiny", "prompt": "\\ud83d\\ude00", '
               b'"max_tokens": 2}')  # a surrogate *pair* is an emoji: fine
    assert ok.status_code == 200, ok.text
    bad = [
        ('{"model": "tiny", "prompt": "hi"}'.encode("utf-16"), "invalid_encoding"),
        (b'{"model": "tiny", "prompt": "caf\xe9"}', "invalid_encoding"),
        (b'{"model": "tiny",\x00 "prompt": "x"}', "invalid_json"),
        (b"[" * 20_000 + b"]" * 20_000, "invalid_json"),
        (b'{"a": ' * 3000 + b"1" + b"}" * 3000, "invalid_json"),
        (b"null", None), (b"[]", None), (b'"text"', None), (b"{}", None), (b"", None),
        (b'{"model": "tiny", "prompt": "x", "n": NaN}', None),
        (b'{"model": "tiny", "prompt": "x", "temperature": Infinity}', None),
    ]
    for raw, code in bad:
        err = _assert_openai_error(_post(tiny_url, "/v1/completions", content=raw), 400)
        assert code is None or err["code"] == code, (raw[:30], err)
    plain = _post(tiny_url, "/v1/completions", content=b'{"model": "tiny", "prompt": "x"}',
                  headers={"Content-Type": "text/plain"})
    assert _assert_openai_error(plain, 400)["code"] == "invalid_content_type"
    bom = _post(tiny_url, "/v1/completions", content=b'\xef\xbb\xbf{"model": "tiny", "prompt": "x", '
                b'"max_tokens": 2}', headers={"Content-Type": "application/json"})
    assert bom.status_code == 200, bom.text


def _slow_body(port: int) -> socket.socket:
    """A POST that promises 100 bytes of body and sends 10."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-tiny\r\n"
              b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"model": ')
    return s


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_incomplete_bodies_time_out_without_holding_the_server(tiny_url):
    port = int(tiny_url.rsplit(":", 1)[1])
    slow = [_slow_body(port) for _ in range(20)]
    # while they hang, the server answers others
    assert httpx.get(f"{tiny_url}/health", timeout=30).status_code == 200
    assert _post(tiny_url, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2}).status_code \
        == 200
    for s in slow:
        reply = _read_all(s)  # the server answers 408 and closes the connection (recv returns b"")
        s.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), reply[:200]
        assert json.loads(body)["error"]["code"] == "body_timeout"


# --- 19.3: parameters validated to OpenAI's ranges, 400 naming the field ---------------------------
def test_parameters_out_of_range_are_400s_naming_the_field(tiny_url):
    base = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
    cases = [
        (dict(seed=2**70), "seed"), (dict(seed=-(2**63) - 1), "seed"), (dict(n=0), "n"), (dict(n=129), "n"),
        (dict(logprobs=6), "logprobs"), (dict(stop=["a"] * 5), "stop"), (dict(stop="x" * 300), "stop.0"),
        (dict(logit_bias={"abc": 1}), "logit_bias"), (dict(logit_bias={"5": 101}), "logit_bias.5"),
        (dict(logit_bias={"99999": 1}), "logit_bias"), (dict(temperature=2.5), "temperature"),
        (dict(top_p=1.5), "top_p"), (dict(presence_penalty=-3), "presence_penalty"),
        (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=5000), "max_tokens"),
    ]
    for extra, param in cases:
        err = _assert_openai_error(_post(tiny_url, "/v1/completions", {**base, **extra}), 400, param)
        assert err["message"].startswith(param) or param in err["message"], err
    many = {**base, "stop": [str(i) for i in range(100)]}
    err = _assert_openai_error(_post(tiny_url, "/v1/completions", many), 400, "stop")
    assert err["message"] == "stop: at most 4 stop sequences are allowed, got 100"
    chat = {"model": "tiny", "messages": Q, "max_tokens": 2}
    too_many = {**chat, "top_logprobs": 21, "logprobs": True}
    _assert_openai_error(_post(tiny_url, "/v1/chat/completions", too_many), 400, "top_logprobs")
    _assert_openai_error(_post(tiny_url, "/v1/chat/completions", {**chat, "top_logprobs": 2}), 400,
                         "top_logprobs")
    # the ends of the ranges are served: a 64-bit seed (and seed + choice index beyond it), bias ±100
    for seed in (2**63 - 1, -(2**63)):
        r = _post(tiny_url, "/v1/completions", {**base, "seed": seed, "n": 2,
                                                 "logit_bias": {"7": 100, "8": -100}})
        assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text


def test_max_tokens_default_is_capped_by_the_server_limit_and_the_context():
    """OpenAI's default (16 for completions, up to the context for chat), capped by the server's limit
    and the room left: a server limit of 8 no longer turns a completion without max_tokens into a 400."""
    small = Limits(max_tokens=8)
    ctx = ModelContext(prompt_tokens=10, max_seq_len=100, vocab_size=300)
    completion = CompletionRequest(model="m", prompt="x")
    assert completion.to_sampling_params(small, ctx).max_tokens == 8
    assert completion.to_sampling_params(Limits(), ctx).max_tokens == 16
    assert completion.to_sampling_params(Limits(), ModelContext(95, 100, 300)).max_tokens == 5
    chat = ChatRequest(model="m", messages=Q)
    assert chat.to_sampling_params(Limits(max_tokens=50), ctx).max_tokens == 50
    assert chat.to_sampling_params(Limits(), ctx).max_tokens == 90


# --- 19.1: token limits hold under concurrency ----------------------------------------------------
def test_tokens_per_minute_hold_under_32_concurrent_requests(tiny_url):
    """32 concurrent requests over three keys: admission reserves prompt + max_tokens × n, so what each
    key used stays within its limit plus one reservation; the rest are 429 with Retry-After."""
    max_tokens, n = 20, 2

    async def main():
        async with httpx.AsyncClient(timeout=120) as h:
            async def one(i):
                key = TOKEN_KEYS[i % len(TOKEN_KEYS)]
                body = {"model": "tiny", "prompt": f"The quick brown fox {i}", "max_tokens": max_tokens,
                        "n": n, "logit_bias": NO_STOP}
                r = await h.post(f"{tiny_url}/v1/completions", json=body,
                                 headers={"Authorization": f"Bearer {key.key}"})
                return key, r

            return await asyncio.gather(*(one(i) for i in range(32)))

    results = asyncio.run(main())
    for key in TOKEN_KEYS:
        mine = [r for k, r in results if k is key]
        ok = [r.json()["usage"] for r in mine if r.status_code == 200]
        limited = [r for r in mine if r.status_code == 429]
        assert len(ok) + len(limited) == len(mine), [r.text for r in mine]
        assert ok and limited, (key.key, len(ok))
        reservation = max(u["prompt_tokens"] for u in ok) + max_tokens * n
        assert sum(u["total_tokens"] for u in ok) <= key.tokens_per_minute + reservation
        assert all(int(r.headers["retry-after"]) >= 1 for r in limited)
        assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in limited)


# --- 19.4: usage adds up ------------------------------------------------------------------------
def test_usage_adds_up_and_matches_the_prometheus_counters(tiny_url):
    client = openai.AsyncOpenAI(base_url=f"{tiny_url}/v1", api_key="sk-tiny", max_retries=0, timeout=120)
    model = "tiny-usage"
    before = [_metric(tiny_url, f"mai_{k}_tokens_total", model=model) for k in ("prompt", "generation")]

    async def chat(n, stream, seed):
        args = dict(model=model, messages=Q, max_tokens=12, n=n, seed=seed, temperature=0.8)
        if not stream:
            return (await client.chat.completions.create(**args)).usage
        s = await client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
        return [c async for c in s][-1].usage

    async def completion(n):
        r = await client.completions.create(model=model, prompt="Hello world", max_tokens=9, n=n, echo=True)
        return r.usage

    async def main():
        same = await asyncio.gather(chat(3, False, 7), chat(3, True, 7), chat(1, False, 7))
        mixed = await asyncio.gather(*(chat(1 + i % 3, i % 2 == 0, i) for i in range(10)),
                                     *(completion(1 + i % 2) for i in range(4)))
        return same, mixed

    same, mixed = asyncio.run(main())
    assert same[0] == same[1]  # streaming (include_usage) and not: identical
    assert same[0].prompt_tokens == same[2].prompt_tokens  # once per request, not × n
    assert same[0].completion_tokens > same[2].completion_tokens
    usages = list(same) + list(mixed)
    after = [_metric(tiny_url, f"mai_{k}_tokens_total", model=model) for k in ("prompt", "generation")]
    assert after[0] - before[0] == sum(u.prompt_tokens for u in usages)
    assert after[1] - before[1] == sum(u.completion_tokens for u in usages)
    assert all(u.total_tokens == u.prompt_tokens + u.completion_tokens for u in usages)


# --- 19.2: a non-streamed request whose client disconnects is cancelled ---------------------------
def test_disconnecting_from_a_non_streamed_request_cancels_every_choice(tiny_url):
    model, max_tokens = "tiny-cancel", 3000
    port = int(tiny_url.rsplit(":", 1)[1])
    body = json.dumps({"model": model, "messages": Q, "max_tokens": max_tokens, "n": 2, "temperature": 0,
                       "logit_bias": NO_STOP}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-tiny\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    running = 0.0
    for _ in range(600):
        running = _metric(tiny_url, "mai_num_requests_running", model=model)
        if running == 2:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert running == 2
    s.close()  # the client goes away before the answer
    for _ in range(600):
        if _metric(tiny_url, "mai_requests_total", model=model, finish_reason="cancelled") == 2:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert _metric(tiny_url, "mai_requests_total", model=model, finish_reason="cancelled") == 2
    assert _metric(tiny_url, "mai_num_requests_running", model=model) == 0
    assert _metric(tiny_url, "mai_generation_tokens_total", model=model) < 2 * max_tokens
