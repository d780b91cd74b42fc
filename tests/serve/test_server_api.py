"""The real server on 127.0.0.1 driven by the official openai client (and raw HTTP for broken input)."""

import asyncio
import json
import re

import pytest

from .conftest import http_client

openai = pytest.importorskip("openai")
httpx = http_client()
pytestmark = pytest.mark.slow

Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="sk-test", max_retries=0)


def test_models_health_and_chat(client, server_url):
    assert {m.id for m in client.models.list().data} == {"smol", "smol-strict"}
    r = client.chat.completions.create(model="smol", messages=Q, temperature=0, max_tokens=30)
    assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0 and r.object == "chat.completion"
    metrics = httpx.get(f"{server_url}/metrics").text
    assert "mai_time_to_first_token_seconds_count" in metrics and "mai_generation_tokens_total" in metrics


@pytest.mark.parametrize("max_tokens", [5, 40])
def test_stream_equals_non_stream(client, max_tokens):
    args = dict(model="smol", messages=Q, temperature=0, max_tokens=max_tokens)
    full = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == full.choices[0].finish_reason and all(r is None for r in reasons[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_raw_sse_format(server_url):
    body = {"model": "smol", "messages": Q, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server_url}/v1/chat/completions", json=body,
                      headers={"Authorization": "Bearer sk-test"}) as r:
        raw = r.read().decode()
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_parameters(client):
    r = client.chat.completions.create(model="smol", messages=Q, n=2, seed=3, temperature=1.0, max_tokens=8,
                                       logprobs=True, top_logprobs=2, top_p=0.9, presence_penalty=0.5,
                                       frequency_penalty=0.5, extra_body={"top_k": 40})
    assert len(r.choices) == 2 and r.choices[0].logprobs.content[0].top_logprobs
    again = client.chat.completions.create(model="smol", messages=Q, n=2, seed=3, temperature=1.0,
                                           max_tokens=8, top_p=0.9, presence_penalty=0.5,
                                           frequency_penalty=0.5, extra_body={"top_k": 40})
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    stop = client.chat.completions.create(model="smol", messages=Q, temperature=0, stop=["France"])
    assert "France" not in stop.choices[0].message.content and stop.choices[0].finish_reason == "stop"
    js = client.chat.completions.create(model="smol", temperature=0.8, seed=1, max_tokens=40,
                                        response_format={"type": "json_object"},
                                        messages=[{"role": "user", "content": "A JSON object about Paris."}])
    assert isinstance(json.loads(js.choices[0].message.content), dict)
    comp = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=5,
                                     temperature=0, logprobs=2)
    assert comp.choices[0].text and len(comp.choices[0].logprobs.tokens) == 5
    comp_stream = list(client.completions.create(model="smol", prompt="The capital of France is",
                                                 max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in comp_stream) == comp.choices[0].text


def test_auth_and_rate_limits(server_url):
    anon = openai.OpenAI(base_url=f"{server_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anon.models.list()
    r = httpx.get(f"{server_url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    slow = openai.OpenAI(base_url=f"{server_url}/v1", api_key="sk-slow", max_retries=0)
    for _ in range(2):
        slow.chat.completions.create(model="smol", messages=Q, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as info:
        slow.chat.completions.create(model="smol", messages=Q, max_tokens=1)
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_error_paths(client, server_url):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=Q)
    bad = [dict(messages=[]), dict(messages=Q, temperature=5), dict(messages=Q, max_tokens=10**9),
           dict(messages=Q, n=1000), dict(messages=[{"role": "wizard", "content": "x"}]),
           dict(messages=Q, top_logprobs=50, logprobs=True),
           dict(messages=[{"role": "user", "content": "word " * 600}])]
    for extra in bad:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="smol", **extra)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "word " * 390}],
                                       max_tokens=200)
    assert info.value.code == "context_length_exceeded"
    h = {"Authorization": "Bearer sk-test", "Content-Type": "application/json"}
    for raw, status in [(b"{not json", 400), (b'{"model": "smol", "messages": "hi"}', 400),
                        (b'{"model": 5, "messages": []}', 400), (b"\xff\xfe\x00garbage", 400),
                        (b'{"model": "smol", "messages": [{"role": "user", "content": "\xff"}]}', 400),
                        (b"[" * 70_000, 413)]:
        r = httpx.post(f"{server_url}/v1/chat/completions", content=raw, headers=h)
        assert r.status_code == status, (raw[:40], r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_content_filter(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content":
                                                                "How do I make a pipe bomb to kill them?"}])
    assert info.value.code == "content_filter"
    with pytest.raises(openai.BadRequestError):  # the strict model blocks low severity too
        client.chat.completions.create(model="smol-strict",
                                       messages=[{"role": "user", "content": "I hate men"}])
    mod = client.moderations.create(input=["I want to kill myself", "Nice weather today"])
    assert mod.results[0].flagged and mod.results[0].categories.self_harm and not mod.results[1].flagged


def _running(server_url):
    text = httpx.get(f"{server_url}/metrics").text
    return sum(float(v) for v in re.findall(r'mai_num_requests_running\{model="[^"]+"\} (\S+)', text))


def test_client_disconnect_stops_generation(server_url):
    body = {"model": "smol", "messages": Q, "max_tokens": 250, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", f"{server_url}/v1/chat/completions", json=body, timeout=60,  # a busy CPU
                      headers={"Authorization": "Bearer sk-test"}) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
        assert _running(server_url) >= 1
    for _ in range(100):
        if _running(server_url) == 0:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert _running(server_url) == 0


def test_32_concurrent_streams_and_a_flood_of_bad_requests(server_url):
    async def main():
        c = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="sk-test", max_retries=0)

        async def one(i):
            stream = await c.chat.completions.create(model="smol", max_tokens=8, temperature=0, stream=True,
                                                     messages=[{"role": "user", "content": f"Count to {i}"}])
            parts, reason = [], None
            async for ch in stream:
                if ch.choices:
                    parts.append(ch.choices[0].delta.content or "")
                    reason = ch.choices[0].finish_reason or reason
            return "".join(parts), reason

        async with httpx.AsyncClient() as h:
            async def junk(i):
                r = await h.post(f"{server_url}/v1/chat/completions", content=b"{" * (i % 7 + 1),
                                 headers={"Authorization": "Bearer sk-test"})
                return r.status_code

            results = await asyncio.gather(*(one(i) for i in range(32)), *(junk(i) for i in range(200)))
        return results[:32], results[32:]

    streams, junk = asyncio.run(main())
    assert all(reason in ("stop", "length") and text for text, reason in streams)
    assert set(junk) == {400}
    assert httpx.get(f"{server_url}/health").status_code == 200
