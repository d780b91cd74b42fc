"""Load ``train.init_from`` weights into a sharded (FSDP / TP / EP / pipeline) model, each rank reading
only what it holds.

The model is built on meta and laid out first; then every parameter and saved buffer asks a
:class:`WeightSource` for the box of the full tensor this rank holds (``compute_local_shape_and_global_
offset`` of its DTensor placement; the whole tensor when it is not sharded; nothing for the tensors of
other pipeline stages, which this rank's module does not have).

- safetensors (Hugging Face directories, mai exports): the header is parsed here and only the bytes of
  the rows a rank holds are read with ``readinto`` — no ``mmap`` of the whole file (``safe_open`` maps
  it all, which counts against a process's address space), so a rank's memory is its shard's.
- DCP checkpoints (a training run's ``step_*``): ``dcp.load`` into the sharded state dict.
- GGUF: quantized blocks span rows in the file's own layout and llama.cpp's Q/K rotary permutation mixes
  rows, so a rank dequantizes each *whole* tensor its stage holds (one at a time) and keeps its slice;
  the tensors of other pipeline stages are never read.
"""

from __future__ import annotations

import json
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from mai.config import from_dict
from mai.errors import MaiError
from mai.interop import hf_dir
from mai.interop.bundled import resolve_path
from mai.interop.hf_names import hf_config_to_mai, hf_to_mai_name, mai_to_hf_name
from mai.interop.native import is_native
from mai.model.config import ModelConfig

Box = tuple[slice, ...]
Reader = Callable[[str, Box], torch.Tensor]  # mai tensor name, box of the full tensor → its values

NUMPY = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "BF16": np.uint16}


@dataclass
class WeightSource:
    """A checkpoint's model config and a reader of boxes of its tensors (mai names)."""

    cfg: ModelConfig
    read: Reader | None  # None: a DCP checkpoint (loaded by dcp.load, which reshards itself)
    path: Path
    names: set[str] = field(default_factory=set)  # the mai names it holds

    def has(self, name: str) -> bool:
        return name in self.names


def local_box(t: torch.Tensor) -> Box:
    """The box of the full tensor that ``t`` (a DTensor shard, or a whole tensor) holds here."""
    if isinstance(t, DTensor):
        shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    else:
        shape, offset = tuple(t.shape), (0,) * t.dim()
    return tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))


@torch.no_grad()
def fill_from(module: torch.nn.Module, source: WeightSource) -> None:
    """Overwrite ``module``'s parameters and saved buffers (materialised, possibly sharded) with the
    source's values, each rank reading its boxes only."""
    if source.read is None:
        _load_dcp(module, source.path)
        return
    state = module.state_dict(keep_vars=True)
    tied = source.cfg.tie_embeddings
    for name, t in state.items():
        if name == "output.weight" and tied or name.endswith("expert_bias") and not source.has(name):
            continue  # the tied head is the embedding; a dense-trained checkpoint has no MoE bias
        target = t.to_local() if isinstance(t, DTensor) else t
        box = local_box(t)
        if target.numel():
            target.copy_(source.read(name, box).to(target.dtype).reshape(target.shape))


def materialize_from(module: torch.nn.Module, source: WeightSource, device: torch.device) -> None:
    """Allocate a meta-built (laid out) ``module`` on ``device`` — each rank only its shards — and fill
    it from ``source``, with no random init first; the buffers that are not saved are rebuilt."""
    from mai.model.moe import MoE
    from mai.parallel.init import to_empty

    to_empty(module, device)
    for m in module.modules():
        if isinstance(m, MoE):
            m.reset_buffers()  # a checkpoint of a dense-trained start has no expert bias to read
    fill_from(module, source)
    module.init_rope(device)


