"""`mai serve` as a real process: it starts, becomes healthy, answers the openai client, and exits
cleanly on SIGTERM."""

import signal
import subprocess
import sys

import pytest

from mai.errors import MaiError
from mai.interop.bundled import smollm2_gguf

from .conftest import free_port, wait_until_healthy

pytestmark = pytest.mark.slow


def test_mai_serve_process_lifecycle():
    openai = pytest.importorskip("openai")
    try:
        smollm2_gguf()
    except MaiError as exc:
        pytest.skip(str(exc))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mai.cli", "serve", "--model", "bundled:smollm2", "--name",
                             "smol", "--max-len", "512", "--port", str(port), "--api-key", "sk-proc"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, alive=lambda: proc.poll() is None)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-proc", max_retries=0)
        reply = client.chat.completions.create(model="smol", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Say hello."}])
        assert reply.choices[0].message.content and reply.usage.completion_tokens <= 8
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
