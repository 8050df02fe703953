"""Unpadded execution (`set_unpadded(True)`): the varlen layout against the padded path.

The padded path is transformers-exact (tests/test_models.py); here the same model runs
both ways on padded batches of different lengths (fp32) and every output at real
tokens, every pooled output, every loss and every parameter gradient must agree. The
one intended difference, the QA loss ignoring padding logits, is checked against a
cross-entropy written out by hand over each row's real tokens.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import hone
from hone.models.checkpoint import build_model
from hone.models.padding import (
    AttentionLayout,
    LayoutError,
    attention,
    attention_on_grid,
    attention_per_sequence,
)
from paths import DATA as SHARED_DATA

DATA = SHARED_DATA
MINILM = DATA / "models" / "all-MiniLM-L6-v2"
SQUAD_EVAL = DATA / "squad" / "splits" / "dev-v2.0-articles-20-34.json"
VOCAB = 99
TOL = 1e-5

CONFIGS = {
    "bert": dict(model_type="bert", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=128, max_position_embeddings=40, pad_token_id=0),
    "roberta": dict(model_type="roberta", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128, max_position_embeddings=40,
                    type_vocab_size=1, pad_token_id=1),
    "gpt2": dict(model_type="gpt2", vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=40,
                 pad_token_id=0, bos_token_id=2, eos_token_id=2),
}

# (model_type, task, variant)
CASES = [
    ("bert", None, ""),
    ("bert", "qa", ""),
    ("bert", "classification", "single"),
    ("bert", "classification", "regression"),
    ("bert", "classification", "multi"),
    ("bert", "mlm", ""),
    ("bert", "pretraining", ""),
    ("roberta", None, ""),
    ("roberta", "qa", ""),
    ("roberta", "classification", "single"),
    ("roberta", "mlm", ""),
    ("gpt2", None, ""),
    ("gpt2", "clm", ""),
    ("gpt2", "clm", "untied"),
    ("gpt2", "classification", "single"),
    ("gpt2", "qa", ""),
]

PER_TOKEN = {"last_hidden_state", "start_logits", "end_logits", "prediction_logits"}


def make_model(model_type: str, task: str | None, variant: str = "", seed: int = 0) -> torch.nn.Module:
    config = dict(CONFIGS[model_type])
    if task == "classification":
        config["num_labels"] = {"single": 3, "regression": 1, "multi": 4}[variant]
    if variant == "untied":
        config["tie_word_embeddings"] = False
    torch.manual_seed(seed)
    model = build_model(config, task).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random biases and LayerNorms too, so a misplaced one would show
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def make_batch(model_type: str, task: str | None, variant: str, pad: int, lengths=(9, 6, 3, 7), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = (torch.arange(T) < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(3, VOCAB, (B, T), generator=g).masked_fill(mask == 0, pad)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if model_type == "bert":
        inputs["token_type_ids"] = (torch.arange(T) >= 2).long().expand(B, T) * mask
    labels = {}
    if task == "qa":
        # inside each row; the third row's start (30) is past the batch and ignored in both paths
        labels = {"start_positions": torch.tensor([1, 4, 30, 0]), "end_positions": torch.tensor([3, 5, 2, 6])}
    elif task == "classification":
        labels = {"labels": {"single": torch.tensor([0, 2, 1, 2]),
                             "regression": torch.tensor([0.5, -1.0, 2.0, 0.1]),
                             "multi": torch.randint(0, 2, (B, 4), generator=g).float()}[variant]}
    elif task in ("mlm", "pretraining", "clm"):
        keep = mask.bool() if task == "clm" else (torch.rand(B, T, generator=g) < 0.5) & mask.bool()
        labels = {"labels": ids.masked_fill(~keep, -100)}
        if task == "pretraining":
            labels["next_sentence_label"] = torch.tensor([0, 1, 1, 0])
    return inputs, labels


def masked_qa_loss(out, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """QA loss over each row's real tokens only, by hand: padding logits out of the softmax."""
    total = 0.0
    for logits, positions in ((out.start_logits, start), (out.end_logits, end)):
        per_row = []
        for row, pos, real in zip(logits, positions.tolist(), mask.bool()):
            if pos < int(real.sum()):
                per_row.append(-torch.log_softmax(row[real], -1)[pos])
        total = total + torch.stack(per_row).mean()
    return total / 2


def reference_loss(out, inputs, labels, task):
    if task == "qa":
        return masked_qa_loss(out, inputs["attention_mask"], labels["start_positions"], labels["end_positions"])
    return out.loss


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert a.shape == b.shape, (what, a.shape, b.shape)
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= tol, f"{what}: max |diff| {diff}"


def run_both(model, inputs, labels, task):
    """Padded then unpadded: outputs, (reference) losses and gradients of each."""
    results = []
    for unpadded in (False, True):
        model.set_unpadded(unpadded)
        model.zero_grad(set_to_none=True)
        dense = {"dense_logits": True} if task in ("mlm", "pretraining") else {}  # logits at every position
        out = model(**inputs, **labels, **dense)
        loss = reference_loss(out, inputs, labels, task) if not unpadded else out.loss
        if loss is not None:
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, loss, grads))
    model.set_unpadded(False)
    return results


