"""hone: pre-train, fine-tune, evaluate and benchmark Transformers fast on GPUs and CPUs."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "load_tokenizer", "pipeline"]


def __getattr__(name: str):
    # Lazy so that `hone --version` and the CLI table do not import torch.
    if name == "load_model":
        from hone.models.checkpoint import load_model

        return load_model
    if name == "load_tokenizer":
        from hone.data.tokenizer import load_tokenizer

        return load_tokenizer
    if name == "pipeline":
        from hone.export.pipeline import pipeline

        return pipeline
    raise AttributeError(f"module 'hone' has no attribute {name!r}")
