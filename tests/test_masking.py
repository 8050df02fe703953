"""Masked-LM masking (hone.data.masking) against the two references' definitions.

fixed_count is Google's create_pretraining_data (a fixed number of targets per sequence,
greedy over whole words), per_token is DataCollatorForLanguageModeling (independent draws);
both: 80% mask / 10% random / 10% kept, special tokens never targets. Statistics are checked
on large seeded samples with tolerances of several standard deviations.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from hone.data.collate import Collator
from hone.data.masking import Masker, MaskingCollator, MaskingError, special_token_ids, word_start_table
from hone.data.packing import PackCollator
from hone.data.tokenizer import load_tokenizer
from paths import DATA

VOCAB = 1000
CLS, SEP, PAD, MASK = 1, 2, 0, 3


def random_sequences(n: int, low: int, high: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] x [SEP] y [SEP] sequences of random lengths: flat tokens and offsets."""
    g = np.random.default_rng(seed)
    seqs = []
    for length in g.integers(low, high + 1, n):
        ids = g.integers(5, VOCAB, length)
        ids[0], ids[length // 2], ids[-1] = CLS, SEP, SEP
        seqs.append(ids)
    return np.concatenate(seqs), np.concatenate([[0], np.cumsum([len(s) for s in seqs])])


def masker(**kw) -> Masker:
    return Masker(mask_token_id=MASK, vocab_size=VOCAB, special_ids=[CLS, SEP, PAD, MASK], **kw)


def split_outcomes(tokens, inputs, chosen):
    """Shares of targets replaced by the mask token, kept, and replaced by another token."""
    replaced = inputs[chosen]
    masked = (replaced == MASK).mean()
    kept = (replaced == tokens[chosen]).mean()
    return masked, kept, 1.0 - masked - kept


def test_fixed_count_targets_per_sequence_and_80_10_10():
    tokens, offsets = random_sequences(4000, 8, 200)
    lengths = np.diff(offsets)
    m = masker(max_predictions_per_seq=20)
    inputs, labels = m.mask(tokens, offsets, np.random.default_rng(1))
    chosen = labels != -100
    per_seq = np.add.reduceat(chosen, offsets[:-1])
    # Google's num_to_predict, written out with Python's round (halves to even)
    expected = [min(20, max(1, int(round(0.15 * n)))) for n in lengths]
    assert per_seq.tolist() == expected
    assert (per_seq[lengths >= 200] == 20).all()  # the cap binds on long sequences
    special = np.isin(tokens, [CLS, SEP, PAD, MASK])
    assert not chosen[special].any()
    assert (labels[chosen] == tokens[chosen]).all() and (inputs[~chosen] == tokens[~chosen]).all()
    masked, kept, random_ = split_outcomes(tokens, inputs, chosen)
    n = chosen.sum()
    sd = np.sqrt(0.8 * 0.2 / n)
    assert abs(masked - 0.8) < 5 * sd and abs(kept - 0.1) < 5 * sd * 0.75 and abs(random_ - 0.1) < 5 * sd * 0.75


def test_fixed_count_share_of_non_special_tokens_is_15_percent_without_cap():
    tokens, offsets = random_sequences(3000, 100, 101)  # round(0.15 * 100 or 101) = 15
    chosen = masker().choose(tokens, offsets, np.random.default_rng(2))
    candidates = ~np.isin(tokens, [CLS, SEP])
    # 15 targets per sequence of 100 (or 101) tokens, of which 97 (or 98) can be chosen
    assert chosen.sum() == 15 * 3000
    assert chosen.sum() / candidates.sum() == pytest.approx(15 / 97.5, abs=0.002)


def test_fixed_count_chooses_positions_uniformly():
    """Every candidate position of a fixed-length sequence is equally likely (chi-square)."""
    n, length = 20_000, 40
    seq = np.arange(5, 5 + length)
    seq[0], seq[-1] = CLS, SEP
    tokens, offsets = np.tile(seq, n), np.arange(n + 1) * length
    chosen = masker().choose(tokens, offsets, np.random.default_rng(3)).reshape(n, length)
    counts = chosen.sum(0)
    assert counts[0] == counts[-1] == 0
    assert stats.chisquare(counts[1:-1]).pvalue > 1e-3


def test_per_token_policy_is_independent_draws():
    tokens, offsets = random_sequences(3000, 20, 120, seed=4)
    m = masker(policy="per_token")
    inputs, labels = m.mask(tokens, offsets, np.random.default_rng(5))
    chosen = labels != -100
    candidates = ~np.isin(tokens, [CLS, SEP])
    assert not chosen[~candidates].any()
    share = chosen.sum() / candidates.sum()
    assert abs(share - 0.15) < 5 * np.sqrt(0.15 * 0.85 / candidates.sum())
    # per sequence: Binomial(candidates, 0.15), so variance n p (1 - p), not the fixed count's 0
    per_seq = np.add.reduceat(chosen, offsets[:-1])
    n_cand = np.add.reduceat(candidates, offsets[:-1])
    z = (per_seq - 0.15 * n_cand) / np.sqrt(0.15 * 0.85 * n_cand)
    assert abs(z.mean()) < 0.1 and abs(z.var() - 1.0) < 0.1
    masked, kept, random_ = split_outcomes(tokens, inputs, chosen)
    assert masked == pytest.approx(0.8, abs=0.01) and kept == pytest.approx(0.1, abs=0.01)


def test_same_seed_same_masks_and_settings_checked():
    tokens, offsets = random_sequences(50, 10, 60)
    m = masker(max_predictions_per_seq=5)
    a = m.mask(tokens, offsets, np.random.default_rng(7))
    b = m.mask(tokens, offsets, np.random.default_rng(7))
    c = m.mask(tokens, offsets, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    with pytest.raises(MaskingError, match="per_token has no cap"):
        masker(policy="per_token", max_predictions_per_seq=20)
    with pytest.raises(MaskingError, match="not one of"):
        masker(policy="bernoulli")
    with pytest.raises(MaskingError, match="probability"):
        masker(masked_lm_prob=1.5)
    with pytest.raises(MaskingError, match="mask token"):
        Masker(mask_token_id=None, vocab_size=VOCAB, special_ids=[])


# ----------------------------------------------------------------------------- whole words

WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "un", "##believ", "##able", "cat", "##s",
             "sat", "on", "mat", "##ress", "##es", "a", "dog", "##gy", "."]


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wordpiece")
    (folder / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n", encoding="utf-8")
    return load_tokenizer(folder)


def words_of(ids: list[int], vocab: list[str], specials: set[int]) -> list[list[int]]:
    """Positions of each word, written out: a '##' token joins the word before it, unless a
    special token comes between."""
    words: list[list[int]] = []
    for i, t in enumerate(ids):
        if t in specials:
            continue
        if vocab[t].startswith("##") and words and words[-1][-1] == i - 1:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def test_word_start_table_and_special_ids_of_a_wordpiece_tokenizer(wordpiece):
    table = word_start_table(wordpiece)
    assert [WORDPIECE[i] for i in np.flatnonzero(~table)] == ["##believ", "##able", "##s", "##ress", "##es", "##gy"]
    assert special_token_ids(wordpiece) == [0, 2, 3, 4]  # [PAD] [CLS] [SEP] [MASK]; [UNK] can be masked


@pytest.mark.parametrize("policy", ["fixed_count", "per_token"])
def test_whole_words_are_never_split(wordpiece, policy):
    text = ["the unbelievable cats sat on a mattresses", "dog doggy unbelievable mats", "cats cats doggy the mat"]
    g = np.random.default_rng(0)
    rows = []
    for _ in range(2000):
        a, b = g.choice(len(text), 2)
        enc = wordpiece.encode(text[a], text[b])
        ids = np.array(enc.ids)
        if g.random() < 0.3:  # B starting with a continuation, as after Google's front truncation
            first_b = enc.type_ids.index(1)
            ids = np.concatenate([ids[:first_b], [WORDPIECE.index("##s")], ids[first_b:]])
        rows.append(ids)
    tokens, offsets = np.concatenate(rows), np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    cap = 4
    m = Masker.for_tokenizer(wordpiece, whole_word_mask=True, policy=policy,
                             max_predictions_per_seq=cap if policy == "fixed_count" else None)
    chosen = m.choose(tokens, offsets, np.random.default_rng(1))
    specials = set(special_token_ids(wordpiece))
    word_sizes_seen = set()
    for row, lo, hi in zip(rows, offsets, offsets[1:]):
        picked = chosen[lo:hi]
        words = words_of(row.tolist(), WORDPIECE, specials)
        for word in words:
            assert picked[word].all() or not picked[word].any(), (row, word, picked)
            word_sizes_seen.add(len(word))
        assert not picked[[i for i, t in enumerate(row) if t in specials]].any()
        if policy == "fixed_count":
            budget = min(cap, max(1, round(0.15 * len(row))))
            taken = picked.sum()
            assert taken <= budget
            # greedy: a word is skipped only when it no longer fits
            skipped = [len(w) for w in words if not picked[w].any()]
            assert not skipped or taken > budget - min(skipped)
    assert {1, 2, 3} <= word_sizes_seen


def test_whole_word_per_token_probability_is_per_word(wordpiece):
    """run_mlm with whole words: each word (not token) is a target with probability p."""
    enc = wordpiece.encode("unbelievable unbelievable unbelievable unbelievable")  # 4 words of 3 tokens
    row = np.array(enc.ids)
    tokens = np.tile(row, 5000)
    offsets = np.arange(5001) * len(row)
    m = Masker.for_tokenizer(wordpiece, whole_word_mask=True, policy="per_token")
    chosen = m.choose(tokens, offsets, np.random.default_rng(2)).reshape(5000, len(row))
    words = chosen[:, 1:-1].reshape(5000, 4, 3)
    assert (words.all(-1) == words.any(-1)).all()
    assert words[..., 0].mean() == pytest.approx(0.15, abs=5 * np.sqrt(0.15 * 0.85 / 20000))


@pytest.mark.data
def test_byte_level_words_start_at_the_space_marker():
    tokenizer = load_tokenizer(DATA / "tokenizers" / "roberta-base")
    table = word_start_table(tokenizer)
    vocab = tokenizer.backend.get_vocab()
    assert table[vocab["Ġthe"]] and not table[vocab["ing"]] and table[tokenizer.cls_token_id]
    text = "Pretraining tokenizers split unbelievably long words into several pieces, don't they?"
    row = np.array(tokenizer.encode(text).ids)
    tokens, offsets = np.tile(row, 500), np.arange(501) * len(row)
    m = Masker.for_tokenizer(tokenizer, whole_word_mask=True, policy="per_token", masked_lm_prob=0.3)
    chosen = m.choose(tokens, offsets, np.random.default_rng(0)).reshape(500, len(row))
    pieces = [tokenizer.backend.id_to_token(int(i)) for i in row]
    words, current = [], []
    for i, piece in enumerate(pieces[1:-1], 1):  # the first real token starts a word without "Ġ"
        if current and piece.startswith("Ġ"):
            words.append(current)
            current = []
        current.append(i)
    words.append(current)
    assert max(len(w) for w in words) >= 3  # "Pretraining" / "unbelievably" are several pieces
    for word in words:
        assert (chosen[:, word].all(1) == chosen[:, word].any(1)).all()
    assert not chosen[:, [0, -1]].any()


# ----------------------------------------------------------------------------- the collator

def test_masking_collator_pads_packs_and_pickles():
    g = np.random.default_rng(0)
    rows = [{"input_ids": np.concatenate([[CLS], g.integers(5, VOCAB, n), [SEP]]),
             "attention_mask": np.ones(n + 2, dtype=np.int64)} for n in (30, 10, 50)]
    collator = MaskingCollator(masker(policy="per_token"), Collator(PAD), seed=1)
    torch.manual_seed(0)
    batch = collator(rows)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 52)
    labels, ids = batch["labels"].numpy(), batch["input_ids"].numpy()
    for r, row in enumerate(rows):
        n = len(row["input_ids"])
        assert (labels[r, n:] == -100).all() and (ids[r, n:] == PAD).all()
        target = labels[r, :n] != -100
        assert (labels[r, :n][target] == row["input_ids"][target]).all()
        assert (ids[r, :n][~target] == row["input_ids"][~target]).all()
    second = collator(rows)  # dynamic: a new draw every batch
    assert not torch.equal(second["labels"], batch["labels"])

    copy = pickle.loads(pickle.dumps(collator))  # a DataLoader worker: its own generator
    torch.manual_seed(0)
    assert torch.equal(copy(rows)["labels"], batch["labels"])  # same seeds -> same masks
    torch.manual_seed(1)
    assert not torch.equal(pickle.loads(pickle.dumps(collator))(rows)["labels"], batch["labels"])

    packed = MaskingCollator(masker(), PackCollator(64, PAD), seed=1)(rows)
    assert packed["input_ids"].shape[0] == 2 and len(packed["cu_seqlens"]) == 4
    assert (packed["labels"] != -100).sum() == sum(max(1, round(0.15 * (len(r["input_ids"])))) for r in rows)


def test_a_word_never_spans_two_sequences(wordpiece):
    """Rows without special tokens, back to back: "cat" ends one, "##s ##es" starts the next."""
    cat, s, es = (WORDPIECE.index(t) for t in ("cat", "##s", "##es"))
    tokens = np.tile([cat, s, es], 4000)
    offsets = np.concatenate([[0], np.cumsum([1, 2] * 4000)])
    m = Masker.for_tokenizer(wordpiece, whole_word_mask=True, policy="per_token", masked_lm_prob=0.5)
    chosen = m.choose(tokens, offsets, np.random.default_rng(0)).reshape(4000, 3)
    assert (chosen[:, 1] == chosen[:, 2]).all()  # "##s ##es" is one word here...
    assert (chosen[:, 0] != chosen[:, 1]).any()  # ...and not joined to the previous row's "cat"
