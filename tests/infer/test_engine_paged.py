"""The paged engine: prefix caching, chunked prefill, preemption, cancellation, batch invariance, stats.

Real engines over small random-init models (fp32); steps and tokens are counted, never seconds."""

import random
import threading

import pytest
import torch
from prometheus_client import generate_latest

from mai.errors import MaiError
from mai.infer.blocks import BlockManager, prefix_hashes
from mai.infer.engine import Engine, token_texts
from mai.infer.sampling import SamplingParams
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer
from mai.serve.metrics import Metrics

GREEDY = SamplingParams(max_tokens=12, temperature=0)


def tiny_model(max_seq_len=96, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=max_seq_len, init_std=0.3)
    return Transformer(cfg).eval()


def decode(ids):
    return "".join(chr(ord("a") + i % 26) if i < 52 else " " for i in ids)


def run_to_end(engine, reqs, on_step=None):
    while not all(r.done.is_set() for r in reqs):
        engine.step()
        if on_step:
            on_step()


def alone(model, prompt, params=GREEDY, **kw):
    return Engine(model, decode, max_batch=1, prefix_caching=False, **kw).generate(prompt, params)


def test_block_manager_shares_counts_and_evicts_least_recently_freed():
    bm = BlockManager(5, 4)  # 4 usable blocks
    tokens = list(range(12))
    hashes = prefix_hashes(tokens, 3, 4)
    a = bm.allocate(3)
    for block, h in zip(a, hashes, strict=True):
        bm.register(block, h)
    assert bm.share_prefix(hashes[:2]) == a[:2] and bm.refs[a[0]] == 2
    assert bm.share_prefix(prefix_hashes([0, 1, 2, 3, 9, 9, 9, 9], 2, 4)) == a[:1]  # the parent chains
    bm.free(a[:1])
    bm.free(a[:2])
    bm.free(a)
    assert bm.num_free == 4 and bm.allocate(5) is None
    fresh = bm.allocate(2)  # the unused block first, then the oldest evictable: a's last (freed first)
    assert a[2] in fresh and bm.share_prefix(hashes) == a[:2]


def test_a_shared_1000_token_prefix_is_prefilled_once_and_gives_the_cold_logits():
    model = tiny_model(max_seq_len=1100)
    texts = token_texts(decode, 64)
    rng = random.Random(0)
    prefix = [rng.randrange(64) for _ in range(1000)]
    first, second = prefix + [5, 6, 7], prefix + [9] * 37
    params = SamplingParams(max_tokens=6, temperature=0, logprobs=True, top_logprobs=5)
    engine = Engine(model, decode, token_texts=texts, max_num_batched_tokens=2048)
    engine.generate(first, params)
    events = []
    before = engine.computed_tokens
    req = engine.submit(second, params, lambda r, e: events.append(e))
    engine.step()  # its whole prefill: only what the cache lacks
    shared = 1000 // 16 * 16
    assert engine.computed_tokens - before == len(second) - shared
    assert engine.stats().prefix_hit_tokens == shared
    run_to_end(engine, [req])
    cold_events = []
    cold_engine = Engine(model, decode, token_texts=texts, prefix_caching=False, max_num_batched_tokens=2048)
    cold = cold_engine.submit(second, params, lambda r, e: cold_events.append(e))
    run_to_end(cold_engine, [cold])
    assert req.token_ids == cold.token_ids
    warm_lp = [lp for e in events for lp in e.logprobs]
    cold_lp = [lp for e in cold_events for lp in e.logprobs]
    for w, c in zip(warm_lp, cold_lp, strict=True):
        assert w.token == c.token and abs(w.logprob - c.logprob) < 1e-4
        assert all(abs(a[1] - b[1]) < 1e-4 for a, b in zip(w.top, c.top, strict=True))
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([second]))[0, -1], -1)
    assert abs(warm_lp[0].logprob - float(ref.max())) < 1e-4


def test_a_long_prompt_is_chunked_and_no_running_stream_misses_a_step():
    model = tiny_model(max_seq_len=1024)
    engine = Engine(model, decode, max_batch=8, max_num_batched_tokens=64)
    streams = [engine.submit([i + 1, 2, 3], SamplingParams(max_tokens=40, temperature=0)) for i in range(4)]
    engine.step()
    long = engine.submit(list(range(1, 64)) * 11, SamplingParams(max_tokens=3, temperature=0))
    steps_to_first_token = 0

    def check():
        nonlocal steps_to_first_token
        for r in streams:  # every stream got exactly one more token in this step
            assert r.done.is_set() or len(r.token_ids) == engine.steps
        if not long.token_ids:
            steps_to_first_token += 1

    run_to_end(engine, streams + [long], check)
    assert steps_to_first_token >= 693 // 64  # the prompt took one chunk per step
    for i, r in enumerate(streams):
        assert r.token_ids == alone(model, [i + 1, 2, 3], r.params).token_ids
    assert long.token_ids == alone(model, long.prompt_ids, long.params).token_ids


