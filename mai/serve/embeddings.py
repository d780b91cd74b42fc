"""POST /v1/embeddings as OpenAI's: the request and response models and the handler.

An embedding is the served decoder's final hidden states (after the last norm, :meth:`Transformer.hidden`
then ``model.norm``) pooled over the input's tokens, by the mean or the last token as the catalog entry's
``pooling`` says, truncated to ``dimensions`` when asked and L2-normalised (as OpenAI's v3 models do:
truncation first, then the norm). Text is tokenized without a BOS token: the BOS position's state is the
same for every input, and in a mean it pulls every embedding towards it (SmolLM2, five unrelated pairs:
cosine 0.81-0.91 with it, 0.72-0.82 without; two paraphrase pairs 0.92-0.95 without). Token-id inputs are
used as sent.

Inputs run in batches padded on the right: attention is causal, so a real token never sees the padding
after it and each input's states are those of a forward pass of its own (equal up to the last bits of the
float arithmetic). Batches are formed shortest first and capped at ``BATCH_TOKENS`` padded tokens, which
bounds the activation memory whatever the request.

The forward passes run on one worker thread of their own, not on the event loop and not in the engine's
step loop. No lock around the model is needed: a forward pass without a KV cache only reads the model
(weights, rotary tables; int8 and oneDNN layers keep no state; the LoRA adapter in use is per thread),
and the engine's own state (its cache, its rows) is not touched, so both threads may run the model at
once. An adapter's name embeds through that adapter. The single worker serialises
embedding requests among themselves, so concurrent requests queue instead of multiplying the memory
and CPU threads in use; beyond ``limits.max_waiting`` queued requests the answer is 503.

Admission is as for completions: the API key and requests per minute in the guard, the prompt-token
limit (``limits.max_prompt_tokens``) and the model's context per input, and the key's tokens per minute
reserved for the request's tokens.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, WithJsonSchema
from pydantic_core import PydanticCustomError

from mai.model.transformer import Transformer
from mai.serve.errors import ApiError
from mai.serve.protocol import Text, _Open

if TYPE_CHECKING:
    from mai.serve.app import Served, Server
    from mai.serve.catalog import KeyEntry

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
MAX_TOKEN_ID = 2**31 - 1
BATCH_TOKENS = 8192  # padded tokens per forward pass (SmolLM2: ~50 MB per [tokens, ffn] activation)

_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID},
           "minItems": 1}
_INPUT_SCHEMA = {"anyOf": [
    {"type": "string", "minLength": 1},
    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": MAX_INPUTS},
    _TOKENS,
    {"type": "array", "items": _TOKENS, "minItems": 1, "maxItems": MAX_INPUTS}]}


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


def _inputs(value: Any) -> Any:
    """OpenAI's four forms of ``input`` as one list of items, each a string or a list of token ids, with
    an error that says which item is wrong and why."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        value = [value]  # one array of token ids is one input
    if not isinstance(value, list):
        raise PydanticCustomError("input_type", "input must be a string, an array of strings, an array of "
                                  "token ids or an array of token-id arrays")
    if not value:
        raise PydanticCustomError("too_short", "input must not be empty")
    if len(value) > MAX_INPUTS:
        raise PydanticCustomError("too_long", "at most {max} inputs per request, got {got}",
                                  {"max": MAX_INPUTS, "got": len(value)})
    for i, item in enumerate(value):
        if item == "" or item == []:
            raise PydanticCustomError("empty_input", "input {index} is empty", {"index": i})
        if isinstance(item, list) and not all(_is_token(t) for t in item):
            raise PydanticCustomError("token_id", "input {index} holds something other than token ids "
                                      "(integers from 0)", {"index": i})
        if not isinstance(item, str | list):
            raise PydanticCustomError("input_type", "input {index} is neither a string nor an array of "
                                      "token ids", {"index": i})
    return value


EmbeddingInput = Annotated[list[Text | list[StrictInt]], BeforeValidator(_inputs),
                           WithJsonSchema(_INPUT_SCHEMA)]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: EmbeddingInput
    model: Text
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None
    user: Text | None = None


# --- the response, as the OpenAPI document describes it ---------------------------------------------
class Embedding(_Open):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # base64 of little-endian float32 with encoding_format "base64"


class EmbeddingUsage(_Open):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Open):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# --- computing them ------------------------------------------------------------------------------------
def batches(lengths: list[int], budget: int = BATCH_TOKENS) -> Iterator[list[int]]:
    """Indices of the inputs in groups, shortest first, each at most ``budget`` padded tokens (an input
    longer than the budget alone)."""
    group: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if group and (len(group) + 1) * lengths[i] > budget:
            yield group
            group = []
        group.append(i)
    if group:
        yield group