@pytest.mark.parametrize("model_type,task,variant", CASES)
def test_unpadded_equals_padded(model_type, task, variant):
    model = make_model(model_type, task, variant)
    inputs, labels = make_batch(model_type, task, variant, model.config.pad_token_id)
    (ref, ref_loss, ref_grads), (got, got_loss, got_grads) = run_both(model, inputs, labels, task)

    real = inputs["attention_mask"].bool()
    assert set(got.keys()) == set(ref.keys())
    for key in ref.keys():
        if key == "loss":
            continue
        a, b = ref[key], got[key]
        assert a.shape == b.shape, (key, a.shape, b.shape)
        if key in PER_TOKEN or key == "logits" and a.dim() == 3:  # per token: compare real tokens
            a, b = a[real], b[real]
        assert_close(a, b, key)
    if labels:
        assert_close(ref_loss, got_loss, "loss")
        assert ref_grads.keys() == got_grads.keys() and ref_grads
        for name, g in ref_grads.items():
            assert_close(g, got_grads[name], f"grad {name}", tol=TOL * max(1.0, g.abs().max().item()))


def test_unpadded_qa_padding_logits_are_lowest_and_padded_loss_keeps_transformers_semantics():
    model = make_model("bert", "qa")
    inputs, labels = make_batch("bert", "qa", "", 0)
    with torch.no_grad():
        padded = model(**inputs, **labels)
        unpadded = model.set_unpadded(True)(**inputs, **labels)
    pad = ~inputs["attention_mask"].bool()
    assert (unpadded.start_logits[pad] == torch.finfo(torch.float32).min).all()
    # the padded path keeps padding logits in the softmax (transformers), so it differs here
    assert abs(padded.loss.item() - unpadded.loss.item()) > 1e-3
    # without padding both paths agree exactly
    full = {k: v[:1] for k, v in inputs.items()}
    one = {k: v[:1] for k, v in labels.items()}
    with torch.no_grad():
        a = model.set_unpadded(False)(**full, **one).loss
        b = model.set_unpadded(True)(**full, **one).loss
    assert_close(a, b, "loss without padding")


def test_set_unpadded_switch():
    model = make_model("bert", "qa")
    assert not model.unpadded and not model.backbone.unpadded  # default off
    assert model.set_unpadded() is model
    assert model.unpadded and model.backbone.unpadded
    model.set_unpadded(False)
    assert not model.backbone.unpadded


def test_unpadded_without_mask_and_with_full_rows_runs_padded_layout():
    """No attention_mask: nothing to remove, the padded path runs and outputs are unchanged."""
    model = make_model("bert", "mlm")
    ids = torch.randint(3, VOCAB, (2, 7))
    with torch.no_grad():
        a = model(ids).logits
        b = model.set_unpadded(True)(ids).logits
        c = model(ids, torch.ones_like(ids)).logits
    assert torch.equal(a, b)
    assert_close(a, c, "all-real mask")


def test_gpt2_left_padding_unpadded():
    """Left padding: real tokens keep transformers' positions (arange over the padded row)."""
    model = make_model("gpt2", None)
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ref = model(ids, mask).last_hidden_state
        got = model.set_unpadded(True)(ids, mask).last_hidden_state
    assert_close(ref[mask.bool()], got[mask.bool()], "left-padded hidden states")
    assert (got[~mask.bool()] == 0).all()


def test_all_padding_row_is_a_clear_error():
    model = make_model("bert", None).set_unpadded(True)
    ids = torch.tensor([[5, 6, 7], [0, 0, 0]])
    with pytest.raises(LayoutError, match="all zeros"):
        model(ids, (ids != 0).long())


@pytest.mark.parametrize("model_type,task", [("bert", "qa"), ("gpt2", "clm")])
def test_unpadded_with_activation_checkpointing_and_dropout(model_type, task):
    """Training mode: checkpointed layers replay the same dropout masks on the varlen layout."""
    plain = make_model(model_type, task).train().set_unpadded(True)
    checkpointed = copy.deepcopy(plain)
    checkpointed.enable_activation_checkpointing()
    inputs, labels = make_batch(model_type, task, "", plain.config.pad_token_id)
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        loss = model(**inputs, **labels).loss
        loss.backward()
        assert torch.isfinite(loss)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name


def test_bf16_autocast_unpadded_close_to_padded():
    model = make_model("bert", "mlm")
    inputs, labels = make_batch("bert", "mlm", "", 0)
    losses = []
    for unpadded in (False, True):
        model.set_unpadded(unpadded)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**inputs, **labels)
        out.loss.backward()
        losses.append(out.loss.item())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert abs(losses[0] - losses[1]) < 0.05 * abs(losses[0])


# ----------------------------------------------------------------------------- attention itself

