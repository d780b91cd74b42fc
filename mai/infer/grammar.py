"""Grammar-constrained decoding with xgrammar: JSON mode, JSON-schema structured outputs and tool calls.

Chosen by measurement (benchmarks/grammar_mask.py) on SmolLM2's 49,152-token vocabulary against
llguidance and outlines-core: the per-token mask is ~1-3 µs median (llguidance ~20 µs; outlines-core as
fast but its compilation takes 0.1-37 s per schema against xgrammar's milliseconds), and it is one of the
two that enforce every schema of the test set (outlines-core lets numbers out of their bounds). It also
ships the tool-call formats (Hermes/Qwen ``<tool_call>``, Llama-3 JSON) as structural tags, so a forced
tool call is one grammar like any other.

The tokenizer table (:class:`GrammarConstraints`) is built once per served model; a request's grammar is
compiled by the HTTP handler, where a bad schema can still become a 400, and travels to the engine in
``SamplingParams.grammar``; the engine's factory then only starts a matcher on it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

from mai.errors import MaiError
from mai.infer.sampling import SamplingParams

if TYPE_CHECKING:
    import xgrammar as xgr

    from mai.infer.constraint import Constraint
    from mai.tokenizer import MaiTokenizer

CLOSING_STEPS = 64  # tokens the budget-exhaustion closer may add before it gives up (text stays cut)
_CLOSERS = ('"', "}", "]")  # preferred when the closer must choose: they end what is open


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError:
        raise MaiError("structured outputs need xgrammar: pip install 'xgrammar>=0.2.9'") from None
    return xgrammar


def xgrammar_tokenizer_info(tok: MaiTokenizer, vocab_size: int | None = None) -> xgr.TokenizerInfo:
    """xgrammar's table of the bytes of every token id. Special tokens (``<|im_end|>``...) are given as
    empty, so the grammar never lets one stand for its spelling; the stop ids end the output."""
    xgr = _xgrammar()
    special = {a.content for a in tok.tokenizer.get_added_tokens_decoder().values() if a.special}
    by_id = {i: t for t, i in tok.tokenizer.get_vocab(with_added_tokens=True).items()}
    size = max(vocab_size or 0, tok.vocab_size)
    encoded = ["" if by_id.get(i, "") in special else by_id.get(i, "") for i in range(size)]
    kind = xgr.VocabType.BYTE_LEVEL if _byte_level(tok) else xgr.VocabType.RAW
    return xgr.TokenizerInfo(encoded, kind, vocab_size=size, stop_token_ids=list(tok.stop_ids))


def raw_tokenizer_info(token_texts: list[str]) -> xgr.TokenizerInfo:
    """xgrammar's table from the decoded text of every token id (empty: a special token, never text)."""
    xgr = _xgrammar()
    return xgr.TokenizerInfo([t.encode("utf-8") for t in token_texts], xgr.VocabType.RAW,
                             vocab_size=len(token_texts))


def _byte_level(tok: MaiTokenizer) -> bool:
    return '"ByteLevel"' in json.dumps(json.loads(tok.tokenizer.to_str()).get("decoder"))


class GrammarConstraints:
    """The :data:`~mai.infer.constraint.ConstraintFactory` of one model: compiles grammars (cached by
    xgrammar) and starts a matcher for each constrained request."""

    def __init__(self, info: xgr.TokenizerInfo):
        xgr = _xgrammar()
        self.info = info
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.texts = [b.decode("utf-8", "replace") for b in info.decoded_vocab]

    @classmethod
    def for_tokenizer(cls, tok: MaiTokenizer, vocab_size: int | None = None) -> GrammarConstraints:
        return cls(xgrammar_tokenizer_info(tok, vocab_size))

    def json_object(self) -> Any:
        """OpenAI's ``json_object``: any one JSON object, compact."""
        return self.compiler.compile_json_schema('{"type": "object"}', any_whitespace=False,
                                                 strict_mode=False)

    def json_schema(self, schema: dict[str, Any]) -> Any:
        """The grammar of ``schema``; MaiError naming what xgrammar cannot take."""
        try:
            return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise MaiError(f"the JSON schema cannot be used: {_first_line(exc)}") from None

    def tool_calls(self, model_format: str, tools: list[dict[str, Any]], choice: str | dict[str, Any],
                   parallel: bool) -> Any:
        """The grammar of a model's tool-call format (xgrammar's structural tag ``model_format``, e.g.
        "qwen_3", "llama") for OpenAI-shaped ``tools`` and ``tool_choice``: free text or calls (auto), at
        least one call (required), one call of the named function; ``parallel`` allows more than one."""
        xgr = _xgrammar()
        try:
            tag = xgr.get_model_structural_tag(model_format, tools=tools, tool_choice=choice,
                                               reasoning="disabled", parallel_tool_calls=parallel)
            return self.compiler.compile_structural_tag(tag)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise MaiError(f"the tools cannot be used: {_first_line(exc)}") from None

    def __call__(self, params: SamplingParams) -> Constraint | None:
        grammar = params.grammar
        if grammar is None and params.json_object:
            grammar = self.json_object()
        return None if grammar is None else GrammarConstraint(grammar, self)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class GrammarConstraint:
    """One request's matcher: masks the logits, follows the chosen tokens, closes the output if cut."""

    def __init__(self, grammar: Any, owner: GrammarConstraints):
        xgr = _xgrammar()
        self.xgr, self.owner = xgr, owner
        self.matcher = xgr.GrammarMatcher(grammar)
        self.bitmask = xgr.allocate_token_bitmask(1, owner.info.vocab_size)

    @property
    def complete(self) -> bool:
        return self.matcher.is_completed()

    def mask(self, logits: torch.Tensor, stop_ids: set[int]) -> torch.Tensor:
        """The grammar's tokens; ``stop_ids`` (the engine's, which end the output without being fed to
        the matcher) too once the output is complete."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        out = logits.clone()
        self.xgr.apply_token_bitmask_inplace(out, self.bitmask.view(-1), vocab_size=out.shape[-1])
        if stop_ids and self.matcher.is_completed():
            ids = list(stop_ids)
            out[ids] = logits[ids]
        return out

    def advance(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise MaiError(f"token {token} does not fit the output grammar")

    def closing(self) -> str:
        """A short text that completes the output, found by walking a fork of the matcher: forced text
        first, else a closing quote or bracket, else the shortest allowed token. "" when none is found
        within :data:`CLOSING_STEPS` tokens (the output then stays cut, with finish_reason "length")."""
        m = self.matcher.fork()
        stops = set(self.owner.info.stop_token_ids)
        out = []
        for _ in range(CLOSING_STEPS):
            if m.is_completed():
                return "".join(out)
            forced = m.find_jump_forward_string()
            if forced:
                m.accept_string(forced)
                out.append(forced)
                continue
            m.fill_next_token_bitmask(self.bitmask)
            allowed = _allowed_ids(self.bitmask.view(-1), self.owner.info.vocab_size)
            texts = self.owner.texts
            choices = [i for i in allowed if i not in stops and texts[i].strip() and "\ufffd" not in texts[i]]
            if not choices:
                return ""
            token = min(choices, key=lambda i: (texts[i] not in _CLOSERS, len(texts[i]), i))
            m.accept_token(token)
            out.append(texts[token])
        return ""


def _allowed_ids(bitmask: torch.Tensor, vocab_size: int) -> list[int]:
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.flatten()[:vocab_size].nonzero().flatten().tolist()
