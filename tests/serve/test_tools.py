"""Tool calling in OpenAI's shape through the official openai client against the real server on SmolLM2
(Hermes ``<tool_call>`` format, tools described in a system message since SmolLM2's template has none)."""

import json

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ZONE = {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}
TIME = {"type": "object", "properties": {"timezone": ZONE},
        "required": ["timezone"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time in a timezone",
                                           "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="sk-test", max_retries=0)


def _create(client, **kwargs):
    args = dict(model="smol", messages=ASK, tools=TOOLS, max_tokens=60, temperature=0)
    return client.chat.completions.create(**{**args, **kwargs})


def _valid_calls(calls) -> None:
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_function_gives_valid_arguments(client):
    choice = _create(client, tool_choice={"type": "function", "function": {"name": "get_time"}}).choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    _valid_calls(calls)


def test_required_gives_at_least_one_call(client):
    choice = _create(client, tool_choice="required", parallel_tool_calls=False).choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    _valid_calls(choice.message.tool_calls)


def test_none_gives_plain_text(client):
    choice = _create(client, tool_choice="none", max_tokens=20).choices[0]
    assert choice.message.tool_calls is None and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and "<tool_call>" not in choice.message.content


def test_auto_answers_with_text_or_valid_calls(client):
    choice = _create(client, tool_choice="auto").choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        _valid_calls(choice.message.tool_calls)
    else:
        assert choice.message.content


def test_multi_turn_with_a_tool_result(client):
    """The call, its result as a ``tool`` message, then the model answers from it."""
    first = _create(client, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id,
                "content": json.dumps({"temperature": 21, "sky": "clear"})}]
    reply = _create(client, messages=history, tool_choice="none", max_tokens=30).choices[0]
    assert reply.message.content and reply.message.tool_calls is None


def test_streamed_deltas_reassemble_to_the_same_calls(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = _create(client, tool_choice=named).choices[0].message.tool_calls
    calls: dict[int, dict] = {}
    reasons = []
    for chunk in _create(client, tool_choice=named, stream=True):
        for c in chunk.choices:
            reasons.append(c.finish_reason)
            for d in c.delta.tool_calls or []:
                if d.id is not None:  # the first delta of a call: its id, type and name
                    assert d.index not in calls and d.type == "function" and d.function.name
                    calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
                calls[d.index]["arguments"] += d.function.arguments or ""
    assert reasons[-1] == "tool_calls"
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == \
        [(c.function.name, c.function.arguments) for c in whole]


@pytest.mark.parametrize("kwargs, param", [
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "obj"}}}]), "tools"),
    (dict(tool_choice={"type": "function", "function": {"name": "unknown"}}), "tool_choice"),
    (dict(tools=None, tool_choice="required"), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools"),
    (dict(tool_choice="sometimes"), "tool_choice"),
], ids=["invalid-schema", "unknown-name", "choice-without-tools", "bad-name", "bad-choice"])
def test_bad_tools_are_400s(client, kwargs, param):
    args = dict(model="smol", messages=ASK, tools=TOOLS, max_tokens=4)
    args.update(kwargs)
    if args["tools"] is None:
        del args["tools"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**args)
    assert err.value.status_code == 400 and param in str(err.value.body.get("param"))


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HISTORY = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]


def test_prompt_for_a_template_without_tools():
    """SmolLM2-like template: the tools in a system message, the call and its result written as text."""
    from mai.serve.protocol import ChatRequest
    from mai.serve.tools import HERMES, chat_messages, tool_format

    body = ChatRequest(model="m", messages=HISTORY, tools=TOOLS)
    messages, tools = chat_messages(body, CHATML)
    assert tools is None and tool_format(CHATML) is HERMES
    assert messages[0]["role"] == "system" and '"name": "get_time"' in messages[0]["content"]
    call = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
            '\n</tool_call>')
    assert messages[2] == {"role": "assistant", "content": call}
    result = '<tool_response>\n{"temperature": 21}\n</tool_response>'
    assert messages[3] == {"role": "user", "content": result}
    plain, _ = chat_messages(ChatRequest(model="m", messages=ASK, tools=TOOLS, tool_choice="none"), CHATML)
    assert plain == ASK  # tool_choice none: the tools are not shown


def test_prompt_for_a_template_with_tools():
    """A Llama-3-style template that renders tools: they and the calls pass as Hugging Face passes them."""
    from mai.serve.protocol import ChatRequest
    from mai.serve.tools import LLAMA, chat_messages, tool_format

    template = "<|start_header_id|>{% for t in tools %}{{ t }}{% endfor %}"
    messages, tools = chat_messages(ChatRequest(model="m", messages=HISTORY, tools=TOOLS), template)
    assert tool_format(template) is LLAMA and tools == TOOLS
    assert messages[1]["tool_calls"] == [{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]
    assert messages[2] == {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": "call_1"}
