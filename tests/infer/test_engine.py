"""The batched engine: per-row cache numerics, continuous batching, seeds, stops, cancellation, JSON."""

import json
import threading

import pytest
import torch

from mai.errors import MaiError
from mai.infer.blocks import BlockManager
from mai.infer.engine import Engine, token_texts
from mai.infer.generate import Generation
from mai.infer.runner import ModelRunner, StepBatch
from mai.infer.sampling import SamplingParams
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=96, init_std=0.3)
    return Transformer(cfg).eval()


def decode(ids):
    return "".join(chr(ord("a") + i % 26) if i < 52 else " " for i in ids)


def test_paged_cache_step_mixes_decode_rows_and_prefill_chunks_like_single_runs():
    """One flat step: two decoding rows (their past in scattered blocks) and two prefill chunks (one
    from position 0, one continuing a prefix) give each token the logits of its sequence alone."""
    model = tiny_model()
    blocks = BlockManager(14, 4)
    runner = ModelRunner(model)
    cache = runner.make_cache(14, 4)
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 9], list(range(10, 21)), list(range(30, 37))]
    tables = [blocks.allocate(3) for _ in seqs]
    with torch.no_grad():
        for seq, table in zip(seqs[:2], tables, strict=False):  # pasts of the decoding rows
            runner.run(cache, StepBatch(seq[:-1], list(range(len(seq) - 1)), [],
                                        [(table, 0, len(seq) - 1)], [0]))
        runner.run(cache, StepBatch(seqs[3][:5], list(range(5)), [], [(tables[3], 0, 5)], [0]))
        batch = StepBatch([seqs[0][-1], seqs[1][-1]] + seqs[2] + seqs[3][5:],
                          [5, 2] + list(range(11)) + [5, 6],
                          [(tables[0], 6), (tables[1], 3)], [(tables[2], 0, 11), (tables[3], 5, 2)],
                          list(range(15)))
        logits = runner.run(cache, batch)
        refs = [model(torch.tensor([s]))[0] for s in seqs]
    want = torch.cat([refs[0][-1:], refs[1][-1:], refs[2], refs[3][5:]])
    assert torch.allclose(logits, want, atol=1e-5)


def test_engine_matches_generation_and_requests_join_and_leave():
    model = tiny_model()
    engine = Engine(model, decode, stop_ids=[63], max_batch=5)
    prompts = [[i + 1, (3 * i) % 50 + 1, 7] for i in range(12)]
    params = [SamplingParams(max_tokens=4 + i % 5, temperature=0) for i in range(12)]
    reqs = [engine.submit(p, sp) for p, sp in zip(prompts[:6], params[:6], strict=True)]
    for _ in range(3):
        engine.step()
    reqs += [engine.submit(p, sp) for p, sp in zip(prompts[6:], params[6:], strict=True)]
    while not all(r.done.is_set() for r in reqs):
        engine.step()
        assert engine.n_running <= 5
    for r, p, sp in zip(reqs, prompts, params, strict=True):
        ref = Generation(model, decode, p, sp, stop_ids=[63])
        assert ref.run() == r.text and ref.token_ids == r.token_ids and ref.finish_reason == r.finish_reason


def test_seeds_stop_strings_and_validation():
    model = tiny_model()
    engine = Engine(model, decode, max_batch=8)
    sp = SamplingParams(max_tokens=12, temperature=1.0, seed=7)
    a, b = engine.submit([1, 2], sp), engine.submit([1, 2], sp)
    c = engine.submit([1, 2], SamplingParams(max_tokens=12, temperature=1.0, seed=8))
    while not c.done.is_set():
        engine.step()
    assert a.token_ids == b.token_ids != c.token_ids
    alone = Engine(model, decode).generate([1, 2], sp)
    assert alone.token_ids == a.token_ids
    full = Engine(model, decode).generate([3], SamplingParams(max_tokens=20, temperature=0))
    stop = full.text[5:7]
    cut = Engine(model, decode).generate([3], SamplingParams(max_tokens=20, temperature=0, stop=[stop]))
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    with pytest.raises(MaiError, match="context"):
        engine.submit(list(range(1, 97)), sp)
    with pytest.raises(MaiError, match="empty"):
        engine.submit([], sp)


