"""GLUE and user text-classification data: read the files, map labels, tokenize into rows.

Two sources give the same `GlueData` (label names + named `Split`s of examples):
- `load_glue(task, data_dir)`: the GLUE release's TSV files of one of the nine tasks
  (`GLUE_TASKS`), in their real layouts. Columns are found by header name; CoLA's train and
  dev files have no header and get `GlueTask.headerless` names. MNLI has matched and
  mismatched dev and test files.
- `load_user_files(train_file=..., validation_file=..., test_file=...)`: a user's CSV, TSV or
  JSON Lines files (by extension), one sentence (`sentence`) or a pair (`sentence1`,
  `sentence2`) and a `label`, all column names configurable.

File formats. TSV files (GLUE's and a user's) are read without quoting: a line is one row,
fields are split on tabs, quote characters are text (what csv.QUOTE_NONE does, without its
failure on a stray carriage return inside a field). CSV files use standard CSV quoting. Files
are UTF-8; a byte-order mark is ignored.

Labels. GLUE tasks have fixed label names in GLUE's order (that of transformers' GLUE
processors and run_glue: sorted), STS-B is regression. A user's labels are the training
file's distinct labels, sorted (numerically when all are numbers); `label_names=` fixes them
instead (e.g. from a fine-tuned model's config). Regression, unless `is_regression` says:
every training label is a number and at least one is not an integer ("3.8", "1.0"), the rule
by which run_glue's CSV/JSON loading types a label column as float.

Bad rows (a wrong number of fields, a missing field, empty text, a missing or unknown label,
a target that is not a number) are reported as "FILE, line N: ..." and, with
bad_rows="error" (the default), the file is refused with the first one and their count; with
bad_rows="skip" they are left out and listed in `Split.skipped`. Test files may lack labels;
when they have a label column, it is checked like a validation file's.

Rows (`GlueData.tokenize`, `encode_split`): one per example, as run_glue encodes it (a text
or a pair, truncated to max_seq_length, longest_first), unpadded: `input_ids`,
`attention_mask`, `token_type_ids` (not for RoBERTa and GPT-2, whose transformers tokenizers
do not return them) as 1-D int64 arrays, and `labels` (int64 id or float32 target).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from hone.data.tokenizer import HoneTokenizer
from hone.errors import HoneError

__all__ = ["GLUE_TASKS", "EncodedRows", "GlueData", "GlueDataError", "GlueTask", "Split", "encode_split",
           "load_data_file", "load_glue", "load_user_files", "read_glue_file", "read_text_table"]

BadRows = Literal["error", "skip"]
KINDS = ("train", "validation", "test")
ENCODE_BATCH = 2000  # examples per encode_batch call (one progress-bar step)
INDEX_COLUMNS = ("index", "idx", "id")  # a user file's example index column, first found
# text columns as GLUE's tasks name them, sentence pairs first (read_text_table looks for them)
TEXT_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                ("premise", "hypothesis"), ("sentence",), ("text",))
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


class GlueDataError(HoneError, ValueError):
    """A GLUE or user data file that cannot be read as asked."""


# ---------------------------------------------------------------------------------------------
# the GLUE release


_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its folder and files in the GLUE release and their columns."""

    name: str
    folder: str                                # the task's folder in the GLUE release
    text_columns: tuple[str, ...]              # one sentence, or the two of a pair
    label_column: str
    label_names: tuple[str, ...] | None        # label id -> name, GLUE's order; None: regression
    submissions: dict[str, str]                # test split -> the GLUE submission file's name
    files: dict[str, str] = field(default_factory=lambda: dict(_FILES))  # split -> file name
    index_column: str = "index"                # of the test files: the ids a submission lists
    headerless: tuple[str, ...] | None = None  # column names of the train/dev files that have no header

    @property
    def is_regression(self) -> bool:
        return self.label_names is None


