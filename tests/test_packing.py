"""Sequence packing: first-fit-decreasing, the packed batch, and packed == unpacked.

A packed batch must give every example exactly what it gets alone: the same logits at
its tokens, the same pooled logits, the same losses and gradients (fp32, 1e-5). The
unpacked reference is the padded, transformers-exact path, except for QA whose packed
loss is defined as the unpacked loss under unpadded execution (padding out of the softmax).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import hone
from hone.data.collate import pad_collate
from hone.data.packing import (
    PackCollator,
    PackingError,
    first_fit_decreasing,
    pack_collate,
    unpack,
)
from hone.models.bert import RobertaConfig
from paths import DATA as SHARED_DATA
from test_unpadded import VOCAB, assert_close, make_model  # same tiny models as the unpadded tests

DATA = SHARED_DATA
MINILM = DATA / "models" / "all-MiniLM-L6-v2"
SQUAD_EVAL = DATA / "squad" / "splits" / "dev-v2.0-articles-20-34.json"
LENGTHS = (9, 3, 6, 2, 7, 4, 5, 12)
MAX_SEQ_LEN = 12


def test_first_fit_decreasing_by_hand():
    # 8 -> new row; 6 -> new; 5 -> new; 4 -> row of 6; 3 -> row of 5; 2 -> row of 8
    assert first_fit_decreasing([5, 3, 8, 2, 4, 6], 10) == [[2, 3], [5, 4], [0, 1]]
    assert first_fit_decreasing([4, 4, 4], 4) == [[0], [1], [2]]  # ties keep input order


def test_first_fit_decreasing_places_every_example_once_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 385, size=200).tolist()
    rows = first_fit_decreasing(lengths, 384)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 384 for row in rows)
    # first-fit: no example could have gone into an earlier row than its own
    assert len(rows) < 200 and len(rows) >= -(-sum(lengths) // 384)


def test_too_long_or_empty_is_a_clear_error():
    with pytest.raises(PackingError, match="example 1 has 13 tokens, more than max_seq_len=12"):
        first_fit_decreasing([3, 13], 12)
    with pytest.raises(PackingError, match="empty batch"):
        pack_collate([], 12, 0)


def test_pack_collate_by_hand():
    rows = [
        {"input_ids": [101, 5, 102, 0], "attention_mask": [1, 1, 1, 0], "token_type_ids": [0, 0, 1, 0],
         "start_positions": 1, "end_positions": 2},
        {"input_ids": [101, 7, 8, 9, 102], "token_type_ids": [0, 0, 1, 1, 1], "start_positions": 0, "end_positions": 0},
        {"input_ids": [101, 6], "token_type_ids": [0, 1], "start_positions": 1, "end_positions": 1},
    ]
    batch = pack_collate(rows, 8, pad_token_id=0)
    # lengths 3, 5, 2: FFD rows [[1, 0], [2]] -> examples in packing order 1, 0, 2
    assert batch["input_ids"].tolist() == [[101, 7, 8, 9, 102, 101, 5, 102], [101, 6, 0, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 1, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["cu_seqlens"].tolist() == [0, 5, 8, 10] and batch["cu_seqlens"].dtype == torch.int32
    assert batch["start_positions"].tolist() == [0, 1, 1]  # unchanged: relative to each example
    assert batch["end_positions"].tolist() == [0, 2, 1]

    roberta = pack_collate([{"input_ids": [0, 5, 2], "labels": [-100, 5, -100]}], 8, pad_token_id=1,
                           first_position=RobertaConfig(pad_token_id=1).position_offset)
    assert roberta["position_ids"].tolist() == [[2, 3, 4]]  # RoBERTa counts from pad + 1
    assert roberta["labels"].tolist() == [[-100, 5, -100]]  # token labels stay per token
    multi = pack_collate([{"input_ids": [3, 4], "labels": np.array([1.0, 0.0, 1.0])}] * 2, 8, 0)
    assert multi["labels"].shape == (2, 3)  # float vectors are per example


def test_pack_collator_for_config_and_pickles():
    config = make_model("roberta", None).config
    collator = pickle.loads(pickle.dumps(PackCollator.for_config(config, 16)))
    assert (collator.pad_token_id, collator.first_position) == (1, 2)
    gpt2 = make_model("gpt2", None).config
    assert PackCollator.for_config(gpt2, 16).first_position == 0


# ----------------------------------------------------------------------------- packed == unpacked

def make_rows(model_type: str, task: str | None, variant: str = "", seed: int = 0) -> list[dict]:
    """Examples of LENGTHS tokens with this task's labels, as a dataset would give them."""
    g = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(LENGTHS):
        ids = g.integers(3, VOCAB, n)
        row = {"input_ids": ids, "attention_mask": np.ones(n, dtype=np.int64)}
        if model_type == "bert":
            row["token_type_ids"] = (np.arange(n) >= n // 2).astype(np.int64)
        if task == "qa":
            row["start_positions"], row["end_positions"] = int(g.integers(0, n)), int(g.integers(0, n))
        elif task == "classification":
            row["labels"] = float(g.normal()) if variant == "regression" else int(g.integers(0, 3))
        elif task in ("mlm", "pretraining"):
            row["labels"] = np.where(g.random(n) < 0.5, ids, -100)
            if task == "pretraining":
                row["next_sentence_label"] = i % 2
        elif task == "clm":
            row["labels"] = ids.copy()
        rows.append(row)
    return rows


def run(model, batch: dict, unpadded: bool = False, **options):
    model.set_unpadded(unpadded)
    model.zero_grad(set_to_none=True)
    out = model(**batch, **options)
    if out.loss is not None:
        out.loss.backward()
    model.set_unpadded(False)
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# (model_type, task, variant, per-token output keys, per-example output keys)
PACKED_CASES = [
    ("bert", None, "", ["last_hidden_state"], ["pooler_output"]),
    ("bert", "qa", "", ["start_logits", "end_logits"], []),
    ("bert", "classification", "single", [], ["logits"]),
    ("bert", "classification", "regression", [], ["logits"]),
    ("bert", "mlm", "", ["logits"], []),
    ("bert", "pretraining", "", ["prediction_logits"], ["seq_relationship_logits"]),
    ("roberta", "qa", "", ["start_logits", "end_logits"], []),
    ("roberta", "classification", "single", [], ["logits"]),
    ("roberta", "mlm", "", ["logits"], []),
    ("gpt2", "clm", "", ["logits"], []),
    ("gpt2", "classification", "single", [], ["logits"]),
    ("gpt2", "qa", "", ["start_logits", "end_logits"], []),
]


@pytest.mark.parametrize("model_type,task,variant,token_keys,example_keys", PACKED_CASES)
def test_packed_equals_unpacked(model_type, task, variant, token_keys, example_keys):
    model = make_model(model_type, task, variant)
    pad = model.config.pad_token_id
    rows = make_rows(model_type, task, variant)
    unpacked = pad_collate(rows, pad)
    packed = PackCollator.for_config(model.config, MAX_SEQ_LEN)(rows)
    assert packed["input_ids"].shape[0] < len(rows)  # really packed: several examples per row
    order = [i for row in first_fit_decreasing(LENGTHS, MAX_SEQ_LEN) for i in row]

    # QA's packed loss is defined as the unpacked one under unpadded execution
    dense = {"dense_logits": True} if task in ("mlm", "pretraining") else {}  # logits at every position
    ref, ref_grads = run(model, unpacked, unpadded=task == "qa", **dense)
    got, got_grads = run(model, packed, **dense)
    real = unpacked["attention_mask"].bool()
    for key in token_keys:
        per_example = unpack(got[key], packed)
        for s, i in enumerate(order):
            assert_close(ref[key][i][real[i]], per_example[s], f"{key} of example {i}")
    for key in example_keys:
        assert_close(ref[key][order], got[key], key)
    if task is not None:
        assert_close(ref.loss, got.loss, "loss")
        assert ref_grads.keys() == got_grads.keys()
        for name, g in ref_grads.items():
            assert_close(g, got_grads[name], f"grad {name}", tol=1e-5 * max(1.0, g.abs().max().item()))


def test_packed_qa_loss_is_mean_of_per_example_losses():
    """Independent of the unpadded path: each example alone (no padding at all) gives its loss."""
    model = make_model("bert", "qa")
    rows = make_rows("bert", "qa")
    batch = pack_collate(rows, MAX_SEQ_LEN, 0)
    with torch.no_grad():
        packed = model(**batch).loss
        alone = [model(**pad_collate([row], 0)).loss for row in rows]
    assert_close(packed, torch.stack(alone).mean(), "loss")


def test_packed_clm_never_predicts_across_examples():
    """Two one-example rows vs both in one row: same loss, so no cross-example prediction."""
    model = make_model("gpt2", "clm")
    rows = make_rows("gpt2", "clm")[:2]  # 9 + 3 tokens
    with torch.no_grad():
        together = model(**pack_collate(rows, 12, 0))
        apart = model(**pack_collate(rows, 9, 0))
    assert together.logits.shape[0] == 1 and apart.logits.shape[0] == 2
    assert_close(together.loss, apart.loss, "loss")


def test_packed_batch_needs_position_ids():
    model = make_model("bert", None)
    batch = pack_collate(make_rows("bert", None), MAX_SEQ_LEN, 0)
    del batch["position_ids"]
    with pytest.raises(ValueError, match="needs position_ids"):
        model(**batch)


@pytest.mark.data
def test_minilm_packed_squad_features_equal_unpacked():
    if not (MINILM / "model.safetensors").is_file() or not SQUAD_EVAL.is_file():
        pytest.skip("all-MiniLM-L6-v2 or the SQuAD split is absent")
    from hone.data.squad import prepare_train_features, read_squad

    tokenizer = hone.load_tokenizer(MINILM)
    features = prepare_train_features(read_squad(SQUAD_EVAL)[::400], tokenizer, max_seq_length=384, progress=False)
    rows = [features[i] for i in range(min(len(features), 8))]
    torch.manual_seed(0)
    model = hone.load_model(MINILM, "qa").eval()
    packed = pack_collate(rows, 384, tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] < len(rows)
    ref, ref_grads = run(model, pad_collate(rows, tokenizer.pad_token_id), unpadded=True)
    got, got_grads = run(model, packed)
    assert_close(ref.loss, got.loss, "loss")
    for name, g in ref_grads.items():
        assert_close(g, got_grads[name], f"grad {name}", tol=1e-5 * max(1.0, g.abs().max().item()))
