"""The streamed export (header from meta shapes, then one tensor at a time) writes the same
``model.safetensors`` as the old export that gathered the whole state dict and called ``save_file``:
the same bytes from a model, and the same tensors from a DCP checkpoint read layer by layer."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from mai.interop.native import load_native, save_native
from mai.model.transformer import Transformer
from mai.parallel.export import export_checkpoint, export_model, model_layout, write_model_dir
from mai.parallel.stream_write import SafetensorsStream
from mai.train.checkpoint import Checkpointer

from .harness import tiny


@pytest.mark.parametrize("moe,tied", [(False, False), (True, False), (False, True)])
def test_streamed_file_equals_the_gathered_export(tmp_path, moe, tied):
    cfg = dataclasses.replace(tiny(moe), tie_embeddings=tied)
    torch.manual_seed(0)
    model = Transformer(cfg)
    save_native(model.state_dict(), cfg, tmp_path / "gathered")
    export_model(model, cfg, tmp_path / "streamed", None, None)
    old = (tmp_path / "gathered" / "model.safetensors").read_bytes()
    assert (tmp_path / "streamed" / "model.safetensors").read_bytes() == old
    again = load_native(tmp_path / "streamed")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(),
                                                  strict=True))


def test_checkpoint_export_reads_layer_by_layer_and_equals_the_gathered_export(tmp_path):
    cfg = tiny(True, n_layers=3)
    torch.manual_seed(0)
    model = Transformer(cfg)
    optimizer = torch.optim.AdamW(model.parameters())
    run_state = {"model_config": dataclasses.asdict(cfg)}
    Checkpointer(tmp_path / "ckpt", keep=1).save(1, model, optimizer, run_state, {})
    export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    save_native(model.state_dict(), cfg, tmp_path / "gathered")
    streamed = load_file(str(tmp_path / "out" / "model.safetensors"))
    gathered = load_file(str(tmp_path / "gathered" / "model.safetensors"))
    assert streamed.keys() == gathered.keys()
    assert all(torch.equal(streamed[k], gathered[k]) for k in streamed)


def test_a_stream_refuses_tensors_out_of_order_or_missing(tmp_path):
    layout = model_layout(tiny(False))
    first, second = SafetensorsStream(tmp_path / "x", layout).order[:2]
    with pytest.raises(ValueError, match=f"expected {first}"), \
            SafetensorsStream(tmp_path / "x.safetensors", layout) as out:
        out.write(second, torch.zeros(layout[second][1]))
    with pytest.raises(ValueError, match="never written"):
        write_model_dir(tmp_path / "m", tiny(False), iter([]))
