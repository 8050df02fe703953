"""hone.data.tokenizer against transformers' fast tokenizers, on real text and on tiny hand-built vocabularies.

transformers 5 ignores `BertTokenizerFast(vocab_file=...)` (it builds a 5-token placeholder vocabulary),
so the references are built with `from_pretrained(folder)`, which reads the same files in 4.x and 5.x.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from paths import DATA as SHARED_DATA

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer, BertTokenizerFast, GPT2TokenizerFast, RobertaTokenizerFast  # noqa: E402

import hone  # noqa: E402
from hone.data.tokenizer import HoneTokenizer, TokenizerError, load_tokenizer  # noqa: E402

DATA = SHARED_DATA


def needs_data(test):
    """Mark a test `data` and skip it when ../shared/data is absent."""
    return pytest.mark.data(pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent")(test))


# name -> (folder, transformers reference class)
FOLDERS = {
    "bert-base-uncased": (DATA / "tokenizers" / "bert-base-uncased", BertTokenizerFast),
    "roberta-base": (DATA / "tokenizers" / "roberta-base", RobertaTokenizerFast),
    "gpt2": (DATA / "tokenizers" / "gpt2", GPT2TokenizerFast),
    "all-MiniLM-L6-v2": (DATA / "models" / "all-MiniLM-L6-v2", AutoTokenizer),
}
HELLO_WORLD = {  # from shared/data/README.md (BERT's from the released vocabulary)
    "bert-base-uncased": [101, 7592, 2088, 102],
    "roberta-base": [0, 31414, 232, 2],
    "gpt2": [15496, 995],
    "all-MiniLM-L6-v2": [101, 7592, 2088, 102],
}


def hf_encode(ref, texts, pairs=None, **kwargs) -> list[dict]:
    """transformers' output, one dict per window, in our field names."""
    out = ref(texts, pairs, return_offsets_mapping=True, return_token_type_ids=True,
              return_special_tokens_mask=True, **kwargs)
    return [{"ids": out["input_ids"][i], "offsets": [tuple(o) for o in out["offset_mapping"][i]],
             "type_ids": out["token_type_ids"][i], "special": out["special_tokens_mask"][i]}
            for i in range(len(out["input_ids"]))]


def ours(encodings) -> list[dict]:
    return [{"ids": e.ids, "offsets": e.offsets, "type_ids": e.type_ids, "special": e.special_tokens_mask}
            for e in encodings]


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"row {i} differs"


# ---------------------------------------------------------------------------------------------
# real data


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    with open(DATA / "glue" / "SST-2" / "dev.tsv", encoding="utf-8", newline="") as f:
        sst2 = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:200]
    squad = json.loads((DATA / "squad" / "splits" / "dev-v2.0-articles-20-34.json").read_text(encoding="utf-8"))
    paragraphs = [p for article in squad["data"] for p in article["paragraphs"]]
    questions = [p["qas"][0]["question"] for p in paragraphs]
    contexts = [p["context"] for p in paragraphs]
    lines = [ln.strip() for ln in (DATA / "wikitext" / "wikitext-2-raw" / "wiki.valid.raw").read_text(
        encoding="utf-8").splitlines() if ln.strip()]
    non_ascii = [ln for ln in lines if not ln.isascii()]
    assert len(non_ascii) > 100
    return {"sst2": sst2, "questions": questions[:150], "contexts": contexts[:150],
            "wiki": lines[:100] + non_ascii[:150], "all_questions": questions, "all_contexts": contexts}


@pytest.fixture(scope="module", params=list(FOLDERS))
def pair(request) -> tuple[str, HoneTokenizer, object]:
    folder, ref_class = FOLDERS[request.param]
    return request.param, load_tokenizer(folder), ref_class.from_pretrained(str(folder))


@pytest.mark.parametrize("source", ["sst2", "questions", "contexts", "wiki"])
@needs_data
def test_single_text_parity(pair, texts, source):
    _, tok, ref = pair
    assert_same(ours(tok.encode_batch(texts[source])), hf_encode(ref, texts[source]))


