"""Schemathesis over the server's own /openapi.json (issue 15 point 2, issue 19 point 6): generated valid
and invalid requests to every route, with and without an API key. Every check but
positive_data_acceptance must pass: no 5xx, statuses, content types, headers and bodies as documented
(conformance), schema-violating requests rejected, unsupported methods answered 405, auth not ignored;
no request hangs (a per-request timeout), and the server still answers afterwards. It runs against the
tiny model with small limits so that the valid requests it generates (model names come from the
document's examples) really generate, cheaply. positive_data_acceptance is left out: a schema-valid
request may still be refused for this server's state (a prompt longer than the context, a key's rate
limit), which the document states as 400/429 but cannot express in JSON Schema."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import http_client, serve_in_thread

pytestmark = pytest.mark.slow
EXAMPLES = 30  # per operation and run; with the coverage phase ~110 test cases per operation per run


@pytest.fixture(scope="module")
def fuzz_url(tiny_dir):
    pytest.importorskip("uvicorn")
    from mai.serve.catalog import Catalog, KeyEntry, Limits, ModelEntry

    catalog = Catalog([ModelEntry("tiny", str(tiny_dir), max_batch=16, max_seq_len=512)],
                      api_keys=[KeyEntry("sk-fuzz")],
                      limits=Limits(max_body_bytes=64_000, max_prompt_tokens=256, max_tokens=4,
                                    body_timeout_seconds=5))
    yield from serve_in_thread(catalog)


def _schemathesis() -> list[str]:
    pytest.importorskip("schemathesis")
    exe = Path(sys.executable).with_name("schemathesis")
    return [str(exe)] if exe.exists() else [shutil.which("schemathesis") or "schemathesis"]


@pytest.mark.parametrize("key", ["sk-fuzz", None], ids=["with-key", "without-key"])
def test_schemathesis_finds_nothing(fuzz_url, key, tmp_path):
    header = f"Authorization: Bearer {key}" if key else "X-No-Key: 1"
    cmd = [*_schemathesis(), "run", f"{fuzz_url}/openapi.json", "--checks", "all",
           "--exclude-checks", "positive_data_acceptance", "--max-examples", str(EXAMPLES), "--seed", "15",
           "--header", header, "--request-timeout", "30", "--no-shrink", "--generation-database", "none"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "7 selected / 7 total" in run.stdout and "passed" in run.stdout, run.stdout[-3000:]
    httpx = http_client()
    assert httpx.get(f"{fuzz_url}/health").status_code == 200
    r = httpx.post(f"{fuzz_url}/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 3,
                                                        "logit_bias": {"1": -100, "6": -100}},
                   headers={"Authorization": "Bearer sk-fuzz"}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_the_document_says_what_is_served(fuzz_url):
    """Statuses as served (no 422), /metrics as Prometheus text, errors in OpenAI's shape with a code."""
    doc = http_client().get(f"{fuzz_url}/openapi.json").json()
    ops = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert all("422" not in op["responses"] for op in ops.values())
    assert set(ops[("post", "/v1/chat/completions")]["responses"]) >= {"200", "400", "401", "404", "413",
                                                                        "429", "503"}
    assert list(ops[("get", "/metrics")]["responses"]["200"]["content"]) == ["text/plain"]
    chat_ok = ops[("post", "/v1/chat/completions")]["responses"]["200"]["content"]
    assert set(chat_ok) == {"application/json", "text/event-stream"}
    error = doc["components"]["schemas"]["ErrorDetail"]
    assert error["properties"]["code"] == {"type": "string", "title": "Code"} and "code" in error["required"]
