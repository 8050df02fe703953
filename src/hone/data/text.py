"""Raw text for causal language modelling, read and cut into blocks as transformers' run_clm.py does.

Reading (datasets' loaders as run_clm calls them):
- text files (any suffix but .json/.jsonl): one sample per line (`sample_by="line"`; files
  are opened with universal newlines and split on "\\n" only, and run_clm's default
  `keep_linebreaks=True` keeps each line's "\\n"), or the whole file as one document
  (`sample_by="document"`);
- JSON Lines (.jsonl, or .json with one object per line, or a .json array of objects): one
  sample per record, from `text_column` (default "text" when present, else the record's first
  field, as run_clm picks it).
Several files are read in order and their samples follow each other.

Blocks (`lm_blocks`, run_clm's `tokenize_function` + `group_texts`): every sample is
tokenized on its own (special tokens as the tokenizer adds them, none for GPT-2); the token
lists of each group of `group_size` consecutive samples (run_clm: datasets' map batch of
1,000) are concatenated and cut into blocks of `block_size`, the group's remainder dropped;
labels are the input ids (the model shifts them). A group shorter than one block gives no
block (the current run_clm refuses such data; older versions emitted a short block).
`group_size=None` concatenates everything first (one remainder). `max_samples` keeps the
first blocks, as run_clm's `select(range(max_samples))`.

Sliding windows (`sliding_windows`, the "perplexity of fixed-length models" protocol of the
transformers docs): windows of up to `block_size` tokens over the whole token stream, starting
every `stride` tokens; a window's labels are -100 on the tokens that earlier windows already
scored, so every token after the first is predicted exactly once, with at least
`block_size - stride` tokens of context (all of them in the first window).

Rows are {"input_ids", "labels"} without an attention mask: blocks need no padding, and the
right padding that pad_collate gives a short last window follows every real token, which a
causal model never attends to (its labels are -100).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hone.data.tokenizer import HoneTokenizer
from hone.errors import HoneError

IGNORE_INDEX = -100
RUN_CLM_GROUP_SIZE = 1000  # datasets' Dataset.map(batched=True) default batch size
JSON_SUFFIXES = (".json", ".jsonl")
SAMPLE_BY = ("line", "document")


class TextDataError(HoneError, ValueError):
    """A text file or setting that cannot give language-modelling samples."""


# ---------------------------------------------------------------------------------------------
# reading


def read_texts(
    paths: str | Path | Sequence[str | Path],
    *,
    sample_by: str = "line",
    keep_linebreaks: bool = True,
    text_column: str | None = None,
) -> list[str]:
    """The samples of these files, in order, as run_clm's datasets loaders give them."""
    if sample_by not in SAMPLE_BY:
        raise TextDataError(f"sample_by must be one of {SAMPLE_BY}, got {sample_by!r}")
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not files:
        raise TextDataError("no text files given")
    texts: list[str] = []
    for path in files:
        if not path.is_file():
            raise TextDataError(f"{path}: no such file; give a text file or a JSON Lines file with a text column")
        if path.suffix.lower() in JSON_SUFFIXES:
            texts.extend(_read_json_texts(path, text_column))
        else:
            texts.extend(_read_text_file(path, sample_by, keep_linebreaks))
    return texts


def _read_text_file(path: Path, sample_by: str, keep_linebreaks: bool) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:  # universal newlines: "\r\n" and "\r" read as "\n"
            if sample_by == "document":
                return [f.read()]
            lines = f.readlines()  # splits on "\n" only and keeps it
    except UnicodeDecodeError as err:
        raise TextDataError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from None
    return lines if keep_linebreaks else [line.rstrip("\n") for line in lines]


