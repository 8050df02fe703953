"""Raw text for causal LM (hone.data.text) against datasets' text loader, run_clm.py's
group_texts, the transformers docs' sliding-window loop and hand-computed blocks."""

from __future__ import annotations

import json
from itertools import chain

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from hone.data.text import (
    SlidingWindows,
    TextDataError,
    default_block_size,
    lm_blocks,
    read_texts,
    sliding_windows,
    token_stream,
)
from hone.data.tokenizer import HoneTokenizer, load_tokenizer
from paths import DATA

WIKI_VALID = DATA / "wikitext" / "wikitext-2-raw" / "wiki.valid.raw"
GPT2_TOKENIZER = DATA / "tokenizers" / "gpt2"


def word_tokenizer(size: int = 100) -> HoneTokenizer:
    """Whitespace-split words "t0".."t{size-1}" -> ids 0..size-1: token ids readable off the text."""
    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(size)} | {"<unk>": size}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return HoneTokenizer(backend, kind="tokenizer.json", flavour=None, special_tokens={}, model_max_length=512)


def words(*ids: int) -> str:
    return " ".join(f"t{i}" for i in ids)


# ------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("keep_linebreaks", [True, False])
def test_lines_as_datasets_text_loader_reads_them(tmp_path, keep_linebreaks):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "mixed.txt"
    # \r\n and \r are line breaks (universal newlines); \u2028, \x0c, \x85 are not (str.splitlines would split)
    path.write_bytes("one\r\ntwo\rthree\u2028still three\x0cand\x85more\n\n  \nlast".encode())
    ref = datasets.load_dataset("text", data_files=str(path), keep_linebreaks=keep_linebreaks,
                                cache_dir=str(tmp_path / "cache"))["train"]["text"]
    assert read_texts(path, keep_linebreaks=keep_linebreaks) == list(ref)
    document = datasets.load_dataset("text", data_files=str(path), sample_by="document",
                                     cache_dir=str(tmp_path / "cache2"))["train"]["text"]
    assert read_texts(path, sample_by="document") == list(document)


def test_several_files_follow_each_other(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.raw"
    a.write_text("a1\na2\n")
    b.write_text("b1")
    assert read_texts([a, b]) == ["a1\n", "a2\n", "b1"]
    assert read_texts([b, a], sample_by="document") == ["b1", "a1\na2\n"]


def test_json_lines_text_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    second = "second\u2028still second"  # a line separator inside a JSON string is no record break
    path.write_text(json.dumps({"id": 1, "text": "first doc\n"}) + "\n\n"
                    + json.dumps({"id": 2, "text": second}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_texts(path) == ["first doc\n", second]
    other = tmp_path / "other.json"
    other.write_text("\n".join(json.dumps(r) for r in [{"body": "x", "title": "t1"}, {"body": "y", "title": "t2"}]))
    assert read_texts(other) == ["x", "y"]  # no "text" field: the first one, as run_clm picks it
    assert read_texts(other, text_column="title") == ["t1", "t2"]
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"text": "p"}, {"text": 3}]))
    with pytest.raises(TextDataError, match="array.json, record 2: field 'text' is of type int"):
        read_texts(array)
    array.write_text(json.dumps([{"text": "p"}, {"text": "q"}]))
    assert read_texts(array) == ["p", "q"]
    with pytest.raises(TextDataError, match=r"other.json, line 1: field 'summary' is missing.*fields: body, title"):
        read_texts(other, text_column="summary")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(TextDataError, match="line 2"):
        read_texts(broken)


def test_reading_errors_name_the_file(tmp_path):
    with pytest.raises(TextDataError, match="no such file"):
        read_texts(tmp_path / "missing.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(TextDataError, match="latin1.txt is not UTF-8"):
        read_texts(latin)
    with pytest.raises(TextDataError, match="sample_by"):
        read_texts(latin, sample_by="paragraph")


# ------------------------------------------------------------------------------------ blocks


def test_blocks_by_hand():
    texts = [words(0, 1, 2, 3), words(4), words(5, 6, 7), words(8, 9), words(10, 11, 12)]
    tok = word_tokenizer()
    # groups of 2 texts: [0..4] -> [0 1 2] (3 4 dropped); [5..9] -> [5 6 7] (8 9 dropped); [10 11 12]
    grouped = lm_blocks(texts, tok, 3, group_size=2, progress=False)
    assert grouped.blocks.tolist() == [[0, 1, 2], [5, 6, 7], [10, 11, 12]]
    # everything concatenated: 13 tokens -> four blocks, token 12 dropped
    whole = lm_blocks(texts, tok, 3, group_size=None, progress=False)
    assert whole.blocks.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    row = whole[1]
    assert row["input_ids"].tolist() == row["labels"].tolist() == [3, 4, 5]
    assert set(row) == {"input_ids", "labels"}  # full blocks: no padding, no mask
    # a group shorter than a block gives none
    assert lm_blocks(texts, tok, 4, group_size=2, progress=False).blocks.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]]


