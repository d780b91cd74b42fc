"""Checkpoints in and out: Hugging Face directories, GGUF files and mai's own runs (see ``load``)."""

from mai.interop.load import LoadedModel, export_hf, load_model

__all__ = ["LoadedModel", "export_hf", "load_model"]
