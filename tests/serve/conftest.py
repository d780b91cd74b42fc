import socket
import threading
import time

import pytest

from mai.errors import MaiError
from mai.interop.bundled import smollm2_gguf


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server_url():
    """A real uvicorn server on 127.0.0.1 (random port) serving SmolLM2 under two names, with keys."""
    uvicorn = pytest.importorskip("uvicorn")
    try:
        path = str(smollm2_gguf())
    except MaiError as exc:
        pytest.skip(str(exc))
    from mai.serve.app import create_app
    from mai.serve.catalog import Catalog, KeyEntry, Limits, ModelEntry, SafetyConfig

    catalog = Catalog(
        models=[ModelEntry("smol", path, max_batch=32, max_len=512),
                ModelEntry("smol-strict", path, max_batch=4, max_len=512, safety=SafetyConfig(prompt="low"))],
        api_keys=[KeyEntry("sk-test"), KeyEntry("sk-slow", requests_per_minute=2)],
        limits=Limits(max_body_bytes=64_000, max_prompt_tokens=400, max_tokens=256))
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
