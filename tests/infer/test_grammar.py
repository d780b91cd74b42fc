"""xgrammar constraints on SmolLM2's real vocabulary: every schema of the structured-output test set
admits its valid instance and refuses its invalid one token by token, a cut output is closed into valid
JSON, and bad schemas are user errors."""

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from mai.errors import MaiError
from mai.infer.constraint import json_mode_factory
from mai.infer.engine import token_texts
from mai.infer.grammar import GrammarConstraints
from mai.infer.sampling import SamplingParams

CASES = json.loads((Path(__file__).parents[1] / "serve" / "structured_schemas.json").read_text())


@pytest.fixture(scope="module")
def grammars(smollm):
    return GrammarConstraints.for_tokenizer(smollm.tokenizer)


def _feed(constraint, ids: list[int], stop_ids: set[int]) -> bool:
    """Whether every token of ``ids`` survives the mask, in order."""
    for t in ids:
        masked = constraint.mask(torch.zeros(constraint.owner.info.vocab_size), stop_ids)
        if masked[t] == float("-inf"):
            return False
        constraint.advance(t)
    return True


def _validator(schema):
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_schema_admits_valid_refuses_invalid(grammars, smollm, case):
    tok = smollm.tokenizer
    stops = set(tok.stop_ids)
    good = grammars(SamplingParams(grammar=grammars.json_schema(case["schema"])))
    assert _feed(good, tok.encode(json.dumps(case["valid"])), stops) and good.complete
    masked = good.mask(torch.zeros(good.owner.info.vocab_size), stops)
    assert all(masked[i] == 0 for i in stops)  # a whole answer may end here
    bad = grammars(SamplingParams(grammar=grammars.json_schema(case["schema"])))
    assert not (_feed(bad, tok.encode(json.dumps(case["invalid"])), stops) and bad.complete)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_cut_output_is_closed_into_a_valid_instance(grammars, smollm, case):
    """Wherever the budget runs out inside the valid instance, the closing text completes it to JSON that
    validates against the schema."""
    tok = smollm.tokenizer
    ids = tok.encode(json.dumps(case["valid"]))
    for cut in range(len(ids)):
        c = grammars(SamplingParams(grammar=grammars.json_schema(case["schema"])))
        assert _feed(c, ids[:cut], set(tok.stop_ids))
        text = tok.decode(ids[:cut]) + c.closing()
        # no format check: xgrammar's "date" admits year 0000 (RFC 3339 does), Python's date does not
        jsonschema.Draft202012Validator(case["schema"]).validate(json.loads(text))


def test_json_object_from_token_texts_only(smollm):
    """The engine's default factory (no tokenizer at hand): one JSON object, closed when cut."""
    tok = smollm.tokenizer
    make = json_mode_factory(token_texts(tok.decode, tok.vocab_size))
    ids = tok.encode('{"a": [1, {"b": "x y"}], "c": null}')
    c = make(SamplingParams(json_object=True))
    assert _feed(c, ids, set(tok.stop_ids)) and c.complete
    cut = make(SamplingParams(json_object=True))
    assert _feed(cut, ids[:7], set(tok.stop_ids))
    assert isinstance(json.loads(tok.decode(ids[:7]) + cut.closing()), dict)
    assert make(SamplingParams()) is None
    refused = make(SamplingParams(json_object=True))
    assert not _feed(refused, tok.encode("[1, 2]"), set(tok.stop_ids))  # an array is not an object


@pytest.mark.parametrize("schema", [{"type": "object", "properties": {"a": {"type": "strnig"}}},
                                    {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}])
def test_bad_schema_is_a_user_error(grammars, schema):
    with pytest.raises(MaiError, match="JSON schema cannot be used"):
        grammars.json_schema(schema)
