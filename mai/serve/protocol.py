"""Request bodies of the OpenAI API that `mai serve` accepts, with OpenAI's ranges (pydantic models), the
mapping of a request to the engine's :class:`SamplingParams`, and the response shapes the OpenAPI
document advertises.

Unknown fields are ignored, as OpenAI-compatible servers commonly do; out-of-range values are 400s that
name the field. Fields that OpenAI lets be "a string or an array" are validated as an array (a string
becomes a one-item list first), so an error names the field and says what is wrong, not which member of
a union failed ("stop.str: Input should be a valid string"). Every string is checked for lone UTF-16
surrogates ("\\ud800" is valid JSON but not text): the tokenizer and the UTF-8 response encoder cannot
take them, so they are a 400 here rather than a 500 later.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from mai.errors import MaiError
from mai.infer.grammar import GrammarConstraints
from mai.infer.sampling import SamplingParams
from mai.serve.catalog import Limits
from mai.serve.errors import ApiError
from mai.serve.tools import offers_tools, tool_format, tool_grammar

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_STOP_CHARS = 256  # each is held back from a stream until it cannot begin there: keep them short
INT64 = (-(2**63), 2**63 - 1)


def _valid_unicode(value: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PydanticCustomError(
                "lone_surrogate", "the text holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                "escape), which is not valid Unicode") from None
    return value


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]
# strict: a number, as the document says, not a numeric string or a boolean (integers are numbers)
Prob = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
Penalty = Annotated[StrictFloat, Field(ge=-2.0, le=2.0)]
Bias = Annotated[StrictFloat, Field(ge=-100.0, le=100.0)]


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def one_or_many(item: Any, item_schema: dict[str, Any], min_items: int, max_items: int,
                too_many: str) -> Any:
    """A string or an array of ``min_items..max_items`` strings, validated as a list; ``too_many`` is the
    message (with ``{max}`` and ``{got}``) for a longer array."""

    def count(items: list[str]) -> list[str]:
        if len(items) > max_items:
            raise PydanticCustomError("too_long", too_many, {"max": max_items, "got": len(items)})
        if len(items) < min_items:
            raise PydanticCustomError("too_short", "an empty list is not allowed here")
        return items

    schema = {"anyOf": [item_schema, {"type": "array", "items": item_schema, "minItems": min_items,
                                      "maxItems": max_items}]}
    return Annotated[list[item], BeforeValidator(_listify), AfterValidator(count), WithJsonSchema(schema)]


StopString = Annotated[Text, Field(max_length=MAX_STOP_CHARS)]
Stop = one_or_many(StopString, {"type": "string", "maxLength": MAX_STOP_CHARS}, 0, MAX_STOP,
                   "at most {max} stop sequences are allowed, got {got}")
Prompt = one_or_many(Text, {"type": "string"}, 1, 1,
                     "one prompt per request: a list of {got} prompts is not supported")
ModerationInput = one_or_many(Text, {"type": "string"}, 1, 64, "at most {max} inputs per request, got {got}")


def _text_parts(value: Any) -> Any:
    """Message content may be a list of ``{"type": "text", "text": ...}`` parts: joined into one string."""
    if not isinstance(value, list):
        return value
    texts = []
    for i, part in enumerate(value):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise PydanticCustomError("content_part", 'content part {index} is not {{"type": "text", '
                                      '"text": STRING}} (other part types are not supported)', {"index": i})
        texts.append(part["text"])
    return "".join(texts)


_PART = {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
         "required": ["type", "text"]}
Content = Annotated[Text | None, BeforeValidator(_text_parts), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": _PART}, {"type": "null"}]})]


def _token_ids(bias: dict[str, float]) -> dict[str, float]:
    for key in bias:
        if not (key.isascii() and key.isdigit() and len(key) < 10):
            raise PydanticCustomError("logit_bias_key", "logit_bias keys are token ids (integers as strings)")
    return bias


LogitBias = Annotated[dict[Text, Bias], AfterValidator(_token_ids)]


FunctionName = Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]  # OpenAI's rule for names


class CalledFunction(BaseModel):
    name: FunctionName
    arguments: Text  # a JSON object, as text


class ToolCallIn(BaseModel):
    """A call in an earlier assistant message."""

    model_config = ConfigDict(extra="ignore")
    id: Text
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content = None
    tool_calls: list[ToolCallIn] | None = None  # assistant: the calls it made
    tool_call_id: Text | None = None  # tool: the call this message answers

    def text(self) -> str:
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


def _schema_object(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema must be a valid one (draft 2020-12 meta-schema), so a typo is a 400 that says where."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(value)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the top level"
        raise PydanticCustomError("json_schema", "not a valid JSON schema at {where}: {why}",
                                  {"where": where, "why": exc.message[:200]}) from None
    return value


JsonSchema = Annotated[dict[str, Any], AfterValidator(_schema_object)]


class JsonSchemaFormat(BaseModel):
    name: FunctionName
    description: Text | None = None
    schema_: JsonSchema | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(BaseModel):
    name: FunctionName
    description: Text | None = None
    parameters: JsonSchema | None = None
    strict: StrictBool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: FunctionName


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


@dataclass(frozen=True)
class ModelContext:
    """What the mapping to sampling parameters needs to know about the model and the prompt."""

    prompt_tokens: int
    max_seq_len: int  # the context served: prompt + answer
    vocab_size: int
    grammars: GrammarConstraints | None = None  # the model's grammar compiler (structured outputs, tools)
    chat_template: str | None = None  # picks the tool-call format


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Text
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=2.0)] | None = None
    top_p: Prob | None = None
    top_k: Annotated[StrictInt, Field(ge=-1, le=100_000)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] = 1
    stop: Stop | None = None
    seed: Annotated[StrictInt, Field(ge=INT64[0], le=INT64[1])] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: LogitBias | None = None
    user: Text | None = None

    # OpenAI's default when max_tokens is absent (None: up to the context)
    default_max_tokens: ClassVar[int | None] = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprob_settings(self) -> tuple[bool, int]:
        """(report logprobs, number of alternatives)."""
        return False, 0

    def json_object(self) -> bool:
        return False

    def grammar(self, ctx: ModelContext) -> Any:
        """The compiled grammar the output must follow, if any (structured outputs, tool calls)."""
        return None

    def prompt_param(self) -> str:
        return "prompt"

    def to_sampling_params(self, limits: Limits, ctx: ModelContext) -> SamplingParams:
        """The engine's parameters for choice 0 (see :func:`for_choice`); 400 for a prompt or max_tokens
        that the server's limits or the model's context cannot take, or a schema that cannot be used."""
        logprobs, top_logprobs = self.logprob_settings()
        return SamplingParams(
            max_tokens=self._max_tokens(limits, ctx),
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            seed=self.seed, stop=list(self.stop or []), logprobs=logprobs, top_logprobs=top_logprobs,
            json_object=self.json_object(), logit_bias=self._bias(ctx.vocab_size), grammar=self.grammar(ctx))

    def _max_tokens(self, limits: Limits, ctx: ModelContext) -> int:
        """The request's max_tokens, or min(OpenAI's default, the server's limit, the room left)."""
        prompt, context = ctx.prompt_tokens, ctx.max_seq_len
        if prompt > limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {prompt} tokens; the limit is {limits.max_prompt_tokens}",
                           "context_length_exceeded", self.prompt_param())
        room = context - prompt
        if room < 1:
            raise ApiError(400, f"this model's maximum context length is {context} tokens; the prompt has "
                           f"{prompt}", "context_length_exceeded", self.prompt_param())
        for field_name in ("max_tokens", "max_completion_tokens"):  # each given one is bounded, used or not
            given = getattr(self, field_name, None)
            if given is not None and given > limits.max_tokens:
                raise ApiError(400, f"{field_name} {given} exceeds this server's limit {limits.max_tokens}",
                               "invalid_value", field_name)
        wanted = self.requested_max_tokens()
        if wanted is None:
            return min(self.default_max_tokens or room, limits.max_tokens, room)
        if wanted > room:
            raise ApiError(400, f"this model's maximum context length is {context} tokens; the prompt has "
                           f"{prompt} and max_tokens asks for {wanted}", "context_length_exceeded",
                           "max_tokens")
        return wanted

    def _bias(self, vocab_size: int) -> dict[int, float]:
        bias = {int(k): v for k, v in (self.logit_bias or {}).items()}
        outside = [k for k in bias if k >= vocab_size]
        if outside:
            raise ApiError(400, f"logit_bias names token {outside[0]}, outside this model's vocabulary of "
                           f"{vocab_size} tokens", "invalid_value", "logit_bias")
        return bias

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def for_choice(params: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index`` of a request with ``n > 1``: its own seed (``seed + index``), so choices differ
    and each is reproducible."""
    if params.seed is None or index == 0:
        return params
    return replace(params, seed=params.seed + index)


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool = True

    def model_post_init(self, _: Any) -> None:
        """OpenAI's rules that span fields: a json_schema format names its schema; a tool_choice needs
        tools, and a named one a tool of that name; tool_choice defaults to auto with tools, else none."""
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_schema" and (fmt.json_schema is None or
                                                               fmt.json_schema.schema_ is None):
            raise ApiError(400, "response_format json_schema needs json_schema.schema", "invalid_value",
                           "response_format")
        choice = self.tool_choice
        if choice is None:
            self.tool_choice = "auto" if self.tools else "none"
        elif choice != "none" and not self.tools:
            raise ApiError(400, "tool_choice needs tools", "invalid_value", "tool_choice")
        elif isinstance(choice, NamedToolChoice) and choice.function.name not in {
                t.function.name for t in self.tools or []}:
            raise ApiError(400, f"tool_choice names the function '{choice.function.name}', which is not "
                           "among the tools", "invalid_value", "tool_choice")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ApiError(400, "two tools have the same name", "invalid_value", "tools")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_settings(self) -> tuple[bool, int]:
        if self.top_logprobs and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "invalid_value", "top_logprobs")
        return self.logprobs, self.top_logprobs or 0

    def json_object(self) -> bool:
        return self.response_format is not None and self.response_format.type == "json_object"

    def grammar(self, ctx: ModelContext) -> Any:
        """Tools offered: the call format's grammar; else a json_schema format's; else none."""
        fmt = self.response_format
        wanted = offers_tools(self) or (fmt is not None and fmt.type != "text")
        if not wanted:
            return None
        if ctx.grammars is None:
            raise ApiError(400, "this model does not support constrained outputs (json_object, json_schema, "
                           "tools)", "invalid_value", "tools" if offers_tools(self) else "response_format")
        if offers_tools(self):
            return tool_grammar(self, tool_format(ctx.chat_template), ctx.grammars)
        if fmt is not None and fmt.json_schema is not None and fmt.type == "json_schema":
            try:
                return ctx.grammars.json_schema(fmt.json_schema.schema_ or {})
            except MaiError as exc:
                raise ApiError(400, str(exc), "invalid_value", "response_format") from None
        return ctx.grammars.json_object()

    def prompt_param(self) -> str:
        return "messages"


class CompletionRequest(_Sampling):
    prompt: Prompt
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    echo: StrictBool = False
    default_max_tokens: ClassVar[int | None] = 16  # OpenAI's default for completions

    def prompt_text(self) -> str:
        return self.prompt[0]

    def logprob_settings(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: ModerationInput
    model: Text | None = None

    def inputs(self) -> list[str]:
        return list(self.input)


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- responses, as the OpenAPI document describes them ----------------------------------------------
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


class ToolCallOut(_Open):
    id: str
    type: Literal["function"]
    function: CalledFunction


class ChatMessageOut(_Open):
    role: Literal["assistant"]
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class _Choice(_Open):
    """What every choice carries, chat or text."""

    index: int
    finish_reason: FinishReason
    logprobs: dict[str, Any] | None
    content_filter_results: dict[str, Any]


class ChatChoice(_Choice):
    message: ChatMessageOut


class CompletionChoice(_Choice):
    text: str


class _Response(_Open):
    """What a chat and a text completion response share; ``object`` and ``choices`` tell them apart."""

    id: str
    created: int
    model: str
    system_fingerprint: None = None
    usage: Usage
    prompt_filter_results: list[dict[str, Any]]


class ChatCompletion(_Response):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]


class Completion(_Response):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]


class ModelCard(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str  # the model's path, or an adapter's folder
    parent: str | None = None  # an adapter's base model (vLLM's field)
    max_model_len: int


class ModelList(_Open):
    object: Literal["list"]
    data: list[ModelCard]


class ModerationResult(_Open):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]


class Moderation(_Open):
    id: str
    model: str
    results: list[ModerationResult]


class Health(_Open):
    status: Literal["ok", "loading", "error", "draining", "failing", "stopped"]
    models: list[str] | None = None
    error: str | None = None
