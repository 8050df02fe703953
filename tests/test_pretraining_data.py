"""BERT pre-training data (hone.data.pretraining, documents, shards) against Google's recipe.

Provenance is tracked by building documents whose token ids encode (document, sentence,
position): then every instance says where A and B came from, and the NSP, put-back and
truncation rules of create_pretraining_data.py can be checked instance by instance.
"""

from __future__ import annotations

import json
import pickle
import random
import re
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from hone.data.collate import make_collator
from hone.data.documents import DocumentFormatError, read_documents, split_sentences
from hone.data.masking import Masker, MaskingCollator
from hone.data.pretraining import (
    PretrainingDataError,
    PretrainingSettings,
    _ordered_map,
    build_shard,
    create_instances,
    mlm_blocks_from_text,
    pack_full_sentences,
    prepare_pretraining,
    truncate_seq_pair,
)
from hone.data.shards import PretrainingDataset, ShardError, train_eval_split
from hone.data.tokenizer import load_tokenizer
from paths import DATA

WIKITEXT = DATA / "wikitext" / "wikitext-2-raw" / "wiki.valid.raw"
BERT_VOCAB = DATA / "tokenizers" / "bert-base-uncased"


# ----------------------------------------------------------------------------- truncation

@pytest.mark.parametrize("a, b, limit, kept", [(10, 4, 8, (4, 4)), (5, 5, 7, (4, 3)), (3, 9, 20, (3, 9)),
                                               (1, 30, 6, (1, 5)), (6, 6, 6, (3, 3))])
def test_truncate_seq_pair_removes_from_the_longer_side_b_on_ties(a, b, limit, kept):
    """Hand-worked lengths: one token at a time from the longer segment, B when equal."""
    ta, tb = np.arange(a), 100 + np.arange(b)
    ra, rb = truncate_seq_pair(ta, tb, limit, random.Random(0))
    assert (len(ra), len(rb)) == kept
    for orig, got in ((ta, ra), (tb, rb)):  # what is left is one contiguous run of the original
        start = int(np.flatnonzero(orig == got[0])[0])
        assert np.array_equal(orig[start:start + len(got)], got)


def test_truncate_seq_pair_cuts_front_and_back_at_random():
    rng = random.Random(1)
    fronts = backs = 0
    for _ in range(2000):
        a, _ = truncate_seq_pair(np.arange(10), np.arange(2), 11, rng)  # exactly one token goes, from A
        fronts += a[0] == 1
        backs += a[-1] == 8
    assert fronts + backs == 2000 and abs(fronts - 1000) < 5 * np.sqrt(500)


# ----------------------------------------------------------------------------- instances

def coded_documents(n_docs: int, seed: int = 0, sentences=(3, 9), tokens=(4, 14)) -> list[list[np.ndarray]]:
    """Token id = document * 10**6 + sentence * 10**3 + position: every token knows its origin."""
    g = np.random.default_rng(seed)
    return [[d * 10**6 + s * 10**3 + np.arange(g.integers(*tokens)) for s in range(g.integers(*sentences))]
            for d in range(n_docs)]


