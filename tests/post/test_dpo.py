"""`mai dpo` on a tiny model: the implicit reward margin starts at 0 (policy = reference) and grows; the
reference log-probabilities stored with the data are the frozen model's; bad pair files name the line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mai.errors import MaiError
from mai.interop import load_model
from mai.post.dpo import read_pairs, reference_logps, sequence_logp
from mai.post.sft import targets

QUESTIONS = ["How are you?", "Can you help me?", "What time is it?", "Where is the station?",
             "Is it raining?", "Do you like tea?", "What is your name?", "Could you open the door?",
             "Any plans today?",
             "Shall we start?", "Is this right?", "Why is the sky blue?"]


def write_pairs(path):
    path.write_text("".join(json.dumps({"prompt": q, "chosen": "Certainly, with pleasure! Let me explain.",
                                        "rejected": "no"}) + "\n" for q in QUESTIONS))
    return path


def test_margin_grows_on_a_small_set(tiny_dir, tmp_path):
    run = tmp_path / "dpo"
    pairs = write_pairs(tmp_path / "p.jsonl")
    proc = subprocess.run(
        [sys.executable, "-m", "mai.cli", "dpo", "--model", str(tiny_dir), "--data", str(pairs),
         "--beta", "0.1",
         f"train.out_dir={run}", "data.seq_len=128", "train.batch_size=4", "train.max_steps=8",
         "train.log_every=1", "train.eval_every=4", "optim.warmup_steps=1", "optim.lr=1e-3",
         "train.progress=false", "train.precision=fp32", "train.threads=1", "train.peak_tflops=1"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    margins = [r["reward_margin"] for r in rows if "reward_margin" in r]
    assert len(margins) == 8 and abs(margins[0]) < 1e-4  # step 1: the policy is still the reference
    assert margins[-1] > 0.5 and margins[-1] > max(margins[:3])
    assert all("reward_accuracy" in r and "loss" in r for r in rows if "reward_margin" in r)
    assert load_model(run).tokenizer is not None  # exported like any run


def test_reference_logps_are_the_frozen_models(tiny_dir, tmp_path):
    from mai.post.chat_data import pack
    from mai.post.dpo import encode_pairs

    loaded = load_model(tiny_dir)
    chosen, _ = encode_pairs(loaded.tokenizer, [p for p in read_pairs(write_pairs(tmp_path / "p.jsonl"))][:2])
    tokens, mask = pack(chosen, 65, loaded.tokenizer.pad_id, packing=False)
    got = reference_logps(loaded.model, tokens, mask)
    for row in range(2):  # by hand: only the reply's tokens count
        ids = [t for t in tokens[row]]
        reply = [i for i in range(1, 65) if mask[row, i]]
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(torch.tensor([ids[:-1]])), -1)[0]
        assert got[row] == pytest.approx(sum(logp[i - 1, ids[i]].item() for i in reply), abs=1e-3)
    x, y = targets(tokens, mask)
    assert np.allclose(sequence_logp(loaded.model(x).detach(), y).numpy(), got, atol=1e-4)


@pytest.mark.parametrize(("record", "message"), [
    ({"prompt": "hi", "chosen": "yes"}, "1: expected an object with prompt, chosen and rejected"),
    ({"prompt": "hi", "chosen": "yes", "rejected": ""}, "1: rejected must be a non-empty string"),
    ({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"},
     "1: message 0 has role"),
])
def test_bad_pairs_name_the_line(tmp_path, record, message):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(record) + "\n")
    with pytest.raises(MaiError, match=f"{f}:{message}"):
        read_pairs(f)


def test_beta_and_data_are_saved_config_fields(tiny_dir, tmp_path):
    import yaml

    pairs = write_pairs(tmp_path / "p.jsonl")
    common = ["data.seq_len=128", "train.batch_size=4", "train.max_steps=3", "train.log_every=1",
              "optim.warmup_steps=1", "optim.lr=1e-3", "train.progress=false", "train.precision=fp32",
              "train.threads=1", "train.peak_tflops=1"]
    runs = {}
    for name, args in (("first", ["--model", str(tiny_dir), "--data", str(pairs), "--beta", "0.3", *common]),
                       ("again", ["--config", str(tmp_path / "first" / "config.yaml")])):
        runs[name] = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "mai.cli", "dpo", *args, f"train.out_dir={runs[name]}"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    saved = yaml.safe_load((runs["first"] / "config.yaml").read_text())
    assert saved["dpo"] == {"data": [str(pairs)], "beta": 0.3, "demo_limit": 200}
    margins = {n: [json.loads(line).get("reward_margin") for line in
                   (r / "metrics.jsonl").read_text().splitlines()] for n, r in runs.items()}
    assert margins["first"] == margins["again"] and len(margins["first"]) >= 3