GLUE_TASKS: dict[str, GlueTask] = {task.name: task for task in (
    GlueTask("cola", "CoLA", ("sentence",), "label", ("0", "1"), {"test": "CoLA.tsv"},
             headerless=("source", "label", "original_label", "sentence")),
    GlueTask("sst2", "SST-2", ("sentence",), "label", ("0", "1"), {"test": "SST-2.tsv"}),
    GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), {"test": "MRPC.tsv"}),
    GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), {"test": "QQP.tsv"},
             index_column="id"),
    GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, {"test": "STS-B.tsv"}),
    GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"),
             {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
             files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                    "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
                    "test_mismatched": "test_mismatched.tsv"}),
    GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), {"test": "QNLI.tsv"}),
    GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), {"test": "RTE.tsv"}),
    GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), {"test": "WNLI.tsv"}),
)}


# ---------------------------------------------------------------------------------------------
# what the readers give


@dataclass
class Split:
    """One file's examples in file order (bad rows left out when bad_rows="skip")."""

    name: str                      # "train", "validation", "validation_mismatched", "test_matched", ...
    path: Path
    texts: list[str]
    pairs: list[str] | None        # the second sentences of a pair task
    labels: np.ndarray | None      # (N,) int64 label ids or float32 targets; None: the file has no labels
    indices: list[str]             # per example, for prediction files: the file's index column,
                                   # else its 0-based row number in the file
    line_numbers: list[int]        # where each example is in the file
    skipped: list[str] = field(default_factory=list)  # one message per bad row left out
    submission_file: str | None = None                 # GLUE's name for this test split's predictions
    rows: EncodedRows | None = None                    # set by GlueData.tokenize / encode_split

    @property
    def kind(self) -> str:
        """"train", "validation" or "test"."""
        return self.name.split("_")[0]

    @property
    def metric_suffix(self) -> str:
        """What run_glue appends to this split's metric names: "_mm" for MNLI mismatched."""
        return "_mm" if self.name.endswith("_mismatched") else ""

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class GlueData:
    """The splits of one GLUE task or of a user's files, and their label names."""

    task: str | None                # the GLUE task; None for a user's files
    label_names: list[str] | None   # label id -> name; None: regression
    splits: dict[str, Split]

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        """For config.json; transformers' default name for a regression head's single output."""
        return {0: "LABEL_0"} if self.label_names is None else dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    def of_kind(self, kind: str) -> list[Split]:
        """The "train", "validation" or "test" splits (MNLI has two of the last two)."""
        return [split for split in self.splits.values() if split.kind == kind]

    def tokenize(self, tokenizer: HoneTokenizer, max_seq_length: int) -> None:
        """Encode every split into `split.rows`."""
        for split in self.splits.values():
            split.rows = encode_split(split, tokenizer, max_seq_length)


# ---------------------------------------------------------------------------------------------
# loading


def load_glue(task_name: str, data_dir: str | Path, kinds: Sequence[str] = KINDS, *,
              bad_rows: BadRows = "error") -> GlueData:
    """The GLUE release files of `task_name` for the split kinds asked ("train", "validation",
    "test"). `data_dir` is the task's folder (e.g. glue_data/MNLI) or the folder above it."""
    task = _glue_task(task_name)
    folder = Path(data_dir)
    if not (folder / task.files["train"]).is_file() and (folder / task.folder).is_dir():
        folder = folder / task.folder
    splits = {}
    for name, file_name in task.files.items():
        if name.split("_")[0] not in kinds:
            continue
        path = folder / file_name
        if not path.is_file():
            raise GlueDataError(f"{path}: no such file; the data folder of GLUE {task.folder} holds "
                                f"{', '.join(task.files.values())} as the GLUE release names them")
        splits[name] = read_glue_file(path, task.name, name, bad_rows=bad_rows)
    return GlueData(task.name, _names(task.label_names), splits)