def origin(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return tokens // 10**6, tokens // 10**3 % 10**3


def test_instances_follow_google_next_sentence_rules():
    docs = coded_documents(300)
    last_sentence = {d: len(doc) - 1 for d, doc in enumerate(docs)}
    max_seq = 64
    instances = create_instances(docs, max_seq, short_seq_prob=0.0, dupe_factor=3, rng=random.Random(2))
    counted = random_counted = 0
    for inst in instances:
        assert len(inst.a) >= 1 and len(inst.b) >= 1 and len(inst.a) + len(inst.b) <= max_seq - 3
        a_doc, a_sent = origin(inst.a)
        b_doc, b_sent = origin(inst.b)
        assert len(set(a_doc)) == 1 and len(set(b_doc)) == 1  # each segment from one document
        assert (np.diff(inst.a) > 0).all() and (np.diff(inst.b) > 0).all()  # in document order
        if inst.is_random_next:
            assert b_doc[0] != a_doc[0]  # B from ANOTHER document
        else:
            assert b_doc[0] == a_doc[0] and b_sent.min() > a_sent.max()  # B follows A
        # a chunk of one sentence forces a random B; with sentences shorter than the target that
        # happens only for a document's last sentence: elsewhere NSP is a fair coin
        if a_sent.max() != last_sentence[a_doc[0]]:
            counted += 1
            random_counted += inst.is_random_next
    assert counted > 1000
    assert abs(random_counted / counted - 0.5) < 4 * np.sqrt(0.25 / counted)
    # dupe_factor passes re-chunk every document: each sentence appears in A about 3 times or more
    a_sentences = {(int(d), int(s)) for inst in instances for d, s in zip(*origin(inst.a))}
    assert len(a_sentences) > 0.9 * sum(len(doc) for doc in docs)


def test_instances_fill_the_target_length_unless_short():
    docs = coded_documents(100, sentences=(20, 30))
    full = create_instances(docs, 64, short_seq_prob=0.0, dupe_factor=1, rng=random.Random(0))
    short = create_instances(docs, 64, short_seq_prob=1.0, dupe_factor=1, rng=random.Random(0))
    full_lengths = np.array([len(x.a) + len(x.b) for x in full])
    short_lengths = np.array([len(x.a) + len(x.b) for x in short])
    assert (full_lengths == 61).mean() > 0.7  # chunks reach the target (except at a document's end)
    assert short_lengths.mean() < 0.75 * full_lengths.mean() and len(short) > 1.3 * len(full)


def test_put_back_unused_sentences_of_a_random_next():
    """With a random B, the chunk's sentences after A start the next chunk: every sentence of a
    document lands in some A or B of the same document (one pass)."""
    docs = coded_documents(50, sentences=(6, 10), tokens=(3, 6))
    instances = create_instances(docs, 40, short_seq_prob=0.0, dupe_factor=1, rng=random.Random(5))
    own = set()
    for inst in instances:
        for segment in (inst.a,) if inst.is_random_next else (inst.a, inst.b):
            own |= {(int(d), int(s)) for d, s in zip(*origin(segment))}
    assert own == {(d, s) for d, doc in enumerate(docs) for s in range(len(doc))}


# ----------------------------------------------------------------------------- documents

def test_split_sentences_by_hand():
    assert split_sentences("It rained. Then it stopped! Did it? \"Yes.\" (Really.) 3 days.") == [
        "It rained.", "Then it stopped!", "Did it?", "\"Yes.\"", "(Really.)", "3 days."]
    assert split_sentences("The U.S. army. e.g. this stays whole") == ["The U.S. army. e.g. this stays whole"]
    assert split_sentences("Mr. Smith came.") == ["Mr.", "Smith came."]  # the known limitation
    assert split_sentences("  ") == []


def test_read_documents_formats(tmp_path):
    (tmp_path / "google.txt").write_text("One a.\nOne b.\n\n\nTwo a. Still one line.\n", encoding="utf-8")
    (tmp_path / "lines.txt").write_text("First doc. Second sentence.\n\nSecond doc\n", encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"body": "Para one. Next one.\nPara two."}) + "\n\n"
                                         + json.dumps({"body": ""}) + "\n", encoding="utf-8")
    (tmp_path / "wiki.valid.raw").write_text(" \n = Title A = \n \n Text a1 . Text a2 .\n \n = = Section = = \n"
                                             " More a .\n = Title B = \n Text b .\n", encoding="utf-8")

    def read(name, **kw):
        return [doc for doc, _ in read_documents([tmp_path / name], **kw)]

    assert read("google.txt") == [["One a.", "One b."], ["Two a. Still one line."]]
    assert read("google.txt", sentence_splitter="simple")[1] == ["Two a.", "Still one line."]
    assert read("lines.txt", input_format="lines") == [["First doc.", "Second sentence."], ["Second doc"]]
    assert read("docs.jsonl", text_column="body") == [["Para one.", "Next one.", "Para two."]]
    assert read("wiki.valid.raw") == [["Text a1 .", "Text a2 .", "More a ."], ["Text b ."]]
    sizes = [n for _, n in read_documents([tmp_path / "google.txt"])]
    assert sum(sizes) == (tmp_path / "google.txt").stat().st_size
    with pytest.raises(DocumentFormatError, match=r"docs.jsonl:1: no text field 'text'.*--text_column"):
        read("docs.jsonl")
    (tmp_path / "bad.bin").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(DocumentFormatError, match=r"bad.bin:2: not UTF-8"):
        read("bad.bin")


