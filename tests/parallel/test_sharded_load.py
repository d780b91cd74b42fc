"""``train.init_from`` into a sharded model reads only each rank's part: 4 gloo ranks (FSDP 4; pp 2 ×
tp 2) start from a 310 MB Hugging Face safetensors checkpoint under an address-space cap
(``RLIMIT_AS``) below the size of its weights — which one process loading the model cannot pass — and
their first loss equals one process's started from the same files. `mai train` with pp 2 from a mai export
and from a DCP checkpoint trains on the losses of one process started from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mai.interop import load_model
from mai.interop.load import LoadedModel, export_hf
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer
from mai.train.trainer import lm_loss
from tests.train.conftest import dataset  # noqa: F401  (a fixture)

from .harness import SEQ, batch
from .test_parallel import launch
from .test_resharding import losses, train

LIMIT_MB = 200  # beyond what torch and the process group use; the weights alone are 310 MB


def big_dense() -> ModelConfig:
    """78M parameters, nearly all in 12 wide SwiGLU blocks (one block's gathered weights: 26 MB)."""
    return ModelConfig(vocab_size=128, d_model=256, n_layers=12, n_heads=4, n_kv_heads=2, ffn_dim=8192,
                       max_seq_len=SEQ)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hf") / "big"
    export_hf(LoadedModel(Transformer(big_dense()), None, out, "mai"), out)
    return out


def single_process_loss(path: Path) -> float:
    model = load_model(path).model
    with torch.no_grad():
        return float(lm_loss(model, (batch()[:, :-1], batch()[:, 1:]))[0])


@pytest.mark.slow
def test_four_ranks_load_their_shards_under_a_cap_the_whole_model_does_not_fit(hf_checkpoint, tmp_path):
    weights = sum(f.stat().st_size for f in hf_checkpoint.glob("*.safetensors"))
    assert weights > 1.3 * LIMIT_MB * 2**20
    alone = launch(0, "limited_load.py", str(tmp_path / "alone.json"), str(LIMIT_MB), str(hf_checkpoint))
    assert alone.returncode != 0 and "memory" in alone.stderr.lower(), alone.stderr[-2000:]
    want = single_process_loss(hf_checkpoint)
    for name, layout in {"fsdp4": {}, "pp2tp2": {"pp": 2, "tp": 2}}.items():
        out = tmp_path / f"{name}.json"
        run = launch(4, "limited_load.py", str(out), str(LIMIT_MB), str(hf_checkpoint), json.dumps(layout))
        assert run.returncode == 0, run.stderr[-4000:]
        assert json.loads(out.read_text()) == pytest.approx(want, abs=1e-5), name


@pytest.mark.slow
def test_mai_train_pp2_from_an_export_or_a_checkpoint_continues_like_one_process(dataset, tmp_path):  # noqa: F811
    """`train.init_from` a mai export (safetensors, read in boxes) and a DCP checkpoint (dcp.load into
    the stages' state dict): pp 2 trains on the losses of one process from the same weights."""
    base = tmp_path / "base"
    train(dataset, base, 1, "train.max_steps=3")
    one_micro = ["train.max_steps=3", "train.batch_size=1", "train.global_batch=4"]
    for start in (base / "model", base / "checkpoints" / "step_00000003"):
        single, piped = tmp_path / f"single_{start.name}", tmp_path / f"pp2_{start.name}"
        train(dataset, single, 1, *one_micro, f"train.init_from={start}")
        train(dataset, piped, 2, *one_micro, f"train.init_from={start}", "parallel.pp=2",
              "parallel.pp_microbatches=4")
        assert losses(piped) == pytest.approx(losses(single), abs=1e-5), start
        assert losses(single)[0] < losses(base)[0]  # it did start from the trained weights


@pytest.mark.slow
def test_gguf_boxes_equal_load_model(tmp_path):
    """The GGUF source (whole tensors of a stage dequantized one at a time, then cut) gives the weights
    `load_model` gives, whole and in boxes (SmolLM2-135M, Q4_1)."""
    from mai.parallel.weights import materialize_from, open_weights

    source = open_weights("bundled:smollm2")
    with torch.device("meta"):
        model = Transformer(source.cfg)
    materialize_from(model, source, torch.device("cpu"))
    want = load_model("bundled:smollm2").model.state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    box = (slice(64, 128), slice(32, 96))  # a TP-and-FSDP-like box of a rotary-permuted projection
    name = "layers.3.attention.wk.weight"
    assert torch.equal(source.read(name, box), want[name][box])


def test_a_tied_head_stays_tied_when_materialised(tmp_path):
    """Moving plain parameters off meta gives each module a new Parameter; the head must stay the
    embedding (else a tied model trains an untied head that its export then drops)."""
    import dataclasses

    from mai.interop.native import save_native
    from mai.parallel.init import materialize
    from mai.parallel.weights import materialize_from, open_weights

    from .harness import tiny

    cfg = dataclasses.replace(tiny(False), tie_embeddings=True)
    with torch.device("meta"):
        model, again = Transformer(cfg), Transformer(cfg)
    materialize(model, torch.device("cpu"), seed=0)
    assert model.output.weight is model.tok_embeddings.weight
    save_native(model.state_dict(), cfg, tmp_path / "m")
    materialize_from(again, open_weights(tmp_path / "m"), torch.device("cpu"))
    assert again.output.weight is again.tok_embeddings.weight
    assert torch.equal(again.output.weight, model.output.weight)
