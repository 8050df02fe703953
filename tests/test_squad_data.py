"""SQuAD reading, features against transformers' run_qa, and the feature cache."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import hone.data.squad as squad
from hone.data.squad import (
    FeatureSettingsError,
    QAFeatures,
    SquadFormatError,
    has_unanswerable,
    load_or_build_features,
    prepare_eval_features,
    prepare_train_features,
    read_squad,
)
from hone.data.tokenizer import load_tokenizer
from paths import DATA as SHARED_DATA

DATA = SHARED_DATA
EVAL_SPLIT = DATA / "squad" / "splits" / "dev-v2.0-articles-20-34.json"
MINILM = DATA / "models" / "all-MiniLM-L6-v2"
ROBERTA = DATA / "tokenizers" / "roberta-base"


# ---------------------------------------------------------------------------------------------
# helpers

WORDS = ("the cat sat on a mat and saw one red dog run far away from its big old house near river "
         "where who what did q : ? .").split()


@pytest.fixture
def tiny_tok(tmp_path):
    """BERT WordPiece over WORDS: every word is one token, so positions can be worked out by hand."""
    folder = tmp_path / "tiny_tokenizer"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return load_tokenizer(folder)


def example(context: str, question: str, answer: str | None = None, qid: str = "q0", nth: int = 0) -> dict:
    """An example whose answer is the `nth` occurrence of `answer` as a whole word in the context."""
    answers = {"text": [], "answer_start": []}
    if answer is not None:
        padded, start = f" {context} ", -1
        for _ in range(nth + 1):
            start = padded.index(f" {answer} ", start + 1)
        answers = {"text": [answer], "answer_start": [start]}
    return {"id": qid, "title": "t", "context": context, "question": question, "answers": answers}


def token_words(features: QAFeatures, i: int, tok) -> list[str]:
    return [tok.backend.id_to_token(int(t)) for t in features[i]["input_ids"]]


def write_official(path: Path, qas_by_context: list[tuple[str, list[dict]]], version: str = "v2.0") -> Path:
    paragraphs = [{"context": c, "qas": qas} for c, qas in qas_by_context]
    path.write_text(json.dumps({"version": version, "data": [{"title": "T", "paragraphs": paragraphs}]}))
    return path


# ---------------------------------------------------------------------------------------------
# reading


def test_official_and_jsonl_give_the_same_examples(tmp_path):
    context = "The cat sat on the mat."
    official = write_official(tmp_path / "v2.json", [(context, [
        {"id": "a", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}],
         "is_impossible": False},
        {"id": "b", "question": "Where is the dog?", "answers": [], "is_impossible": True},
        {"id": "c", "question": "On what?", "answers": [{"text": "the mat", "answer_start": 15},
                                                         {"text": "mat", "answer_start": 19}]},
    ])])
    examples = read_squad(official)
    assert [e["id"] for e in examples] == ["a", "b", "c"]
    assert examples[0] == {"id": "a", "title": "T", "context": context, "question": "Who sat?",
                           "answers": {"text": ["The cat"], "answer_start": [0]}}
    assert examples[1]["answers"] == {"text": [], "answer_start": []}
    assert examples[2]["answers"] == {"text": ["the mat", "mat"], "answer_start": [15, 19]}
    assert has_unanswerable(examples)
    assert not has_unanswerable([examples[0], examples[2]])

    jsonl = tmp_path / "v2.jsonl"  # transformers' datasets `to_json` layout
    jsonl.write_text("\n".join(json.dumps(e) for e in examples) + "\n\n")
    assert read_squad(jsonl) == examples


def test_v1_file_without_is_impossible(tmp_path):
    path = write_official(tmp_path / "v1.json", [("Paris is in France.", [
        {"id": "x", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}])], "1.1")
    examples = read_squad(path)
    assert examples[0]["answers"] == {"text": ["France"], "answer_start": [12]}
    assert not has_unanswerable(examples)


def test_wrong_answer_start_moves_to_nearest_occurrence_with_one_warning(tmp_path):
    context = "red dog, red cat, red hen"  # "red" at 0, 9 and 18
    path = write_official(tmp_path / "off.json", [(context, [
        {"id": "a", "question": "q?", "answers": [{"text": "red", "answer_start": 11}]},  # nearest: 9
        {"id": "b", "question": "q?", "answers": [{"text": "red", "answer_start": 17}]},  # nearest: 18
        {"id": "c", "question": "q?", "answers": [{"text": "red", "answer_start": 0}]},   # right
    ])])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = read_squad(path)
    assert [e["answers"]["answer_start"] for e in examples] == [[9], [18], [0]]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "2 answer_start" in messages[0] and "off.json" in messages[0]


@pytest.mark.parametrize("content, expected", [
    ('{"version": "v2.0", "data": [', "not valid JSON"),
    ('[1, 2]', "JSON list"),
    ('{"version": "v2.0", "data": [{"title": "T"}]}', "missing field 'paragraphs'"),
    ('{"data": [{"paragraphs": [{"context": 5, "qas": []}]}]}', "'context' must be a str"),
    ('{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q1", "question": "x?", '
     '"answers": [{"text": "zzz", "answer_start": 0}]}]}]}]}', "'zzz' does not occur"),
    ('{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q1", "question": 3, "answers": []}]}]}]}',
     "'question' must be a string"),
    ('{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q1", "question": "x?"}]}]}]}',
     "missing field 'answers'"),
    ('{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q1", "question": "x?", "answers": []},'
     '{"id": "q1", "question": "y?", "answers": []}]}]}]}', "appears twice"),
])
def test_malformed_official_files_name_file_and_problem(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SquadFormatError) as err:
        read_squad(path)
    assert expected in str(err.value) and "bad.json" in str(err.value)


def test_answer_absent_error_names_question_id(tmp_path):
    path = write_official(tmp_path / "absent.json", [("abc", [
        {"id": "the-id-42", "question": "x?", "answers": [{"text": "zzz", "answer_start": 0}]}])])
    with pytest.raises(SquadFormatError, match="the-id-42"):
        read_squad(path)


@pytest.mark.parametrize("line2, expected", [
    ('{"id": "b", "context": "abc"', "line 2 is not valid JSON"),
    ('{"id": "b", "title": "t", "question": "q?", "answers": {"text": [], "answer_start": []}}',
     "line 2 (id 'b'): missing field 'context'"),
    ('{"id": 7, "title": "t", "context": "abc", "question": "q?", "answers": {"text": [], "answer_start": []}}',
     "line 2 (id 7): field 'id' must be a string"),
    ('{"id": "b", "title": "t", "context": "abc", "question": "q?", "answers": {"text": ["a"], "answer_start": []}}',
     "1 texts but 0 answer_start"),
    ('{"id": "b", "title": "t", "context": "abc", "question": "q?", "answers": {"text": ["a"], "answer_start": ["0"]}}',
     "answer_start '0' must be an integer"),
])
def test_malformed_jsonl_names_the_line(tmp_path, line2, expected):
    good = json.dumps(example("abc def", "q?", "abc", qid="a"))
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line2 + "\n")
    with pytest.raises(SquadFormatError) as err:
        read_squad(path)
    assert expected in str(err.value) and "bad.jsonl" in str(err.value)


@pytest.mark.data
def test_reads_the_real_v2_split():
    if not EVAL_SPLIT.exists():
        pytest.skip("../shared/data is absent")
    examples = read_squad(EVAL_SPLIT)
    assert len(examples) == 5626
    assert has_unanswerable(examples)
    for e in examples[:500]:
        for text, start in zip(e["answers"]["text"], e["answers"]["answer_start"]):
            assert e["context"][start:start + len(text)] == text


# ---------------------------------------------------------------------------------------------
# features on hand-made contexts (tiny WordPiece vocabulary: one token per word)

CONTEXT = "the cat sat on a mat and saw one red dog run far away from its big old house near river"  # 21 words
CTX_WORDS = CONTEXT.split()


def test_windows_slide_by_stride_and_keep_context_offsets(tiny_tok):
    # question "who sat ?" = 3 tokens; 16-token windows hold 16 - 3 - 3 = 10 context tokens; stride 4
    ex = example(CONTEXT, "  who sat ?", "dog")
    feats = prepare_eval_features([ex], tiny_tok, max_seq_length=16, doc_stride=4)
    # windows start at context words 0, 6, 12 (each shares 4 tokens with the previous one)
    assert len(feats) == 3
    np.testing.assert_array_equal(feats.example_index, [0, 0, 0])
    np.testing.assert_array_equal(feats.lengths, [16, 16, 15])
    for i, first in enumerate([0, 6, 12]):
        words = CTX_WORDS[first:first + 10]
        assert token_words(feats, i, tiny_tok) == ["[CLS]", "who", "sat", "?", "[SEP]", *words, "[SEP]"]
        np.testing.assert_array_equal(feats[i]["token_type_ids"], [0] * 5 + [1] * (len(words) + 1))
        offsets = feats.offsets[i]  # (T, 2): -1 outside the context, including padding
        assert (offsets[:5] == -1).all() and (offsets[5 + len(words):] == -1).all()
        spans = [CONTEXT[a:b] for a, b in offsets[5:5 + len(words)]]
        assert spans == words


def test_answer_labels_border_straddle_and_unanswerable(tiny_tok):
    # 10 context tokens per window, stride 4: window 0 = words 0-9, window 1 = words 6-15, window 2 = 12-20
    examples = [
        example(CONTEXT, "who sat ?", "red", qid="border"),        # word 9: last context token of window 0
        example(CONTEXT, "who sat ?", "red dog", qid="straddle"),  # words 9-10: cut by window 0's end
        example(CONTEXT, "who sat ?", "far away", qid="inner"),    # words 12-13: in windows 1 and 2
        example(CONTEXT, "who sat ?", None, qid="none"),
    ]
    feats = prepare_train_features(examples, tiny_tok, max_seq_length=16, doc_stride=4)
    labels = list(zip(feats.start_positions.tolist(), feats.end_positions.tolist()))
    ctx = 5  # [CLS] who sat ? [SEP]
    assert labels[0:3] == [(ctx + 9, ctx + 9), (ctx + 3, ctx + 3), (0, 0)]
    assert labels[3:6] == [(0, 0), (ctx + 3, ctx + 4), (0, 0)]
    assert labels[6:9] == [(0, 0), (ctx + 6, ctx + 7), (ctx + 0, ctx + 1)]
    assert labels[9:12] == [(0, 0)] * 3
    for i, (s, e) in enumerate(labels):  # every labelled span reads back as its answer
        if s:
            answer = examples[i // 3]["answers"]["text"][0]
            assert " ".join(token_words(feats, i, tiny_tok)[s:e + 1]) == answer


def test_passage_first_with_question_prefix(tiny_tok):
    ex = example(CONTEXT, " who sat ?", "mat", nth=0)
    train = prepare_train_features([ex], tiny_tok, max_seq_length=17, doc_stride=4, question_first=False,
                                   question_prefix="q : ")
    evals = prepare_eval_features([ex], tiny_tok, max_seq_length=17, doc_stride=4, question_first=False,
                                  question_prefix="q : ")
    # [CLS] context(9) [SEP] q : who sat ? [SEP]: the question takes 5 tokens, 9 context tokens remain;
    # windows start at context words 0, 5, 10, 15
    assert len(train) == len(evals) == 4
    assert token_words(train, 0, tiny_tok) == ["[CLS]", *CTX_WORDS[:9], "[SEP]", "q", ":", "who", "sat", "?", "[SEP]"]
    assert token_words(train, 1, tiny_tok)[1:10] == CTX_WORDS[5:14]
    np.testing.assert_array_equal(train[0]["token_type_ids"], [0] * 11 + [1] * 6)
    assert (train.start_positions[0], train.end_positions[0]) == (1 + 5, 1 + 5)  # "mat" is word 5
    assert (train.start_positions[1], train.end_positions[1]) == (1 + 0, 1 + 0)
    offsets = evals.offsets[0]
    assert offsets[0].tolist() == [-1, -1] and (offsets[10:] == -1).all()
    assert [CONTEXT[a:b] for a, b in offsets[1:10]] == CTX_WORDS[:9]


def test_max_query_length_cuts_question_tokens(tiny_tok):
    ex = example(CONTEXT, "who did the cat saw near the river ?", "dog")
    feats = prepare_eval_features([ex], tiny_tok, max_seq_length=64, doc_stride=16, max_query_length=4)
    assert token_words(feats, 0, tiny_tok)[:6] == ["[CLS]", "who", "did", "the", "cat", "[SEP]"]
    full = prepare_eval_features([ex], tiny_tok, max_seq_length=64, doc_stride=16)
    assert full.lengths[0] == feats.lengths[0] + 5


def test_stride_too_large_is_explained(tiny_tok):
    ex = example(CONTEXT, "who sat ?", "dog", qid="long-q")
    with pytest.raises(FeatureSettingsError) as err:  # 16 - 3 - 3 = 10 context tokens, stride 10
        prepare_train_features([ex], tiny_tok, max_seq_length=16, doc_stride=10)
    message = str(err.value)
    assert "'long-q'" in message and "doc_stride 10" in message and "stride >= max_len" in message
    with pytest.raises(FeatureSettingsError, match="max_seq_length 3"):
        prepare_train_features([ex], tiny_tok, max_seq_length=3, doc_stride=0)
    # a capped question makes room again
    prepare_train_features([ex], tiny_tok, max_seq_length=16, doc_stride=10, max_query_length=1)


def test_rows_padding_and_padded_views_agree(tiny_tok):
    examples = [example(CONTEXT, "who sat ?", "dog"), example("the cat sat", "who ?", "cat", qid="q1")]
    feats = prepare_train_features(examples, tiny_tok, max_seq_length=16, doc_stride=4)
    padded = prepare_train_features(examples, tiny_tok, max_seq_length=16, doc_stride=4, pad_to_max_length=True)
    assert feats.lengths.tolist() == [16, 16, 15, 8]
    row, prow = feats[3], padded[3]
    assert len(row["input_ids"]) == 8 and len(prow["input_ids"]) == 16
    assert prow["input_ids"][8:].tolist() == [tiny_tok.pad_token_id] * 8
    assert prow["attention_mask"].tolist() == [1] * 8 + [0] * 8
    assert prow["token_type_ids"].tolist() == [0] * 4 + [1] * 4 + [0] * 8
    assert row["start_positions"] == prow["start_positions"] == 5  # [CLS] who ? [SEP] the *cat* sat [SEP]
    for i in range(len(feats)):
        np.testing.assert_array_equal(padded[i]["input_ids"], feats.input_ids[i])
        np.testing.assert_array_equal(padded[i]["attention_mask"], feats.attention_mask[i])
        np.testing.assert_array_equal(padded[i]["token_type_ids"], feats.token_type_ids[i])
    assert set(prepare_eval_features(examples, tiny_tok, max_seq_length=16, doc_stride=4)[0]) == {
        "input_ids", "attention_mask", "token_type_ids"}  # eval rows: model inputs only


def test_features_feed_a_dataloader_with_the_shared_collate(tiny_tok):
    import torch

    from hone.data.collate import Collator

    examples = [example(CONTEXT, "who sat ?", "dog"), example("the cat sat", "who ?", "cat", qid="q1")]
    feats = prepare_train_features(examples, tiny_tok, max_seq_length=16, doc_stride=4)
    loader = torch.utils.data.DataLoader(feats, batch_size=4, collate_fn=Collator(tiny_tok.pad_token_id))
    (batch,) = list(loader)
    assert batch["input_ids"].shape == (4, 16) and batch["input_ids"].dtype == torch.int64
    np.testing.assert_array_equal(batch["input_ids"].numpy(), feats.input_ids)
    np.testing.assert_array_equal(batch["start_positions"].numpy(), feats.start_positions)
    assert feats[-1]["start_positions"] == 5 and len(feats[-1]["input_ids"]) == 8


# ---------------------------------------------------------------------------------------------
# features against transformers' run_qa on real data


def hf_tokenizer(folder: Path):
    """transformers' fast tokenizer of a folder (tokenizer.json, vocab.txt, or vocab.json + merges.txt)."""
    import transformers

    v5 = int(transformers.__version__.split(".")[0]) >= 5  # v5 takes file paths as vocab / merges
    if (folder / "tokenizer.json").exists():
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    elif (folder / "vocab.txt").exists():
        tok = transformers.BertTokenizerFast(**{"vocab" if v5 else "vocab_file": str(folder / "vocab.txt")})
    else:
        files = {"vocab": str(folder / "vocab.json"), "merges": str(folder / "merges.txt")}
        tok = transformers.RobertaTokenizerFast(**(files if v5 else {f"{k}_file": v for k, v in files.items()}))
    if "roberta" in folder.name:  # guard against a silently empty vocabulary
        assert tok("Hello world")["input_ids"] == [0, 31414, 232, 2]
    return tok


