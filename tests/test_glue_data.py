"""hone.data.glue: the GLUE release layouts of every task (small hand-made files), the real SST-2
files, a user's CSV/TSV/JSON Lines files, bad rows, and rows against transformers' tokenizers."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from hone.data.collate import pad_collate
from hone.data.glue import (
    GLUE_TASKS,
    GlueDataError,
    Split,
    encode_split,
    load_data_file,
    load_glue,
    load_user_files,
    read_glue_file,
)
from hone.errors import HoneError
from paths import DATA

# Label names in GLUE's order (transformers' GLUE processors, get_labels()); None: regression.
LABELS = {"cola": ["0", "1"], "sst2": ["0", "1"], "mrpc": ["0", "1"], "qqp": ["0", "1"], "stsb": None,
          "mnli": ["contradiction", "entailment", "neutral"], "qnli": ["entailment", "not_entailment"],
          "rte": ["entailment", "not_entailment"], "wnli": ["0", "1"]}

# Sentences with the quote characters GLUE's files hold, which CSV quoting would swallow.
FIRST = ['He said "no" .', '"Quoted from the start', "it 's a `` charming '' film", "plain text"]
SECOND = ['"A pair"', 'with a " lone quote', "O'Brien 's dog", "short"]

MNLI_COLUMNS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
STSB_COLUMNS = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]

# The GLUE release layouts, written by hand: task -> (header of train/dev or None (no header),
# train/dev row, test header, test row); rows are built from (index, sentence, pair, label[, kind]).
LAYOUTS = {
    "cola": (None, lambda i, a, b, y: ["gj04", y, "" if y == "1" else "*", a],
             ["index", "sentence"], lambda i, a, b: [i, a]),
    "sst2": (["sentence", "label"], lambda i, a, b, y: [a, y],
             ["index", "sentence"], lambda i, a, b: [i, a]),
    "mrpc": (["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"], lambda i, a, b, y: [y, "702876", "702977", a, b],
             ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], lambda i, a, b: [i, "1089874", "1089925", a, b]),
    "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], lambda i, a, b, y: [i, "1", "2", a, b, y],
            ["id", "question1", "question2"], lambda i, a, b: [i, a, b]),
    "stsb": ([*STSB_COLUMNS, "score"], lambda i, a, b, y: [i, "main-captions", "MSRvid", "2012test", "0001", "none",
                                                          "none", a, b, y],
             STSB_COLUMNS, lambda i, a, b: [i, "main-forums", "answers-forums", "2015", "0001", "none", "none", a, b]),
    "mnli": ([*MNLI_COLUMNS, "label1", "gold_label"], lambda i, a, b, y: [i, "31193", "31193n", "government", "( x )",
                                                                        "( y )", "(ROOT x)", "(ROOT y)", a, b, y, y],
             MNLI_COLUMNS, lambda i, a, b: [i, "1", "1n", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b]),
    "qnli": (["index", "question", "sentence", "label"], lambda i, a, b, y: [i, a, b, y],
             ["index", "question", "sentence"], lambda i, a, b: [i, a, b]),
    "rte": (["index", "sentence1", "sentence2", "label"], lambda i, a, b, y: [i, a, b, y],
            ["index", "sentence1", "sentence2"], lambda i, a, b: [i, a, b]),
    "wnli": (["index", "sentence1", "sentence2", "label"], lambda i, a, b, y: [i, a, b, y],
             ["index", "sentence1", "sentence2"], lambda i, a, b: [i, a, b]),
}
MNLI_DEV_HEADER = [*MNLI_COLUMNS, "label1", "label2", "label3", "label4", "label5", "gold_label"]
PAIR_TASKS = {"mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
HAS_INDEX = {"mrpc": False, "qqp": True, "stsb": True, "mnli": True, "qnli": True, "rte": True, "wnli": True,
             "cola": False, "sst2": False}


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([] if header is None else ["\t".join(header)]) + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def label_of(task, k):
    return ["4.750", "0.000", "2.5", "3.8"][k % 4] if LABELS[task] is None else LABELS[task][k % len(LABELS[task])]


def write_glue_folder(root, task, n=4):
    """A GLUE release folder of `task`: train, dev (MNLI: matched, mismatched) and test files."""
    head, row, test_head, test_row = LAYOUTS[task]
    folder = root / GLUE_TASKS[task].folder
    for name, file_name in GLUE_TASKS[task].files.items():
        examples = [(str(100 * len(name) + k), FIRST[k], SECOND[k], label_of(task, k + len(name))) for k in range(n)]
        if name.startswith("test"):
            write_tsv(folder / file_name, test_head, [test_row(i, a, b) for i, a, b, _ in examples])
        else:
            fields = [row(*example) for example in examples]
            if name.startswith("validation") and task == "mnli":  # dev files have label1..label5
                fields = [f[:-1] + [f[-1]] * 4 + [f[-1]] for f in fields]
            write_tsv(folder / file_name, MNLI_DEV_HEADER if name.startswith("validation") and task == "mnli"
                      else head, fields)
    return folder


@pytest.mark.parametrize("task", list(LAYOUTS))
def test_each_glue_task_reads_its_release_layout(tmp_path, task):
    folder = write_glue_folder(tmp_path, task)
    data = load_glue(task, folder)
    assert data.task == task and data.label_names == LABELS[task] and data.is_regression == (task == "stsb")
    assert data.num_labels == (1 if task == "stsb" else len(LABELS[task]))
    assert list(data.splits) == list(GLUE_TASKS[task].files)
    for name, split in data.splits.items():
        assert split.texts == FIRST
        assert split.pairs == (SECOND if task in PAIR_TASKS else None)
        first_index = 100 * len(name)
        from_column = name.startswith("test") or HAS_INDEX[task]
        assert split.indices == [str(first_index + k if from_column else k) for k in range(4)]
        assert split.line_numbers == ([1, 2, 3, 4] if task == "cola" and split.kind != "test" else [2, 3, 4, 5])
        if split.kind == "test":
            assert split.labels is None and split.submission_file == GLUE_TASKS[task].submissions[name]
        elif task == "stsb":
            np.testing.assert_array_equal(split.labels, np.float32([label_of(task, k + len(name)) for k in range(4)]))
            assert split.labels.dtype == np.float32
        else:
            assert [LABELS[task][i] for i in split.labels] == [label_of(task, k + len(name)) for k in range(4)]
            assert split.labels.dtype == np.int64


def test_mnli_has_matched_and_mismatched_dev_and_test_files(tmp_path):
    folder = write_glue_folder(tmp_path, "mnli")
    write_tsv(folder / "dev_mismatched.tsv", MNLI_DEV_HEADER,
              [[*"7 1 1n travel x y x y".split(), "Mismatched premise .", '"quoted" hypothesis', *["neutral"] * 6]])
    data = load_glue("mnli", tmp_path, kinds=("validation", "test"))  # the folder above MNLI/ works too
    assert list(data.splits) == ["validation_matched", "validation_mismatched", "test_matched", "test_mismatched"]
    mismatched = data.splits["validation_mismatched"]
    assert (mismatched.texts, mismatched.pairs, mismatched.indices) == (["Mismatched premise ."], ['"quoted" hypothesis'],
                                                                        ["7"])
    assert data.label_names[mismatched.labels[0]] == "neutral"
    assert [s.metric_suffix for s in data.of_kind("validation")] == ["", "_mm"]
    assert [s.submission_file for s in data.of_kind("test")] == ["MNLI-m.tsv", "MNLI-mm.tsv"]
    # GLUE's diagnostic file (AX) is read as an MNLI test file
    diagnostic = write_tsv(tmp_path / "diagnostic" / "diagnostic.tsv", ["index", "sentence1", "sentence2"],
                           [["0", "The cat sat .", 'The "cat" did not sit .']])
    ax = read_glue_file(diagnostic, "mnli", "test")
    assert (ax.texts, ax.pairs, ax.indices, ax.labels) == (["The cat sat ."], ['The "cat" did not sit .'], ["0"], None)


def test_missing_glue_file_and_unknown_task_are_user_errors(tmp_path):
    folder = write_glue_folder(tmp_path, "rte")
    (folder / "dev.tsv").unlink()
    with pytest.raises(GlueDataError, match=r"dev\.tsv: no such file"):
        load_glue("rte", folder)
    assert list(load_glue("rte", folder, kinds=("train",)).splits) == ["train"]
    with pytest.raises(GlueDataError, match="unknown GLUE task 'sst-2'.*sst2"):
        load_glue("sst-2", folder)
    # a file of another task: its columns are missing, named with the header found
    with pytest.raises(GlueDataError, match=r"train\.tsv, line 1: no column 'question', 'sentence' \(the columns are"):
        read_glue_file(folder / "train.tsv", "qnli")


@pytest.mark.data
def test_real_sst2_files():
    data = load_glue("sst2", DATA / "glue" / "SST-2")
    train, dev, test = (data.splits[k] for k in ("train", "validation", "test"))
    assert (len(train), len(dev), len(test)) == (67349, 872, 1821)
    assert np.bincount(dev.labels).tolist() == [428, 444]
    assert test.labels is None and test.indices == [str(i) for i in range(1821)]
    assert not (train.skipped or dev.skipped or test.skipped)
    assert train.texts[0] == "hide new secretions from the parental units "
    with open(DATA / "glue" / "SST-2" / "train.tsv", encoding="utf-8", newline="") as f:  # the reference reading
        table = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    assert train.texts == [row[0] for row in table] and train.labels.tolist() == [int(row[1]) for row in table]
    assert load_data_file(DATA / "glue" / "SST-2" / "dev.tsv").splits["validation"].texts == dev.texts


# ---------------------------------------------------------------------------------------------
# a user's files


def test_user_csv_string_labels_sorted_and_quoting(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text('sentence,label\n"Hello, ""world""",pos\nplain,neutral\n"multi\nline",neg\nagain,pos\n',
                     encoding="utf-8")
    valid = tmp_path / "valid.csv"
    valid.write_text("label,sentence\nneg,a\npos,b\n", encoding="utf-8")
    data = load_user_files(train, valid)
    assert data.task is None and data.label_names == ["neg", "neutral", "pos"]
    assert data.id2label == {0: "neg", 1: "neutral", 2: "pos"} and data.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    split = data.splits["train"]
    assert split.texts == ['Hello, "world"', "plain", "multi\nline", "again"]
    assert split.labels.tolist() == [2, 1, 0, 2] and split.line_numbers == [2, 3, 4, 6]
    assert split.indices == ["0", "1", "2", "3"]
    assert data.splits["validation"].labels.tolist() == [0, 2]
    # the order depends on the label set only, not on the order of the file
    train.write_text("sentence,label\nx,neutral\ny,pos\nz,neg\n", encoding="utf-8")
    assert load_user_files(train).label_names == ["neg", "neutral", "pos"]


