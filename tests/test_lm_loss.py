"""The chunked fused LM loss against the plain one, and GPT-2's loss, logits and perplexity
against transformers' GPT2LMHeadModel on identical weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hone.data.collate import pad_collate
from hone.data.text import SlidingWindows
from hone.metrics.lm import lm_metrics, perplexity, predicted_tokens
from hone.models.checkpoint import build_model
from hone.models.losses import linear_cross_entropy

transformers = pytest.importorskip("transformers")

VOCAB = 97


def gpt2_pair(tmp_path, *, tied: bool = True, seed: int = 0, **config):
    """A tiny hone GPT2LMHeadModel with every weight perturbed, and transformers' model loaded
    from its save_pretrained folder (so both hold identical weights); eval mode."""
    transformers.logging.set_verbosity_error()
    settings = dict(model_type="gpt2", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                    bos_token_id=2, eos_token_id=2, tie_word_embeddings=tied) | config
    torch.manual_seed(seed)
    model = build_model(settings, "clm").eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    folder = tmp_path / f"gpt2-{seed}-{tied}"
    model.save_pretrained(folder)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    return model, ref


def close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float = 0.0) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)


def random_problem(seed: int, n: int = 150, c: int = 24, v: int = 500, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g, dtype=dtype, requires_grad=True)
    weight = (torch.randn(v, c, generator=g, dtype=dtype) * 0.3).requires_grad_()
    bias = torch.randn(v, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = -100
    return hidden, weight, bias, labels


def plain_loss(hidden, weight, labels, bias=None):
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), labels.reshape(-1), ignore_index=-100)


# ------------------------------------------------------------------------------------ fused loss


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_loss_equals_plain_fp32(chunk_size, with_bias):
    hidden, weight, bias, labels = random_problem(0)
    bias = bias if with_bias else None
    inputs = (hidden, weight) + ((bias,) if with_bias else ())
    ref = plain_loss(hidden, weight, labels, bias)
    ref_grads = torch.autograd.grad(ref * 2.5, inputs)  # a scaled loss: the backward scales
    got = linear_cross_entropy(hidden, weight, labels, bias, chunk_size=chunk_size)
    got_grads = torch.autograd.grad(got * 2.5, inputs)
    assert close(got, ref, 1e-6)
    for r, g in zip(ref_grads, got_grads):
        assert g.dtype == r.dtype and close(g, r, 1e-5, 1e-7)


def test_fused_loss_fp64_is_exact_and_takes_any_token_shape():
    hidden, weight, bias, labels = random_problem(1, dtype=torch.float64)
    ref = F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=-100)
    got = linear_cross_entropy(hidden.reshape(3, 50, -1), weight, labels.reshape(3, 50), bias, chunk_size=16)
    assert got.dtype == torch.float64 and close(got, ref, 1e-12)
    ref_grads = torch.autograd.grad(ref, (hidden, weight, bias))
    got_grads = torch.autograd.grad(got, (hidden, weight, bias))
    for r, g in zip(ref_grads, got_grads):
        assert close(g, r, 1e-10, 1e-14)


def test_fused_loss_bf16_autocast_within_stated_bounds():
    """bf16 projection, fp32 softmax: loss within 1e-3 and gradients within 1.5e-2 (relative
    to the largest entry) of fp64, as the plain bf16 loss."""
    hidden, weight, _, labels = random_problem(2, n=200, c=64, v=3000)
    ref = F.cross_entropy(F.linear(hidden.double(), weight.double()), labels, ignore_index=-100)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden, weight, labels, chunk_size=37)
        plain = plain_loss(hidden, weight, labels)
    got_grads = torch.autograd.grad(got, (hidden, weight))
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) <= 1e-3 * ref.item()
    assert abs(got.item() - plain.item()) <= 1e-4 * ref.item()  # same bf16 logits
    for r, g in zip(ref_grads, got_grads):
        assert g.dtype == torch.float32
        assert (g.double() - r).abs().max() <= 1.5e-2 * r.abs().max()


def test_fused_loss_without_gradients_and_with_frozen_weight():
    hidden, weight, _, labels = random_problem(3)
    ref = plain_loss(hidden, weight, labels)
    with torch.no_grad():
        assert close(linear_cross_entropy(hidden, weight, labels, chunk_size=10), ref, 1e-6)
    frozen = weight.detach()
    got = linear_cross_entropy(hidden, frozen, labels, chunk_size=10)
    (grad,) = torch.autograd.grad(got, hidden)
    (ref_grad,) = torch.autograd.grad(plain_loss(hidden, frozen, labels), hidden)
    assert close(grad, ref_grad, 1e-5, 1e-7)


def test_fused_loss_backward_runs_once():
    hidden, weight, _, labels = random_problem(5)
    loss = linear_cross_entropy(hidden, weight, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once"):
        loss.backward()


def test_fused_loss_without_targets_is_nan_like_cross_entropy():
    hidden, weight, _, labels = random_problem(4)
    none = torch.full_like(labels, -100)
    assert torch.isnan(plain_loss(hidden, weight, none)) and torch.isnan(linear_cross_entropy(hidden, weight, none))


# ------------------------------------------------------------------------------------ GPT-2 against transformers


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_loss_grads_and_logits_as_transformers(tmp_path, tied):
    # no dropout, so that both compute the same function in train mode
    model, ref = gpt2_pair(tmp_path, tied=tied, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (3, 20), generator=g)
    labels = ids.masked_fill(torch.rand(3, 20, generator=g) < 0.2, -100)
    model.train(), ref.train()
    expected = ref(ids, labels=labels)
    expected.loss.backward()
    out = model(ids, labels=labels)
    assert set(out.keys()) == {"loss"}  # logits are deferred: a training step never projects twice
    out.loss.backward()
    assert close(out.loss, expected.loss, 1e-5)
    assert close(out.logits, expected.logits, 1e-5, 1e-5)  # computed on first read
    assert "logits" in out
    hf_grads = {n: p.grad for n, p in ref.named_parameters()}
    hf_grads = model.hf_key_map().from_hf(hf_grads)
    for name, p in model.named_parameters():
        assert close(p.grad, hf_grads[name], 1e-4, 1e-6), name

    model.eval()
    with torch.no_grad():
        eager = model(ids, labels=labels, return_logits=True)
        assert close(eager.logits, expected.logits, 1e-5, 1e-5) and close(eager.loss, expected.loss, 1e-5)
        assert model(ids, labels=labels, return_logits=False).logits is None
        last = model(ids, logits_to_keep=1).logits
        assert last.shape == (3, 1, VOCAB) and close(last, expected.logits[:, -1:], 1e-5, 1e-5)


def test_deferred_logits_keep_the_forward_modes(tmp_path):
    model, _ = gpt2_pair(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.inference_mode():
        out = model(ids, labels=ids)
    logits = out.logits  # read outside inference mode: computed as inside it
    assert logits.is_inference() and not logits.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16  # as an eager bf16 forward gives them


def test_eval_loss_is_the_token_weighted_mean_as_transformers(tmp_path):
    """Sliding windows: batches predict different numbers of tokens. Summing each batch's mean
    loss times its predicted tokens gives transformers' per-token mean over all of them."""
    model, ref = gpt2_pair(tmp_path, n_positions=32)
    stream = np.random.default_rng(0).integers(0, VOCAB, 150)
    rows = list(SlidingWindows(stream, 32, 12))
    loss_sum, tokens, batch_means = 0.0, 0, []
    nll_sum, nll_count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), 4):
            batch = pad_collate(rows[start:start + 4], pad_token_id=0)
            out = model(**batch)
            n = predicted_tokens(batch["labels"].numpy())
            loss_sum, tokens = loss_sum + out.loss.item() * n, tokens + n
            batch_means.append(out.loss.item())
            logits = ref(batch["input_ids"]).logits  # transformers' logits, token losses by hand
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                  ignore_index=-100, reduction="sum")
            nll_sum, nll_count = nll_sum + nll.item(), nll_count + int((batch["labels"][:, 1:] != -100).sum())
    assert tokens == nll_count == len(stream) - 1  # every token but the first, once
    metrics = lm_metrics(loss_sum, tokens)
    assert math.isclose(metrics["eval_loss"], nll_sum / nll_count, rel_tol=1e-5)
    assert math.isclose(metrics["perplexity"], math.exp(nll_sum / nll_count), rel_tol=1e-5)
    assert not math.isclose(np.mean(batch_means), metrics["eval_loss"], rel_tol=1e-4)  # really token-weighted