# ----------------------------------------------------------------------------- a tiny tokenizer and corpus

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "big", "small", "red", "blue",
         "saw", "and", "then", "it", "was", "very"]
PIECES = ["un", "##seen", "##ly", "walk", "##ing", "##ed"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A WordPiece vocabulary and a corpus of 40 documents in Google's format."""
    folder = tmp_path_factory.mktemp("tiny")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS, *PIECES]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    g = np.random.default_rng(0)
    extra = ["unseen", "unseenly", "walking", "walked"]
    docs = []
    for _ in range(40):
        sentences = [" ".join(g.choice(WORDS + extra, g.integers(3, 12))) + " ." for _ in range(g.integers(2, 12))]
        docs.append("\n".join(sentences))
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return folder, corpus


def prepare(tiny, out, *extra):
    folder, corpus = tiny
    return prepare_pretraining(["--input", str(corpus), "--tokenizer", str(folder), "--output", str(out),
                                "--max_seq_length", "32", "--max_predictions_per_seq", "5", "--dupe_factor", "3",
                                "--documents_per_shard", "7", "--seed", "3", *extra])


def test_one_or_two_workers_write_identical_shards(tiny, tmp_path):
    one = prepare(tiny, tmp_path / "one", "--num_workers", "1")
    two = prepare(tiny, tmp_path / "two", "--num_workers", "2")
    assert len(one["shards"]) == 6  # 40 documents, 7 per shard
    for manifest in (one, two):
        del manifest["preparation"]
    assert one == two
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.npy"))
    assert len(files) == 6 * 7
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    other_seed = prepare(tiny, tmp_path / "seed4", "--seed", "4")
    assert other_seed["statistics"] != one["statistics"] or not np.array_equal(
        np.load(tmp_path / "seed4" / "shard-00000" / "input_ids.npy"),
        np.load(tmp_path / "one" / "shard-00000" / "input_ids.npy"))


