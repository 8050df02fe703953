"""SQuAD v1.1 / v2.0 data: read the files, cut examples into model windows, cache the result.

Reading accepts the official JSON ({"version", "data": [articles -> paragraphs -> qas]}) and
JSON Lines as transformers' datasets write them; both give example dicts
`{"id", "title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}`
(unanswerable: empty lists).

Features follow transformers' run_qa.py (prepare_train_features / prepare_validation_features)
token for token: questions are left-stripped, (question, context) is encoded with truncation of
the context only, long contexts become overlapping windows (`doc_stride` shared tokens), a train
window is labelled with the answer's first/last token when the whole answer is inside it and
with the CLS index 0 otherwise. One deliberate difference: run_qa scans past the context when an
answer starts in a window's last context token and labels a special or padding token; here the
label stays on that context token.

`QAFeatures` stores its rows unpadded, as flat token arrays plus per-row `lengths` (so packing
and benchmarks see the real tokens); the (F, T) views of design.md are padded to
`max_seq_length`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hone.data.files import sha256_bytes, sha256_file
from hone.errors import HoneError, SquadFormatError

log = logging.getLogger("hone")

__all__ = [
    "FeatureSettingsError", "QAFeatures", "SquadFormatError", "default_cache_dir", "has_unanswerable",
    "load_or_build_features", "prepare_eval_features", "prepare_train_features", "read_json_file", "read_squad",
]

CLS_INDEX = 0  # BERT's [CLS] and RoBERTa's <s> open every window, in either order
ENCODE_BATCH = 1000  # examples per encode_batch call: one progress-bar step, bounded memory
CACHE_FORMAT = 1  # bump when the feature code changes what it builds: old cache entries then miss


class FeatureSettingsError(HoneError, ValueError):
    """Feature settings (max_seq_length, doc_stride, ...) that cannot produce windows."""


# ---------------------------------------------------------------------------------------------
# reading


def read_squad(path: str | Path, *, locate_answers: bool = True) -> list[dict]:
    """Examples of a SQuAD file, official JSON or JSON Lines (detected from the content).

    With locate_answers (training features need it), an `answer_start` that does not point at
    its answer text is moved to the nearest occurrence of the text (one warning with the
    count), and an answer text absent from its context is an error; evaluation, which only
    compares texts, reads the answers as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise SquadFormatError(f"{path}: no such file; give the path of a SQuAD JSON or JSON Lines file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SquadFormatError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    if not text.strip():
        raise SquadFormatError(f"{path} is empty; expected SQuAD JSON or JSON Lines")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        first_line = text.lstrip().split("\n", 1)[0]
        if not _is_json(first_line):  # one broken JSON document, not JSON Lines
            raise SquadFormatError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, "
                                   f"column {err.colno}") from err
        doc = None
    reader = _Reader(path, locate_answers)
    if isinstance(doc, dict) and "data" in doc:
        reader.read_official(doc)
    elif isinstance(doc, dict) and not {"id", "question", "context"} & doc.keys():
        raise SquadFormatError(f"{path} has no top-level 'data' list: expected the official SQuAD object "
                               '{"version": ..., "data": [articles -> paragraphs -> qas]} or JSON Lines with '
                               "one example per line")
    elif doc is None or isinstance(doc, dict):  # JSON Lines (a single line parses as one object)
        reader.read_jsonl(text)
    else:
        raise SquadFormatError(f"{path} holds a JSON {type(doc).__name__}; expected the official SQuAD object "
                               '{"version": ..., "data": [...]} or JSON Lines with one example per line')
    if not reader.examples:
        raise SquadFormatError(f"{path} holds no questions")
    if reader.fixed:
        warnings.warn(f"{path}: {reader.fixed} answer_start offset(s) did not point at their answer text; "
                      "each was moved to the nearest occurrence of the text in its context", stacklevel=2)
    return reader.examples


