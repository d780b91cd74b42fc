"""`mai serve` as a real process: it starts, becomes healthy, answers the openai client, and exits
cleanly on SIGTERM."""

import signal
import subprocess
import sys

import pytest

from mai.errors import MaiError
from mai.interop.bundled import smollm2_gguf

from .conftest import free_port, wait_until_healthy

pytestmark = pytest.mark.slow


def test_served_gguf_blocks_answer_like_the_float_model_and_exit_cleanly(tmp_path):
    """One `mai serve` process (a catalog, plus a key from the command line) serving the GGUF's float
    weights and its own Q4_1/Q8_0 blocks (the quantized-matmul kernel where the CPU has one): greedy
    answers agree, and SIGTERM ends it with exit code 0 and no traceback. (`mai serve --model` runs as
    the recipe's teacher in tests/recipe.)"""
    openai = pytest.importorskip("openai")
    try:
        smollm2_gguf()
    except MaiError as exc:
        pytest.skip(str(exc))
    catalog = tmp_path / "catalog.yaml"
    entry = "path: 'bundled:smollm2', max_batch: 4, max_seq_len: 512"
    catalog.write_text(f"models:\n  - {{name: float, {entry}}}\n  - {{name: blocks, {entry}, quant: gguf}}\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mai.cli", "serve", "--catalog", str(catalog), "--port",
                             str(port), "--api-key", "sk-proc"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, alive=lambda: proc.poll() is None)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-proc", max_retries=0)
        questions = ["What is the capital of France?", "Name three primary colors.",
                     "What is 2 + 2?", "Say hello in Spanish."]
        answers = {name: [client.chat.completions.create(
            model=name, max_tokens=12, temperature=0,
            messages=[{"role": "user", "content": q}]).choices[0].message.content for q in questions]
            for name in ("float", "blocks")}
        same = sum(a == b for a, b in zip(answers["float"], answers["blocks"], strict=True))
        # the same weights; the kernel rounds activations to int8 per 32 values (as llama.cpp does), which
        # can flip a near-tie a few tokens in (measured: 2 of these 4 answers identical, all four begin alike)
        assert same >= 2, answers
        assert all(a.split()[:2] == b.split()[:2] for a, b in zip(answers["float"], answers["blocks"],
                                                                   strict=True)), answers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
