"""Sparse masked-LM prediction: given labels, only the targets go through the LM head.

The loss must be the dense one (the same mean over targets) and so must every gradient, in
padded, unpadded and packed execution; and BertForPreTraining's loss and gradients must equal
transformers' (which predicts every position) on identical weights and batches, on random
data and on instances prepared from real text with the real bert-base-uncased vocabulary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hone.data.collate import pad_collate
from hone.data.masking import Masker
from hone.data.packing import PackCollator
from hone.data.pretraining import prepare_pretraining
from hone.data.shards import PretrainingDataset
from hone.models.checkpoint import build_model, load_model
from paths import DATA

transformers = pytest.importorskip("transformers")

VOCAB = 120
TOL = 1e-5
CONFIGS = {
    "bert": dict(model_type="bert", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, pad_token_id=0),
    "roberta": dict(model_type="roberta", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
                    pad_token_id=1),
}
CLS, SEP, MASK = 2, 3, 4


def make_model(model_type: str, task: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(CONFIGS[model_type], task).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random biases and LayerNorms too, so a misplaced one would show
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def make_rows(task: str, lengths=(30, 12, 45, 7, 21), seed: int = 0) -> list[dict]:
    """[CLS] A [SEP] B [SEP] rows masked as Google's recipe does (15%, at least one target)."""
    g = np.random.default_rng(seed)
    seqs = []
    for n in lengths:
        ids = g.integers(5, VOCAB, n)
        ids[0], ids[n // 2], ids[-1] = CLS, SEP, SEP
        seqs.append(ids)
    tokens, offsets = np.concatenate(seqs), np.concatenate([[0], np.cumsum(lengths)])
    masker = Masker(mask_token_id=MASK, vocab_size=VOCAB, special_ids=[0, 1, CLS, SEP, MASK])
    inputs, labels = masker.mask(tokens, offsets, g)
    rows = []
    for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
        row = {"input_ids": inputs[a:b], "attention_mask": np.ones(b - a, dtype=np.int64), "labels": labels[a:b],
               "token_type_ids": (np.arange(b - a) > (b - a) // 2).astype(np.int64)}
        if task == "pretraining":
            row["next_sentence_label"] = i % 2
        rows.append(row)
    return rows


def loss_and_grads(model, batch: dict, **options):
    model.zero_grad(set_to_none=True)
    out = model(**batch, **options)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert a.shape == b.shape, (what, a.shape, b.shape)
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= tol, f"{what}: max |diff| {diff}"


def assert_same_grads(ref: dict, got: dict) -> None:
    assert ref.keys() == got.keys() and ref
    for name, g in ref.items():
        assert_close(g, got[name], f"grad {name}", tol=TOL * max(1.0, g.abs().max().item()))


@pytest.mark.parametrize("model_type,task", [("bert", "mlm"), ("bert", "pretraining"), ("roberta", "mlm")])
@pytest.mark.parametrize("mode", ["padded", "unpadded", "packed"])
def test_sparse_loss_and_grads_equal_dense(model_type, task, mode):
    model = make_model(model_type, task)
    rows = make_rows(task)
    if model_type == "roberta":
        rows = [{k: v for k, v in row.items() if k != "token_type_ids"} for row in rows]
    pad = model.config.pad_token_id
    batch = PackCollator.for_config(model.config, 64)(rows) if mode == "packed" else pad_collate(rows, pad)
    model.set_unpadded(mode == "unpadded")
    dense, dense_grads = loss_and_grads(model, batch, dense_logits=True)
    sparse, sparse_grads = loss_and_grads(model, batch)
    assert_close(dense.loss, sparse.loss, "loss")
    assert_same_grads(dense_grads, sparse_grads)

    logits_key = "prediction_logits" if task == "pretraining" else "logits"
    assert sparse.get(logits_key) is None and dense.masked_logits is None
    targets = batch["labels"] != -100  # (B, T): the targets in row-major order
    assert_close(dense[logits_key][targets], sparse.masked_logits, "logits at the targets")
    assert torch.equal(sparse.masked_labels, batch["labels"][targets])
    if task == "pretraining":
        assert_close(dense.seq_relationship_logits, sparse.seq_relationship_logits, "seq_relationship_logits")
    # by hand: the mean cross-entropy over the targets alone
    by_hand = torch.nn.functional.cross_entropy(dense[logits_key][targets], batch["labels"][targets])
    if task == "pretraining":
        by_hand = by_hand + torch.nn.functional.cross_entropy(dense.seq_relationship_logits,
                                                              batch["next_sentence_label"])
    assert_close(by_hand, sparse.loss, "loss by hand")


def test_without_labels_logits_are_dense():
    model = make_model("bert", "pretraining")
    batch = pad_collate(make_rows("pretraining"), 0)
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert out.prediction_logits.shape == (*batch["input_ids"].shape, VOCAB) and out.loss is None


def test_bf16_autocast_sparse_close_to_dense():
    model = make_model("bert", "pretraining")
    batch = pad_collate(make_rows("pretraining"), 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = model(**batch, dense_logits=True).loss
        sparse = model(**batch).loss
    assert torch.isfinite(sparse) and abs(dense.item() - sparse.item()) < 0.02 * dense.item()


# ----------------------------------------------------------------------------- transformers' BertForPreTraining

def transformers_pair(tmp_path, config: dict):
    """transformers' BertForPreTraining with random weights, and hone's model loaded from its folder."""
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**{k: v for k, v in config.items() if k != "model_type"},
                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref = transformers.BertForPreTraining(hf_config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ref.save_pretrained(tmp_path)
    return ref.train(), load_model(tmp_path, "pretraining").train()


def assert_parity_with_transformers(ref, model, batches) -> None:
    """Same loss and the same gradients (in transformers' names) on every batch, padded and unpadded."""
    for batch in batches:
        ref.zero_grad(set_to_none=True)
        expected = ref(**batch)
        expected.loss.backward()
        ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
        for unpadded in (False, True):
            model.set_unpadded(unpadded)
            got, grads = loss_and_grads(model, batch)
            assert got.prediction_logits is None  # really the sparse path
            assert abs(got.loss.item() - expected.loss.item()) <= TOL * max(1.0, expected.loss.item())
            hf_grads = model.hf_key_map().to_hf(grads)
            assert set(hf_grads) <= set(ref_grads) and len(hf_grads) == len(ref_grads)
            for name, g in hf_grads.items():
                assert_close(g, ref_grads[name], f"grad {name}", tol=TOL * max(1.0, g.abs().max().item()))


def test_pretraining_loss_and_grads_equal_transformers(tmp_path):
    ref, model = transformers_pair(tmp_path, CONFIGS["bert"])
    batches = [pad_collate(make_rows("pretraining", seed=s), 0) for s in range(2)]
    assert_parity_with_transformers(ref, model, batches)


@pytest.mark.data
def test_pretraining_parity_on_prepared_wikitext_with_the_bert_vocabulary(tmp_path):
    text = tmp_path / "wiki.valid.raw"
    text.write_text((DATA / "wikitext" / "wikitext-2-raw" / "wiki.valid.raw").read_text(encoding="utf-8")[:40_000],
                    encoding="utf-8")
    prepare_pretraining(["--input", str(text), "--tokenizer", str(DATA / "tokenizers" / "bert-base-uncased"),
                         "--output", str(tmp_path / "data"), "--dupe_factor", "1", "--max_seq_length", "64",
                         "--max_predictions_per_seq", "10"])
    dataset = PretrainingDataset.open(tmp_path / "data")
    config = dict(CONFIGS["bert"], vocab_size=30522)
    ref, model = transformers_pair(tmp_path / "model", config)
    by_length = np.argsort(dataset.lengths(), kind="stable")  # short (short_seq_prob) and full rows together
    picks = [[*by_length[:3], *by_length[-3:]], [*by_length[3:6], *by_length[-6:-3]]]
    batches = [pad_collate([dataset[int(i)] for i in rows], 0) for rows in picks]
    assert all((b["attention_mask"] == 0).any() for b in batches)  # rows of different lengths: really padded
    assert_parity_with_transformers(ref, model, batches)