def run_qa_features(examples, tok, max_len, stride, pad_on_right, prefix):
    """run_qa.py's prepare_train_features and prepare_validation_features, as written there."""
    questions = [prefix + e["question"].lstrip() for e in examples]
    contexts = [e["context"] for e in examples]
    enc = tok(questions if pad_on_right else contexts, contexts if pad_on_right else questions,
              truncation="only_second" if pad_on_right else "only_first", max_length=max_len, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    sample_mapping = enc["overflow_to_sample_mapping"]
    starts, ends, eval_offsets = [], [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tok.cls_token_id)
        sequence_ids = enc.sequence_ids(i)
        context_index = 1 if pad_on_right else 0
        eval_offsets.append([o if sequence_ids[k] == context_index else (-1, -1) for k, o in enumerate(offsets)])
        answers = examples[sample_mapping[i]]["answers"]
        if len(answers["answer_start"]) == 0:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start_index = 0
        while sequence_ids[token_start_index] != context_index:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != context_index:
            token_end_index -= 1
        if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
        else:
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            starts.append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            ends.append(token_end_index + 1)
    return enc, np.array(sample_mapping), np.array(starts), np.array(ends), np.array(eval_offsets)


def test_run_qa_labels_a_border_answer_past_the_context_and_hone_does_not(tiny_tok, tmp_path):
    ex = example(CONTEXT, "who sat ?", "red")  # the last context token of window 0 (see above)
    ref, mapping, ref_start, ref_end, _ = run_qa_features([ex], hf_tokenizer(tmp_path / "tiny_tokenizer"),
                                                          16, 4, True, "")
    feats = prepare_train_features([ex], tiny_tok, max_seq_length=16, doc_stride=4)
    np.testing.assert_array_equal(feats.input_ids, np.array(ref["input_ids"]))
    assert ref_start.tolist() == [15, 8, 0]  # 15: the closing [SEP]
    assert feats.start_positions.tolist() == [14, 8, 0]
    assert feats.end_positions.tolist() == ref_end.tolist() == [14, 8, 0]


WINDOWS = {"384-question-first": (384, 128, True), "128-question-first": (128, 48, True),
           "128-passage-first": (128, 48, False)}
TOKENIZERS = {"minilm": MINILM, "roberta": ROBERTA}
# every setting on every 28th question (201, from all 15 articles); two of them, which between them
# cover both tokenizers, window sizes and orders, on all 5,626 questions
FEATURE_CASES = [pytest.param(TOKENIZERS[tok], *WINDOWS[window], slice(None, None, 28), id=f"{window}-{tok}-201-questions")
                 for window in WINDOWS for tok in TOKENIZERS]
FEATURE_CASES += [pytest.param(TOKENIZERS[tok], *WINDOWS[window], slice(None), id=f"{window}-{tok}-all",
                               marks=pytest.mark.slow)
                  for window, tok in (("384-question-first", "minilm"), ("128-passage-first", "roberta"))]


@pytest.mark.data
@pytest.mark.parametrize("folder, max_len, stride, question_first, subset", FEATURE_CASES)
def test_features_match_run_qa(folder, max_len, stride, question_first, subset):
    if not folder.exists() or not EVAL_SPLIT.exists():
        pytest.skip("../shared/data is absent")
    examples = read_squad(EVAL_SPLIT)[subset]
    prefix = "" if question_first else "Q: "
    ref, mapping, ref_start, ref_end, ref_offsets = run_qa_features(
        examples, hf_tokenizer(folder), max_len, stride, question_first, prefix)
    tok = load_tokenizer(folder)
    settings = dict(max_seq_length=max_len, doc_stride=stride, question_first=question_first,
                    question_prefix=prefix, progress=False)
    train = prepare_train_features(examples, tok, **settings)
    evals = prepare_eval_features(examples, tok, **settings)
    assert len(train) == len(evals) == len(mapping) > len(examples)

    np.testing.assert_array_equal(train.input_ids, np.array(ref["input_ids"]))
    np.testing.assert_array_equal(evals.input_ids, np.array(ref["input_ids"]))
    np.testing.assert_array_equal(train.attention_mask, np.array(ref["attention_mask"]))
    expected_types = np.array(ref["token_type_ids"]) if "token_type_ids" in ref else np.zeros_like(train.input_ids)
    np.testing.assert_array_equal(train.token_type_ids, expected_types)
    np.testing.assert_array_equal(evals.example_index, mapping)
    np.testing.assert_array_equal(evals.offsets, ref_offsets)
    np.testing.assert_array_equal(train.end_positions, ref_end)
    # run_qa's start scan runs past the context when an answer starts in a window's last context token
    # (it labels the last padding token); hone keeps that token. Everything else is identical.
    differ = np.flatnonzero(train.start_positions != ref_start)
    for i in differ:
        assert ref_start[i] == max_len - 1 and ref_offsets[i, ref_start[i], 0] == -1
        assert train.start_positions[i] == np.flatnonzero(ref_offsets[i, :, 0] >= 0).max()
    assert len(differ) <= 0.01 * len(train)
    assert (train.start_positions > 0).sum() > 50  # the comparison covers plenty of real answers


@pytest.mark.data
@pytest.mark.parametrize("folder, question_first", [(MINILM, True), (ROBERTA, False)],
                         ids=["minilm", "roberta-passage-first"])
def test_labels_read_back_as_the_answers_through_the_official_metric(folder, question_first):
    """Logits peaking at the train labels, post-processed over the eval features, answer every question."""
    if not folder.exists() or not EVAL_SPLIT.exists():
        pytest.skip("../shared/data is absent")
    from hone.metrics.squad import postprocess_qa_predictions, squad_evaluate

    examples = read_squad(EVAL_SPLIT)[::28]
    settings = dict(max_seq_length=128, doc_stride=48, question_first=question_first,
                    question_prefix="" if question_first else "Q: ", progress=False)
    tok = load_tokenizer(folder)
    train, evals = prepare_train_features(examples, tok, **settings), prepare_eval_features(examples, tok, **settings)
    rows = np.arange(len(train))
    start, end = np.zeros(evals.input_ids.shape, np.float32), np.zeros(evals.input_ids.shape, np.float32)
    start[rows, train.start_positions] = 10.0
    end[rows, train.end_positions] = 10.0
    result = postprocess_qa_predictions(examples, evals.example_index, evals.offsets, start, end,
                                        version_2_with_negative=True)
    scores = squad_evaluate(examples, result.predictions)
    assert scores["HasAns_total"] > 50 and scores["NoAns_total"] > 50
    assert scores["exact"] == 100.0


# ---------------------------------------------------------------------------------------------
# cache


@pytest.fixture
def squad_file(tmp_path):
    examples = [example(CONTEXT, "who sat ?", "dog", qid="a"), example(CONTEXT, "what ?", None, qid="b")]
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


@pytest.fixture
def builds(monkeypatch):
    """Counts feature builds (cache misses)."""
    calls = []
    for name in ("prepare_train_features", "prepare_eval_features"):
        real = getattr(squad, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(squad, name, counted)
    return calls


def test_cache_hit_miss(tiny_tok, squad_file, tmp_path, builds):
    cache = tmp_path / "cache"
    settings = dict(max_seq_length=16, doc_stride=4, cache_dir=cache)
    first = load_or_build_features(squad_file, tiny_tok, split="train", **settings)
    again = load_or_build_features(squad_file, tiny_tok, split="train", **settings)
    assert builds == ["prepare_train_features"]
    assert len(list(cache.iterdir())) == 1 and not list(cache.glob("*.tmp"))
    for name in ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions", "lengths"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))

    padded = load_or_build_features(squad_file, tiny_tok, split="train", pad_to_max_length=True, **settings)
    assert len(builds) == 1 and len(padded[0]["input_ids"]) == 16  # served padded, same cache entry

    evals = load_or_build_features(squad_file, tiny_tok, split="eval", **settings)
    load_or_build_features(squad_file, tiny_tok, split="eval", **settings)
    assert builds[1:] == ["prepare_eval_features"]
    np.testing.assert_array_equal(evals.offsets, prepare_eval_features(
        read_squad(squad_file), tiny_tok, max_seq_length=16, doc_stride=4).offsets)

    load_or_build_features(squad_file, tiny_tok, split="train", max_seq_length=16, doc_stride=5, cache_dir=cache)
    load_or_build_features(squad_file, tiny_tok, split="train", max_query_length=2, **settings)
    load_or_build_features(squad_file, tiny_tok, split="train", question_first=False, **settings)
    assert len(builds) == 5  # every setting is part of the key

    subset = read_squad(squad_file)[:1]
    assert len(load_or_build_features(squad_file, tiny_tok, split="train", examples=subset, **settings)) == 3
    assert len(builds) == 6  # a subset of the file is not the file

    squad_file.write_text(squad_file.read_text().replace("who sat", "what sat"))
    load_or_build_features(squad_file, tiny_tok, split="train", **settings)
    assert len(builds) == 7  # the file's content changed


def test_cache_keys_the_tokenizer_and_honours_hone_cache(squad_file, tmp_path, monkeypatch, builds):
    def tokenizer(name, words):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        return load_tokenizer(folder)

    monkeypatch.setenv("HONE_CACHE", str(tmp_path / "hc"))
    load_or_build_features(squad_file, tokenizer("tok_a", WORDS), max_seq_length=16, doc_stride=4)
    load_or_build_features(squad_file, tokenizer("tok_b", WORDS[::-1]), max_seq_length=16, doc_stride=4)
    load_or_build_features(squad_file, tokenizer("tok_c", WORDS), max_seq_length=16, doc_stride=4)
    assert len(builds) == 2  # tok_c is tok_a again
    assert len(list((tmp_path / "hc" / "features").glob("mini-train-*.npz"))) == 2


def test_damaged_cache_entry_is_rebuilt(tiny_tok, squad_file, tmp_path, builds):
    cache = tmp_path / "cache"
    load_or_build_features(squad_file, tiny_tok, max_seq_length=16, doc_stride=4, cache_dir=cache)
    entry = next(cache.iterdir())
    entry.write_bytes(b"not an npz")
    feats = load_or_build_features(squad_file, tiny_tok, max_seq_length=16, doc_stride=4, cache_dir=cache)
    assert len(builds) == 2 and len(feats) == 6
    assert QAFeatures.load(entry).lengths.tolist() == feats.lengths.tolist()
