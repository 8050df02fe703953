"""Tiny models for fast tests: a random BERT with a word-level vocabulary of the given texts."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

from hone.models.bert import BertConfig
from hone.models.checkpoint import build_model


def squad_texts(*datasets: dict) -> list[str]:
    """Every context and question of SQuAD JSON dicts."""
    return [text for data in datasets for article in data["data"] for para in article["paragraphs"]
            for text in [para["context"], *(qa["question"] for qa in para["qas"])]]


def tiny_bert(folder: Path, texts: Iterable[str], *, task: str | None = None, hidden_size: int = 32,
              max_position_embeddings: int = 128, **config) -> Path:
    """Save a 2-layer BERT of width `hidden_size` (seed 0) in `folder`, with a vocab.txt of
    every word and punctuation mark of `texts` (lower-cased), and return the folder."""
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    torch.manual_seed(0)
    bert = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=2 * hidden_size, max_position_embeddings=max_position_embeddings, **config)
    build_model(bert, task).save_pretrained(folder)
    (Path(folder) / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return Path(folder)
