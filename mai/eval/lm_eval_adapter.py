"""A mai model as an lm-evaluation-harness model, registered as ``mai``: any lm-eval task runs on it.

    python -m mai.eval.lm_eval_adapter run --model mai --model_args pretrained=RUN_DIR --tasks ...

or, from Python, ``import mai.eval.lm_eval_adapter`` then ``lm_eval.simple_evaluate(model="mai", ...)``.
Log-likelihoods come from :class:`mai.eval.scoring.LoglikScorer` (lm-eval's tokenization, shared-context
batching), rolling log-likelihoods from :mod:`mai.eval.perplexity`, generation from mai's greedy or
sampled decoding on mai's engine with lm-eval's ``until`` strings as stop sequences, every request of a
``generate_until`` call submitted at once and decoded as one continuous batch.
"""

from __future__ import annotations

import sys
from typing import Any

import lm_eval.models  # noqa: F401  (registers the built-in models before ours)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from mai.eval.generation import generate
from mai.eval.perplexity import score_tokens
from mai.eval.scoring import LoglikScorer
from mai.infer.engine import Engine
from mai.infer.sampling import SamplingParams


@register_model("mai")
class MaiLM(LM):
    def __init__(self, pretrained: str, batch_tokens: int = 4096, device: str = "cpu",
                 max_length: int | None = None, **_: Any) -> None:  # lm-eval's model_args name
        super().__init__()
        from mai.errors import MaiError
        from mai.interop import load_model

        loaded = load_model(pretrained)
        if loaded.tokenizer is None:
            raise MaiError(f"{pretrained} carries no tokenizer")
        self.model = loaded.model.to(device)
        self.tok = loaded.tokenizer
        self.scorer = LoglikScorer(self.model, self.tok, int(batch_tokens), max_length and int(max_length))

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.scorer.score([tuple(r.args) for r in requests])

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        for r in requests:
            ppl = score_tokens(self.model, [(self.tok.encode(r.args[0]), 0)], self.scorer.prefix_id,
                               self.scorer.max_seq_len)
            out.append(-ppl.nll)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        prompts, params = [], []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            params.append(SamplingParams(max_tokens=int(kwargs.get("max_gen_toks", 256)),
                                         temperature=float(kwargs.get("temperature", 0.0)),
                                         stop=[until] if isinstance(until, str) else list(until)))
            prompts.append(self.tok.encode(context)[-(self.model.cfg.max_seq_len - 1):])
        if not prompts:
            return []
        return generate(Engine(self.model, self.tok.decode, [self.tok.eos_id]), prompts, params)


if __name__ == "__main__":  # lm-eval's own command line, with the "mai" model registered
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()