def test_shards_read_back_what_was_built(tiny, tmp_path):
    folder, corpus = tiny
    manifest = prepare(tiny, tmp_path / "out")
    tokenizer = load_tokenizer(folder)
    documents = [doc for doc, _ in read_documents([corpus])]
    settings = PretrainingSettings(**manifest["settings"])
    dataset = PretrainingDataset.open(tmp_path / "out")
    assert len(dataset) == manifest["statistics"]["instances"] == sum(s["instances"] for s in manifest["shards"])
    row_index = 0
    for index in range(len(manifest["shards"])):
        arrays = build_shard(tokenizer, documents[7 * index:7 * index + 7], index, settings)  # in memory
        offsets = arrays["offsets"]
        for i in range(len(offsets) - 1):
            row = dataset[row_index]
            row_index += 1
            ids = arrays["input_ids"][offsets[i]:offsets[i + 1]]
            assert np.array_equal(row["input_ids"], ids) and row["input_ids"].dtype == np.int64
            assert (row["attention_mask"] == 1).all() and len(row["attention_mask"]) == len(ids)
            lo, hi = arrays["masked_offsets"][i:i + 2]
            targets = np.flatnonzero(row["labels"] != -100)
            assert np.array_equal(targets, arrays["masked_positions"][lo:hi])
            assert np.array_equal(row["labels"][targets], arrays["masked_labels"][lo:hi])
            a_len = arrays["segment_a_lengths"][i]
            assert row["token_type_ids"].tolist() == [0] * a_len + [1] * (len(ids) - a_len)
            assert row["next_sentence_label"] == arrays["next_sentence_label"][i]
            # unmasked, the row is [CLS] A [SEP] B [SEP], with at most 5 targets, never on [CLS]/[SEP]
            original = np.where(row["labels"] != -100, row["labels"], row["input_ids"])
            assert original[0] == tokenizer.cls_token_id and original[a_len - 1] == original[-1] == tokenizer.sep_token_id
            assert (original == tokenizer.sep_token_id).sum() == 2 and len(ids) <= 32
            assert len(targets) == min(5, max(1, round(0.15 * len(ids))))
    assert row_index == len(dataset)
    assert dataset[-1]["input_ids"].tolist() == dataset[len(dataset) - 1]["input_ids"].tolist()
    # DataLoader workers get the file names, not the arrays, and map the files themselves
    blob = pickle.dumps(dataset)
    assert len(blob) < 20_000
    copy = pickle.loads(blob)
    for i in (0, len(dataset) // 2, len(dataset) - 1):
        assert all(np.array_equal(copy[i][k], dataset[i][k]) for k in dataset[i])


def test_held_out_shards(tiny, tmp_path):
    manifest = prepare(tiny, tmp_path / "out")
    counts = [s["instances"] for s in manifest["shards"]]
    train, held_out = train_eval_split(tmp_path / "out", eval_shards=2)
    assert len(held_out) == sum(counts[-2:]) and len(train) == sum(counts[:-2])
    assert [s.directory.name for s in held_out.shards] == ["shard-00004", "shard-00005"]
    _, by_fraction = train_eval_split(tmp_path / "out", eval_fraction=0.01)
    assert [s.directory.name for s in by_fraction.shards] == ["shard-00005"]
    _, by_fraction = train_eval_split(tmp_path / "out", eval_fraction=(counts[-1] + 1) / sum(counts))
    assert len(by_fraction.shards) == 2
    assert train_eval_split(tmp_path / "out")[1] is None
    with pytest.raises(ShardError, match="leaves no training data"):
        train_eval_split(tmp_path / "out", eval_shards=6)


def test_prepare_refuses_to_overwrite_and_reports_bad_input(tiny, tmp_path):
    prepare(tiny, tmp_path / "out")
    with pytest.raises(PretrainingDataError, match="--overwrite"):
        prepare(tiny, tmp_path / "out")
    assert prepare(tiny, tmp_path / "out", "--overwrite", "--documents_per_shard", "40")["statistics"]["shards"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "shard-00000", "tokenizer"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    folder, _ = tiny
    with pytest.raises(PretrainingDataError, match="no instances"):
        prepare_pretraining(["--input", str(empty), "--tokenizer", str(folder), "--output", str(tmp_path / "e")])
    with pytest.raises(ShardError, match="no manifest.json"):
        PretrainingDataset.open(tmp_path / "e")
    with pytest.raises(PretrainingDataError, match="max_seq_length"):
        prepare(tiny, tmp_path / "x", "--max_seq_length", "4")


def test_ordered_map_keeps_a_bounded_window_in_flight():
    pulled = []

    def jobs():
        for i in range(20):
            pulled.append(i)
            yield -i

    with ProcessPoolExecutor(2) as pool:
        results = _ordered_map(pool, abs, jobs(), window=4)
        assert next(results) == 0 and len(pulled) == 4  # the input streams: 4 in flight, no more
        assert list(results) == list(range(1, 20))


# ----------------------------------------------------------------------------- RoBERTa blocks

def test_pack_full_sentences_by_hand():
    docs = [[np.array([10, 11, 12]), np.array([13, 14])], [np.array([20])], [np.arange(30, 39)]]
    tokens, offsets = pack_full_sentences(docs, max_seq_length=8, cls_id=1, sep_id=2)
    blocks = [tokens[a:b].tolist() for a, b in zip(offsets, offsets[1:])]
    assert blocks == [[1, 10, 11, 12, 13, 14, 2],  # [SEP] + the next document's sentence would not fit
                      [1, 20, 2],  # nor the sentence after this one
                      [1, 30, 31, 32, 33, 34, 35, 2], [1, 36, 37, 38, 2]]  # a long sentence is cut
    tokens, offsets = pack_full_sentences(docs[:2], max_seq_length=10, cls_id=1, sep_id=2)
    assert tokens.tolist() == [1, 10, 11, 12, 13, 14, 2, 20, 2]  # [SEP] between documents


def test_mlm_objective_blocks_and_dynamic_masks(tiny, tmp_path):
    folder, corpus = tiny
    manifest = prepare(tiny, tmp_path / "mlm", "--objective", "mlm", "--documents_per_shard", "40")
    dataset = PretrainingDataset.open(tmp_path / "mlm")
    assert dataset.objective == "mlm" and "random_next_share" not in manifest["statistics"]
    tokenizer = load_tokenizer(folder)
    assert set(dataset[0]) == {"input_ids", "attention_mask"}
    lengths = dataset.lengths()
    assert lengths.max() <= 32 and manifest["statistics"]["mean_real_tokens"] == pytest.approx(lengths.mean())
    # every sentence of the corpus, in order, with [CLS] / [SEP] and document separators removed
    specials = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    packed = np.concatenate([dataset[i]["input_ids"] for i in range(len(dataset))])
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line]
    expected = [i for e in tokenizer.encode_batch(lines, add_special_tokens=False) for i in e.ids]
    assert packed[~np.isin(packed, specials)].tolist() == expected
    in_memory = mlm_blocks_from_text([corpus], tokenizer, 32)
    assert len(in_memory) == len(dataset) and all(
        np.array_equal(in_memory[i]["input_ids"], dataset[i]["input_ids"]) for i in range(len(dataset)))
    masker = Masker.for_tokenizer(tokenizer, **manifest["masking"])  # dynamic masks as recorded: run_mlm's
    assert masker.policy == "per_token" and masker.settings() == manifest["masking"]
    collate = MaskingCollator(masker, make_collator("unpadded", pad_token_id=tokenizer.pad_token_id), seed=0)
    batch = collate([dataset[i] for i in range(8)])
    assert batch["labels"].shape == batch["input_ids"].shape and (batch["labels"] != -100).any()


# ----------------------------------------------------------------------------- real vocabulary, real text

@pytest.mark.data
@pytest.mark.parametrize("whole_word", [False, True])
def test_bert_uncased_instances_of_wikitext(tmp_path, whole_word):
    text = tmp_path / "wiki.valid.raw"
    text.write_text(WIKITEXT.read_text(encoding="utf-8")[:150_000], encoding="utf-8")
    articles = sum(bool(re.fullmatch(r" = [^=].* = ", line)) for line in text.read_text(encoding="utf-8").splitlines())
    flags = ["--whole_word_mask"] if whole_word else []
    manifest = prepare_pretraining(["--input", str(text), "--tokenizer", str(BERT_VOCAB), "--output",
                                    str(tmp_path / "out"), "--dupe_factor", "2", "--documents_per_shard", "4",
                                    "--num_workers", "2", *flags])
    tokenizer = load_tokenizer(tmp_path / "out" / "tokenizer")
    assert tokenizer.vocab_size == 30522
    dataset = PretrainingDataset.open(tmp_path / "out")
    stats = manifest["statistics"]
    assert stats["documents"] == articles == 10 and stats["instances"] == len(dataset) > 100
    lengths = dataset.lengths()
    assert stats["mean_real_tokens"] == pytest.approx(lengths.mean())
    assert stats["padding_share_at_max_seq_length"] == pytest.approx(1 - lengths.mean() / 128)
    assert 0.45 < stats["random_next_share"] < 0.7
    specials = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id}
    vocab = {i: t for t, i in tokenizer.backend.get_vocab().items()}
    for i in range(len(dataset)):
        row = dataset[i]
        n, targets = len(row["input_ids"]), np.flatnonzero(row["labels"] != -100)
        assert n <= 128 and not set(row["labels"][targets].tolist()) & specials
        budget = min(20, max(1, round(0.15 * n)))
        if not whole_word:
            assert len(targets) == budget
            continue
        assert 0 < len(targets) <= budget
        original = np.where(row["labels"] != -100, row["labels"], row["input_ids"])
        picked = row["labels"] != -100
        for k in range(1, n):  # a "##" piece is a target exactly when the token before it is
            if vocab[int(original[k])].startswith("##") and int(original[k - 1]) not in specials:
                assert picked[k] == picked[k - 1], (k, tokenizer.decode(original, skip_special_tokens=False))
