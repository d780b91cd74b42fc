"""Decode paths per catalog model: prompt lookup, a draft model from the catalog and compiled decoding give
the greedy answers of plain decoding over HTTP; /metrics reports drafted and accepted tokens and compiled
steps."""

from __future__ import annotations

import re

import pytest

from mai.errors import MaiError
from tests.serve.conftest import http_client, serve_in_thread


@pytest.fixture(scope="module")
def spec_url(tiny_dir):
    pytest.importorskip("uvicorn")
    from mai.serve.catalog import Catalog, Limits, ModelEntry, SpeculativeConfig

    catalog = Catalog(models=[ModelEntry("plain", str(tiny_dir), max_seq_len=4096),
                              ModelEntry("lookup", str(tiny_dir), max_seq_len=4096,
                                         speculative=SpeculativeConfig("ngram", tokens=3)),
                              ModelEntry("drafted", str(tiny_dir), max_seq_len=4096,
                                         speculative=SpeculativeConfig("draft", "plain", tokens=2)),
                              ModelEntry("compiled", str(tiny_dir), max_seq_len=4096, compile=True)],
                      limits=Limits(max_prompt_tokens=400, max_tokens=4000))
    yield from serve_in_thread(catalog)


def _counter(metrics: str, name: str, model: str) -> float:
    m = re.search(rf'^{name}{{model="{model}"}} ([0-9.e+]+)$', metrics, re.M)
    assert m, f"{name} for {model} missing from /metrics"
    return float(m.group(1))


def test_speculative_and_compiled_models_answer_as_plain_decoding(spec_url):
    httpx = http_client()
    prompts = ["The quick brown fox", "A server answers every request", "Hello world! 0123"]

    def answer(model: str, prompt: str) -> str:
        r = httpx.post(f"{spec_url}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 40,
                                                          "temperature": 0}, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    for prompt in prompts:
        plain = answer("plain", prompt)
        assert answer("lookup", prompt) == plain and answer("drafted", prompt) == plain
        assert answer("compiled", prompt) == plain
    metrics = httpx.get(f"{spec_url}/metrics").text
    assert _counter(metrics, "mai_compiled_decode_steps", "compiled") > 0
    assert _counter(metrics, "mai_compiled_decode_steps", "plain") == 0
    for model in ("lookup", "drafted"):
        drafted = _counter(metrics, "mai_spec_decode_num_draft_tokens", model)
        accepted = _counter(metrics, "mai_spec_decode_num_accepted_tokens", model)
        assert drafted > 0 and 0 <= accepted <= drafted, (model, drafted, accepted)
    assert _counter(metrics, "mai_spec_decode_num_draft_tokens", "plain") == 0
    # the draft is the target itself here, so every greedy draft is accepted
    assert _counter(metrics, "mai_spec_decode_num_accepted_tokens", "drafted") == \
        _counter(metrics, "mai_spec_decode_num_draft_tokens", "drafted")


@pytest.mark.parametrize("spec, message", [({"method": "draft"}, "must name another model"),
                                           ({"method": "draft", "draft_model": "a"}, "must name another"),
                                           ({"method": "ngram", "tokens": 0}, "at least 1")])
def test_bad_speculative_settings_are_one_clear_error(spec, message):
    from mai.config import from_dict
    from mai.serve.catalog import Catalog

    with pytest.raises(MaiError, match=message):
        from_dict(Catalog, {"models": [{"name": "a", "path": "x", "speculative": spec}]}, "catalog")