def test_cancellation_frees_the_row_and_streams_match():
    model = tiny_model()
    engine = Engine(model, decode)
    events = []
    long = engine.submit([5], SamplingParams(max_tokens=80, temperature=0), lambda r, e: events.append(e))
    other = engine.submit([6], SamplingParams(max_tokens=5, temperature=0))
    for _ in range(4):
        engine.step()
    engine.cancel(long)
    engine.step()
    assert long.finish_reason == "cancelled" and long.done.is_set() and engine.n_running <= 1
    assert events[-1].finish_reason == "cancelled"
    assert "".join(e.text for e in events) == long.text
    while not other.done.is_set():
        engine.step()
    assert engine.n_running == 0


def test_background_thread_serves_concurrent_submitters():
    model = tiny_model()
    engine = Engine(model, decode, max_batch=4)
    engine.start()
    try:
        results = {}

        def client(i):
            results[i] = engine.generate([i + 1], SamplingParams(max_tokens=6, temperature=0)).text

        threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in range(10):
            assert results[i] == Engine(model, decode).generate([i + 1], SamplingParams(max_tokens=6,
                                                                                        temperature=0)).text
    finally:
        engine.shutdown()


def test_logprobs_are_log_softmax_of_the_model():
    model = tiny_model()
    engine = Engine(model, decode, token_texts=token_texts(decode, 64))
    events = []
    engine.submit([9, 8], SamplingParams(max_tokens=3, temperature=0, logprobs=True, top_logprobs=3),
                  lambda r, e: events.append(e))
    while not events or events[-1].finish_reason is None:
        engine.step()
    lps = [lp for e in events for lp in e.logprobs]
    assert len(lps) == 3
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([[9, 8]]))[0, -1], -1)
    assert abs(lps[0].logprob - float(ref.max())) < 1e-4 and lps[0].top[0][1] == lps[0].logprob
    assert len(lps[0].top) == 3


@pytest.mark.slow
def test_smollm_greedy_alone_equals_among_31_others(smollm):
    tok = smollm.tokenizer
    topics = ["the sea", "bread", "a violin", "Mars", "winter", "chess", "bees", "a bridge"]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": f"Write one sentence about "
                                                    f"{t} ({i})."}])) for i, t in enumerate(topics * 4)]
    sp = SamplingParams(max_tokens=10, temperature=0)
    engine = Engine(smollm.model, tok.decode, tok.stop_ids)
    reqs = [engine.submit(p, sp) for p in prompts[:20]]
    engine.step()
    engine.step()
    reqs += [engine.submit(p, sp) for p in prompts[20:]]  # join a running batch
    while not all(r.done.is_set() for r in reqs):
        engine.step()
    for i in (0, 13, 27):
        alone = Engine(smollm.model, tok.decode, tok.stop_ids).generate(prompts[i], sp)
        assert alone.token_ids == reqs[i].token_ids
        assert alone.text == reqs[i].text


@pytest.mark.slow
def test_smollm_json_mode_always_parses(smollm):
    tok = smollm.tokenizer
    texts = token_texts(tok.decode, tok.vocab_size)
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Describe a cat as JSON with "
                                                  "name, age and colour."}]))
    engine = Engine(smollm.model, tok.decode, tok.stop_ids, token_texts=texts)
    for max_tokens in (60, 7):
        req = engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.7, seed=1,
                                                     json_object=True))
        assert isinstance(json.loads(req.text), dict), req.text


def _run_to_end(engine, reqs):
    while not all(r.done.is_set() for r in reqs):
        engine.step()


def test_a_request_that_fails_ends_alone_with_an_error_event():
    """A token step that raises (here: a logit_bias naming a token the vocabulary lacks) ends that request
    with an error event; the requests decoding beside it finish exactly as they would alone."""
    model = tiny_model()
    engine = Engine(model, decode, max_batch=8)
    greedy = SamplingParams(max_tokens=10, temperature=0)
    others = [engine.submit([i + 1, 2], greedy) for i in range(2)]
    engine.step()
    events = []
    bad = engine.submit([3], SamplingParams(max_tokens=10, logit_bias={10_000: 1.0}),
                        lambda r, e: events.append(e))
    _run_to_end(engine, others + [bad])
    assert bad.finish_reason == "error" and "IndexError" in bad.error
    assert events[-1].finish_reason == "error" and events[-1].error == bad.error
    for i, r in enumerate(others):
        assert r.token_ids == Engine(model, decode).generate([i + 1, 2], greedy).token_ids
    assert engine.generate([5], greedy).finish_reason == "length" and engine.state == "ok"


