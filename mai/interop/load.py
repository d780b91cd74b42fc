"""One entry point for every checkpoint a user may hold: ``load_model(path)`` and ``export_hf``.

``path`` may be a Hugging Face directory (config.json + safetensors, sharded or not), a ``.gguf`` file, a
mai export (``mai.interop.native``: what ``mai train`` writes into RUN/model), a training run directory
(its ``model/`` export, else its newest checkpoint) or one DCP checkpoint ``step_*`` directory.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from mai.config import from_dict
from mai.errors import MaiError
from mai.interop import hf_dir
from mai.interop.bundled import resolve_path
from mai.interop.hf_names import (
    hf_config_to_mai,
    hf_to_mai_state_dict,
    mai_config_to_hf,
    mai_to_hf_state_dict,
)
from mai.interop.native import is_native, load_native
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer
from mai.tokenizer import MaiTokenizer, load_tokenizer


@dataclass
class LoadedModel:
    """A ready model (eval mode), its tokenizer when the checkpoint carries one, and where it came from."""

    model: Transformer
    tokenizer: MaiTokenizer | None
    source: Path
    kind: str  # "hf", "gguf", "mai" or "dcp"

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg


def _build(cfg: ModelConfig, sd: dict[str, torch.Tensor], dtype: torch.dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg)
    if cfg.tie_embeddings:
        sd = {k: v for k, v in sd.items() if k != "output.weight"}
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    expected = {k for k in shapes if not (cfg.tie_embeddings and k == "output.weight")}
    missing, extra = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or extra:
        raise MaiError(f"checkpoint does not match its config: missing {missing[:4]}, unexpected {extra[:4]}")
    for name, t in sd.items():
        want = shapes[name]
        if t.shape != want:
            raise MaiError(f"tensor {name} has shape {tuple(t.shape)} but the config implies {tuple(want)}")
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.init_rope()
    return model.eval()


def _tokenizer_in(path: Path) -> MaiTokenizer | None:
    return load_tokenizer(path) if (path / "tokenizer.json").is_file() else None


def _with_context(cfg: ModelConfig, max_seq_len: int | None) -> ModelConfig:
    return dataclasses.replace(cfg, max_seq_len=max_seq_len) if max_seq_len else cfg


def _load_gguf(path: Path, max_seq_len: int | None, dtype: torch.dtype) -> LoadedModel:
    from mai.interop.gguf_io import read_gguf
    from mai.interop.gguf_tokenizer import gguf_tokenizer

    hf_cfg, hf_sd, fields = read_gguf(path)
    cfg = hf_config_to_mai(hf_cfg, max_seq_len)
    model = _build(cfg, hf_to_mai_state_dict(hf_sd, cfg), dtype)
    tok = None
    if "tokenizer.ggml.tokens" in fields:
        raw, tcfg = gguf_tokenizer(fields)
        tok = MaiTokenizer(raw, tcfg["bos_token"], tcfg["eos_token"], tcfg["pad_token"],
                           tcfg["chat_template"])
    return LoadedModel(model, tok, path, "gguf")


def _load_dcp(step: Path, max_seq_len: int | None, dtype: torch.dtype) -> LoadedModel:
    import torch.distributed.checkpoint as dcp

    from mai.train.checkpoint import read_run_state

    cfg = _with_context(from_dict(ModelConfig, read_run_state(step)["model_config"], "train_state.json"),
                        max_seq_len)
    model = Transformer(cfg)
    state = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, checkpoint_id=str(step))
    except Exception as exc:  # DCP raises many types for missing or truncated shards
        raise MaiError(f"checkpoint {step} is damaged or incomplete: {str(exc)[:200]}") from None
    model.load_state_dict(state["model"])
    run_dir = step.parent.parent
    return LoadedModel(model.to(dtype).eval(), _tokenizer_in(run_dir / "model"), step, "dcp")


def load_model(path: str | Path, max_seq_len: int | None = None,
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load any supported checkpoint (see the module docstring), or ``bundled:smollm2``; ``max_seq_len``
    overrides the context."""
    path = resolve_path(path)
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, max_seq_len, dtype)
    if not path.is_dir():
        raise MaiError(f"no checkpoint at {path}: expected a .gguf file or a checkpoint directory")
    if (path / "train_state.json").is_file():
        return _load_dcp(path, max_seq_len, dtype)
    if not (path / "config.json").is_file():
        if (path / "model" / "config.json").is_file():  # a training run: its exported model
            return load_model(path / "model", max_seq_len, dtype)
        from mai.train.checkpoint import list_checkpoints

        steps = list_checkpoints(path / "checkpoints")
        if steps:
            return _load_dcp(steps[-1], max_seq_len, dtype)
        raise MaiError(f"{path} has no config.json, model/ export or checkpoints/: "
                       "not a checkpoint directory")
    if is_native(path):
        model = load_native(path)
        if max_seq_len:
            model.cfg.max_seq_len = max_seq_len
            model.init_rope()
        return LoadedModel(model.to(dtype), _tokenizer_in(path), path, "mai")
    config = hf_dir.read_json(path / "config.json")
    sd = hf_dir.read_state_dict(path)
    cfg = hf_config_to_mai(config, max_seq_len)
    return LoadedModel(_build(cfg, hf_to_mai_state_dict(sd, cfg), dtype), _tokenizer_in(path), path, "hf")


def export_hf(loaded: LoadedModel, out: str | Path, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write ``loaded`` as a Hugging Face directory (config, safetensors, tokenizer) for transformers."""
    out = Path(out)
    cfg = loaded.cfg
    config = mai_config_to_hf(cfg)
    if loaded.tokenizer is not None:
        tok = loaded.tokenizer
        config.update(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        tok.save(out)
    sd = {k: v.float() for k, v in loaded.model.state_dict().items()}
    hf_dir.write_checkpoint(out, config, mai_to_hf_state_dict(sd, cfg), max_shard_bytes)
    return out
