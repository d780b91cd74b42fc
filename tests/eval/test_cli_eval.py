"""`mai eval` end to end on a tiny model: benchmark + perplexity, table, JSON, PNG; errors exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

from mai.eval.perplexity import text_perplexity
from mai.interop import load_model


def mai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mai.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_eval_writes_table_json_and_chart(tiny_dir, benchdata, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    proc = mai("eval", str(tiny_dir), "--tasks", "arc_easy,winogrande", "--limit", "4", "--text", str(text),
               "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"][str(tiny_dir)]
    assert results["arc_easy"]["n"] == 4 and 0 <= results["arc_easy"]["acc_norm"] <= 1
    assert results["winogrande"]["n"] == 4 and "acc_norm" not in results["winogrande"]
    assert results["text"]["bits_per_byte"] > 0
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "arc_easy" in proc.stdout and "bits_per_byte" in proc.stdout


def test_unknown_task_is_a_clear_error(tiny_dir, tmp_path):
    proc = mai("eval", str(tiny_dir), "--tasks", "hellaswag,mmlu_3shot", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown task 'mmlu_3shot'" in proc.stderr and "mmlu_5shot" in proc.stderr


def test_bits_per_byte_is_total_nll_over_bytes(tiny_dir):
    loaded = load_model(tiny_dir)
    tok, model = loaded.tokenizer, loaded.model
    text = "Ünïcödé text: café, naïve, 東京."
    got = text_perplexity(model, tok, [text], max_seq_len=512)
    ids = torch.tensor([[tok.bos_id, *tok.encode(text)]])
    with torch.no_grad():
        nll = -torch.log_softmax(model(ids[:, :-1]), -1)[0].gather(1, ids[0, 1:, None]).sum().item()
    assert got.bytes == len(text.encode("utf-8")) and got.tokens == ids.shape[1] - 1
    assert math.isclose(got.bits_per_byte, nll / math.log(2) / got.bytes, rel_tol=1e-5)
    windows = text_perplexity(model, tok, [text], max_seq_len=4)  # disjoint windows: same tokens scored
    assert windows.tokens == got.tokens


def test_saved_eval_config_repeats_the_run(tiny_dir, tmp_path):
    import yaml

    text = tmp_path / "held_out.txt"
    text.write_text("Rivers carry water from the hills down to the sea. " * 10)
    first = mai("eval", str(tiny_dir), "--text", str(text), "--limit", "2", "--precision", "fp32",
                "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["models"] == [str(tiny_dir)] and saved["texts"] == [str(text)] and saved["limit"] == 2
    assert saved["gen"]["temperature"] == 0.0 and saved["precision"] == "fp32"
    again = mai("eval", "--config", str(tmp_path / "a" / "config.yaml"), "--set", f"out={tmp_path / 'b'}")
    assert again.returncode == 0, again.stderr
    results = [json.loads((tmp_path / d / "results.json").read_text())["results"] for d in "ab"]
    assert results[0] == results[1]
    bad = mai("eval", str(tiny_dir), "--set", "gen.temprature=1", "--out", str(tmp_path / "c"))
    assert bad.returncode == 2 and "unknown config key 'eval.gen.temprature'" in bad.stderr