def read_json_file(path: str | Path, what: str) -> Any:
    """json.load with errors that name the file: missing, unreadable or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise SquadFormatError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SquadFormatError(f"{what} file {path} is not valid JSON: {e}") from None
    except OSError as e:
        raise SquadFormatError(f"cannot read {what} file {path}: {e.strerror}") from None


def has_unanswerable(examples: Sequence[dict]) -> bool:
    """True for SQuAD 2.0-style data: some question has no answer."""
    return any(not ex["answers"]["text"] for ex in examples)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


class _Reader:
    """Turns raw records into validated example dicts, remembering where each came from."""

    def __init__(self, path: Path, locate_answers: bool = True):
        self.path = path
        self.locate_answers = locate_answers
        self.examples: list[dict] = []
        self.ids: set[str] = set()
        self.fixed = 0

    def read_official(self, doc: dict) -> None:
        articles = _typed(doc, "data", list, f"{self.path}: top level")
        for a, article in enumerate(articles):
            where = f"{self.path}: data[{a}]"
            title = _typed(_object(article, where), "title", str, where, default="")
            for p, paragraph in enumerate(_typed(article, "paragraphs", list, where)):
                where_p = f"{where}.paragraphs[{p}]"
                context = _typed(_object(paragraph, where_p), "context", str, where_p)
                for q, qa in enumerate(_typed(paragraph, "qas", list, where_p)):
                    where_q = f"{where_p}.qas[{q}]"
                    qa = _object(qa, where_q)
                    if "id" in qa:
                        where_q += f" (id {qa['id']!r})"
                    impossible = _typed(qa, "is_impossible", bool, where_q, default=False)
                    answers = [] if impossible else _typed(qa, "answers", list, where_q)
                    self.add(qa.get("id"), title, context, qa.get("question"), answers, where_q)

    def read_jsonl(self, text: str) -> None:
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            where = f"{self.path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SquadFormatError(f"{where} is not valid JSON: {err.msg} at column {err.colno}") from err
            record = _object(record, where)
            if "id" in record:
                where += f" (id {record['id']!r})"
            for key in ("id", "context", "question", "answers"):
                if key not in record:
                    raise SquadFormatError(f"{where}: missing field {key!r}; each line needs id, title, "
                                           "context, question and answers")
            title = _typed(record, "title", str, where, default="")
            self.add(record["id"], title, record["context"], record["question"], record["answers"], where)

    def add(self, qid, title: str, context, question, answers, where: str) -> None:
        for name, value in (("id", qid), ("context", context), ("question", question)):
            if value is None:
                raise SquadFormatError(f"{where}: missing field {name!r}")
            if not isinstance(value, str):
                raise SquadFormatError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
        if qid in self.ids:
            raise SquadFormatError(f"{where}: question id {qid!r} appears twice; ids must be unique "
                                   "(predictions are keyed by id)")
        texts, starts = self.answers(answers, context, where)
        self.ids.add(qid)
        self.examples.append({"id": qid, "title": title, "context": context, "question": question,
                              "answers": {"text": texts, "answer_start": starts}})

    def answers(self, raw, context: str, where: str) -> tuple[list[str], list[int]]:
        """Accepts {"text": [...], "answer_start": [...]} or [{"text", "answer_start"}, ...]."""
        if isinstance(raw, dict):
            texts = _typed(raw, "text", list, f"{where}: answers")
            starts = _typed(raw, "answer_start", list, f"{where}: answers")
            if len(texts) != len(starts):
                raise SquadFormatError(f"{where}: answers has {len(texts)} texts but {len(starts)} answer_start values")
        elif isinstance(raw, list):
            items = [_object(item, f"{where}: answers[{k}]") for k, item in enumerate(raw)]
            texts = [_typed(item, "text", str, f"{where}: answers[{k}]") for k, item in enumerate(items)]
            starts = [_typed(item, "answer_start", int, f"{where}: answers[{k}]") for k, item in enumerate(items)]
        else:
            raise SquadFormatError(f"{where}: 'answers' must be a list of {{text, answer_start}} objects or "
                                   f"{{\"text\": [...], \"answer_start\": [...]}}, got {type(raw).__name__}")
        fixed_starts = []
        for text, start in zip(texts, starts):
            if not isinstance(text, str) or not text:
                raise SquadFormatError(f"{where}: answer text {text!r} must be a non-empty string "
                                       "(an unanswerable question has an empty answers list)")
            if not isinstance(start, int) or isinstance(start, bool):
                raise SquadFormatError(f"{where}: answer_start {start!r} must be an integer character offset")
            fixed_starts.append(self.locate(text, start, context, where) if self.locate_answers else start)
        return list(texts), fixed_starts

    def locate(self, text: str, start: int, context: str, where: str) -> int:
        """`start` if the answer is there, else the occurrence of `text` nearest to it."""
        if start >= 0 and context[start:start + len(text)] == text:
            return start
        found, pos = [], context.find(text)
        while pos != -1:
            found.append(pos)
            pos = context.find(text, pos + 1)
        if not found:
            raise SquadFormatError(f"{where}: answer text {text!r} does not occur in the context; "
                                   "fix the answer or drop the question")
        self.fixed += 1
        return min(found, key=lambda p: abs(p - start))


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise SquadFormatError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


_MISSING = object()


def _typed(record: dict, key: str, kind: type, where: str, default=_MISSING):
    """record[key], checked to be a `kind` (bool is not an int here)."""
    if key not in record:
        if default is _MISSING:
            raise SquadFormatError(f"{where}: missing field {key!r}")
        return default
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SquadFormatError(f"{where}: field {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------
# features


class QAFeatures:
    """Model windows of SQuAD examples; a map-style dataset (torch DataLoader-compatible).

    Storage, unpadded: `flat_input_ids` / `flat_token_type_ids` (N,) int32 hold every row's
    tokens one after the other, row i being `row_starts[i]:row_starts[i + 1]`, `lengths` (F,)
    its real token count; eval features add `flat_offsets` (N, 2) and `example_index` (F,), train
    features `start_positions` / `end_positions` (F,).
    Views of design.md, padded to `max_seq_length`: `input_ids`, `attention_mask`,
    `token_type_ids` (F, T) and `offsets` (F, T, 2), -1 outside the context.
    `features[i]` gives the model inputs of row i as 1-D int32 arrays (padded to max_seq_length
    when `pad_to_max_length`) and, for train features, the int labels.
    """

    def __init__(self, *, flat_input_ids: np.ndarray, flat_token_type_ids: np.ndarray, lengths: np.ndarray,
                 max_seq_length: int, pad_token_id: int, start_positions: np.ndarray | None = None,
                 end_positions: np.ndarray | None = None, example_index: np.ndarray | None = None,
                 flat_offsets: np.ndarray | None = None, pad_to_max_length: bool = False):
        self.flat_input_ids = flat_input_ids
        self.flat_token_type_ids = flat_token_type_ids
        self.lengths = lengths
        self.row_starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (F + 1,)
        self.max_seq_length = int(max_seq_length)
        self.pad_token_id = int(pad_token_id)
        self.start_positions = start_positions
        self.end_positions = end_positions
        self.example_index = example_index
        self.flat_offsets = flat_offsets
        self.pad_to_max_length = pad_to_max_length

    @property
    def is_train(self) -> bool:
        return self.start_positions is not None

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        i = range(len(self))[i]  # negative indices, IndexError past the end
        a, b = self.row_starts[i], self.row_starts[i + 1]
        width = self.max_seq_length if self.pad_to_max_length else b - a
        ids = np.full(width, self.pad_token_id, dtype=np.int32)
        ids[: b - a] = self.flat_input_ids[a:b]
        types = np.zeros(width, dtype=np.int32)
        types[: b - a] = self.flat_token_type_ids[a:b]
        mask = (np.arange(width) < b - a).astype(np.int32)
        row = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        if self.is_train:
            row["start_positions"] = int(self.start_positions[i])
            row["end_positions"] = int(self.end_positions[i])
        return row

    def _padded(self, flat: np.ndarray, fill: int) -> np.ndarray:
        """(N, ...) flat rows -> (F, max_seq_length, ...) filled with `fill` past each row's end."""
        out = np.full((len(self), self.max_seq_length, *flat.shape[1:]), fill, dtype=flat.dtype)
        out[self.attention_mask.astype(bool)] = flat  # row-major order matches the flat layout
        return out

    @cached_property
    def attention_mask(self) -> np.ndarray:
        return (np.arange(self.max_seq_length) < self.lengths[:, None]).astype(np.int32)

    @cached_property
    def input_ids(self) -> np.ndarray:
        return self._padded(self.flat_input_ids, self.pad_token_id)

    @cached_property
    def token_type_ids(self) -> np.ndarray:
        return self._padded(self.flat_token_type_ids, 0)

    @cached_property
    def offsets(self) -> np.ndarray:
        if self.flat_offsets is None:
            raise AttributeError("train features have no offsets; build eval features (split='eval') "
                                 "for post-processing")
        return self._padded(self.flat_offsets, -1)

    _ARRAYS = ("flat_input_ids", "flat_token_type_ids", "lengths", "start_positions", "end_positions",
               "example_index", "flat_offsets")

    def save(self, path: str | Path) -> None:
        """Write an .npz atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in self._ARRAYS if getattr(self, name) is not None}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, max_seq_length=self.max_seq_length, pad_token_id=self.pad_token_id, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> QAFeatures:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in cls._ARRAYS if name in z.files}
            return cls(max_seq_length=int(z["max_seq_length"]), pad_token_id=int(z["pad_token_id"]), **arrays)


def prepare_train_features(examples: Sequence[dict], tokenizer, *, max_seq_length: int = 384, doc_stride: int = 128,
                           max_query_length: int | None = None, question_first: bool = True,
                           question_prefix: str = "", pad_to_max_length: bool = False,
                           progress: bool = True) -> QAFeatures:
    """Training windows with start/end token labels (CLS index 0 when the answer is not inside)."""
    return _build(examples, tokenizer, train=True, max_seq_length=max_seq_length, doc_stride=doc_stride,
                  max_query_length=max_query_length, question_first=question_first,
                  question_prefix=question_prefix, pad_to_max_length=pad_to_max_length, progress=progress)


def prepare_eval_features(examples: Sequence[dict], tokenizer, *, max_seq_length: int = 384, doc_stride: int = 128,
                          max_query_length: int | None = None, question_first: bool = True,
                          question_prefix: str = "", pad_to_max_length: bool = False,
                          progress: bool = True) -> QAFeatures:
    """Evaluation windows with their example index and the character span of each context token."""
    return _build(examples, tokenizer, train=False, max_seq_length=max_seq_length, doc_stride=doc_stride,
                  max_query_length=max_query_length, question_first=question_first,
                  question_prefix=question_prefix, pad_to_max_length=pad_to_max_length, progress=progress)


def _build(examples: Sequence[dict], tokenizer, *, train: bool, max_seq_length: int, doc_stride: int,
           max_query_length: int | None, question_first: bool, question_prefix: str,
           pad_to_max_length: bool, progress: bool) -> QAFeatures:
    n_special = tokenizer.backend.num_special_tokens_to_add(True)
    if max_seq_length <= n_special:
        raise FeatureSettingsError(f"max_seq_length {max_seq_length} leaves no room for text "
                                   f"({n_special} special tokens per window)")
    if doc_stride < 0:
        raise FeatureSettingsError(f"doc_stride must be >= 0, got {doc_stride}")
    if max_query_length is not None and max_query_length < 1:
        raise FeatureSettingsError(f"max_query_length must be a positive number of tokens or None, "
                                   f"got {max_query_length}")
    if not examples:
        raise FeatureSettingsError("no examples to build features from")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    context_seq = 1 if question_first else 0  # sequence id of the context in the pair

    ids, types, offsets, lengths, labels, owner = [], [], [], [], [], []
    batches = range(0, len(examples), ENCODE_BATCH)
    for lo in tqdm(batches, desc="SQuAD features", unit="batch", disable=not progress or len(batches) < 2):
        batch = examples[lo:lo + ENCODE_BATCH]
        questions = _questions(batch, tokenizer, question_prefix, max_query_length, max_seq_length,
                               doc_stride, n_special)
        contexts = [ex["context"] for ex in batch]
        first, second = (questions, contexts) if question_first else (contexts, questions)
        encodings = tokenizer.encode_batch(first, second, max_length=max_seq_length, stride=doc_stride,
                                           truncation="only_second" if question_first else "only_first")
        for j, enc in enumerate(encodings):
            for window in (enc, *enc.overflowing):
                span = _context_span(window.sequence_ids, context_seq)
                ids.append(np.asarray(window.ids, dtype=np.int32))
                types.append(np.asarray(window.type_ids, dtype=np.int32))
                lengths.append(len(window.ids))
                owner.append(lo + j)
                if train:
                    labels.append(_label(window.offsets, span, batch[j]["answers"]))
                else:
                    offs = np.asarray(window.offsets, dtype=np.int32).reshape(-1, 2)
                    keep = np.zeros(len(offs), dtype=bool)
                    if span is not None:
                        keep[span[0]:span[1] + 1] = True
                    offs[~keep] = -1
                    offsets.append(offs)

    common = dict(flat_input_ids=np.concatenate(ids), flat_token_type_ids=np.concatenate(types),
                  lengths=np.asarray(lengths, dtype=np.int32), max_seq_length=max_seq_length,
                  pad_token_id=pad_id, pad_to_max_length=pad_to_max_length)
    if train:
        positions = np.asarray(labels, dtype=np.int32).reshape(-1, 2)
        return QAFeatures(start_positions=positions[:, 0].copy(), end_positions=positions[:, 1].copy(), **common)
    return QAFeatures(example_index=np.asarray(owner, dtype=np.int32), flat_offsets=np.concatenate(offsets), **common)


def _questions(batch: Sequence[dict], tokenizer, prefix: str, max_query_length: int | None,
               max_seq_length: int, doc_stride: int, n_special: int) -> list[str]:
    """Question texts as they enter the pair (left-stripped, prefixed, cut to `max_query_length`
    tokens), after checking that each leaves the context room to slide by `doc_stride`."""
    texts = [prefix + ex["question"].lstrip() for ex in batch]
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    if max_query_length is not None:
        cut = [k for k, enc in enumerate(encodings) if len(enc.ids) > max_query_length]
        for k in cut:  # cut the text after its max_query_length-th token, as BERT's run_squad cuts tokens
            texts[k] = texts[k][: encodings[k].offsets[max_query_length - 1][1]]
        if cut:
            for k, enc in zip(cut, tokenizer.encode_batch([texts[k] for k in cut], add_special_tokens=False)):
                encodings[k] = enc
    for ex, enc in zip(batch, encodings):
        room = max_seq_length - len(enc.ids) - n_special  # context tokens per window
        if doc_stride >= room:
            raise FeatureSettingsError(
                f"question {ex['id']!r} takes {len(enc.ids)} tokens, leaving {max(room, 0)} context tokens per "
                f"{max_seq_length}-token window ({n_special} special tokens); doc_stride {doc_stride} (the tokens "
                "consecutive windows share) must be smaller than that, or the window cannot slide along the "
                "context (the tokenizer's 'stride >= max_len' failure). Lower --doc_stride, raise "
                "--max_seq_length, or cap questions with --max_query_length.")
    return texts


def _context_span(sequence_ids: list, context_seq: int) -> tuple[int, int] | None:
    """First and last token index of the context in a window (None for an empty context)."""
    if context_seq not in sequence_ids:
        return None
    first = sequence_ids.index(context_seq)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_seq)
    return first, last


def _label(offsets: list, span: tuple[int, int] | None, answers: dict) -> tuple[int, int]:
    """Token indices of the first answer's first and last token, or CLS when it is not all inside."""
    if not answers["text"] or span is None:
        return CLS_INDEX, CLS_INDEX
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    first, last = span
    ctx = np.asarray(offsets[first:last + 1]).reshape(-1, 2)  # (C, 2) character spans
    if not (ctx[0, 0] <= start_char and ctx[-1, 1] >= end_char):
        return CLS_INDEX, CLS_INDEX
    # run_qa's scans: start = last token starting at or before start_char,
    # end = first token after the last one that ends before end_char.
    after = np.flatnonzero(ctx[:, 0] > start_char)
    start = first + (after[0] if after.size else len(ctx)) - 1
    before = np.flatnonzero(ctx[:, 1] < end_char)
    end = first + (before[-1] + 1 if before.size else 0)
    return int(start), int(end)


