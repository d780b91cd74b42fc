"""Checkpoint formats on tiny models: HF directories (single and sharded), mai exports, DCP run
checkpoints, and GGUF files written with the gguf package in every supported tensor type — each compared
with transformers reading the same files."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from mai.errors import MaiError
from mai.interop import export_hf, load_model
from mai.interop.gguf_io import unpermute_rotary
from mai.interop.gguf_write import gguf_name, permute_rotary
from mai.interop.native import save_native
from mai.model.transformer import Transformer

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")


def tiny_llama(tied=False, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=160, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(cfg).eval()


def logits(model, tokens):
    with torch.no_grad():
        out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


TOKENS = torch.randint(0, 320, (2, 33), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("shard_bytes", [None, 60_000])
def test_hf_dir_single_and_sharded(tmp_path, shard_bytes):
    hf = tiny_llama()
    hf.save_pretrained(tmp_path, max_shard_size=shard_bytes or "5GB")
    assert (tmp_path / "model.safetensors.index.json").is_file() == bool(shard_bytes)
    loaded = load_model(tmp_path)
    assert loaded.kind == "hf" and loaded.tokenizer is None
    assert torch.allclose(logits(loaded.model, TOKENS), logits(hf, TOKENS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tied", [False, True])
def test_export_sharded_loads_in_transformers(tmp_path, tied):
    hf = tiny_llama(tied)
    hf.save_pretrained(tmp_path / "in")
    loaded = load_model(tmp_path / "in")
    export_hf(loaded, tmp_path / "out", max_shard_bytes=50_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(logits(back, TOKENS), logits(hf, TOKENS), atol=1e-5, rtol=0)
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind


def test_mai_export_directory(tmp_path):
    loaded = load_model_from_hf(tmp_path)
    cfg = loaded.cfg
    save_native(loaded.model.state_dict(), cfg, tmp_path / "mai")
    again = load_model(tmp_path / "mai")
    assert again.kind == "mai"
    assert torch.equal(logits(again.model, TOKENS), logits(loaded.model, TOKENS))
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "mai").rename(run / "model")
    assert load_model(run).kind == "mai"  # a training run directory resolves to its export


def load_model_from_hf(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "hf")
    return load_model(tmp_path / "hf")


def test_dcp_checkpoint_of_a_run(tmp_path):
    from mai.train.checkpoint import Checkpointer

    loaded = load_model_from_hf(tmp_path)
    model = Transformer(loaded.cfg)
    model.load_state_dict(loaded.model.state_dict())
    opt = torch.optim.AdamW(model.parameters())
    Checkpointer(tmp_path / "run" / "checkpoints", keep=2).save(
        7, model, opt, {"model_config": dataclasses.asdict(loaded.cfg)}, {})
    again = load_model(tmp_path / "run")
    assert again.kind == "dcp"
    assert torch.equal(logits(again.model, TOKENS), logits(loaded.model, TOKENS))


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(MaiError, match="no checkpoint"):
        load_model(tmp_path / "missing")
    with pytest.raises(MaiError, match="not a checkpoint directory"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(MaiError, match="cannot read"):
        load_model(tmp_path)
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(MaiError, match="GGUF"):
        load_model(bad)


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.randn(4 * 16, 64)
    assert torch.equal(unpermute_rotary(permute_rotary(w, 4), 4), w)
    assert not torch.equal(permute_rotary(w, 4), w)


def write_gguf(path, hf, qtype):
    c = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        g = gguf_name(name)
        if "q_proj" in name:
            t = permute_rotary(t, c.num_attention_heads)
        elif "k_proj" in name:
            t = permute_rotary(t, c.num_key_value_heads)
        arr = t.numpy().astype(np.float32)
        kind = qtype if arr.ndim == 2 else gguf.GGMLQuantizationType.F32
        w.add_tensor(g, gguf.quants.quantize(arr, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_types_agree_with_transformers(tmp_path, qtype):
    hf = tiny_llama(tied=qtype == "Q8_0")
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_gguf(path, hf, gguf.GGMLQuantizationType[qtype])
    ours = load_model(path)
    assert ours.kind == "gguf" and ours.cfg.tie_embeddings == (qtype == "Q8_0")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    assert torch.allclose(logits(ours.model, TOKENS), logits(theirs, TOKENS), atol=1e-4, rtol=0)
    if qtype == "F32":  # lossless: the original weights come back exactly (so un-permuting is right)
        assert torch.allclose(logits(ours.model, TOKENS), logits(hf, TOKENS), atol=1e-5, rtol=0)


def test_cli_convert(tmp_path, capsys):
    from mai.cli import main

    hf = tiny_llama()
    hf.save_pretrained(tmp_path / "in")
    argv = ["convert", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--max-shard-gb", "0.0001"]
    assert main(argv) == 0
    assert "hf → Hugging Face" in capsys.readouterr().out
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(logits(back, TOKENS), logits(hf, TOKENS), atol=1e-5, rtol=0)
    assert main(["convert", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "error: no checkpoint" in capsys.readouterr().err


def test_cli_convert_to_gguf_loads_in_transformers(tmp_path, capsys):
    """mai's own GGUF writer, from a mai export with its tokenizer: transformers reads an F32 file back with
    the original logits, and a Q8_0 file with the logits mai's own GGUF reader gets from it."""
    from mai.cli import main
    from mai.interop import load_model
    from tests.serve.conftest import tiny_model_dir

    src = tiny_model_dir(tmp_path)
    original = load_model(src).model.eval()
    tokens = TOKENS % original.cfg.vocab_size  # the tiny model's vocabulary is 300
    for qtype in ("F32", "Q8_0"):
        out = tmp_path / f"model-{qtype}.gguf"
        assert main(["convert", str(src), "--to", "gguf", "--qtype", qtype, "--out", str(out)]) == 0
        assert f"GGUF {qtype}" in capsys.readouterr().out
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name,
                                                                 dtype=torch.float32).eval()
        want = original if qtype == "F32" else load_model(out).model.eval()
        assert torch.allclose(logits(back, tokens), logits(want, tokens), atol=1e-4, rtol=0), qtype