@needs_data
def test_pair_parity(pair, texts):
    _, tok, ref = pair
    questions, contexts = texts["questions"], texts["contexts"]
    assert_same(ours(tok.encode_batch(questions, contexts)), hf_encode(ref, questions, contexts))
    sents = texts["sst2"]
    assert_same(ours(tok.encode_batch(sents[:100], sents[100:200])), hf_encode(ref, sents[:100], sents[100:200]))
    assert ours([tok.encode(questions[0], contexts[0])]) == hf_encode(ref, [questions[0]], [contexts[0]])


@needs_data
def test_hello_world(pair):
    name, tok, _ = pair
    assert tok.encode("Hello world").ids == HELLO_WORLD[name]
    assert tok.decode(HELLO_WORLD[name]) == ("hello world" if "uncased" in name or "MiniLM" in name else "Hello world")


@needs_data
def test_special_ids_match_transformers(pair):
    _, tok, ref = pair
    for name in ("cls_token", "sep_token", "pad_token", "mask_token", "bos_token", "eos_token", "unk_token"):
        assert getattr(tok, f"{name}_id") == getattr(ref, f"{name}_id"), name
    assert tok.vocab_size == len(ref)


def assert_same_windows(encodings, out) -> None:
    """Our encodings flattened with their overflow == transformers' return_overflowing_tokens output."""
    windows = [(i, w) for i, e in enumerate(encodings) for w in [e, *e.overflowing]]
    assert len(windows) > len(encodings)  # the test really exercises overflow
    assert [i for i, _ in windows] == list(out["overflow_to_sample_mapping"])
    assert [w.ids for _, w in windows] == out["input_ids"]
    assert [w.offsets for _, w in windows] == [[tuple(o) for o in row] for row in out["offset_mapping"]]
    assert [w.type_ids for _, w in windows] == out["token_type_ids"]
    assert [w.special_tokens_mask for _, w in windows] == out["special_tokens_mask"]


@pytest.mark.parametrize("max_length, stride", [(384, 128), (128, 32)])
@needs_data
def test_overflow_windows_match_transformers(pair, texts, max_length, stride):
    name, tok, ref = pair
    # the longest paragraphs, so that 384-token windows overflow too
    order = sorted(range(len(texts["all_contexts"])), key=lambda i: -len(texts["all_contexts"][i]))[:40]
    questions = [texts["all_questions"][i] for i in order]
    contexts = [texts["all_contexts"][i] for i in order]
    hf_kwargs = dict(max_length=max_length, stride=stride, return_overflowing_tokens=True,
                     return_offsets_mapping=True, return_token_type_ids=True, return_special_tokens_mask=True)
    single = tok.encode_batch(contexts, truncation="longest_first", max_length=max_length, stride=stride)
    assert_same_windows(single, ref(contexts, truncation="longest_first", **hf_kwargs))
    if name != "gpt2":  # question answering: the question stays whole, the context is windowed
        encodings = tok.encode_batch(questions, contexts, truncation="only_second",
                                     max_length=max_length, stride=stride)
        assert_same_windows(encodings, ref(questions, contexts, truncation="only_second", **hf_kwargs))
        assert max(len(w.ids) for e in encodings for w in [e, *e.overflowing]) == max_length
    # the shared backend is left untruncated
    assert tok.backend.truncation is None and tok.backend.padding is None
    assert len(tok.encode(contexts[0]).ids) > max_length


@needs_data
def test_tokenizer_json_truncation_and_padding_are_disabled():
    """all-MiniLM-L6-v2's tokenizer.json pads and truncates to 128; the backend must not."""
    tok = load_tokenizer(FOLDERS["all-MiniLM-L6-v2"][0])
    assert tok.kind == "tokenizer.json" and tok.model_max_length == 512 and tok.do_lower_case is True
    assert tok.backend.truncation is None and tok.backend.padding is None
    long_text = "word " * 300
    assert len(tok.encode(long_text).ids) == 302
    assert len(tok.encode("short").ids) == 3
    assert len(tok.encode(long_text, max_length=64).ids) == 64