# ---------------------------------------------------------------------------------------------
# cache


def default_cache_dir() -> Path:
    """$HONE_CACHE/features, else ~/.cache/hone/features."""
    return Path(os.environ.get("HONE_CACHE") or Path.home() / ".cache" / "hone").expanduser() / "features"


def load_or_build_features(path: str | Path, tokenizer, *, split: str = "train", max_seq_length: int = 384,
                           doc_stride: int = 128, max_query_length: int | None = None,
                           question_first: bool = True, question_prefix: str = "",
                           pad_to_max_length: bool = False, cache_dir: str | Path | None = None,
                           examples: Sequence[dict] | None = None, progress: bool = True,
                           rebuild: bool = False) -> QAFeatures:
    """Features of a SQuAD file, from the on-disk cache when nothing they depend on changed.

    The key hashes the file's bytes (or, when `examples` are given, e.g. a subset of the file,
    their content), the tokenizer's serialized backend, its pad id and every feature setting;
    `pad_to_max_length` only changes how rows are served, so it is applied after loading.
    `rebuild` ignores a cached entry (--overwrite_cache) and writes a fresh one.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    path = Path(path)
    data_hash = sha256_file(path) if examples is None else sha256_bytes(
        json.dumps(list(examples), sort_keys=True, ensure_ascii=False).encode("utf-8"))
    key = {"format": CACHE_FORMAT, "data": data_hash, "split": split,
           "tokenizer": sha256_bytes(tokenizer.backend.to_str().encode("utf-8")),
           "pad_token_id": tokenizer.pad_token_id, "max_seq_length": max_seq_length, "doc_stride": doc_stride,
           "max_query_length": max_query_length, "question_first": question_first,
           "question_prefix": question_prefix}
    digest = sha256_bytes(json.dumps(key, sort_keys=True).encode("utf-8"))
    cache_file = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_file = cache_file / f"{path.stem}-{split}-{digest[:24]}.npz"

    features = None
    if cache_file.is_file() and not rebuild:
        try:
            features = QAFeatures.load(cache_file)
            log.info("SQuAD %s features of %s loaded from %s", split, path, cache_file)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # damaged: rebuild
            log.warning("ignoring unreadable feature cache %s (%s); rebuilding", cache_file, err)
    if features is None:
        examples = read_squad(path) if examples is None else examples
        build = prepare_train_features if split == "train" else prepare_eval_features
        features = build(examples, tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride,
                         max_query_length=max_query_length, question_first=question_first,
                         question_prefix=question_prefix, progress=progress)
        features.save(cache_file)
        log.info("SQuAD %s features of %s: %d windows, cached in %s", split, path, len(features), cache_file)
    features.pad_to_max_length = pad_to_max_length
    return features