def explicit_attention(q, k, v, causal: bool):
    """Softmax(q k^T / sqrt(D)) v for one sequence (T, H, D), written out."""
    T, _, D = q.shape
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
    if causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_attention_is_per_sequence_softmax(causal):
    """Packed rows: 3 sequences in 2 rows, padding at a row's end; each sequence attends to itself only."""
    torch.manual_seed(0)
    H, D = 3, 4
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    cu = torch.tensor([0, 2, 6, 9])  # lengths 2, 4 | 3
    layout = AttentionLayout.varlen(mask, mask.shape, causal=causal, cu_seqlens=cu)
    assert layout.max_seqlen == 4 and layout.num_sequences == 3
    q, k, v = (torch.randn(9, H, D) for _ in range(3))
    expected = torch.cat([explicit_attention(q[a:b], k[a:b], v[a:b], causal) for a, b in zip(cu[:-1], cu[1:])])
    for implementation in (attention, attention_on_grid, attention_per_sequence):  # CPU, CUDA fallback
        out = implementation(q, k, v, layout, dropout_p=0.0, scale=None)
        assert (out - expected).abs().max() <= 1e-6, implementation.__name__


def test_layout_round_trips_and_rejects_bad_cu_seqlens():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    layout = AttentionLayout.varlen(mask, mask.shape)
    x = torch.arange(8.0).reshape(2, 4)
    tokens = layout.remove_padding(x)
    assert tokens.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert layout.cu_seqlens.tolist() == [0, 3, 5]
    assert layout.restore_padding(tokens, fill=-1).tolist() == [[-1, 1, 2, 3], [4, 5, -1, -1]]
    assert layout.to_sequences(tokens, fill=-1).tolist() == [[1, 2, 3], [4, 5, -1]]
    assert layout.from_sequences(layout.to_sequences(tokens)).tolist() == tokens.tolist()
    assert layout.first_tokens(tokens).tolist() == [1, 4] and layout.last_tokens(tokens).tolist() == [3, 5]
    labels = torch.tensor([[-100, 7, 8, 9], [5, 6, -100, -100]])
    assert layout.next_token_labels(labels).tolist() == [8, 9, -100, 6, -100]
    with pytest.raises(LayoutError, match="end at attention_mask.sum"):
        AttentionLayout.varlen(mask, mask.shape, cu_seqlens=torch.tensor([0, 2, 4]))
    with pytest.raises(LayoutError, match="at least one real token"):
        AttentionLayout.varlen(mask, mask.shape, cu_seqlens=torch.tensor([0, 2, 2, 5]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (flash varlen kernel)")
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_varlen_kernel_matches_sdpa_fallback(causal):
    torch.manual_seed(0)
    mask = (torch.arange(64) < torch.tensor([[64], [17], [40]])).long().cuda()
    layout = AttentionLayout.varlen(mask, mask.shape, causal=causal)
    q, k, v = (torch.randn(len(layout.indices), 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    fast = attention(q, k, v, layout)  # varlen_attn
    slow = attention_on_grid(q, k, v, layout, dropout_p=0.0, scale=None)  # what dropout falls back to
    assert (fast.float() - slow.float()).abs().max() < 2e-2


# ----------------------------------------------------------------------------- real weights

@pytest.mark.data
def test_minilm_squad_features_unpadded_equals_padded_forward_and_gradients():
    if not (MINILM / "model.safetensors").is_file() or not SQUAD_EVAL.is_file():
        pytest.skip("all-MiniLM-L6-v2 or the SQuAD split is absent")
    from hone.data.collate import pad_collate
    from hone.data.squad import prepare_train_features, read_squad

    tokenizer = hone.load_tokenizer(MINILM)
    examples = read_squad(SQUAD_EVAL)
    features = prepare_train_features(examples[::100], tokenizer, max_seq_length=384, progress=False)
    order = features.lengths.argsort()
    picks = [int(order[0]), int(order[len(order) // 2]), int(order[-1]), int(order[1])]  # short..full mix
    batch = pad_collate([features[i] for i in picks], tokenizer.pad_token_id)
    assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1] // 2  # really mixed

    torch.manual_seed(0)
    model = hone.load_model(MINILM, "qa").eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = {k: batch[k] for k in ("start_positions", "end_positions")}
    (ref, ref_loss, ref_grads), (got, got_loss, got_grads) = run_both(model, inputs, labels, "qa")
    real = inputs["attention_mask"].bool()
    for key in ("start_logits", "end_logits"):
        assert_close(ref[key][real], got[key][real], key)
    assert_close(ref_loss, got_loss, "loss")
    for name, g in ref_grads.items():
        assert_close(g, got_grads[name], f"grad {name}", tol=TOL * max(1.0, g.abs().max().item()))
    with torch.no_grad():
        a = model.backbone.set_unpadded(False)(**inputs).last_hidden_state
        b = model.backbone.set_unpadded(True)(**inputs).last_hidden_state
    assert_close(a[real], b[real], "last_hidden_state")