@torch.inference_mode()
def _pooled_batch(model: Transformer, inputs: list[list[int]], pooling: str) -> torch.Tensor:
    """[len(inputs), d] float32: each input's final-normed hidden states pooled (``mean`` over its tokens
    or its ``last`` token), from one forward pass over the inputs padded on the right."""
    device = next(model.parameters()).device
    tokens, lengths = right_padded(inputs, device)
    states = model.norm(model.hidden(tokens)).float()
    if pooling == "last":
        return states[torch.arange(len(inputs), device=device), lengths - 1]
    return token_mean(states, lengths)


def right_padded(inputs: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """([len(inputs), longest] token ids padded with 0 on the right, [len(inputs)] lengths). The model is
    causal, so padding after an input never changes what its own tokens see."""
    lengths = torch.tensor([len(ids) for ids in inputs], device=device)
    tokens = torch.zeros(len(inputs), int(lengths.max()), dtype=torch.long, device=device)
    for row, ids in enumerate(inputs):
        tokens[row, : len(ids)] = torch.tensor(ids, device=device)
    return tokens, lengths


def token_mean(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, d] mean of ``states`` [B, T, d] over each row's first ``lengths`` positions (padding skipped)."""
    real = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
    return (states * real.unsqueeze(-1)).sum(1) / lengths[:, None]


def pooled(model: Transformer, inputs: list[list[int]], pooling: str = "mean") -> torch.Tensor:
    """[len(inputs), d] float32 pooled final hidden states (not normalised), in the order of ``inputs``,
    computed in :func:`batches`."""
    out = torch.empty(len(inputs), model.cfg.d_model)
    for group in batches([len(ids) for ids in inputs]):
        out[group] = _pooled_batch(model, [inputs[i] for i in group], pooling).cpu()
    return out


def embed(model: Transformer, inputs: list[list[int]], pooling: str, dimensions: int | None) -> torch.Tensor:
    """[len(inputs), dimensions or d] unit vectors: pooled, truncated, then L2-normalised."""
    return F.normalize(pooled(model, inputs, pooling)[:, : dimensions or model.cfg.d_model], dim=-1)


def _embed_served(served: Served, inputs: list[list[int]], dimensions: int | None) -> torch.Tensor:
    """:func:`embed` with the served name's model, pooling and LoRA adapter."""
    with served.adapter_applied():
        return embed(served.engine.model, inputs, served.entry.pooling, dimensions)


def encoded(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # what OpenAI's client decodes: float32, little-endian
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class Embedder:
    """The /v1/embeddings handler of one app: admission, then the forward passes on its worker thread."""

    def __init__(self, server: Server):
        self.server = server
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mai-embed")
        self.queued = 0  # requests waiting for or in the worker (changed on the event loop only)

    def close(self) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)

    async def create(self, body: EmbeddingRequest, key: KeyEntry | None) -> dict[str, Any]:
        server = self.server
        served = server.model(body.model)
        model = served.engine.model
        if body.dimensions is not None and body.dimensions > model.cfg.d_model:
            raise ApiError(400, f"dimensions {body.dimensions} exceeds this model's embedding width "
                           f"{model.cfg.d_model}", "invalid_value", "dimensions")
        inputs = self._token_ids(served, body)
        if self.queued >= server.limits.max_waiting:
            raise ApiError(503, "the server is overloaded; retry shortly", "server_overloaded")
        total = sum(len(ids) for ids in inputs)
        reservation = server.keys.reserve(key, total)
        used = 0
        self.queued += 1
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(
                self.worker, _embed_served, served, inputs, body.dimensions)
            used = total
        except Exception as exc:
            raise ApiError(500, f"embedding failed: {type(exc).__name__}: {exc}",
                           "embedding_failed") from None
        finally:
            self.queued -= 1
            reservation.settle(used)
        server.metrics.prompt_tokens.labels(body.model).inc(total)
        return {"object": "list", "model": body.model,
                "data": [{"object": "embedding", "index": i, "embedding": encoded(v, body.encoding_format)}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": total, "total_tokens": total}}

    def _token_ids(self, served: Served, body: EmbeddingRequest) -> list[list[int]]:
        """Each input's tokens; 400 for one over the server's prompt limit or the model's context, or
        naming a token outside the vocabulary."""
        limit = min(self.server.limits.max_prompt_tokens, served.engine.max_seq_len)
        vocab = served.engine.model.cfg.vocab_size
        inputs = []
        for i, item in enumerate(body.input):
            ids = served.tokenizer.encode(item) if isinstance(item, str) else item
            if not ids:
                raise ApiError(400, f"input {i} has no tokens", "invalid_value", "input")
            if len(ids) > limit:
                raise ApiError(400, f"input {i} has {len(ids)} tokens; the limit is {limit}",
                               "context_length_exceeded", "input")
            if max(ids) >= vocab:
                raise ApiError(400, f"input {i} names token {max(ids)}, outside this model's vocabulary of "
                               f"{vocab} tokens", "invalid_value", "input")
            inputs.append(ids)
        return inputs
