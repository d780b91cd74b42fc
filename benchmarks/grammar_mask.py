"""Which grammar library constrains `mai serve`'s structured outputs: xgrammar, llguidance, outlines-core,
measured on SmolLM2-135M-Instruct's 49,152-token vocabulary on this CPU.

For each library and each schema of the test set (tests/serve/structured_schemas.json, plus the generic
JSON grammar of ``json_object``): does it compile, does it accept the schema's valid instance and reject
the invalid one (coverage), and how long does the per-token mask take while the valid instance is fed
token by token (the work the engine adds to every constrained decode step). Also the one-off cost of the
library's tokenizer set-up and of each schema's compilation.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grammar_mask.py [--repeat 3]

Run on a shared machine the timings move with the load: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

SCHEMAS = Path(__file__).resolve().parents[1] / "tests" / "serve" / "structured_schemas.json"


@dataclass
class Outcome:
    compiled: bool = False
    accepts_valid: bool = False
    rejects_invalid: bool = False
    compile_ms: float = 0.0
    mask_us: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def covered(self) -> bool:
        return self.compiled and self.accepts_valid and self.rejects_invalid


class Matcher:
    """One library's per-request state: ``mask`` (timed), ``consume`` → accepted?, ``accepting``."""

    def mask(self) -> None: ...
    def consume(self, token: int) -> bool: ...
    def accepting(self) -> bool: ...


def _walk(make: Callable[[], Matcher], ids: list[int], timings: list[float] | None) -> bool:
    """Feed ``ids``; True when every token is accepted and the output may end there."""
    m = make()
    for t in ids:
        start = time.perf_counter()
        m.mask()
        if timings is not None:
            timings.append((time.perf_counter() - start) * 1e6)
        if not m.consume(t):
            return False
    return m.accepting()


# --- the three libraries --------------------------------------------------------------------------
def xgrammar_lib(tok, eos: int):
    import xgrammar as xgr

    from mai.infer.grammar import xgrammar_tokenizer_info

    info = xgrammar_tokenizer_info(tok)
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)

    def compile_(schema: dict | None):
        grammar = compiler.compile_builtin_json_grammar() if schema is None else \
            compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

        class M(Matcher):
            def __init__(self):
                self.m = xgr.GrammarMatcher(grammar)

            def mask(self):
                self.m.fill_next_token_bitmask(bitmask)

            def consume(self, token):
                return self.m.accept_token(token)

            def accepting(self):
                return self.m.accept_token(eos)

        return M

    return compile_


def llguidance_lib(tok, eos: int):
    import llguidance as llg
    import llguidance.torch as llt

    lltok = llg.LLTokenizer(tok.tokenizer.to_str(), eos_token=eos)
    bitmask = llt.allocate_token_bitmask(1, lltok.vocab_size)

    def compile_(schema: dict | None):
        grammar = llg.LLMatcher.grammar_from_json_schema(
            schema if schema is not None else {"type": "object"},
            defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        is_error, problems = llg.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
        if is_error:
            raise ValueError(problems)

        class M(Matcher):
            def __init__(self):
                self.m = llg.LLMatcher(lltok, grammar)

            def mask(self):
                llt.fill_next_token_bitmask(self.m, bitmask, 0)

            def consume(self, token):
                return self.m.consume_token(token) and not self.m.is_error()

            def accepting(self):
                return self.m.is_accepting()

        return M

    return compile_


def outlines_lib(tok, eos: int):
    from gguf.vocab import bytes_to_unicode  # GPT-2's byte ↔ printable-character table
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    special = {a.content for a in tok.tokenizer.get_added_tokens_decoder().values()}
    tokens: dict[bytes, list[int]] = {}
    for text, i in tok.tokenizer.get_vocab(with_added_tokens=False).items():
        if i != eos and text not in special:
            tokens.setdefault(bytes(byte_of[c] for c in text), []).append(i)
    vocab = Vocabulary(eos, tokens)
    mask = torch.zeros((tok.vocab_size + 31) // 32, dtype=torch.int32)

    def compile_(schema: dict | None):
        regex = build_regex_from_schema(json.dumps(schema if schema is not None else {"type": "object"}))
        index = Index(regex, vocab)

        class M(Matcher):
            def __init__(self):
                self.g = Guide(index)

            def mask(self):
                self.g.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())

            def consume(self, token):
                try:
                    self.g.advance(token)
                    return True
                except ValueError:
                    return False

            def accepting(self):
                return self.g.is_finished() or eos in self.g.get_tokens()

        return M

    return compile_


LIBRARIES = {"xgrammar": xgrammar_lib, "llguidance": llguidance_lib, "outlines-core": outlines_lib}


def measure(name: str, tok, cases: list[dict], repeat: int) -> tuple[float, dict[str, Outcome]]:
    start = time.perf_counter()
    compile_ = LIBRARIES[name](tok, tok.eos_id)
    setup = time.perf_counter() - start
    results: dict[str, Outcome] = {}
    for case in cases:
        out = results[case["name"]] = Outcome()
        try:
            t0 = time.perf_counter()
            make = compile_(case["schema"])
            out.compile_ms = (time.perf_counter() - t0) * 1e3
            out.compiled = True
            valid = tok.encode(json.dumps(case["valid"]))
            out.accepts_valid = _walk(make, valid, None)
            for _ in range(repeat):
                _walk(make, valid, out.mask_us)
            out.rejects_invalid = case["invalid"] is None or not _walk(
                make, tok.encode(json.dumps(case["invalid"])), None)
        except Exception as exc:  # a library that cannot take a schema: that is what is measured
            out.error = f"{type(exc).__name__}: {str(exc)[:120]}"
    return setup, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="walks of each valid instance for the timings")
    ap.add_argument("--libraries", nargs="*", default=list(LIBRARIES))
    args = ap.parse_args()
    from mai.interop import load_model
    from mai.interop.bundled import smollm2_gguf

    tok = load_model(smollm2_gguf()).tokenizer
    cases = json.loads(SCHEMAS.read_text())
    cases.append({"name": "json_object (generic)", "schema": None, "valid": {"a": [1, {"b": None}]},
                  "invalid": None})
    print(f"vocabulary {tok.vocab_size} tokens; torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; threads {torch.get_num_threads()}")
    for name in args.libraries:
        setup, results = measure(name, tok, cases, args.repeat)
        times = [t for r in results.values() for t in r.mask_us]
        covered = sum(r.covered for r in results.values())
        print(f"\n{name}: tokenizer set-up {setup * 1e3:.0f} ms; coverage {covered}/{len(cases)}; "
              f"mask per token median {statistics.median(times) if times else float('nan'):.0f} µs, "
              f"mean {statistics.fmean(times) if times else float('nan'):.0f} µs, "
              f"max {max(times) if times else float('nan'):.0f} µs")
        for case, r in results.items():
            med = f"{statistics.median(r.mask_us):7.0f}" if r.mask_us else "      -"
            flags = "ok " if r.covered else "NO "
            print(f"  {flags}{case:24s} compile {r.compile_ms:8.1f} ms  mask median {med} µs  "
                  f"valid {'accepted' if r.accepts_valid else 'REJECTED'}, "
                  f"invalid {'rejected' if r.rejects_invalid else 'ACCEPTED'} {r.error}")


if __name__ == "__main__":
    main()