@needs_data
def test_save_loads_in_transformers_identically(pair, texts, tmp_path):
    name, tok, ref = pair
    saved = tok.save(tmp_path / name)
    names = {p.name for p in saved.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert {"vocab.txt"} <= names if tok.flavour == "wordpiece" else {"vocab.json", "merges.txt"} <= names
    special = ref.mask_token or ref.eos_token
    samples = texts["sst2"][:50] + texts["wiki"][-50:] + [f"Hello {special} world", f"a{special}b  {special} c"]
    reloaded_hf = AutoTokenizer.from_pretrained(str(saved))
    assert_same(hf_encode(reloaded_hf, samples), ours(tok.encode_batch(samples)))
    assert_same(ours(load_tokenizer(saved).encode_batch(samples)), ours(tok.encode_batch(samples)))
    questions, contexts = texts["questions"][:30], texts["contexts"][:30]
    assert_same(hf_encode(reloaded_hf, questions, contexts), ours(tok.encode_batch(questions, contexts)))
    reloaded = load_tokenizer(saved)
    assert (reloaded.model_max_length, reloaded.vocab_size, reloaded.pad_token_id, reloaded.mask_token_id) == (
        tok.model_max_length, tok.vocab_size, tok.pad_token_id, tok.mask_token_id)


# ---------------------------------------------------------------------------------------------
# tiny hand-built vocabularies (no shared data needed)

WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", ",", "un", "##want",
                   "##ed", "runn", "##ing", "Hello"]


@pytest.fixture
def tiny_bert(tmp_path) -> Path:
    folder = tmp_path / "tiny-bert-uncased"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(WORDPIECE_VOCAB) + "\n", encoding="utf-8")
    return folder


def test_tiny_wordpiece_by_hand(tiny_bert):
    tok = load_tokenizer(tiny_bert)
    assert hone.load_tokenizer is load_tokenizer
    assert (tok.kind, tok.vocab_size, tok.model_max_length) == ("wordpiece", len(WORDPIECE_VOCAB), 512)
    ids = (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id, tok.unk_token_id)
    assert ids == (2, 3, 0, 4, 1)
    assert tok.bos_token_id is None and tok.eos_token_id is None
    enc = tok.encode("Hello, worlds! Unwanted running", "héllo")
    #                 [CLS] hello ,  world ##s  !=[UNK] un ##want ##ed runn ##ing [SEP] hello(accent stripped) [SEP]
    assert enc.ids == [2, 5, 8, 6, 7, 1, 9, 10, 11, 12, 13, 3, 5, 3]
    assert enc.offsets == [(0, 0), (0, 5), (5, 6), (7, 12), (12, 13), (13, 14), (15, 17), (17, 21), (21, 23),
                           (24, 28), (28, 31), (0, 0), (0, 5), (0, 0)]
    assert enc.type_ids == [0] * 12 + [1, 1]
    assert enc.special_tokens_mask == [1] + [0] * 10 + [1, 0, 1]
    assert tok.decode(enc.ids) == "hello, worlds unwanted running hello"  # [UNK] is special too
    assert tok.decode(enc.ids, skip_special_tokens=False) == (
        "[CLS] hello, worlds [UNK] unwanted running [SEP] hello [SEP]")
    assert tok.encode("[MASK] hello", add_special_tokens=False).ids == [4, 5]
    ref = BertTokenizerFast.from_pretrained(str(tiny_bert))
    texts = ["Hello, worlds! Unwanted running", "unwanted hello [MASK] worlds", "  ", "running" * 30]
    assert_same(ours(tok.encode_batch(texts, texts[::-1])), hf_encode(ref, texts, texts[::-1]))


