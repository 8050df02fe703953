"""Raw-text documents for pre-training, read lazily: each document is a list of sentences.

Google's BERT recipe wants one sentence per line and a blank line between documents, because
next-sentence prediction pairs consecutive sentences of one document. Formats:

- "blank_lines" (Google's): one sentence per line, documents separated by blank lines; a new
  file starts a new document.
- "lines": one document per line (sentences split with `split_sentences`).
- "jsonl": JSON Lines, one document per record in `text_column`; each line of the text is
  split with `split_sentences`.
- "wikitext": WikiText raw files: an article starts at a top-level heading " = Title = ",
  headings are dropped, every paragraph line is split with `split_sentences`.
- "auto": "jsonl" for .jsonl/.json files, "wikitext" for wiki.*.raw / *.tokens, else "blank_lines".

`split_sentences` is a simple rule (a sentence ends at . ! or ? followed by a space and an
upper-case letter, digit or opening quote/bracket): it splits after abbreviations such as
"Mr." and misses sentences that start in lower case. For the best NSP data, give sentences one
per line ("blank_lines") from a proper sentence splitter; `--sentence_splitter none` keeps each
line whole in the other formats.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from hone.errors import HoneError

__all__ = ["FORMATS", "DocumentFormatError", "read_documents", "resolve_format", "split_sentences"]

FORMATS = ("auto", "blank_lines", "lines", "jsonl", "wikitext")
SPLITTERS = ("simple", "none")

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
_WIKITEXT_HEADING = re.compile(r"^ (= )+.*( =)+ $")


class DocumentFormatError(HoneError, ValueError):
    """An input file that cannot be read as the chosen document format."""


def split_sentences(text: str) -> list[str]:
    """Split one paragraph into sentences with the simple rule of the module docstring."""
    text = text.strip()
    if not text:
        return []
    # keep closing quotes/brackets with the sentence they end
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.start() + len(m.group(0).rstrip())
        pieces.append(text[start:end])
        start = m.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def resolve_format(path: Path, input_format: str) -> str:
    if input_format not in FORMATS:
        raise DocumentFormatError(f"input format {input_format!r} is not one of {', '.join(FORMATS)}")
    if input_format != "auto":
        return input_format
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.name.startswith("wiki.") and path.suffix in (".raw", ".tokens"):
        return "wikitext"
    return "blank_lines"


def read_documents(paths: Sequence[str | Path], input_format: str = "auto", *, text_column: str = "text",
                   sentence_splitter: str | None = None) -> Iterator[tuple[list[str], int]]:
    """Yield (sentences, bytes read since the previous document) for every non-empty document
    of the files, in order, one document in memory at a time. `sentence_splitter` "simple" or
    "none" (default: "none" for blank_lines, where lines are sentences; "simple" otherwise)."""
    if sentence_splitter is not None and sentence_splitter not in SPLITTERS:
        raise DocumentFormatError(f"sentence splitter {sentence_splitter!r} is not one of {', '.join(SPLITTERS)}")
    for path in map(Path, paths):
        if not path.is_file():
            raise DocumentFormatError(f"--input {path}: no such file")
        fmt = resolve_format(path, input_format)
        splitter = sentence_splitter or ("none" if fmt == "blank_lines" else "simple")
        split = split_sentences if splitter == "simple" else _whole_line
        yield from _READERS[fmt](path, split, text_column)


def _whole_line(text: str) -> list[str]:
    text = text.strip()
    return [text] if text else []


def _lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line number, text, bytes) of a UTF-8 file, streamed."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8"), len(raw)
            except UnicodeDecodeError as err:
                raise DocumentFormatError(f"{path}:{number}: not UTF-8 text ({err}); convert the file to UTF-8") from None


def _blank_line_documents(path: Path, split, text_column: str) -> Iterator[tuple[list[str], int]]:
    doc, nbytes = [], 0
    for _, line, size in _lines(path):
        nbytes += size
        if line.strip():
            doc.extend(split(line))
        elif doc:
            yield doc, nbytes
            doc, nbytes = [], 0
    if doc:
        yield doc, nbytes


def _line_documents(path: Path, split, text_column: str) -> Iterator[tuple[list[str], int]]:
    nbytes = 0
    for _, line, size in _lines(path):
        nbytes += size
        if doc := split(line):
            yield doc, nbytes
            nbytes = 0


def _jsonl_documents(path: Path, split, text_column: str) -> Iterator[tuple[list[str], int]]:
    nbytes = 0
    for number, line, size in _lines(path):
        nbytes += size
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DocumentFormatError(f"{path}:{number}: not a JSON object ({err.msg}); JSON Lines input needs "
                                      "one object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DocumentFormatError(f"{path}:{number}: no text field {text_column!r} (found {found}); "
                                      "name the field with --text_column")
        doc = [s for paragraph in record[text_column].splitlines() for s in split(paragraph)]
        if doc:
            yield doc, nbytes
            nbytes = 0


def _wikitext_documents(path: Path, split, text_column: str) -> Iterator[tuple[list[str], int]]:
    doc, nbytes = [], 0
    for _, line, size in _lines(path):
        nbytes += size
        text = line.rstrip("\n")
        if _WIKITEXT_TITLE.match(text):
            if doc:
                yield doc, nbytes - size
                doc, nbytes = [], size
        elif not _WIKITEXT_HEADING.match(text):
            doc.extend(split(text))
    if doc:
        yield doc, nbytes


_READERS = {"blank_lines": _blank_line_documents, "lines": _line_documents, "jsonl": _jsonl_documents,
            "wikitext": _wikitext_documents}
