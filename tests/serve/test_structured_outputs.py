"""Structured outputs (``response_format: json_schema``) through the official openai client against the real
server on SmolLM2: every answer validates against its schema, streamed or not, a cut answer is closed into
a valid one, and a bad schema is a 400 in OpenAI's shape."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

CASES = json.loads((Path(__file__).parent / "structured_schemas.json").read_text())


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="sk-test", max_retries=0)


def _format(case):
    return {"type": "json_schema",
            "json_schema": {"name": case["name"], "schema": case["schema"], "strict": True}}


def _ask(client, case, stream: bool, max_tokens: int = 64):
    """(text, finish_reason) of one answer, streamed or not."""
    kwargs = dict(model="smol", max_tokens=max_tokens, seed=7, temperature=0.8, response_format=_format(case),
                  messages=[{"role": "user", "content": f"Reply with one JSON example of a {case['name']}."}])
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        return choice.message.content, choice.finish_reason
    text, reason = "", None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            text += c.delta.content or ""
            reason = c.finish_reason or reason
    return text, reason


def _check(case, text: str) -> None:
    validator = jsonschema.Draft202012Validator(case["schema"], format_checker=jsonschema.FormatChecker())
    validator.validate(json.loads(text))


@pytest.mark.slow
def test_every_answer_validates_against_its_schema(client):
    """Every schema, streamed and not, all at once (the engine batches them): each answer validates,
    whether the model ended it (stop) or the budget did (length: the answer is closed)."""
    jobs = [(case, stream) for case in CASES for stream in (False, True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _ask(client, *job), jobs))
    for (case, stream), (text, reason) in zip(jobs, answers, strict=True):
        assert reason in ("stop", "length"), (case["name"], stream)
        _check(case, text)
    assert any(reason == "stop" for _, reason in answers)  # not all of them cut by the budget


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_budget_exhaustion_closes_the_answer(client, stream):
    """max_tokens far too small: finish_reason says "length", and the text is still a valid instance
    (the grammar's shortest way out is appended)."""
    case = next(c for c in CASES if c["name"] == "nested_object")
    text, reason = _ask(client, case, stream, max_tokens=6)
    assert reason == "length"
    _check(case, text)


def test_json_schema_and_plain_text_answers_stay_apart(client):
    """A request without response_format on the same model is unconstrained (the grammar is per request)."""
    reply = client.chat.completions.create(model="smol", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Say hello."}])
    assert reply.choices[0].message.content and not reply.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("fmt, where", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}, "schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}, "cannot be used"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "no spaces allowed", "schema": {}}}, "name"),
    ({"type": "json_schema"}, "json_schema"),
], ids=["not-a-schema", "unresolvable-ref", "no-schema", "bad-name", "no-json-schema"])
def test_bad_schema_is_a_400_in_openai_shape(client, fmt, where):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smol", max_tokens=4, response_format=fmt,
                                       messages=[{"role": "user", "content": "hi"}])
    body = err.value.body
    assert err.value.status_code == 400 and isinstance(body, dict)
    assert {"message", "type", "param", "code"} <= set(body) and where in body["message"] + str(body["param"])
