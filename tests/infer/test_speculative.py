"""Speculative decoding in the engine: greedy output identical to plain decoding, sampled output
distributed as the target model's (chi-square over a tiny vocabulary), acceptance counted."""

import pytest
import torch
from scipy.stats import chisquare

from mai.infer.engine import Engine
from mai.infer.sampling import SamplingParams
from mai.infer.speculative import DraftModelProposer, NgramProposer
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer


def tiny_model(seed, vocab=64, init_std=0.3):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=128, init_std=init_std)
    return Transformer(cfg).eval()


def decode(ids):
    return "".join(chr(ord("a") + i % 26) for i in ids)


def run_all(engine, prompts, params):
    reqs = [engine.submit(p, params) for p in prompts]
    while not all(r.done.is_set() for r in reqs):
        engine.step()
    return reqs


PROMPTS = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [9, 8, 7, 9, 8, 7, 9, 8], [5, 6, 5, 6, 5, 6, 5], [11, 12, 13]]


@pytest.mark.parametrize("proposer", ["ngram", "same model", "other model"])
def test_greedy_speculative_output_is_the_plain_output(proposer):
    target = tiny_model(0)
    drafter = {"ngram": lambda: NgramProposer(k=4), "same model": lambda: DraftModelProposer(target, k=3),
               "other model": lambda: DraftModelProposer(tiny_model(1), k=3)}[proposer]()
    params = SamplingParams(max_tokens=30, temperature=0, repetition_penalty=1.1)
    plain = run_all(Engine(target, decode, stop_ids=[63], max_batch=4), PROMPTS, params)
    engine = Engine(target, decode, stop_ids=[63], max_batch=4, speculative=drafter)
    spec = run_all(engine, PROMPTS, params)
    for a, b in zip(plain, spec, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason and a.text == b.text
    stats = engine.stats()
    assert stats.accepted_tokens > 0 and stats.draft_tokens >= stats.accepted_tokens
    if proposer == "same model":  # a perfect drafter: every draft is kept (but those after a stop token
        stopped = sum(r.finish_reason == "stop" for r in spec)  # that ends its request), far fewer steps
        assert stats.draft_tokens - stats.accepted_tokens <= 2 * stopped and engine.steps < 30
    assert stats.free_blocks == stats.total_blocks


def joint_distribution(model, prompt):
    """P(t1, t2) of the first two sampled tokens at temperature 1, flattened over vocab x vocab."""
    with torch.no_grad():
        p1 = torch.softmax(model(torch.tensor([prompt]))[0, -1].double(), -1)
        v = p1.shape[0]
        follow = torch.tensor([prompt + [t] for t in range(v)])
        p2 = torch.softmax(model(follow)[:, -1].double(), -1)
    return (p1[:, None] * p2).reshape(-1)


@pytest.mark.parametrize("proposer", ["ngram", pytest.param("draft model", marks=pytest.mark.slow)])
def test_sampled_speculative_tokens_follow_the_target_distribution(proposer):
    """Rejection sampling (Leviathan et al. 2023): 4,000 seeded requests of three tokens (the second is
    always a verified draft position) match the target's joint distribution of the first two tokens,
    and the same samples reject the draft model's distribution (the test can tell them apart)."""
    target, other = tiny_model(0, vocab=8, init_std=0.5), tiny_model(3, vocab=8, init_std=0.5)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    drafter = NgramProposer(k=1, min_n=1) if proposer == "ngram" else DraftModelProposer(other, k=1)
    engine = Engine(target, decode, max_batch=64, speculative=drafter)
    n = 4000
    reqs = [engine.submit(prompt, SamplingParams(max_tokens=3, temperature=1.0, seed=s)) for s in range(n)]
    while not all(r.done.is_set() for r in reqs):
        engine.step()
    stats = engine.stats()
    assert 0 < stats.accepted_tokens < stats.draft_tokens  # drafts both kept and rejected
    counts = torch.zeros(64, dtype=torch.float64)
    for r in reqs:
        counts[r.token_ids[0] * 8 + r.token_ids[1]] += 1

    def p_value(probs):
        expected = probs * n
        big = expected >= 5  # pool the rare cells so the chi-square approximation holds
        obs = torch.cat([counts[big], counts[~big].sum()[None]])
        exp = torch.cat([expected[big], expected[~big].sum()[None]])
        return chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue

    assert p_value(joint_distribution(target, prompt)) > 1e-3
    assert p_value(joint_distribution(other, prompt)) < 1e-6