def test_tiny_wordpiece_cased_settings(tmp_path):
    for name, config, lowered in [("tiny-cased", None, False), ("tiny", {"do_lower_case": False}, False),
                                  ("tiny-cased", {"do_lower_case": True}, True), ("tiny", None, True)]:
        folder = tmp_path / f"{name}-{lowered}-{config is None}"
        folder.mkdir()
        (folder / "vocab.txt").write_text("\n".join(WORDPIECE_VOCAB) + "\n", encoding="utf-8")
        if config is not None:
            (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        tok = load_tokenizer(folder)
        assert tok.do_lower_case is lowered
        assert tok.encode("Hello", add_special_tokens=False).ids == ([5] if lowered else [14])


def test_truncation_leaves_no_state_and_validates(tiny_bert):
    tok = load_tokenizer(tiny_bert)
    text = "hello world " * 20
    windows = tok.encode(text, max_length=10, stride=2, truncation="longest_first")
    assert len(windows.ids) == 10 and len(windows.overflowing) > 0
    assert all(w.ids[0] == tok.cls_token_id and w.ids[-1] == tok.sep_token_id for w in windows.overflowing)
    # consecutive windows share `stride` tokens
    first, second = windows, windows.overflowing[0]
    assert first.ids[-3:-1] == second.ids[1:3]
    assert tok.backend.truncation is None
    assert len(tok.encode(text).ids) == 42
    assert len(tok.encode(text, max_length=10).ids) == 10  # max_length alone implies longest_first
    with pytest.raises(TokenizerError, match="truncation="):
        tok.encode_batch([text], truncation="only_third")
    with pytest.raises(TokenizerError, match="pairs"):
        tok.encode_batch([text, text], [text])
    with pytest.raises(TokenizerError, match="list of texts"):
        tok.encode_batch(text)
    with pytest.raises(TokenizerError, match="invalid truncation settings"):  # stride >= max_length - 2 specials
        tok.encode(text, max_length=6, stride=5)
    with pytest.raises(TokenizerError, match="lower stride"):  # the question leaves only 4 tokens, stride 4
        tok.encode_batch(["hello world"], [text], truncation="only_second", max_length=9, stride=4)
    with pytest.raises(TokenizerError, match="tokenization failed"):  # the question alone exceeds max_length
        tok.encode_batch([text], ["hello"], truncation="only_second", max_length=8)


BYTE_CHARS = ["h", "e", "l", "o", "w", "r", "d", "Ġ", "!", "Ã", "©"]
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("Ġwor", "l"),
          ("Ġworl", "d"), ("Ã", "©")]


def write_bpe(folder: Path, specials_first: list[str], specials_last: list[str]) -> None:
    tokens = specials_first + BYTE_CHARS + ["".join(m) for m in MERGES] + specials_last
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")


@pytest.mark.parametrize("flavour", ["roberta", "gpt2"])
def test_tiny_byte_level_bpe(tmp_path, flavour):
    folder = tmp_path / flavour
    if flavour == "roberta":
        write_bpe(folder, ["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"])
        ref = RobertaTokenizerFast.from_pretrained(str(folder))
    else:
        write_bpe(folder, [], ["<|endoftext|>"])
        ref = GPT2TokenizerFast.from_pretrained(str(folder))
    tok = load_tokenizer(folder)
    assert tok.kind == flavour
    hello = len(BYTE_CHARS) + 3 + (4 if flavour == "roberta" else 0)  # after the specials, chars and 3 merges
    enc = tok.encode("hello world!")
    if flavour == "roberta":
        assert enc.ids == [0, hello, hello + 5, 4 + 8, 2]  # <s> hello Ġworld ! </s>
        assert enc.offsets == [(0, 0), (0, 5), (6, 11), (11, 12), (0, 0)]  # trim_offsets drops the space
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 2, 1, len(MERGES) + 15)
        assert tok.encode("hello <mask>", add_special_tokens=False).ids == [hello, tok.mask_token_id]  # lstrip
    else:
        assert enc.ids == [hello, hello + 5, 8]
        assert enc.offsets == [(0, 5), (5, 11), (11, 12)]
        assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (21, 21, 21, None)
    assert tok.decode(enc.ids) == "hello world!"
    texts = ["hello world!", "world hello", "héllo  world", "!!", " hello"]
    assert_same(ours(tok.encode_batch(texts)), hf_encode(ref, texts))
    assert_same(ours(tok.encode_batch(texts, texts[::-1])), hf_encode(ref, texts, texts[::-1]))
    assert_same(hf_encode(AutoTokenizer.from_pretrained(str(tok.save(tmp_path / "saved"))), texts),
                hf_encode(ref, texts))


