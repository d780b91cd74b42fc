"""lm-eval's ``generate_until`` on mai's engine: every request of a call decoded in one continuous batch,
each with its own ``until`` strings and budget, text for text what a lone greedy generation gives."""

import pytest

from mai.infer.generate import Generation
from mai.infer.sampling import SamplingParams
from tests.serve.conftest import tiny_model_dir


def test_generate_until_decodes_all_requests_together_like_single_generations(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from mai.eval.lm_eval_adapter import MaiLM

    lm = MaiLM(str(tiny_model_dir(tmp_path)))
    asks = [("The quick brown fox", {"until": ["."], "max_gen_toks": 20}),
            ("A server answers", {"until": "dog", "max_gen_toks": 9}),
            ("Hello world!", {"max_gen_toks": 14})]
    reqs = [Instance("generate_until", {}, args, i) for i, args in enumerate(asks)]
    got = lm.generate_until(reqs)
    assert all(got), got
    for (context, kw), text in zip(asks, got, strict=True):
        until = kw.get("until", [])
        params = SamplingParams(max_tokens=kw["max_gen_toks"], temperature=0,
                                stop=[until] if isinstance(until, str) else until)
        assert text == Generation(lm.model, lm.tok.decode, lm.tok.encode(context), params,
                                  [lm.tok.eos_id]).run()
    assert lm.generate_until([]) == []
