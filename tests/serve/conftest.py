import threading
import time
from pathlib import Path

import pytest

from mai.errors import MaiError
from mai.interop.bundled import smollm2_gguf
from mai.serve.catalog import KeyEntry
from mai.serve.child import free_port


def http_client():
    """httpx, or httpx2 where the openai client is built on that fork."""
    try:
        import httpx
    except ImportError:
        httpx = pytest.importorskip("httpx2")
    return httpx


def wait_until_healthy(url: str, alive=lambda: True, timeout: float = 300) -> None:
    """Poll ``url``/health until it answers 200; fail if ``alive()`` turns false or time runs out."""
    httpx = http_client()
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert alive(), "the server process ended while starting"
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not become healthy")


# keys with tokens-per-minute limits for the reservation test (their windows are never shared)
TOKEN_KEYS = [KeyEntry(f"sk-tpm-{limit}", tokens_per_minute=limit) for limit in (100, 200, 300)]


@pytest.fixture(scope="session")
def server_url():
    """A real uvicorn server on 127.0.0.1 (random port) serving SmolLM2 under two names, with keys."""
    pytest.importorskip("uvicorn")
    try:
        path = str(smollm2_gguf())
    except MaiError as exc:
        pytest.skip(str(exc))
    from mai.serve.catalog import Catalog, Limits, ModelEntry, SafetyConfig

    catalog = Catalog(
        models=[ModelEntry("smol", path, max_batch=32, max_seq_len=512),
                ModelEntry("smol-strict", path, max_batch=4, max_seq_len=512,
                           safety=SafetyConfig(prompt="low"))],
        api_keys=[KeyEntry("sk-test"), KeyEntry("sk-slow", requests_per_minute=2), *TOKEN_KEYS],
        limits=Limits(max_body_bytes=64_000, max_prompt_tokens=400, max_tokens=256, body_timeout_seconds=2))
    yield from serve_in_thread(catalog)


def serve_in_thread(catalog):
    """Run ``catalog`` in a uvicorn server on a thread of this process until the generator is closed."""
    import uvicorn

    from mai.serve.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(catalog), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url)
    yield url
    srv.should_exit = True
    thread.join(30)


def tiny_model_dir(out: Path) -> Path:
    """A servable mai export of a tiny random decoder (2 layers, d=32) with a 300-token BPE tokenizer
    and MAI's chat template: loads in milliseconds and decodes hundreds of tokens a second, for tests
    whose subject is the server, not the model."""
    import torch

    from mai.interop.native import save_native
    from mai.model.config import ModelConfig
    from mai.model.transformer import Transformer
    from mai.tokenizer import train_tokenizer

    text = "The quick brown fox jumps over the lazy dog. A server answers every request it admits. "
    train_tokenizer([text * 20, "Hello world! 0123456789 {}[]:,\"'"], 300, out / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64,
                      max_seq_len=4096, init_std=0.3)
    return save_native(Transformer(cfg).state_dict(), cfg, out / "model", tokenizer_dir=out / "tok")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


TINY_MODELS = ("tiny", "tiny-usage", "tiny-cancel")  # one engine each: tests do not share counters


@pytest.fixture(scope="session")
def tiny_url(tiny_dir):
    """A real uvicorn server serving the tiny model under three names, with keys (sk-tiny: no limits)."""
    pytest.importorskip("uvicorn")
    from mai.serve.catalog import Catalog, Limits, ModelEntry

    catalog = Catalog(models=[ModelEntry(name, str(tiny_dir), max_batch=32, max_seq_len=4096)
                              for name in TINY_MODELS],
                      api_keys=[KeyEntry("sk-tiny"), *TOKEN_KEYS],
                      limits=Limits(max_body_bytes=64_000, max_prompt_tokens=400, max_tokens=4000,
                                    body_timeout_seconds=1))
    yield from serve_in_thread(catalog)