def test_right_padding_without_a_mask_changes_no_loss(tmp_path):
    """Sliding-window and block rows carry no attention mask: the collator's right padding
    comes after every real token, which a causal model never attends to, and is labelled -100."""
    model, _ = gpt2_pair(tmp_path)
    rows = list(SlidingWindows(np.random.default_rng(1).integers(0, VOCAB, 50), 32, 24))
    assert [len(r["input_ids"]) for r in rows] == [32, 26]
    with torch.no_grad():
        batch = pad_collate(rows, pad_token_id=0)
        assert "attention_mask" not in batch
        together = model(**batch).loss.item() * predicted_tokens(batch["labels"].numpy())
        apart = sum(model(**pad_collate([r], pad_token_id=0)).loss.item() * predicted_tokens(r["labels"][None])
                    for r in rows)
    assert math.isclose(together, apart, rel_tol=1e-5)


def test_perplexity_helpers():
    assert predicted_tokens(np.array([[5, 6, -100, 7], [1, -100, -100, -100]])) == 2 + 0
    assert predicted_tokens(np.array([[5, 6, -100, 7]]), causal=False) == 3
    assert lm_metrics(6.0, 3) == {"eval_loss": 2.0, "perplexity": math.exp(2.0)}
    assert perplexity(1000.0) == float("inf")
    assert math.isnan(lm_metrics(0.0, 0)["eval_loss"])
