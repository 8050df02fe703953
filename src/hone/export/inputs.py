"""What export validation, `hone predict` and `hone bench infer` feed a model: SQuAD files,
text files and generated text of varied lengths, tokenized into rows (dicts of 1-D int arrays)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hone.data.synthetic import make_synthetic_squad
from hone.data.tokenizer import HoneTokenizer
from hone.errors import HoneError

# text columns of a .tsv with a header row, sentence pairs first (GLUE's names)
TEXT_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                ("premise", "hypothesis"), ("sentence",), ("text",))


class InputFileError(HoneError, ValueError):
    """A data file whose texts cannot be read; names the file and what it should hold."""


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
    """(texts, pairs or None, labels or None) of a text file: a .tsv/.csv with a header row
    (text columns named as GLUE names them, optional `label`), else one text per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file; give a text file (one text per line) or a .tsv with a "
                             "header row")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputFileError(f"{path}: not UTF-8 text ({err})") from None
    if path.suffix not in (".tsv", ".csv"):
        texts = [line for line in text.splitlines() if line.strip()]
        if not texts:
            raise InputFileError(f"{path}: holds no text")
        return texts, None, None
    delimiter = "\t" if path.suffix == ".tsv" else ","
    table = list(csv.reader(text.splitlines(), delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL))
    if len(table) < 2:
        raise InputFileError(f"{path}: needs a header row and at least one row")
    header, body = table[0], table[1:]
    columns = next((c for c in TEXT_COLUMNS if set(c) <= set(header)), None)
    if columns is None:
        raise InputFileError(f"{path}: header {header} names no text column; expected one of "
                             f"{[list(c) for c in TEXT_COLUMNS]}")
    at = [header.index(c) for c in columns]
    label_at = header.index("label") if "label" in header else None
    short = next((n for n, row in enumerate(body, 2) if len(row) <= max(at + [label_at or 0])), None)
    if short is not None:
        raise InputFileError(f"{path}: line {short} has fewer columns than the header")
    texts = [row[at[0]] for row in body]
    pairs = [row[at[1]] for row in body] if len(at) == 2 else None
    labels = [row[label_at] for row in body] if label_at is not None else None
    return texts, pairs, labels


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
