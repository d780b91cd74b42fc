"""`mai serve` as a real process (issue 19 point 5): SIGTERM drains and exits 0 under load, and after the
engine failed (its model raising on every step, then its thread killed); /health is 503 whenever the
engine cannot step and 200 again once it can.

The engine failure is induced from outside the code under test: the process runs `mai.cli.main` through
a small launcher that wraps the model's forward to raise while a switch file exists (what a broken
device or kernel does). Everything else — the server, the engine, uvicorn, the signal — is the real
thing. The model is the tiny random one (the subject is the process, not the model)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from .conftest import free_port, http_client, wait_until_healthy

pytestmark = pytest.mark.slow
NO_STOP = {"1": -100, "6": -100}  # the tiny tokenizer's stop tokens: answers run to max_tokens

LAUNCHER = '''
import os, sys
from pathlib import Path
from mai.model.transformer import Transformer

switch, forward = Path(os.environ["FAULT_SWITCH"]), Transformer.forward

def faulty(self, *args, **kwargs):
    if switch.exists():
        if switch.read_text() == "fatal":
            raise SystemExit("induced: the engine thread is killed")
        raise RuntimeError("induced device fault")
    return forward(self, *args, **kwargs)

Transformer.forward = faulty
from mai.cli import main
sys.exit(main(sys.argv[1:]))
'''


def _start(tmp_path, tiny_dir, launcher: bool = False):
    catalog = {"models": [{"name": "tiny", "path": str(tiny_dir), "max_seq_len": 4096}],
               "api_keys": [{"key": "sk-proc"}],
               "limits": {"max_tokens": 4000, "drain_seconds": 1, "body_timeout_seconds": 5}}
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    (tmp_path / "launch.py").write_text(LAUNCHER)
    port = free_port()
    entry = [str(tmp_path / "launch.py")] if launcher else ["-m", "mai.cli"]
    proc = subprocess.Popen([sys.executable, *entry, "serve", "--catalog", str(tmp_path / "catalog.json"),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FAULT_SWITCH": str(tmp_path / "fault")})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, alive=lambda: proc.poll() is None, timeout=120)
    except BaseException:
        proc.kill()
        raise
    return proc, url


def _stop(proc) -> str:
    """SIGTERM; the process must exit 0 (within a minute: a drain of 1 s plus shutdown)."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"mai serve did not exit after SIGTERM: {err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    return err


def _post(url, body, stream=False):
    httpx = http_client()
    h = {"Authorization": "Bearer sk-proc"}
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    if not stream:
        return httpx.post(f"{url}{path}", json=body, headers=h, timeout=120)
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, headers=h, timeout=120) as r:
        return r.status_code, r.read().decode()


def _running(url) -> float:
    text = http_client().get(f"{url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mai_num_requests_running{"))


def test_sigterm_under_load_drains_and_exits_0(tmp_path, tiny_dir):
    proc, url = _start(tmp_path, tiny_dir)
    try:
        long = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 3000, "logit_bias": NO_STOP}
        short = {"model": "tiny", "prompt": "Hi", "max_tokens": 3}
        jobs = [(long, False)] * 3 + [(long, True), (short, False)]
        results: list = [None] * len(jobs)

        def run(i, body, stream):
            try:
                results[i] = _post(url, body, stream)
            except Exception as exc:  # a connection reset would land here: the test then fails
                results[i] = exc

        threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
        for t in threads:
            t.start()
        for _ in range(600):
            if _running(url) >= 4:
                break
            time.sleep(0.02)
        err = _stop(proc)
        for t in threads:
            t.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err, err[-3000:]
    for (_, stream), result in zip(jobs, results, strict=True):
        assert not isinstance(result, Exception), result
        if stream:  # finished, or cancelled by the drain with an in-stream error event
            status, text = result
            assert status == 200 and (text.endswith("data: [DONE]\n\n") or "server_shutting_down" in text)
        elif result.status_code == 503:
            assert result.json()["error"]["code"] == "server_shutting_down"
        else:
            assert result.status_code == 200 and result.json()["choices"][0]["finish_reason"] == "length"
    assert results[-1].status_code == 200  # the short request finished inside the grace period


def test_health_follows_an_engine_that_cannot_step_and_sigterm_still_exits_0(tmp_path, tiny_dir):
    proc, url = _start(tmp_path, tiny_dir, launcher=True)
    httpx = http_client()
    fault = tmp_path / "fault"
    try:
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 5}
        fault.write_text("step")
        r = _post(url, body)
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed", r.text
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json()["status"] == "failing", health.text
        assert _post(url, body).json()["error"]["code"] == "engine_unavailable"
        fault.unlink()  # the device works again: the idle engine re-probes and recovers
        wait_until_healthy(url, alive=lambda: proc.poll() is None, timeout=60)
        assert _post(url, body).status_code == 200
        # a step failing under a running stream ends it with OpenAI's in-stream error event
        stream: list = []
        reader = threading.Thread(target=lambda: stream.append(_post(url, {
            **body, "max_tokens": 3000, "logit_bias": NO_STOP}, stream=True)))
        reader.start()
        while _running(url) < 1 and reader.is_alive():
            time.sleep(0.02)
        fault.write_text("step")
        reader.join(60)
        status, text = stream[0]
        assert status == 200 and '"code": "generation_failed"' in text and "[DONE]" not in text, text[-500:]
        fault.unlink()
        wait_until_healthy(url, alive=lambda: proc.poll() is None, timeout=60)
        fault.write_text("fatal")
        r = _post(url, body)
        assert r.status_code == 500 and "engine stopped" in r.json()["error"]["message"], r.text
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json()["status"] == "stopped", health.text
        assert _post(url, body).status_code == 503
        _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_health_is_503_while_draining_and_new_requests_are_refused(tiny_dir):
    """A real server on a thread: once draining begins (what SIGTERM starts), /health answers 503
    ``draining`` on a connection that is still open, and a new generation gets 503."""
    import asyncio

    import uvicorn

    from mai.serve.app import create_app
    from mai.serve.catalog import Catalog, ModelEntry

    httpx = pytest.importorskip("httpx")
    app = create_app(Catalog(models=[ModelEntry("tiny", str(tiny_dir), max_seq_len=512)]))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url)
        with httpx.Client(base_url=url, timeout=30) as client:  # one keep-alive connection
            assert client.get("/health").status_code == 200
            server = app.state.server
            loop = asyncio.new_event_loop()
            try:
                server.begin_drain(loop)
                loop.run_until_complete(asyncio.sleep(0))
            finally:
                loop.close()
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "draining"
            r = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
            assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down"
    finally:
        srv.should_exit = True
        thread.join(30)