def test_user_tsv_pairs_unquoted_numeric_labels_and_index(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", ["idx", "sentence1", "sentence2", "label"],
                      [["a", '"x', 'y"', "10"], ["b", "p", "q", "2"], ["c", "r", "s", "1"]])
    test = write_tsv(tmp_path / "test.tsv", ["idx", "sentence1", "sentence2"], [["t0", '"u', "v"]])
    data = load_user_files(train, test_file=test)
    assert data.label_names == ["1", "2", "10"]  # numerically
    assert data.splits["train"].pairs == ['y"', "q", "s"] and data.splits["train"].texts[0] == '"x'
    assert data.splits["train"].labels.tolist() == [2, 1, 0] and data.splits["train"].indices == ["a", "b", "c"]
    test_split = data.splits["test"]
    assert test_split.labels is None and test_split.indices == ["t0"] and test_split.submission_file is None
    # configurable column names
    custom = write_tsv(tmp_path / "custom.tsv", ["q", "doc", "y"], [["a", "b", "yes"], ["c", "d", "no"]])
    data = load_user_files(custom, text_column_names=["q", "doc"], label_column_name="y")
    assert data.splits["train"].pairs == ["b", "d"] and data.label_names == ["no", "yes"]


def test_user_jsonl_and_fixed_label_names(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in [{"sentence": 'say "hi"', "label": 1, "id": 7},
                                                       {"sentence": "bye", "label": 0, "id": 8}]) + "\n\n")
    data = load_user_files(train)
    assert data.label_names == ["0", "1"] and not data.is_regression
    assert data.splits["train"].labels.tolist() == [1, 0] and data.splits["train"].indices == ["7", "8"]
    data = load_user_files(train, label_names=["1", "0"])
    assert data.splits["train"].labels.tolist() == [0, 1]
    test = tmp_path / "test.json"
    test.write_text(json.dumps({"sentence": "unlabelled"}) + "\n")
    assert load_user_files(test_file=test, label_names=["a", "b"]).splits["test"].labels is None
    with pytest.raises(GlueDataError, match="label names"):
        load_user_files(test_file=test)


