"""What export validation, `hone predict` and `hone bench infer` feed a model: SQuAD files,
text files and generated text of varied lengths, tokenized into rows (dicts of 1-D int arrays)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hone.data.glue import read_text_table
from hone.data.synthetic import make_synthetic_squad
from hone.data.text import TextDataError
from hone.data.text import read_texts as read_lines
from hone.data.tokenizer import HoneTokenizer


def synthetic_examples(num_paragraphs: int, seed: int = 0) -> list[dict]:
    """Generated SQuAD 2.0-style example dicts (hone.data.synthetic), as read_squad returns them."""
    examples = []
    for article in make_synthetic_squad(num_paragraphs, seed)["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = qa["answers"]
                examples.append({"id": qa["id"], "title": article["title"], "context": paragraph["context"],
                                 "question": qa["question"],
                                 "answers": {"text": [a["text"] for a in answers],
                                             "answer_start": [a["answer_start"] for a in answers]}})
    return examples


def read_texts(path: str | Path) -> tuple[list[str], list[str] | None, list[str] | None]:
    """(texts, pairs or None, labels or None) of a text file: a .tsv / .csv / JSON Lines table
    with text columns named as GLUE names them (and an optional `label`), else one text per
    non-empty line."""
    if Path(path).suffix.lower() in (".tsv", ".csv", ".jsonl", ".json"):
        return read_text_table(path)
    texts = [line for line in read_lines(path, keep_linebreaks=False) if line.strip()]
    if not texts:
        raise TextDataError(f"{path}: holds no text; give one text per line")
    return texts, None, None


def encode_rows(tokenizer: HoneTokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None,
                max_length: int | None = None) -> list[dict]:
    """Rows of texts (and pairs), truncated to `max_length` tokens (longest first)."""
    encodings = tokenizer.encode_batch(list(texts), None if pairs is None else list(pairs), max_length=max_length,
                                       truncation="longest_first" if max_length else None)
    return [{"input_ids": np.asarray(e.ids, dtype=np.int64), "attention_mask": np.ones(len(e.ids), dtype=np.int64),
             "token_type_ids": np.asarray(e.type_ids, dtype=np.int64)} for e in encodings]


def generated_texts(count: int, seed: int = 0) -> list[str]:
    """`count` English-like texts from 1 to 4 generated paragraphs each: lengths vary a lot."""
    contexts = [ex["context"] for ex in synthetic_examples(4 * count, seed)][::3]
    rng = np.random.default_rng(seed)
    return [" ".join(contexts[i:i + int(rng.integers(1, 5))]) for i in range(count)]


def random_rows(count: int, vocab_size: int, max_length: int, seed: int = 0) -> list[dict]:
    """Rows of random token ids of varied lengths, for a model folder without a tokenizer."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, max_length + 1, count)
    lengths[0] = max_length
    return [{"input_ids": rng.integers(0, vocab_size, n), "attention_mask": np.ones(n, dtype=np.int64),
             "token_type_ids": np.zeros(n, dtype=np.int64)} for n in lengths]
