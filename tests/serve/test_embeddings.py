"""POST /v1/embeddings through the official openai client on real servers: SmolLM2 (agreeing with
transformers' hidden states of the same GGUF, paraphrases closer than unrelated texts, OpenAI's errors)
and the tiny model with both poolings (each input pooled as a forward pass of its own would, while the
engine generates on the same model, and tokens per minute charged for the input tokens)."""

import base64

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from .conftest import serve_in_thread

openai = pytest.importorskip("openai")

NO_STOP = {"1": -100, "6": -100}  # the tiny tokenizer's <|eos|> and <|end|>: answers run to max_tokens
TEXTS = ["The cat sat on the mat.", "How do I bake bread at home?",
         "Stock markets fell sharply on Monday after the announcement.", "ok"]


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="sk-test", max_retries=0)


def vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float64)


@pytest.mark.slow  # the SmolLM2 server takes ~40 s to start on 2 cores
def test_float_base64_and_the_clients_own_decoding_agree(client):
    default = client.embeddings.create(model="smol", input="Hello there, world")  # the client asks base64
    floats = client.embeddings.create(model="smol", input="Hello there, world", encoding_format="float")
    b64 = client.embeddings.create(model="smol", input="Hello there, world", encoding_format="base64")
    assert default.object == "list" and default.model == "smol" and len(default.data) == 1
    item = floats.data[0]
    assert item.object == "embedding" and item.index == 0 and len(item.embedding) == 576  # SmolLM2's width
    assert isinstance(b64.data[0].embedding, str)
    raw = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    assert raw.tolist() == item.embedding == default.data[0].embedding  # the same float32 numbers
    assert abs(np.linalg.norm(raw) - 1) < 1e-5
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 4  # "Hello", " there", ",", " world"


@pytest.mark.slow
def test_dimensions_truncate_then_renormalise(client):
    full = vectors(client.embeddings.create(model="smol", input=TEXTS[0], encoding_format="float"))[0]
    short = vectors(client.embeddings.create(model="smol", input=TEXTS[0], dimensions=64))[0]
    assert short.shape == (64,) and abs(np.linalg.norm(short) - 1) < 1e-5
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)


@pytest.mark.slow
def test_batch_equals_singles_and_the_forms_of_token_input(client):
    batch = client.embeddings.create(model="smol", input=TEXTS)
    assert [d.index for d in batch.data] == [0, 1, 2, 3]
    singles = [client.embeddings.create(model="smol", input=t) for t in TEXTS]
    np.testing.assert_allclose(vectors(batch), np.concatenate([vectors(s) for s in singles]), atol=1e-5)
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    ids = client.embeddings.create(model="smol", input=[[1, 504, 2821]] * 2)  # an array of token arrays
    one_by_one = client.embeddings.create(model="smol", input=[1, 504, 2821])  # one token array
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 6 and one_by_one.usage.prompt_tokens == 3
    np.testing.assert_allclose(vectors(ids)[0], vectors(one_by_one)[0], atol=1e-5)


@pytest.mark.slow
def test_paraphrases_are_closer_than_unrelated_texts(client):
    pairs = [("The cat sat on the mat.", "A cat was sitting on the rug."),
             ("How do I bake bread at home?", "What is a simple recipe for homemade bread?")]
    unrelated = ["Stock markets fell sharply on Monday.", "The rocket launched into orbit."]
    texts = [t for pair in pairs for t in pair] + unrelated
    v = vectors(client.embeddings.create(model="smol", input=texts))
    cos = v @ v.T  # unit vectors
    paraphrase = min(cos[0, 1], cos[2, 3])
    other = max(cos[i, j] for i in range(4) for j in range(4, 6))
    other = max(other, cos[0, 2], cos[0, 3], cos[1, 2], cos[1, 3])
    assert paraphrase > other + 0.05, (cos, paraphrase, other)


@pytest.mark.slow
def test_errors_in_openais_shape(client, server_url):
    cases = [({"input": ""}, "invalid_value", "input 0 is empty"),
             ({"input": []}, "invalid_value", "must not be empty"),
             ({"input": ["fine", ""]}, "invalid_value", "input 1 is empty"),
             ({"input": [[1, -2]]}, "invalid_value", "token ids"),
             ({"input": [5, 10**6]}, "invalid_value", "outside this model's vocabulary"),
             ({"input": "word " * 450}, "context_length_exceeded", "the limit is 400"),
             ({"input": "hi", "dimensions": 577}, "invalid_value", "exceeds this model's embedding width"),
             ({"input": "hi", "dimensions": 0}, "invalid_value", "dimensions"),
             ({"input": "hi", "encoding_format": "int8"}, "invalid_value", "encoding_format")]
    for extra, code, says in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="smol", **extra)
        error = info.value.body
        assert info.value.status_code == 400 and error["code"] == code and says in error["message"], error
        assert error["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="hi")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server_url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="smol", input="hi")


@pytest.mark.slow
def test_agrees_with_transformers_hidden_states(client, smollm2_hf_dir):
    """The peer: transformers reads the same GGUF; its last hidden state (after the final norm) pooled the
    same way, with its own tokenizer; its token ids, sent as ids, embed as our text does."""
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModel.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)
    ours = vectors(client.embeddings.create(model="smol", input=TEXTS))
    ids = [tok(text, add_special_tokens=False).input_ids for text in TEXTS]
    np.testing.assert_allclose(vectors(client.embeddings.create(model="smol", input=ids)), ours, atol=1e-5)
    for tokens, mine in zip(ids, ours, strict=True):
        with torch.no_grad():
            states = theirs(torch.tensor([tokens])).last_hidden_state[0]
        np.testing.assert_allclose(mine, F.normalize(states.mean(0), dim=-1).numpy(), atol=1e-4)