def test_user_regression_rule(tmp_path):
    floats = write_tsv(tmp_path / "floats.tsv", ["sentence", "label"], [["a", "0.5"], ["b", "3"], ["c", "-1.25e1"]])
    data = load_user_files(floats)
    assert data.is_regression and data.label_names is None and data.num_labels == 1
    assert data.id2label == {0: "LABEL_0"}
    np.testing.assert_array_equal(data.splits["train"].labels, np.float32([0.5, 3, -12.5]))
    integers = write_tsv(tmp_path / "ints.tsv", ["sentence", "label"], [["a", "0"], ["b", "3"]])
    assert not load_user_files(integers).is_regression
    assert load_user_files(integers, is_regression=True).splits["train"].labels.dtype == np.float32
    assert load_user_files(floats, is_regression=False).label_names == ["-1.25e1", "0.5", "3"]


def test_load_data_file_recognises_glue_folders(tmp_path):
    folder = write_glue_folder(tmp_path, "cola")  # headerless train file: only the folder name says so
    data = load_data_file(folder / "train.tsv")
    assert data.task == "cola" and data.splits["train"].texts == FIRST
    user = write_tsv(tmp_path / "mine.tsv", ["sentence", "label"], [["a", "x"], ["b", "y"]])
    assert load_data_file(user).label_names == ["x", "y"]