class BreakableModel(torch.nn.Module):
    """A real tiny model whose forward raises while ``broken`` is set: a device or kernel fault."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.cfg, self.broken = inner, inner.cfg, False

    def forward(self, *args, **kwargs):
        if self.broken:
            raise RuntimeError("device fault")
        return self.inner(*args, **kwargs)


def test_a_failed_step_fails_its_requests_and_the_engine_recovers():
    model = BreakableModel(tiny_model())
    engine = Engine(model, decode, max_batch=2)
    greedy = SamplingParams(max_tokens=12, temperature=0)
    running = [engine.submit([1], greedy), engine.submit([2], greedy)]
    waiting = engine.submit([3], greedy)
    engine.step()
    model.broken = True
    engine.step()
    assert [r.finish_reason for r in running] == ["error", "error"] and "device fault" in running[0].error
    assert engine.state == "failing" and not waiting.done.is_set() and engine.n_running == 0
    model.broken = False
    _run_to_end(engine, [waiting])
    assert engine.state == "ok" and waiting.finish_reason == "length"
    assert waiting.token_ids == Engine(model.inner, decode).generate([3], greedy).token_ids


def test_a_dead_engine_thread_finishes_every_request_and_refuses_new_ones():
    class Fatal(BreakableModel):
        def forward(self, *args, **kwargs):
            if self.broken:
                raise SystemExit("the thread is killed")  # not an Exception: escapes every handler
            return self.inner(*args, **kwargs)

    model = Fatal(tiny_model())
    model.broken = True
    engine = Engine(model, decode, max_batch=1)
    engine.start()
    reqs = [engine.submit([i + 1], SamplingParams(max_tokens=5)) for i in range(3)]
    for r in reqs:
        assert r.done.wait(30)
    assert {r.finish_reason for r in reqs} == {"error"} and engine.state == "stopped"
    with pytest.raises(MaiError, match="stopped"):
        engine.submit([1], SamplingParams())


def _sampling_params():
    from hypothesis import strategies as st

    tiny = st.sampled_from([0.0, 5e-324, 1e-300, 1e-50, 1e-12, 1e-6])
    unit = st.one_of(tiny, st.floats(0.0, 1.0))
    penalty = st.one_of(st.sampled_from([-2.0, 2.0]), st.floats(-2.0, 2.0))
    bias = st.dictionaries(st.integers(0, 63), st.one_of(st.sampled_from([-100.0, 100.0]),
                                                          st.floats(-100.0, 100.0)), max_size=6)
    return st.builds(SamplingParams, max_tokens=st.integers(1, 8),
                     temperature=st.one_of(tiny, st.floats(0.0, 2.0)), top_p=unit,
                     top_k=st.integers(0, 100_000), presence_penalty=penalty, frequency_penalty=penalty,
                     seed=st.integers(-(2**63), 2**64 - 1), logit_bias=bias, stop=st.lists(
                         st.text("abcdef ", min_size=1, max_size=3), max_size=4))


def test_any_allowed_sampling_parameters_decode_safely_in_a_running_batch():
    """Property test (seeded, 60 examples): random parameter values, extremes included, join a batch
    that two greedy requests are decoding; each ends with stop or length and the greedy ones are
    unchanged."""
    from hypothesis import HealthCheck, given, settings

    model = tiny_model()
    engine = Engine(model, decode, stop_ids=[63], max_batch=8)
    greedy = SamplingParams(max_tokens=6, temperature=0)
    expected = Engine(model, decode, stop_ids=[63]).generate([7, 8], greedy).token_ids

    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(params=_sampling_params())
    def check(params):
        background = [engine.submit([7, 8], greedy) for _ in range(2)]
        engine.step()
        req = engine.submit([1, 2, 3], params)
        _run_to_end(engine, background + [req])
        assert req.finish_reason in ("stop", "length"), req.error
        assert [r.token_ids for r in background] == [expected, expected]

    check()
    assert engine.state == "ok"