def _read_json_texts(path: Path, text_column: str | None) -> list[str]:
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TextDataError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from None
    records: list[tuple[str, object]] = []  # (where, record)
    if content.lstrip().startswith("["):
        try:
            records = [(f"record {i}", r) for i, r in enumerate(json.loads(content), 1)]
        except json.JSONDecodeError as err:
            raise TextDataError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    else:
        for number, line in enumerate(content.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if line.strip():
                try:
                    records.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise TextDataError(f"{path}, line {number}: not a JSON object ({err.msg}); "
                                        "expected JSON Lines, one object per line") from None
    texts = []
    for where, record in records:
        if not isinstance(record, dict) or not record:
            raise TextDataError(f"{path}, {where}: expected a JSON object with a text field")
        column = text_column or ("text" if "text" in record else next(iter(record)))
        value = record.get(column)
        if not isinstance(value, str):
            found = "missing" if column not in record else f"of type {type(value).__name__}"
            raise TextDataError(f"{path}, {where}: field {column!r} is {found}, not a string; "
                                f"fields: {', '.join(record)} (choose one with the text column setting)")
        texts.append(value)
    return texts


# ---------------------------------------------------------------------------------------------
# tokens


def tokenize_groups(
    texts: Sequence[str], tokenizer: HoneTokenizer, group_size: int = RUN_CLM_GROUP_SIZE, *, progress: bool = True
) -> Iterator[np.ndarray]:
    """For each group of `group_size` consecutive texts, the concatenation of their token ids
    (int32), each text tokenized on its own as run_clm's tokenize_function does."""
    with tqdm(total=len(texts), desc="tokenizing", unit="text", dynamic_ncols=True,
              disable=not progress or len(texts) <= group_size) as bar:
        for start in range(0, len(texts), group_size):
            batch = texts[start : start + group_size]
            encodings = tokenizer.encode_batch(batch)
            yield np.fromiter((t for e in encodings for t in e.ids), dtype=np.int32)
            bar.update(len(batch))


def token_stream(texts: Sequence[str], tokenizer: HoneTokenizer, *, progress: bool = True) -> np.ndarray:
    """All texts' token ids, concatenated (int32): run_clm's stream before it is cut into blocks."""
    groups = list(tokenize_groups(texts, tokenizer, progress=progress))
    return np.concatenate(groups) if groups else np.zeros(0, dtype=np.int32)


def group_texts(token_groups: Iterator[np.ndarray] | Sequence[np.ndarray], block_size: int,
                max_blocks: int | None = None) -> np.ndarray:
    """run_clm's group_texts on each group: (num_blocks, block_size) int32, each group cut into
    whole blocks and its remainder dropped; stops once `max_blocks` blocks are made."""
    if block_size < 1:
        raise TextDataError(f"block_size must be >= 1, got {block_size}")
    blocks, count = [], 0
    for ids in token_groups:
        whole = len(ids) // block_size
        blocks.append(ids[: whole * block_size].reshape(whole, block_size))
        count += whole
        if max_blocks is not None and count >= max_blocks:
            break
    out = np.concatenate(blocks) if blocks else np.zeros((0, block_size), dtype=np.int32)
    return out[:max_blocks]


class LMBlocks(Sequence):
    """Rows {"input_ids", "labels"} of fixed-length blocks; labels are the input ids."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = blocks  # (num_blocks, block_size)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        row = self.blocks[index]
        return {"input_ids": row, "labels": row}

    @property
    def num_tokens(self) -> int:
        return self.blocks.size


def lm_blocks(
    texts: Sequence[str],
    tokenizer: HoneTokenizer,
    block_size: int,
    *,
    max_samples: int | None = None,
    group_size: int | None = RUN_CLM_GROUP_SIZE,
    progress: bool = True,
    source: str = "the text",
) -> LMBlocks:
    """run_clm's training / evaluation blocks of `texts` (see the module docstring).

    `source` names the data in errors (e.g. the file path)."""
    if max_samples is not None and max_samples < 1:
        raise TextDataError(f"max_samples must be >= 1, got {max_samples}")
    per_group = len(texts) if group_size is None else group_size
    groups = tokenize_groups(texts, tokenizer, max(1, per_group), progress=progress)
    blocks = group_texts(groups, block_size, max_samples)
    if len(blocks) == 0:
        raise TextDataError(
            f"{source}: no block of block_size {block_size} tokens could be made ({len(texts)} samples; "
            f"each group of {per_group} samples must hold at least {block_size} tokens); lower the block size "
            "or give more text")
    return LMBlocks(blocks)


# ---------------------------------------------------------------------------------------------
# sliding-window evaluation


class SlidingWindows(Sequence):
    """Rows {"input_ids", "labels"} of the sliding-window perplexity protocol over one stream.

    Window k covers tokens [k * stride, min(k * stride + block_size, n)); its labels are -100
    before the tokens that no earlier window scored. Every token but the first is scored
    exactly once (the model predicts label t from tokens < t of the same window)."""

    def __init__(self, stream: np.ndarray, block_size: int, stride: int):
        if not 1 <= stride < block_size:
            raise TextDataError(
                f"the evaluation stride must be between 1 and block_size - 1 ({block_size - 1}), got {stride}; "
                "a stride of block_size is the plain block evaluation (leave the stride unset)")
        if len(stream) < 2:
            raise TextDataError(f"sliding-window evaluation needs at least 2 tokens, got {len(stream)}")
        self.stream, self.block_size, self.stride = stream, block_size, stride
        n = len(stream)
        last = 0 if n <= block_size else -(-(n - block_size) // stride)  # the first window that reaches the end
        self.starts = np.arange(last + 1) * stride

    def __len__(self) -> int:
        return len(self.starts)

    def window(self, index: int) -> tuple[int, int, int]:
        """(begin, end, first scored position) of window `index` in the stream."""
        begin = int(self.starts[index])
        end = min(begin + self.block_size, len(self.stream))
        previous_end = 0 if index == 0 else begin - self.stride + self.block_size
        return begin, end, previous_end

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        begin, end, scored_from = self.window(index % len(self))
        ids = self.stream[begin:end]
        labels = ids.astype(np.int64)
        labels[: scored_from - begin] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels}


def sliding_windows(
    texts: Sequence[str], tokenizer: HoneTokenizer, block_size: int, stride: int, *, progress: bool = True
) -> SlidingWindows:
    """Sliding-window rows over the token stream of all texts (no token dropped)."""
    return SlidingWindows(token_stream(texts, tokenizer, progress=progress), block_size, stride)


def default_block_size(requested: int | None, tokenizer_max_length: int, max_positions: int) -> int:
    """run_clm's block size: the requested one capped at the tokenizer's model_max_length, else
    model_max_length, or min(1024, max_positions) when that is larger than the model's positions."""
    if requested is None:
        return tokenizer_max_length if tokenizer_max_length <= max_positions else min(1024, max_positions)
    return min(requested, tokenizer_max_length)
