"""The packed, shared-context scorer gives the log-likelihoods of scoring each request on its own."""

import pytest
import torch

from mai.eval.scoring import LoglikScorer
from mai.eval.token_tree import Row, share_prefixes
from mai.interop import load_model

PAIRS = [("Question: What is the capital of France?\nAnswer:", " Paris"),
         ("Question: What is the capital of France?\nAnswer:", " a large city on the river"),
         ("Question: What is the capital of France?\nAnswer:", " Berlin, surely"),
         ("Question: What is the capital of France?\nAnswer:", " a large city on the sea"),  # shares a prefix
         ("The cat sat on the ", "mat."),  # trailing space moves into the continuation (lm-eval rule)
         ("", "An empty context is scored after BOS or EOS."),
         ("Short", " x")]


def naive(scorer: LoglikScorer, ctx: str, cont: str) -> tuple[float, bool]:
    c, k = scorer.encode_pairs([(ctx, cont)])[0]
    ids = torch.tensor([c + k])
    with torch.no_grad():
        logp = torch.log_softmax(scorer.model(ids[:, :-1]).float(), -1)[0, len(c) - 1:]
    target = ids[0, len(c):]
    return logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


@pytest.mark.parametrize(("batch_tokens", "pack_len"), [(1, 512), (64, 16), (4096, 40), (4096, 512)])
def test_packed_rows_equal_one_request_at_a_time(tiny_dir, batch_tokens, pack_len):
    loaded = load_model(tiny_dir)
    scorer = LoglikScorer(loaded.model, loaded.tokenizer, batch_tokens, pack_len=pack_len)
    got = scorer.score(PAIRS)
    for (ctx, cont), (ll, greedy) in zip(PAIRS, got, strict=True):
        want_ll, want_greedy = naive(scorer, ctx, cont)
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy


def test_choices_of_one_question_share_a_row_and_questions_share_a_sequence(tiny_dir):
    loaded = load_model(tiny_dir)
    scorer = LoglikScorer(loaded.model, loaded.tokenizer, pack_len=512)
    rows = scorer.rows(PAIRS)
    assert [len(r.continuations) for r in rows] == [4, 1, 1, 1]
    france = rows[0]
    flat = len(france.context) + sum(len(c) - 1 for c in france.continuations)
    assert len(france) < flat  # " a large city on the" is fed once for both continuations
    bins = scorer.bins(rows)
    assert len(bins) == 1 and sum(map(len, bins[0])) == sum(map(len, rows))
    [(batch, width)] = list(scorer.batches(bins))
    assert batch == bins and width == sum(map(len, rows))


def test_encoding_follows_lm_eval(tiny_dir):
    loaded = load_model(tiny_dir)
    tok = loaded.tokenizer
    scorer = LoglikScorer(loaded.model, tok)
    ctx, cont = scorer.encode_pairs([("The cat sat on the ", "mat.")])[0]
    assert ctx == tok.encode("The cat sat on the") and ctx + cont == tok.encode("The cat sat on the mat.")
    ctx, cont = scorer.encode_pairs([("", "hello")])[0]
    assert ctx == [tok.bos_id] and cont == tok.encode("hello")


SHOTS = "".join(f"Question: What is {a} plus {b}?\nAnswer: {a + b}\n\n" for a, b in [(2, 3), (10, 7), (4, 4)])
FEW_SHOT = [(SHOTS + f"Question: What is {q}?\nAnswer:", f" {c}")
            for q in ("one plus one", "six plus two", "nine plus nine") for c in ("2", "8", "18 or so")]


@pytest.mark.parametrize("pack_len", [16, 256])
def test_a_shared_few_shot_prefix_runs_once_and_scores_as_alone(tiny_dir, pack_len):
    loaded = load_model(tiny_dir)
    scorer = LoglikScorer(loaded.model, loaded.tokenizer, 64, pack_len=pack_len, min_shared=8)
    pairs = FEW_SHOT + PAIRS
    groups = scorer.groups(pairs)
    [few] = [g for g in groups if g.prefix]
    assert len(few.rows) == 3 and len(few.prefix) >= len(loaded.tokenizer.encode(SHOTS)) - 1
    assert all(r.start == len(few.prefix) for r in few.rows)
    got = scorer.score(pairs)
    for (ctx, cont), (ll, greedy) in zip(pairs, got, strict=True):
        want_ll, want_greedy = naive(scorer, ctx, cont)
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy


def test_a_row_that_shares_little_does_not_shrink_a_group():
    head = list(range(100, 200))
    rows = [Row(head + [1, q], [[5]], [q]) for q in range(3)] + [Row(head[:30] + [7, 8], [[5]], [9])]
    groups = share_prefixes(rows, min_shared=16)
    assert [(len(g.prefix), len(g.rows)) for g in groups] == [(0, 1), (101, 3)]
    assert share_prefixes(rows, min_shared=200) == share_prefixes(rows, min_shared=10**6)
    assert [len(g.rows) for g in share_prefixes(rows, min_shared=200)] == [4]


def test_groups_partition_the_rows_even_when_contexts_nest_deeply():
    rows = [Row(list(range(1, k + 2)), [[0]], [k]) for k in range(1500)]  # each context extends the last
    rows += [Row([9, 9, 9, k], [[0]], [2000 + k]) for k in range(5)]
    groups = share_prefixes(rows, min_shared=2)
    back = {o: g.prefix + r.context for g in groups for r in g.rows for o in r.owners}
    assert back == {r.owners[0]: r.context for r in rows}
    assert all(r.start == len(g.prefix) and r.context for g in groups for r in g.rows)