def read_glue_file(path: str | Path, task_name: str, split: str = "train", *,
                   bad_rows: BadRows = "error") -> Split:
    """One GLUE release file of a task; `split` ("train", "validation_matched", "test", ...)
    says whether it is a test file and names the result. MNLI's diagnostic file (AX) reads as
    an MNLI test file."""
    task = _glue_task(task_name)
    kind = _kind(split)
    path = Path(path)
    lines = _tsv_lines(path)
    if task.headerless and kind != "test":
        header = list(task.headerless)
    else:
        header = next(lines, (1, []))[1]
    raw = _collect(path, kind, header, _tsv_records(lines, header), task.text_columns, task.label_column,
                   task.index_column, index_required=False,
                   fix=f"give a {kind} file of the GLUE release's {task.folder} folder")
    return _finish(raw, split, task.label_names, f"GLUE {task.folder}'s labels", bad_rows,
                   task.submissions.get(split))


def load_user_files(train_file: str | Path | None = None, validation_file: str | Path | None = None,
                    test_file: str | Path | None = None, *, text_column_names: Sequence[str] | None = None,
                    label_column_name: str = "label", index_column_name: str | None = None,
                    is_regression: bool | None = None, label_names: Sequence[str] | None = None,
                    bad_rows: BadRows = "error") -> GlueData:
    """A user's CSV / TSV / JSON Lines files. Text columns by default: `sentence1` and
    `sentence2` when both exist, else `sentence`. Label names and regression: see the module
    docstring (`label_names` is ignored for regression)."""
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    raws = {name: _read_user_file(path, name, text_column_names=text_column_names,
                                 label_column_name=label_column_name, index_column_name=index_column_name)
            for name, path in files.items() if path is not None}
    if not raws:
        raise GlueDataError("no data files given; pass a train, validation or test file (CSV, TSV or JSON Lines)")
    source = next((raws[k] for k in ("train", "validation") if k in raws and raws[k].labels is not None), None)
    seen = {label.strip() for label in source.labels} if source is not None else set()
    if is_regression is None:  # float targets: all numbers, not all integers (see the module docstring)
        is_regression = label_names is None and bool(seen) and all(map(_NUMBER.fullmatch, seen)) and \
            not all(map(_INTEGER.fullmatch, seen))
    if is_regression:
        names, names_source = None, ""
    elif label_names is not None:
        names, names_source = list(label_names), "the given label names"
    elif source is not None:
        names, names_source = _sorted_labels(set(source.labels)), f"the labels of {source.path}"
    else:
        raise GlueDataError(f"{test_file}: a test file alone does not say the label names; pass them "
                            "(label_names, e.g. from the fine-tuned model's config.json id2label)")
    splits = {name: _finish(raw, name, names, names_source, bad_rows) for name, raw in raws.items()}
    return GlueData(None, names, splits)


def load_data_file(path: str | Path, split: str = "train", *, bad_rows: BadRows = "error") -> GlueData:
    """One labelled (or test) file, for `hone bench`: a GLUE release file when its folder and
    name are a GLUE task's (e.g. SST-2/train.tsv, CoLA/dev.tsv), else a user file."""
    path = Path(path)
    task = next((t for t in GLUE_TASKS.values() if t.folder.lower() == path.parent.name.lower()), None)
    glue_split = next((s for s, f in task.files.items() if f == path.name), None) if task else None
    if glue_split is not None:
        read = read_glue_file(path, task.name, glue_split, bad_rows=bad_rows)
        return GlueData(task.name, _names(task.label_names), {glue_split: read})
    return load_user_files(**{f"{_kind(split)}_file": path}, bad_rows=bad_rows)


# ---------------------------------------------------------------------------------------------
# reading files


@dataclass
class _RawFile:
    """A file's examples before label mapping; labels as written."""

    path: Path
    texts: list[str] = field(default_factory=list)
    pairs: list[str] | None = None
    labels: list[str] | None = None
    indices: list[str] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, message) of bad rows


