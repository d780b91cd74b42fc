"""LoRA adapters in the catalog, on a real server on 127.0.0.1 driven by the official openai client: one
tiny base served with three adapters (two random, one from a real `mai sft --lora-rank` run), beside the
same adapters merged into plain models (merge_lora, and the run's own merged export) served by the same
engine code. Concurrent requests for the base and the adapters share steps, and each answers as its
merged model does."""

import subprocess
import sys
import threading

import pytest
import torch

from mai.errors import MaiError
from mai.interop import load_model
from mai.interop.native import save_native
from mai.serve.catalog import AdapterEntry, Catalog, Limits, ModelEntry
from tests.infer.test_engine_paged import tiny_model
from tests.infer.test_lora_serving import make_adapter
from tests.post.test_sft_run import ARGS, chats, sft

from .conftest import http_client, serve_in_thread

openai = pytest.importorskip("openai")
httpx = http_client()
pytestmark = pytest.mark.slow  # a real `mai sft` run (a subprocess) and a server: ~25 s in all

PROMPTS = ["The quick brown fox", "A server answers", "Hello world! 0123", "jumps over the lazy dog. " * 3]


@pytest.fixture(scope="module")
def lora_url(tiny_dir, tmp_path_factory):
    """The tiny base with adapters one, two (random) and sft (trained), and their merged models."""
    pytest.importorskip("uvicorn")
    root = tmp_path_factory.mktemp("lora")
    run = root / "run"
    sft("--model", str(tiny_dir), "--data", str(chats(root)), "--lora-rank", "4", f"train.out_dir={run}",
        *ARGS, "train.max_steps=3", "optim.lr=3e-2")
    base = load_model(tiny_dir).model
    adapters, merged = [], [ModelEntry("merged-sft", str(run / "model"), max_seq_len=512)]
    for i, name in enumerate(("one", "two"), 1):
        path, model = make_adapter(base, root / name, i)
        save_native(model.state_dict(), model.cfg, root / f"merged-{name}", tiny_dir.parent / "tok")
        adapters.append(AdapterEntry(name, str(path)))
        merged.append(ModelEntry(f"merged-{name}", str(root / f"merged-{name}"), max_seq_len=512))
    catalog = Catalog(models=[ModelEntry("base", str(tiny_dir), max_seq_len=512,
                                         adapters=[*adapters, AdapterEntry("sft", str(run / "adapter"))]),
                              ModelEntry("base-alone", str(tiny_dir), max_seq_len=512), *merged],
                      limits=Limits(max_tokens=256))
    yield from serve_in_thread(catalog)


@pytest.fixture(scope="module")
def client(lora_url):
    return openai.OpenAI(base_url=f"{lora_url}/v1", api_key="none", max_retries=0)


def complete(client, model, prompt, max_tokens=48):
    r = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=max_tokens)
    return r.choices[0].text


def test_adapters_are_listed_with_their_parent(client):
    cards = {m.id: m for m in client.models.list().data}
    assert [cards[n].parent for n in ("base", "one", "two", "sft")] == [None, "base", "base", "base"]
    assert cards["sft"].root.endswith("adapter") and cards["one"].max_model_len == 512


def test_concurrent_requests_share_steps_and_answer_as_the_merged_models(client, lora_url):
    names = ["base", "one", "two", "sft"]
    answers: dict[tuple[str, str], str] = {}

    def ask(name, prompt):
        answers[name, prompt] = complete(client, name, prompt, 64)

    threads = [threading.Thread(target=ask, args=(n, p)) for p in PROMPTS for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = {"base": "base-alone", "one": "merged-one", "two": "merged-two", "sft": "merged-sft"}
    for (name, prompt), text in answers.items():
        assert text == complete(client, merged[name], prompt, 64), (name, prompt)
    for name in ("one", "two", "sft"):
        assert any(answers[name, p] != answers["base", p] for p in PROMPTS), f"{name} changes nothing"
    metrics = httpx.get(f"{lora_url}/metrics").text.splitlines()
    mixed = next(line for line in metrics if line.startswith('mai_lora_mixed_steps{model="base"}'))
    assert float(mixed.split()[-1]) > 0, "the base and its adapters never shared a step"


def test_the_same_prompt_for_the_base_then_an_adapter_is_not_answered_from_the_bases_cache(client):
    prompt = "The quick brown fox jumps over the lazy dog. " * 4  # several full KV blocks
    first = complete(client, "base", prompt)
    assert complete(client, "two", prompt) == complete(client, "merged-two", prompt) != first
    assert complete(client, "base", prompt) == first


def test_embeddings_of_an_adapter_are_its_merged_models(client):
    got = client.embeddings.create(model="one", input=PROMPTS).data
    want = client.embeddings.create(model="merged-one", input=PROMPTS).data
    base = client.embeddings.create(model="base", input=PROMPTS).data
    torch.testing.assert_close(torch.tensor([e.embedding for e in got]),
                               torch.tensor([e.embedding for e in want]), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(torch.tensor(got[0].embedding), torch.tensor(base[0].embedding), atol=1e-3)


def test_a_bad_adapter_is_a_load_error_that_names_it(tiny_dir, tmp_path):
    from mai.serve.app import Server

    make_adapter(tiny_model(), tmp_path / "other", 3)  # another shape: vocabulary 64, width 64
    shape = "trained on tiny-base (vocab_size 64, d_model 64, n_layers 2); model tiny"
    for folder, why in [("missing", "not a LoRA adapter folder"), ("other", shape)]:
        server = Server(Catalog(models=[ModelEntry("tiny", str(tiny_dir), max_seq_len=64,
                                                   adapters=[AdapterEntry("bad", str(tmp_path / folder))])]))
        server.load()
        assert server.load_error.startswith("adapter bad") and why in server.load_error
        server.shutdown()


def test_compile_with_adapters_is_a_catalog_error():
    with pytest.raises(MaiError, match="model m: compiled decoding does not apply LoRA adapters"):
        Catalog(models=[ModelEntry("m", "x", compile=True, adapters=[AdapterEntry("a", "y")])])


def test_lora_modules_flag_needs_name_equals_path(tiny_dir):
    proc = subprocess.run([sys.executable, "-m", "mai.cli", "serve", "--model", str(tiny_dir),
                           "--lora-modules", "just-a-path"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: --lora-modules takes NAME=PATH" in proc.stderr