def test_preemption_under_a_tiny_pool_recomputes_and_keeps_greedy_outputs():
    model = tiny_model()
    engine = Engine(model, decode, max_batch=6, kv_blocks=8)  # 128 positions for 6 requests of up to 60
    prompts = [[(7 * i + j) % 60 + 1 for j in range(20)] for i in range(6)]
    params = SamplingParams(max_tokens=40, temperature=0)
    reqs = [engine.submit(p, params) for p in prompts]
    run_to_end(engine, reqs)
    assert engine.preemptions > 0
    for p, r in zip(prompts, reqs, strict=True):
        assert r.finish_reason == "length" and r.token_ids == alone(model, p, params).token_ids
    assert engine.stats().free_blocks == engine.stats().total_blocks


def test_64_concurrent_requests_with_random_cancellations_leave_the_pool_full():
    model = tiny_model()
    engine = Engine(model, decode, max_batch=16, kv_blocks=40)
    engine.start()
    rng = random.Random(1)
    reqs = []
    try:
        def client(i):
            r = engine.submit([rng.randrange(1, 60) for _ in range(rng.randrange(1, 40))],
                              SamplingParams(max_tokens=rng.randrange(1, 50), temperature=0.8, seed=i))
            reqs.append(r)
            if i % 3 == 0:
                threading.Event().wait(rng.random() * 0.05)
                engine.cancel(r)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(reqs) == 64
        for r in reqs:
            assert r.done.wait(120)
    finally:
        engine.shutdown()
    assert {r.finish_reason for r in reqs} <= {"length", "cancelled", "stop"}
    assert any(r.finish_reason == "cancelled" for r in reqs)
    stats = engine.stats()
    assert stats.free_blocks == stats.total_blocks == 40 and engine.n_running == engine.n_waiting == 0


@pytest.mark.parametrize("max_batch,budget", [(3, 3), (8, 9), (16, 512)])
def test_greedy_outputs_are_the_same_alone_and_in_any_batch(max_batch, budget):
    model = tiny_model()
    rng = random.Random(max_batch)
    base = [rng.randrange(64) for _ in range(40)]
    prompts = [base[: rng.randrange(1, 40)] + [rng.randrange(64) for _ in range(rng.randrange(1, 9))]
               for _ in range(12)]  # shared prefixes of many lengths
    engine = Engine(model, decode, stop_ids=[63], max_batch=max_batch, max_num_batched_tokens=budget)
    reqs = [engine.submit(p, GREEDY) for p in prompts[:6]]
    engine.step()
    reqs += [engine.submit(p, GREEDY) for p in prompts[6:]]
    run_to_end(engine, reqs)
    for p, r in zip(prompts, reqs, strict=True):
        ref = Engine(model, decode, stop_ids=[63], max_batch=1, prefix_caching=False).generate(p, GREEDY)
        assert r.token_ids == ref.token_ids and r.finish_reason == ref.finish_reason


def test_engine_stats_reach_the_metrics_page():
    model = tiny_model()
    engine = Engine(model, decode, kv_blocks=20)
    engine.generate(list(range(1, 40)), GREEDY)
    engine.generate(list(range(1, 40)) + [7], GREEDY)
    metrics = Metrics()
    metrics.watch_engine("tiny", engine.stats)
    page = generate_latest(metrics.registry).decode()
    assert 'mai_kv_cache_blocks_total{model="tiny"} 20.0' in page
    assert 'mai_kv_cache_blocks_free{model="tiny"} 20.0' in page
    assert 'mai_prefix_cache_hits_tokens{model="tiny"} 32.0' in page


def test_pool_and_budget_are_checked():
    model = tiny_model()
    with pytest.raises(MaiError, match="cannot hold one request"):
        Engine(model, decode, kv_blocks=3)
    with pytest.raises(MaiError, match="max_num_batched_tokens"):
        Engine(model, decode, max_batch=8, max_num_batched_tokens=4)
    with pytest.raises(MaiError, match="vocabulary"):
        Engine(model, decode).submit([1, 64], GREEDY)


@pytest.mark.slow
def test_the_compiled_runner_pads_rows_to_buckets_and_gives_the_eager_tokens():
    """Three requests decode as one 4-row compiled graph (the padding row on the scratch block) after an
    eager prefill step; tokens equal the eager engine's (one compile: other buckets work alike)."""
    from mai.infer.compiled_decode import CompiledDecoder

    model = tiny_model()
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    params = [SamplingParams(max_tokens=10, temperature=0) for _ in prompts]

    def run(engine):
        reqs = [engine.submit(p, sp) for p, sp in zip(prompts, params, strict=True)]
        run_to_end(engine, reqs)
        return [r.token_ids for r in reqs]

    runner = CompiledDecoder(model)
    assert run(Engine(model, decode, max_batch=4, runner=runner)) == run(Engine(model, decode, max_batch=4))
    assert runner.compiled_steps == 9  # every decode step (the first tokens come from the prefill)