# --- the tiny model: both poolings, concurrency with the engine, tokens per minute ----------------------
@pytest.fixture(scope="module")
def tiny_embed_url(tiny_dir):
    pytest.importorskip("uvicorn")
    from mai.serve.catalog import Catalog, KeyEntry, Limits, ModelEntry

    catalog = Catalog(models=[ModelEntry("tiny-mean", str(tiny_dir), max_seq_len=4096),
                              ModelEntry("tiny-last", str(tiny_dir), max_seq_len=4096, pooling="last")],
                      api_keys=[KeyEntry("sk-emb"), KeyEntry("sk-emb-tpm", tokens_per_minute=50)],
                      limits=Limits(max_prompt_tokens=400, max_tokens=4000))
    yield from serve_in_thread(catalog)


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    from mai.interop import load_model

    return load_model(tiny_dir).model.eval()


def reference(model, ids: list[int], pooling: str) -> np.ndarray:
    """One input alone, no padding, straight from the model's forward pass."""
    with torch.no_grad():
        states = model.norm(model.hidden(torch.tensor([ids])))[0].float()
    return F.normalize(states.mean(0) if pooling == "mean" else states[-1], dim=-1).numpy()


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_each_pooling_equals_the_unpadded_forward_pass(tiny_embed_url, tiny_model, pooling):
    c = openai.OpenAI(base_url=f"{tiny_embed_url}/v1", api_key="sk-emb", max_retries=0)
    inputs = [[5, 17, 42], [7], list(range(3, 120)), [250, 12, 9, 9, 31]]  # padded to 117 in one batch
    got = vectors(c.embeddings.create(model=f"tiny-{pooling}", input=inputs))
    for ids, mine in zip(inputs, got, strict=True):
        np.testing.assert_allclose(mine, reference(tiny_model, ids, pooling), atol=1e-5)
    mean, last = (vectors(c.embeddings.create(model=f"tiny-{p}", input=[inputs[2]]))
                  for p in ("mean", "last"))
    assert np.abs(mean - last).max() > 0.01  # the catalog's pooling field chose between them


def test_embeddings_while_the_engine_generates_on_the_same_model(tiny_embed_url, tiny_model):
    """The embedding thread and the engine thread run one model at once: neither disturbs the other."""
    import asyncio

    c = openai.AsyncOpenAI(base_url=f"{tiny_embed_url}/v1", api_key="sk-emb", max_retries=0)
    prompt, ids = "The quick brown fox", list(range(10, 60))

    async def generate() -> str:
        r = await c.completions.create(model="tiny-mean", prompt=prompt, max_tokens=400, temperature=0,
                                       logit_bias=NO_STOP)
        assert r.usage.completion_tokens == 400
        return r.choices[0].text

    async def run() -> tuple[str, str, list[np.ndarray]]:
        alone = await generate()
        together, *embedded = await asyncio.gather(
            generate(), *(c.embeddings.create(model="tiny-mean", input=[ids] * 8) for _ in range(12)))
        return alone, together, [vectors(e) for e in embedded]

    alone, together, embedded = asyncio.run(run())
    assert together == alone
    want = reference(tiny_model, ids, "mean")
    for v in embedded:
        np.testing.assert_allclose(v, np.tile(want, (8, 1)), atol=1e-5)


def test_tokens_per_minute_count_the_input_tokens(tiny_embed_url):
    c = openai.OpenAI(base_url=f"{tiny_embed_url}/v1", api_key="sk-emb-tpm", max_retries=0)
    for _ in range(3):  # admitted with 0, 20 and 40 tokens settled (below 50); 60 after the third
        assert c.embeddings.create(model="tiny-mean", input=[list(range(1, 21))]).usage.total_tokens == 20
    with pytest.raises(openai.RateLimitError) as info:
        c.embeddings.create(model="tiny-mean", input="hi")
    assert info.value.response.headers["retry-after"]
