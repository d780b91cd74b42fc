import pytest

from mai.errors import MaiError
from mai.interop.bundled import smollm2_gguf


@pytest.fixture(scope="session")
def smollm_gguf():
    try:
        return smollm2_gguf()
    except MaiError as exc:
        pytest.skip(str(exc))