# ---------------------------------------------------------------------------------------------
# errors


def test_error_missing_and_empty_folders(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(TokenizerError, match="is a file"):
        load_tokenizer(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    expected = r"no tokenizer files.*config\.json.*tokenizer\.json.*vocab\.txt.*merges\.txt"
    with pytest.raises(TokenizerError, match=expected):
        load_tokenizer(empty)


def test_error_bpe_files(tmp_path):
    only_merges = tmp_path / "only-merges"
    only_merges.mkdir()
    (only_merges / "merges.txt").write_text("#version: 0.2\nh e\n")
    with pytest.raises(TokenizerError, match="merges.txt has no vocab.json"):
        load_tokenizer(only_merges)
    only_vocab = tmp_path / "only-vocab"
    only_vocab.mkdir()
    (only_vocab / "vocab.json").write_text('{"<s>": 0, "h": 1}')
    with pytest.raises(TokenizerError, match="vocab.json has no merges.txt"):
        load_tokenizer(only_vocab)
    (only_vocab / "merges.txt").write_text("#version: 0.2\nh e\n")
    with pytest.raises(TokenizerError, match="merges.txt does not fit"):  # "e" is not in the vocabulary
        load_tokenizer(only_vocab)
    (only_vocab / "merges.txt").write_text("#version: 0.2\nh e x\n")
    with pytest.raises(TokenizerError, match="line 2"):
        load_tokenizer(only_vocab)
    (only_vocab / "vocab.json").write_text('{"h": 0')
    with pytest.raises(TokenizerError, match="vocab.json is not valid JSON"):
        load_tokenizer(only_vocab)
    (only_vocab / "vocab.json").write_text('["h"]')
    with pytest.raises(TokenizerError, match="vocab.json must be a JSON object"):
        load_tokenizer(only_vocab)
    (only_vocab / "vocab.json").write_text('{"h": 0, "e": 1, "he": 2}')
    (only_vocab / "merges.txt").write_text("#version: 0.2\nh e\n")
    with pytest.raises(TokenizerError, match="neither '<s>'.*model_type"):
        load_tokenizer(only_vocab)


def test_error_corrupt_files(tiny_bert, tmp_path):
    (tiny_bert / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json is not valid JSON"):
        load_tokenizer(tiny_bert)
    (tiny_bert / "tokenizer_config.json").write_text('{"unk_token": "<oov>"}')
    with pytest.raises(TokenizerError, match="no unknown token '<oov>'"):
        load_tokenizer(tiny_bert)
    (tiny_bert / "tokenizer_config.json").unlink()
    (tiny_bert / "vocab.txt").write_bytes(b"\xff\xfe[PAD]\n")
    with pytest.raises(TokenizerError, match="vocab.txt is not UTF-8"):
        load_tokenizer(tiny_bert)
    (tiny_bert / "vocab.txt").write_text("")
    with pytest.raises(TokenizerError, match="vocab.txt is empty"):
        load_tokenizer(tiny_bert)
    (tiny_bert / "tokenizer.json").write_text('{"version": "1.0"')
    with pytest.raises(TokenizerError, match="tokenizer.json is not valid JSON"):
        load_tokenizer(tiny_bert)
    (tiny_bert / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    with pytest.raises(TokenizerError, match="tokenizer.json is not a tokenizers serialization"):
        load_tokenizer(tiny_bert)


def test_tokenizer_json_roundtrip_without_data(tiny_bert, tmp_path):
    """A folder saved by save() loads back through its tokenizer.json with the same settings."""
    (tiny_bert / "tokenizer_config.json").write_text('{"model_max_length": 128, "do_lower_case": true}')
    tok = load_tokenizer(tiny_bert)
    saved = tok.save(tmp_path / "saved")
    assert (saved / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1] == WORDPIECE_VOCAB
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] is True
    reloaded = load_tokenizer(saved)
    assert (reloaded.kind, reloaded.flavour, reloaded.model_max_length) == ("tokenizer.json", "wordpiece", 128)
    texts = ["Hello, worlds! Unwanted running", "[MASK] hello"]
    assert_same(ours(reloaded.encode_batch(texts, texts)), ours(tok.encode_batch(texts, texts)))
    reference = AutoTokenizer.from_pretrained(str(saved))
    assert_same(hf_encode(reference, texts, texts), ours(tok.encode_batch(texts, texts)))


# ---------------------------------------------------------------------------------------------
# added tokens of vocabulary-file folders


@pytest.mark.parametrize("declared_in", ["added_tokens.json", "tokenizer_config.json"])
def test_added_tokens_keep_their_ids_like_transformers(tiny_bert, declared_in):
    first = len(WORDPIECE_VOCAB)
    if declared_in == "added_tokens.json":  # legacy: special when a config names it, normalized otherwise
        (tiny_bert / "added_tokens.json").write_text(json.dumps({"[NEW]": first + 1, "<ent>": first}))
        (tiny_bert / "special_tokens_map.json").write_text(json.dumps({"extra_special_tokens": ["[NEW]"]}))
    else:
        declared = {str(i): {"content": c, "lstrip": False, "normalized": n, "rstrip": False, "single_word": False,
                             "special": s}
                    for i, c, n, s in [(0, "[PAD]", False, True), (first, "<ent>", True, False),
                                       (first + 1, "[NEW]", False, True)]}
        (tiny_bert / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": declared}))
    tok = load_tokenizer(tiny_bert)
    assert (tok.backend.token_to_id("<ent>"), tok.backend.token_to_id("[NEW]")) == (first, first + 1)
    assert tok.vocab_size == first + 2
    enc = tok.encode("Hello <ENT>world[NEW] hellos")
    #                 [CLS] hello <ent>(lower-cased first) world [NEW] hello ##s [SEP]
    assert enc.ids == [2, 5, first, 6, first + 1, 5, 7, 3]
    ref = BertTokenizerFast.from_pretrained(str(tiny_bert))
    texts = ["Hello <ENT>world[NEW] hellos", "<ent><ent> [NEW] un<ent>wanted", "[new] <Ent>"]
    assert_same(ours(tok.encode_batch(texts, texts[::-1])), hf_encode(ref, texts, texts[::-1]))
    saved = tok.save(tiny_bert.parent / "saved")
    for reloaded in (load_tokenizer(saved), AutoTokenizer.from_pretrained(str(saved))):
        got = ours(reloaded.encode_batch(texts)) if isinstance(reloaded, HoneTokenizer) else hf_encode(reloaded, texts)
        assert_same(got, ours(tok.encode_batch(texts)))


@pytest.mark.parametrize("file, content, match", [
    ("added_tokens.json", {"<ent>": 99}, r"added_tokens.json: added token '<ent>' has id 99, .* gets id 15"),
    ("added_tokens.json", {"<ent>": "15"}, r"added_tokens.json must be a JSON object mapping each added token"),
    ("added_tokens.json", ["<ent>"], r"added_tokens.json must be a JSON object mapping each added token"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"x": {"content": "<e>"}}},
     r"tokenizer_config.json: added_tokens_decoder entry 'x' must be an integer id"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"15": "<e>"}},
     r"tokenizer_config.json: added_tokens_decoder entry '15' must be an integer id"),
    ("tokenizer_config.json", {"added_tokens_decoder": ["<e>"]},
     r"tokenizer_config.json: added_tokens_decoder must map ids to token objects"),
])
def test_added_token_errors_name_the_file(tiny_bert, file, content, match):
    (tiny_bert / file).write_text(json.dumps(content))
    with pytest.raises(TokenizerError, match=match):
        load_tokenizer(tiny_bert)