def _read_user_file(path: str | Path, split: str, *, text_column_names: Sequence[str] | None = None,
                    label_column_name: str = "label", index_column_name: str | None = None) -> _RawFile:
    """A user file by its extension: .csv, .tsv, .jsonl / .json (JSON Lines)."""
    path = Path(path)
    header, records = _table(path)
    if text_column_names is None:
        text_column_names = ("sentence1", "sentence2") if {"sentence1", "sentence2"} <= set(header) else ("sentence",)
    if index_column_name is None:
        index_column_name = next((c for c in INDEX_COLUMNS if c in header), None)
    return _collect(path, _kind(split), header, records, tuple(text_column_names), label_column_name,
                    index_column_name, index_required=True,
                    fix="name the columns to read (--text_column_names, --label_column_name, --index_column_name)")


def read_text_table(path: str | Path) -> tuple[list[str], list[str] | None, list[str] | None]:
    """(texts, pairs or None, labels as written or None) of a CSV / TSV / JSON Lines file whose
    text columns have one of GLUE's names (`TEXT_COLUMNS`, first match): what export validation,
    `hone predict` and `hone bench infer` read. A bad row is an error."""
    path = Path(path)
    header, records = _table(path)
    columns = next((c for c in TEXT_COLUMNS if set(c) <= set(header)), None)
    if columns is None:
        raise GlueDataError(f"{path}, line 1: the columns {header} name no text column; name one (or a pair) as "
                            f"GLUE does: {', '.join('/'.join(c) for c in TEXT_COLUMNS)}")
    raw = _collect(path, "test", header, records, columns, "label", None, index_required=False,
                   fix="name the text columns as GLUE does")
    if raw.problems:
        line, message = raw.problems[0]
        raise GlueDataError(f"{path}, line {line}: {message}")
    if not raw.texts:
        raise GlueDataError(f"{path}: holds no rows under its header")
    return raw.texts, raw.pairs, raw.labels


def _table(path: Path) -> tuple[list[str], Iterator[tuple[int, dict | str]]]:
    """(header, numbered records) of a .tsv, .csv or JSON Lines file, by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        lines = _tsv_lines(path)
        header = next(lines, (1, []))[1]
        return header, _tsv_records(lines, header)
    if suffix == ".csv":
        return _csv_records(path)
    if suffix in (".jsonl", ".json"):
        return _jsonl_records(path)
    raise GlueDataError(f"{path}: unknown file type {suffix or '(no extension)'!r}; give a .csv, .tsv or "
                        ".jsonl (JSON Lines) file")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise GlueDataError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise GlueDataError(f"{path}, line {line}: not UTF-8 text ({err.reason}); re-save the file as UTF-8") from None


def _tsv_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Numbered non-blank lines split on tabs; only a line feed ends a line (a carriage return
    before it is dropped)."""
    for number, line in enumerate(_read_text(path).split("\n"), 1):
        line = line.rstrip("\r")
        if line:
            yield number, line.split("\t")


def _tsv_records(lines: Iterator[tuple[int, list[str]]], header: list[str]) -> Iterator[tuple[int, dict | str]]:
    for number, fields in lines:
        if len(fields) != len(header):
            yield number, f"{len(fields)} tab-separated fields where the header has {len(header)}"
        else:
            yield number, dict(zip(header, fields))


def _csv_records(path: Path) -> tuple[list[str], Iterator[tuple[int, dict | str]]]:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader, [])
    except csv.Error as err:
        raise GlueDataError(f"{path}, line 1: not CSV ({err})") from None

    def records() -> Iterator[tuple[int, dict | str]]:
        start = reader.line_num + 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield start, f"not CSV ({err})"
                start = reader.line_num + 1
                continue
            if fields:
                yield start, (dict(zip(header, fields)) if len(fields) == len(header) else
                              f"{len(fields)} comma-separated fields where the header has {len(header)}")
            start = reader.line_num + 1
    return header, records()


