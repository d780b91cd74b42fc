"""Generation: the KV-cached path matches full recomputation, stop handling, sampling rules."""

import torch

from mai.infer.generate import Generation
from mai.infer.sampling import SamplingParams, apply_penalties, sample_row
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=96, init_std=0.2)
    return Transformer(cfg).eval()


def decode(ids):
    return "".join(chr(65 + i % 26) for i in ids)


def test_cached_and_uncached_greedy_agree_token_for_token():
    model = tiny_model()
    prompt = [5, 17, 3, 42, 8]
    params = SamplingParams(max_tokens=60, temperature=0)
    cached = Generation(model, decode, prompt, params, use_cache=True)
    uncached = Generation(model, decode, prompt, params, use_cache=False)
    cached.run(), uncached.run()
    assert len(cached.token_ids) == 60 and cached.finish_reason == "length"
    assert cached.token_ids == uncached.token_ids
    assert len(set(cached.token_ids)) > 3  # a random model still varies its output


def test_cached_sampling_with_seed_matches_uncached():
    model = tiny_model(1)
    params = SamplingParams(max_tokens=30, temperature=0.9, top_k=20, top_p=0.9, seed=7,
                            repetition_penalty=1.3)
    a = Generation(model, decode, [1, 2, 3], params).run()
    b = Generation(model, decode, [1, 2, 3], params, use_cache=False).run()
    assert a == b


def test_streamed_deltas_equal_final_text_and_stop_string_cuts():
    model = tiny_model()
    full = Generation(model, decode, [5, 17], SamplingParams(max_tokens=40, temperature=0))
    full.run()
    stop = full.text[10:13]
    g = Generation(model, decode, [5, 17], SamplingParams(max_tokens=40, temperature=0, stop=[stop]))
    streamed = "".join(g)
    assert streamed == g.text == full.text[: full.text.find(stop)]
    assert g.finish_reason == "stop"


def test_stop_token_ends_generation_without_emitting_it():
    model = tiny_model()
    ref = Generation(model, decode, [9, 9], SamplingParams(max_tokens=20, temperature=0))
    ref.run()
    g = Generation(model, decode, [9, 9], SamplingParams(max_tokens=20, temperature=0),
                   stop_ids=[ref.token_ids[4]])
    g.run()
    assert g.token_ids == ref.token_ids[: ref.token_ids.index(ref.token_ids[4])]
    assert g.finish_reason == "stop"


def test_context_limit_gives_length():
    model = tiny_model()
    g = Generation(model, decode, list(range(90)), SamplingParams(max_tokens=50, temperature=0))
    g.run()
    assert len(g.token_ids) == 6 and g.finish_reason == "length"


def test_top_k_one_is_greedy_and_penalties_change_choice():
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert sample_row(logits, SamplingParams(top_k=1), gen) == 1
    assert sample_row(logits, SamplingParams(top_p=0.01), gen) == 1
    penalised = apply_penalties(logits, torch.tensor([1, 1]), SamplingParams(repetition_penalty=2.0))
    assert penalised.tolist() == [1.0, 1.5, 2.0, -1.0]
    freq = apply_penalties(logits, torch.tensor([2, 2, 0]), SamplingParams(frequency_penalty=0.5,
                                                                           presence_penalty=1.0))
    assert freq.tolist() == [-0.5, 3.0, 0.0, -1.0]


def test_chunked_prefill_through_cache_matches_one_pass():
    from mai.model.transformer import KVCache

    model = tiny_model(2)
    tokens = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        whole = model(tokens)
        cache = KVCache(model.cfg, 2, 96)
        parts = [model(tokens[:, a:b], cache) for a, b in [(0, 10), (10, 17), (17, 18), (18, 23)]]
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-5)