def _load_dcp(module: torch.nn.Module, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = get_model_state_dict(module)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load({"model": state}, checkpoint_id=str(path))
    except Exception as exc:  # DCP raises many types for missing or truncated shards
        raise MaiError(f"checkpoint {path} is damaged or incomplete: {str(exc)[:200]}") from None
    set_model_state_dict(module, state)


class SafetensorsSlices:
    """Boxes of tensors of ``.safetensors`` files, reading only the rows a box spans."""

    def __init__(self, files: list[Path], rename: Callable[[str], str]):
        self.rename, self.entries = rename, {}
        for f in files:
            try:
                with open(f, "rb") as fh:
                    size = struct.unpack("<Q", fh.read(8))[0]
                    header = json.loads(fh.read(size))
            except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise MaiError(f"cannot read weights {f}: {exc}") from None
            header.pop("__metadata__", None)
            for name, e in header.items():
                self.entries[name] = (f, 8 + size + e["data_offsets"][0], e["dtype"], tuple(e["shape"]))

    def names(self) -> set[str]:
        return set(self.entries)

    def __call__(self, name: str, box: Box) -> torch.Tensor:
        stored = self.rename(name)
        if stored not in self.entries:
            raise MaiError(f"tensor {stored} is missing from the checkpoint")
        f, start, dtype, shape = self.entries[stored]
        if dtype not in NUMPY:
            raise MaiError(f"tensor {stored} has dtype {dtype}, which mai cannot load")
        rows = box[0] if box else slice(0, 1)
        row_elems = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        item = np.dtype(NUMPY[dtype]).itemsize
        count = (rows.stop - rows.start) * row_elems
        out = np.empty(count, dtype=NUMPY[dtype])
        with open(f, "rb") as fh:
            fh.seek(start + rows.start * row_elems * item)
            if fh.readinto(memoryview(out).cast("B")) != count * item:
                raise MaiError(f"weights file {f} is truncated (tensor {stored})")
        t = torch.from_numpy(out)
        t = t.view(torch.bfloat16) if dtype == "BF16" else t
        t = t.reshape((rows.stop - rows.start, *shape[1:]) if shape else ())
        return t[(slice(None), *box[1:])] if len(box) > 1 else t


def _gguf_reader(path: Path) -> tuple[ModelConfig, Reader, set[str]]:
    """One whole dequantized tensor at a time (see the module docstring), then its box."""
    import gguf

    from mai.interop.gguf_io import gguf_to_hf_name, open_gguf, rotary_heads, unpermute_rotary

    reader, hf_cfg = open_gguf(path)
    by_mai = {}
    for t in reader.tensors:
        hf = gguf_to_hf_name(t.name)
        if hf is not None and (mai := hf_to_mai_name(hf)) is not None:
            by_mai[mai] = (t, hf)

    def read(name: str, box: Box) -> torch.Tensor:
        t, hf = by_mai[name]
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        heads = rotary_heads(hf_cfg["model_type"], hf, hf_cfg["num_attention_heads"],
                             hf_cfg["num_key_value_heads"])
        return (w if heads is None else unpermute_rotary(w, heads))[box].clone()

    return hf_config_to_mai(hf_cfg), read, set(by_mai)


def open_weights(path: str | Path) -> WeightSource:
    """The config and a box reader of a checkpoint ``train.init_from`` may name (as
    :func:`mai.interop.load_model` accepts): a .gguf file, a HF directory, a mai export, a run directory
    (its export, else its newest checkpoint) or one DCP ``step_*`` directory."""
    path = resolve_path(path)
    if path.is_file() and path.suffix == ".gguf":
        cfg, read, names = _gguf_reader(path)
        return WeightSource(cfg, read, path, names)
    if not path.is_dir():
        raise MaiError(f"no checkpoint at {path}: expected a .gguf file or a checkpoint directory")
    if (path / "train_state.json").is_file():
        from mai.train.checkpoint import read_run_state

        return WeightSource(from_dict(ModelConfig, read_run_state(path)["model_config"], "train_state.json"),
                            None, path)
    if not (path / "config.json").is_file():
        from mai.train.checkpoint import list_checkpoints

        if (path / "model" / "config.json").is_file():
            return open_weights(path / "model")
        steps = list_checkpoints(path / "checkpoints")
        if steps:
            return open_weights(steps[-1])
        raise MaiError(f"{path} has no config.json, model/ export or checkpoints/: "
                       "not a checkpoint directory")
    config = hf_dir.read_json(path / "config.json")
    files = hf_dir.safetensors_files(path)
    if is_native(path):
        config.pop("format")
        slices = SafetensorsSlices(files, lambda name: name)
        return WeightSource(from_dict(ModelConfig, config, "config.json"), slices, path, slices.names())
    slices = SafetensorsSlices(files, mai_to_hf_name)
    names = {mai for n in slices.names() if (mai := hf_to_mai_name(n)) is not None}
    return WeightSource(hf_config_to_mai(config), slices, path, names)