def _jsonl_records(path: Path) -> tuple[list[str], Iterator[tuple[int, dict | str]]]:
    parsed = []
    for number, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            parsed.append((number, f"not JSON ({err.msg}); JSON Lines files hold one JSON object a line"))
            continue
        if not isinstance(record, dict):
            record = f"a JSON {type(record).__name__}, not an object; JSON Lines files hold one object a line"
        parsed.append((number, record))
    header = next((list(r) for _, r in parsed if isinstance(r, dict)), [])
    return header, iter(parsed)


def _collect(path: Path, kind: str, header: list[str], records: Iterator[tuple[int, dict | str]],
             text_columns: tuple[str, ...], label_column: str, index_column: str | None, *,
             index_required: bool, fix: str) -> _RawFile:
    """Examples of `records` (dicts by column name, or a bad row's message); `fix` ends the
    message about missing columns."""
    missing = [c for c in text_columns if c not in header]
    if kind != "test" and label_column not in header:
        missing.append(label_column)
    if index_required and index_column is not None and index_column not in header:
        missing.append(index_column)
    if missing:
        raise GlueDataError(f"{path}, line 1: no column {', '.join(map(repr, missing))} (the columns are "
                            f"{header}); {fix}")
    if not 1 <= len(text_columns) <= 2:
        raise GlueDataError(f"text_column_names must name one column or two (a pair), got {list(text_columns)}")
    labelled = label_column in header
    index_column = index_column if index_column in header else None
    raw = _RawFile(path, pairs=[] if len(text_columns) == 2 else None, labels=[] if labelled else None)
    wanted = [*text_columns, *([label_column] if labelled else []), *([index_column] if index_column else [])]
    for row_number, (line, record) in enumerate(records):
        problem = record if isinstance(record, str) else _field_problem(record, wanted)
        if problem:
            raw.problems.append((line, problem))
            continue
        values = {column: str(record[column]) for column in wanted}
        raw.texts.append(values[text_columns[0]])
        if raw.pairs is not None:
            raw.pairs.append(values[text_columns[1]])
        if raw.labels is not None:
            raw.labels.append(values[label_column])
        raw.indices.append(values[index_column] if index_column else str(row_number))
        raw.line_numbers.append(line)
    return raw


def _field_problem(record: dict, columns: Sequence[str]) -> str | None:
    """Why a record is no example (a missing, non-text or empty field), or None."""
    for column in columns:
        if column not in record:
            return f"no {column!r} field"
        value = record[column]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return f"{column!r} holds {json.dumps(value)}, not text"
        if not str(value).strip():
            return f"empty {column!r}"
    return None


# ---------------------------------------------------------------------------------------------
# labels and bad rows


def _finish(raw: _RawFile, name: str, label_names: Sequence[str] | None, names_source: str,
            bad_rows: BadRows, submission_file: str | None = None) -> Split:
    """Map labels to ids (or targets), then apply the bad-row policy to the whole file."""
    if bad_rows not in ("error", "skip"):
        raise GlueDataError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    keep = np.ones(len(raw.texts), dtype=bool)
    problems = list(raw.problems)
    labels = None
    if raw.labels is not None:
        ids = {label: i for i, label in enumerate(label_names or ())}
        labels = np.zeros(len(raw.labels), dtype=np.float32 if label_names is None else np.int64)
        for k, label in enumerate(raw.labels):
            if label_names is None and _NUMBER.fullmatch(label.strip()):
                labels[k] = float(label)
            elif label in ids:
                labels[k] = ids[label]
            else:
                keep[k] = False
                problems.append((raw.line_numbers[k], f"label {label!r} is not a number, as a regression target must be"
                                 if label_names is None else
                                 f"label {label!r} is not one of {names_source} {list(label_names)}"))
        labels = labels[keep]
    if problems:
        problems.sort()
        messages = [f"{raw.path}, line {line}: {what}" for line, what in problems]
        if bad_rows == "error":
            more = f" ({len(messages)} bad rows in this file)" if len(messages) > 1 else ""
            raise GlueDataError(f"{messages[0]}{more}; fix the file, or leave such rows out with --bad_rows skip")
    else:
        messages = []
    pick = np.flatnonzero(keep).tolist()
    split = Split(name, raw.path, [raw.texts[k] for k in pick],
                  None if raw.pairs is None else [raw.pairs[k] for k in pick], labels,
                  [raw.indices[k] for k in pick], [raw.line_numbers[k] for k in pick], messages, submission_file)
    if not split.texts:
        raise GlueDataError(f"{raw.path}: holds no examples" + (f" ({len(messages)} bad rows skipped)" if messages else ""))
    return split