# ---------------------------------------------------------------------------------------------
# bad rows


def bad_rows_cases(tmp_path):
    """(reader, line of the first bad row, what its message says, examples left when skipped)."""
    rte = write_glue_folder(tmp_path / "glue", "rte")
    head = ["index", "sentence1", "sentence2", "label"]
    cases = {
        "fields": (write_tsv(rte / "dev.tsv", head, [["0", "a", "b", "entailment"], ["1", "a", "b", "x", "extra"],
                                                    ["2", "a", "entailment"]]), 3, "5 tab-separated fields", 1),
        "unknown_glue_label": (write_tsv(rte / "train.tsv", head, [["0", "a", "b", "maybe"], ["1", "a", "b", "entailment"]]),
                               2, r"label 'maybe' is not one of GLUE RTE's labels \['entailment', 'not_entailment'\]", 1),
        "empty_text": (write_tsv(rte / "test.tsv", head[:3], [["0", " ", "b"], ["1", "a", "b"]]), 2, "empty 'sentence1'", 1),
    }
    stsb = write_glue_folder(tmp_path / "glue", "stsb")
    stsb_row = LAYOUTS["stsb"][1]
    cases["target"] = (write_tsv(stsb / "train.tsv", [*STSB_COLUMNS, "score"],
                                 [stsb_row("0", "a", "b", "2.0"), stsb_row("1", "a", "b", "high")]),
                       3, "label 'high' is not a number", 1)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"sentence": "a", "label": "x"}\n{"sentence": "b"}\n[1]\n{bad\n{"sentence": null, "label": "x"}\n')
    cases["jsonl"] = (jsonl, 2, "no 'label' field", 1)
    csv_file = tmp_path / "valid.csv"
    csv_file.write_text("sentence,label\na,x\nb,x,y\nc,unseen\n")
    cases["csv_unknown_label"] = (csv_file, 3, "3 comma-separated fields", 1)
    return cases


def read_case(name, path, bad_rows):
    if name in ("fields", "unknown_glue_label", "empty_text"):
        return read_glue_file(path, "rte", {"dev.tsv": "validation", "train.tsv": "train", "test.tsv": "test"}[path.name],
                              bad_rows=bad_rows)
    if name == "target":
        return read_glue_file(path, "stsb", bad_rows=bad_rows)
    if name == "jsonl":
        return load_user_files(path, bad_rows=bad_rows).splits["train"]
    return load_user_files(validation_file=path, label_names=["x"], bad_rows=bad_rows).splits["validation"]


@pytest.mark.parametrize("name", ["fields", "unknown_glue_label", "empty_text", "target", "jsonl", "csv_unknown_label"])
def test_bad_rows_error_and_skip(tmp_path, name):
    path, line, what, left = bad_rows_cases(tmp_path)[name]
    with pytest.raises(GlueDataError, match=rf"{re.escape(str(path))}, line {line}: {what}.*--bad_rows skip") as err:
        read_case(name, path, "error")
    skipped = read_case(name, path, "skip")
    assert len(skipped) == left and len(skipped.indices) == len(skipped.line_numbers) == left
    assert skipped.skipped[0].startswith(f"{path}, line {line}: ")
    assert f"({len(skipped.skipped)} bad rows in this file)" in str(err.value) or len(skipped.skipped) == 1
    if skipped.labels is not None:
        assert len(skipped.labels) == left


def test_bad_rows_details(tmp_path):
    cases = bad_rows_cases(tmp_path)
    jsonl = read_case("jsonl", cases["jsonl"][0], "skip")
    assert [m.split(": ", 1)[1].split(" (")[0] for m in jsonl.skipped] == [
        "no 'label' field", "a JSON list, not an object; JSON Lines files hold one object a line", "not JSON",
        "'sentence' holds null, not text"]
    csv_split = read_case("csv_unknown_label", cases["csv_unknown_label"][0], "skip")
    assert csv_split.skipped[1] == (f"{cases['csv_unknown_label'][0]}, line 4: label 'unseen' is not one of "
                                    "the given label names ['x']")
    # rows kept keep their own line numbers, index and label
    fields = read_case("fields", cases["fields"][0], "skip")
    assert (fields.line_numbers, fields.indices, fields.labels.tolist()) == ([2], ["0"], [0])
    # a user validation label the training file does not have
    train = write_tsv(tmp_path / "t.tsv", ["sentence", "label"], [["a", "x"], ["b", "y"]])
    valid = write_tsv(tmp_path / "v.tsv", ["sentence", "label"], [["a", "x"], ["b", "z"]])
    with pytest.raises(GlueDataError, match=rf"v\.tsv, line 3: label 'z' is not one of the labels of {re.escape(str(train))}"):
        load_user_files(train, valid)
    # a missing column is a file error under either policy; so is a file left with no examples
    with pytest.raises(GlueDataError, match=r"line 1: no column 'label'.*--label_column_name"):
        load_user_files(write_tsv(tmp_path / "nolabel.tsv", ["sentence"], [["a"]]), bad_rows="skip")
    with pytest.raises(GlueDataError, match=r"holds no examples \(1 bad rows skipped\)"):
        load_user_files(write_tsv(tmp_path / "empty.tsv", ["sentence", "label"], [["", "x"]]), bad_rows="skip")
    not_utf8 = tmp_path / "latin.tsv"
    not_utf8.write_bytes(b"sentence\tlabel\ncaf\xe9\tx\n")
    with pytest.raises(GlueDataError, match=r"latin\.tsv, line 2: not UTF-8"):
        load_user_files(not_utf8)


# ---------------------------------------------------------------------------------------------
# rows


def reference_tokenizer(name):
    transformers = pytest.importorskip("transformers")
    folder = DATA / "tokenizers" / name
    cls = transformers.BertTokenizerFast if name.startswith("bert") else transformers.RobertaTokenizerFast
    return folder, cls.from_pretrained(folder)  # transformers 5 ignores vocab_file=: read the folder


@pytest.mark.data
@pytest.mark.parametrize("name", ["bert-base-uncased", "roberta-base"])
@pytest.mark.parametrize("max_len", [9, 16, 128])
def test_rows_equal_transformers_encoding_with_truncation(name, max_len):
    from hone.data.tokenizer import load_tokenizer

    folder, reference = reference_tokenizer(name)
    texts = FIRST + ["a much longer first sentence that will need to be cut somewhere " * 3, "x"]
    pairs = SECOND + ["tiny", "a long second sentence, longer than the first one by far, " * 4]
    split = Split("validation", folder, texts, pairs, np.arange(6) % 2, [str(i) for i in range(6)], list(range(6)))
    rows = encode_split(split, load_tokenizer(folder), max_len)
    want = reference(texts, pairs, truncation=True, max_length=max_len)  # run_glue's call (padding aside)
    assert len(rows) == 6 and rows.lengths.tolist() == [len(ids) for ids in want["input_ids"]]
    for i, row in enumerate(rows):
        assert row["input_ids"].tolist() == want["input_ids"][i] and row["input_ids"].dtype == np.int64
        assert row["attention_mask"].tolist() == want["attention_mask"][i]
        assert row["labels"] == i % 2
        if "token_type_ids" in want:
            assert row["token_type_ids"].tolist() == want["token_type_ids"][i]
        else:
            assert "token_type_ids" not in row
    batch = pad_collate([rows[0], rows[-1]], 0)
    assert batch["input_ids"].shape == (2, max(rows.lengths[0], rows.lengths[-1])) and batch["labels"].tolist() == [0, 1]


@pytest.mark.data
def test_real_sst2_dev_rows_and_regression_labels(tmp_path):
    from hone.data.tokenizer import load_tokenizer

    folder, reference = reference_tokenizer("bert-base-uncased")
    data = load_glue("sst2", DATA / "glue" / "SST-2", kinds=("validation",))
    data.tokenize(load_tokenizer(folder), 32)
    dev = data.splits["validation"]
    want = reference(dev.texts, truncation=True, max_length=32)["input_ids"]
    assert [row["input_ids"].tolist() for row in dev.rows] == want
    stsb = load_glue("stsb", write_glue_folder(tmp_path, "stsb"), kinds=("train",))
    stsb.tokenize(load_tokenizer(folder), 32)
    assert stsb.splits["train"].rows[0]["labels"].dtype == np.float32


def test_text_tables_for_inference_find_glue_named_columns(tmp_path):
    """What `hone predict`, `hone bench infer` and export validation read: the first GLUE-named
    text column (or pair) of a table, labels as written when there are any, else lines of text."""
    from hone.export.inputs import read_texts

    qqp = tmp_path / "pairs.tsv"
    qqp.write_text('id\tquestion1\tquestion2\tlabel\n1\tHow "old" is it?\tIts age?\t1\n2\tWhy?\tWhy not?\t0\n')
    assert read_texts(qqp) == (['How "old" is it?', "Why?"], ["Its age?", "Why not?"], ["1", "0"])
    csv_file = tmp_path / "texts.csv"
    csv_file.write_text('text,other\n"a, b",x\nc,y\n')
    assert read_texts(csv_file) == (["a, b", "c"], None, None)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"premise": "p1", "hypothesis": "h1"}\n\n{"premise": "p2", "hypothesis": "h2"}\n')
    assert read_texts(jsonl) == (["p1", "p2"], ["h1", "h2"], None)
    lines = tmp_path / "lines.txt"
    lines.write_text("first\n\n  \nsecond\n")
    assert read_texts(lines) == (["first", "second"], None, None)

    no_text = tmp_path / "nope.tsv"
    no_text.write_text("a\tb\n1\t2\n")
    with pytest.raises(GlueDataError, match=r"nope.tsv, line 1: the columns \['a', 'b'\] name no text column"):
        read_texts(no_text)
    short = tmp_path / "short.tsv"
    short.write_text("sentence\tlabel\nfine\t1\nbroken\n")
    with pytest.raises(GlueDataError, match=r"short.tsv, line 3: 1 tab-separated fields where the header has 2"):
        read_texts(short)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(HoneError, match="empty.txt: holds no text"):
        read_texts(empty)