def test_no_token_lost_or_duplicated():
    rng = np.random.default_rng(0)
    texts = [words(*rng.integers(0, 100, rng.integers(0, 30))) for _ in range(257)]
    tok = word_tokenizer()
    stream = token_stream(texts, tok, progress=False)
    assert len(stream) == sum(len(t.split()) for t in texts)
    for block_size in (1, 7, 64):
        blocks = lm_blocks(texts, tok, block_size, group_size=None, progress=False)
        assert np.array_equal(blocks.blocks.ravel(), stream[: blocks.num_tokens])  # in order, each once
        assert 0 <= len(stream) - blocks.num_tokens < block_size  # only the remainder is dropped
        # run_clm's groups of texts: each group's tokens in order, only its remainder dropped
        grouped = lm_blocks(texts, tok, block_size, group_size=10, progress=False)
        kept = []
        for start in range(0, len(texts), 10):
            ids = [int(word[1:]) for text in texts[start:start + 10] for word in text.split()]
            kept.extend(ids[: len(ids) // block_size * block_size])
        assert grouped.blocks.ravel().tolist() == kept


def test_max_samples_keeps_the_first_blocks():
    texts = [words(*range(i, i + 20)) for i in range(0, 80, 20)]
    tok = word_tokenizer()
    full = lm_blocks(texts, tok, 8, group_size=1, progress=False)
    first = lm_blocks(texts, tok, 8, group_size=1, max_samples=3, progress=False)
    assert len(full) == 8 and first.blocks.tolist() == full.blocks[:3].tolist()
    assert len(lm_blocks(texts, tok, 8, group_size=1, max_samples=100, progress=False)) == 8


def test_too_little_text_is_an_error():
    with pytest.raises(TextDataError, match="no block of block_size 50"):
        lm_blocks([words(1, 2, 3)], word_tokenizer(), 50, progress=False, source="tiny.txt")


def test_default_block_size_as_run_clm():
    assert default_block_size(None, 1024, 1024) == 1024
    assert default_block_size(None, int(1e30), 2048) == 1024  # tokenizer without a max length
    assert default_block_size(None, int(1e30), 512) == 512
    assert default_block_size(128, 1024, 1024) == 128
    assert default_block_size(4096, 1024, 1024) == 1024


@pytest.mark.data
@pytest.mark.slow
def test_equals_run_clm_on_wikitext2(tmp_path):
    """run_clm's datasets pipeline, verbatim: text loader with keep_linebreaks, tokenizer()
    per line in batched map, group_texts in batched map (1,000 lines per batch)."""
    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    datasets.disable_progress_bars()
    ref_tok = transformers.GPT2TokenizerFast.from_pretrained(GPT2_TOKENIZER)
    block_size = 1024
    raw = datasets.load_dataset("text", data_files={"validation": str(WIKI_VALID)}, keep_linebreaks=True,
                                cache_dir=str(tmp_path))

    def group_texts(examples):  # run_clm.py's, with its block_size
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated_examples.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    tokenized = raw.map(lambda examples: ref_tok(examples["text"]), batched=True, remove_columns=["text"])
    ref = tokenized.map(group_texts, batched=True)["validation"]

    blocks = lm_blocks(read_texts(WIKI_VALID), load_tokenizer(GPT2_TOKENIZER), block_size, progress=False)
    assert len(blocks) == len(ref) > 200
    assert np.array_equal(blocks.blocks, np.array([r["input_ids"] for r in ref]))
    assert np.array_equal(blocks.blocks, np.array([r["labels"] for r in ref]))


# ------------------------------------------------------------------------------------ sliding windows


def docs_sliding_windows(stream: np.ndarray, max_length: int, stride: int) -> list[tuple[list, list]]:
    """The loop of transformers' "Perplexity of fixed-length models" page, without the model."""
    seq_len = len(stream)
    prev_end_loc = 0
    windows = []
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = stream[begin_loc:end_loc].tolist()
        target_ids = list(input_ids)
        target_ids[: len(target_ids) - trg_len] = [-100] * (len(target_ids) - trg_len)
        windows.append((input_ids, target_ids))
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return windows


@pytest.mark.parametrize("n,block_size,stride", [(1, 4, 2), (2, 4, 2), (4, 4, 1), (10, 4, 2), (11, 4, 3),
                                                 (100, 16, 7), (100, 16, 15), (257, 32, 8)])
def test_sliding_windows_as_the_docs_loop(n, block_size, stride):
    stream = np.arange(1000, 1000 + n, dtype=np.int32)
    if n < 2:
        with pytest.raises(TextDataError, match="at least 2 tokens"):
            SlidingWindows(stream, block_size, stride)
        return
    windows = SlidingWindows(stream, block_size, stride)
    expected = docs_sliding_windows(stream, block_size, stride)
    assert [(w["input_ids"].tolist(), w["labels"].tolist()) for w in windows] == expected

    scored = []  # every token after the first scored once, with the tokens before it in its window as context
    for k, w in enumerate(windows):
        begin = k * stride
        for t in range(1, len(w["input_ids"])):
            if w["labels"][t] != -100:
                position = begin + t
                scored.append(position)
                assert w["labels"][t] == stream[position]
                assert w["input_ids"][:t].tolist() == stream[begin:position].tolist()
                assert t >= min(position, block_size - stride)
    assert scored == list(range(1, n))


def test_sliding_window_settings():
    with pytest.raises(TextDataError, match="between 1 and block_size - 1"):
        SlidingWindows(np.arange(10), 4, 4)
    with pytest.raises(TextDataError, match="between 1 and block_size - 1"):
        SlidingWindows(np.arange(10), 4, 0)
    rows = sliding_windows([words(1, 2, 3), words(4, 5, 6, 7)], word_tokenizer(), 4, 2, progress=False)
    assert [r["input_ids"].tolist() for r in rows] == [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7]]
    assert [r["labels"].tolist() for r in rows] == [[1, 2, 3, 4], [-100, -100, 5, 6], [-100, -100, 7]]
