"""`mai sft` for real on a tiny model: the loss falls, a killed run resumes to the same losses, LoRA trains
only adapters and merges back into a plain exported model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import torch

from mai.infer.lora_serving import AdapterBank
from mai.interop import load_model
from mai.post.chat_data import chitchat_conversations

ARGS = ["data.seq_len=256", "train.batch_size=4", "train.max_steps=6", "train.ckpt_every=3",
        "train.eval_every=3", "train.log_every=1", "optim.warmup_steps=1", "optim.lr=3e-3",
        "train.progress=false", "train.threads=1", "train.precision=fp32", "train.peak_tflops=1"]


def sft(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mai.cli", "sft", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def chats(tmp_path):
    f = tmp_path / "chats.jsonl"
    f.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chitchat_conversations(60)
                         if sum(len(x["content"]) for x in m) < 150))
    return f


def test_sft_trains_and_resumes_exactly(tiny_dir, tmp_path):
    data = chats(tmp_path)
    run = tmp_path / "run"
    out = sft("--model", str(tiny_dir), "--data", str(data), f"train.out_dir={run}", *ARGS)
    assert "assistant tokens" in out.stdout
    full = losses(run)
    assert len(full) == 6 and full[-1] < full[0]
    shutil.rmtree(run / "checkpoints" / "step_00000006", ignore_errors=True)
    for step in sorted((run / "checkpoints").glob("step_*"))[1:]:
        shutil.rmtree(step)  # keep step 3 only: as if killed after it
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_00000003"], "checkpoint naming"
    sft("--model", str(tiny_dir), "--data", str(data), f"train.out_dir={run}", *ARGS)
    assert losses(run) == full
    tuned = load_model(run)
    assert tuned.tokenizer is not None and tuned.tokenizer.chat_template


def test_lora_trains_adapters_and_merges(tiny_dir, tmp_path):
    run = tmp_path / "lora"
    sft("--model", str(tiny_dir), "--data", str(chats(tmp_path)), "--lora-rank", "4", f"train.out_dir={run}",
        *ARGS)
    base, tuned = load_model(tiny_dir).model.state_dict(), load_model(run).model.state_dict()
    assert set(base) == set(tuned)  # merged: plain weights, no adapter tensors
    assert not torch.equal(base["layers.0.attention.wq.weight"], tuned["layers.0.attention.wq.weight"])
    assert torch.equal(base["tok_embeddings.weight"], tuned["tok_embeddings.weight"])  # frozen
    # the adapter is also kept un-merged: over the base it gives the merged model's logits
    meta = json.loads((run / "adapter" / "adapter.json").read_text())
    assert (meta["rank"], meta["alpha"], meta["base"]["path"]) == (4, 8.0, str(tiny_dir))
    assert meta["targets"] == ["w1", "w2", "w3", "wk", "wo", "wq", "wv"]
    over_base = load_model(tiny_dir).model
    bank = AdapterBank(over_base)
    x = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode(), bank.step(bank.add("tuned", run / "adapter")):
        torch.testing.assert_close(over_base(x), load_model(run).model(x), rtol=1e-4, atol=1e-4)


def test_saved_config_repeats_the_run(tiny_dir, tmp_path):
    """Every flag is a config field: the run's config.yaml alone repeats it, to the same losses."""
    import yaml

    data = chats(tmp_path)
    run = tmp_path / "first"
    sft("--model", str(tiny_dir), "--data", str(data), "--lora-rank", "2", "--no-packing",
        f"train.out_dir={run}", *ARGS)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["sft"] == {"data": [str(data)], "synth": [], "lora_rank": 2, "packing": False,
                            "demo_limit": 400}
    assert saved["train"]["init_from"] == str(tiny_dir)
    again = tmp_path / "again"
    sft("--config", str(run / "config.yaml"), f"train.out_dir={again}")
    assert losses(again) == losses(run)


def test_unknown_sft_key_is_an_error(tiny_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mai.cli", "sft", "--model", str(tiny_dir),
                           "sft.lora=4", f"train.out_dir={tmp_path}"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "unknown config key 'config.sft.lora'" in proc.stderr
