"""The packed, shared-context scorer gives the log-likelihoods of scoring each request on its own."""

import pytest
import torch

from mai.eval.scoring import LoglikScorer
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
