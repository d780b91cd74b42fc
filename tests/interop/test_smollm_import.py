"""The real SmolLM2-135M-Instruct GGUF: mai and transformers read it to the same logits, the rebuilt
tokenizer matches transformers' GGUF tokenizer, the model answers a chat prompt, and an exported HF
directory loads in transformers with the same logits."""


import pytest
import torch

from mai.infer.generate import Generation
from mai.infer.sampling import SamplingParams
from mai.interop import export_hf, load_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytestmark = pytest.mark.slow

TEXTS = ["Hello world 12345 !!", "  leading spaces\tand\ttabs\n\nnew lines", "Ünïcödé café — 東京 🙂",
         "<|im_start|>user\nHi<|im_end|>\n", "x=3.14159; def f(a, b): return a**b", "don't I'll we've"]


@pytest.fixture(scope="module")
def both(smollm_gguf, smollm2_hf_dir):
    """mai's reading of the GGUF beside transformers' (saved once per session by tests/conftest.py)."""
    theirs = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    their_tok = transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)
    return load_model(smollm_gguf), theirs, their_tok


def test_logits_agree_with_transformers(both):
    ours, theirs, _ = both
    tokens = torch.randint(0, 49152, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours.model(tokens), theirs(tokens).logits
    assert (a - b).abs().max() < 1e-4


def test_tokenizer_matches_transformers(both):
    ours, _, theirs = both
    for text in TEXTS:
        assert ours.tokenizer.encode(text) == theirs(text, add_special_tokens=False).input_ids, text
        assert ours.tokenizer.decode(ours.tokenizer.encode(text), skip_special=False) == text
    messages = [{"role": "user", "content": "Hi there"}]
    assert ours.tokenizer.apply_chat_template(messages) == theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


def test_chat_answer_is_sensible(both):
    ours = both[0]
    tok = ours.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.encode(tok.apply_chat_template(messages))
    params = SamplingParams(max_tokens=24, temperature=0)
    gen = Generation(ours.model, tok.decode, prompt, params, tok.stop_ids)
    assert "Paris" in gen.run() and gen.finish_reason == "stop"


def test_export_loads_in_transformers(both, tmp_path):
    ours, theirs, _ = both
    export_hf(ours, tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    back_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    tokens = torch.randint(0, 49152, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (back(tokens).logits - theirs(tokens).logits).abs().max() < 1e-4
    assert back_tok(TEXTS[0], add_special_tokens=False).input_ids == ours.tokenizer.encode(TEXTS[0])
    again = load_model(tmp_path)  # and mai reads its own export back, tokenizer included
    assert again.kind == "hf" and again.tokenizer.encode(TEXTS[2]) == ours.tokenizer.encode(TEXTS[2])