def _sorted_labels(labels: set[str]) -> list[str]:
    """Stable label order: numerically when every label is a number, else as strings."""
    if all(_NUMBER.fullmatch(label.strip()) for label in labels):
        return sorted(labels, key=lambda label: (float(label), label))
    return sorted(labels)


def _names(label_names: tuple[str, ...] | None) -> list[str] | None:
    return None if label_names is None else list(label_names)


def _glue_task(task_name: str) -> GlueTask:
    if task_name not in GLUE_TASKS:
        raise GlueDataError(f"unknown GLUE task {task_name!r}; choose one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[task_name]


def _kind(split: str) -> str:
    kind = split.split("_")[0]
    if kind not in KINDS:
        raise GlueDataError(f"split {split!r} must be train, validation or test (or validation_*/test_*)")
    return kind


# ---------------------------------------------------------------------------------------------
# tokenizing


class EncodedRows(Sequence):
    """Tokenized examples, stored flat: example i is tokens offsets[i]:offsets[i + 1]. A map-style
    dataset: `rows[i]` is a dict of 1-D int64 arrays (unpadded) and the example's label."""

    def __init__(self, input_ids: np.ndarray, offsets: np.ndarray, token_type_ids: np.ndarray | None,
                 labels: np.ndarray | None):
        self.input_ids = input_ids            # (T,) int32, every example's tokens one after the other
        self.offsets = offsets                # (N + 1,) int64
        self.token_type_ids = token_type_ids  # (T,) int32 or None
        self.labels = labels                  # (N,) or None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict:
        i = range(len(self))[i]  # negative indices, IndexError past the end
        a, b = self.offsets[i], self.offsets[i + 1]
        row = {"input_ids": self.input_ids[a:b].astype(np.int64), "attention_mask": np.ones(b - a, dtype=np.int64)}
        if self.token_type_ids is not None:
            row["token_type_ids"] = self.token_type_ids[a:b].astype(np.int64)
        if self.labels is not None:
            row["labels"] = self.labels[i]
        return row


def encode_split(split: Split, tokenizer: HoneTokenizer, max_seq_length: int) -> EncodedRows:
    """The split's examples encoded as run_glue encodes them (truncation longest_first)."""
    n = len(split)
    ids, types, lengths = [], [], []
    with tqdm(total=n, desc=f"tokenizing {split.name}", unit="examples", disable=n < 5 * ENCODE_BATCH) as bar:
        for lo in range(0, n, ENCODE_BATCH):
            pairs = None if split.pairs is None else split.pairs[lo:lo + ENCODE_BATCH]
            encodings = tokenizer.encode_batch(split.texts[lo:lo + ENCODE_BATCH], pairs, max_length=max_seq_length,
                                               truncation="longest_first")
            counts = [len(e.ids) for e in encodings]
            ids.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32, sum(counts)))
            types.append(np.fromiter(chain.from_iterable(e.type_ids for e in encodings), np.int32, sum(counts)))
            lengths.extend(counts)
            bar.update(len(encodings))
    with_types = tokenizer.flavour not in ("roberta", "gpt2")  # transformers' model_input_names
    return EncodedRows(np.concatenate(ids), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                       np.concatenate(types) if with_types else None, split.labels)
