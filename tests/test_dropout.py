"""hone.models.dropout: cheap CPU masks with torch's dropout statistics and semantics."""

import pytest
import torch
from torch import nn

from hone.models.dropout import Dropout, draw_seed, dropout, dropout_bmm, keep_mask, keep_scale


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_keep_rate_and_independence(p):
    """Each lane keeps with probability 1 - p (binomial 5-sigma bound on 4M draws); the four
    lanes of one 64-bit draw are independent (pairwise joint rate equals the product)."""
    torch.manual_seed(0)
    n = 4_000_000
    keep = keep_mask((n,), p).float()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(keep.mean().item() - (1 - p)) < 5 * sigma
    lanes = keep.view(-1, 4)
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        joint = (lanes[:, a] * lanes[:, b]).mean().item()
        assert abs(joint - (1 - p) ** 2) < 5 * (4 / n) ** 0.5
    assert abs(keep[:-1].mul(keep[1:]).mean().item() - (1 - p) ** 2) < 0.002  # neighbours too


def test_mask_shape_odd_sizes_and_seed():
    torch.manual_seed(1)
    a = keep_mask((3, 5, 7), 0.2)
    torch.manual_seed(1)
    b = keep_mask((3, 5, 7), 0.2)
    assert a.shape == (3, 5, 7) and a.dtype == torch.bool
    assert torch.equal(a, b)  # torch's generator: seeds and saved RNG states reproduce masks
    assert not torch.equal(a, keep_mask((3, 5, 7), 0.2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_masks_in_every_dtype_are_the_same_draws(dtype):
    torch.manual_seed(3)
    expected = keep_mask((1000, 7), 0.3)
    torch.manual_seed(3)
    mask = keep_mask((1000, 7), 0.3, dtype)
    assert mask.dtype == dtype and torch.equal(mask, expected.to(dtype))
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(keep_mask((5,), 0.0, dtype), torch.ones(5, dtype=dtype))
    assert torch.equal(keep_mask((5,), 1.0, dtype), torch.zeros(5, dtype=dtype))


def test_scale_is_the_exact_inverse_keep_rate():
    assert keep_scale(0.1) == 65536 / (65536 - 6554)
    assert abs(keep_scale(0.1) - 1 / 0.9) < 2e-5
    assert keep_scale(0.0) == 1.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        keep_scale(1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_values_and_gradient(dtype):
    """Every output is 0 or x * scale, the gradient is the same mask times the scale, and
    the mean is unbiased."""
    torch.manual_seed(0)
    x = torch.rand(200_000, dtype=dtype).add_(1.0).requires_grad_()
    y = dropout(x, 0.25)
    kept = y != 0
    expected = (x.detach().float() * keep_scale(0.25)).to(dtype)
    assert torch.equal(y[kept], expected[kept])
    y.sum().backward()
    assert torch.equal(x.grad, kept.to(dtype) * torch.tensor(keep_scale(0.25), dtype=dtype))
    assert abs(y.detach().float().mean().item() / x.detach().float().mean().item() - 1) < 0.01


def test_module_is_nn_dropout():
    module = Dropout(0.1)
    assert isinstance(module, nn.Dropout) and module.p == 0.1 and repr(module) == repr(nn.Dropout(0.1))
    x = torch.randn(10, 10)
    assert module.eval()(x) is x
    assert torch.equal(dropout(x, 0.0), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_bmm_equals_the_explicit_product_and_its_gradients(dtype):
    """Output and both gradients equal (probs * mask) @ v * scale computed by autograd with the
    mask of the same seed: in fp32 the mask that backward draws again is the one forward used."""
    torch.manual_seed(0)
    probs = torch.rand(6, 9, 9).softmax(-1).to(dtype).requires_grad_()
    v = torch.randn(6, 9, 4, dtype=dtype, requires_grad=True)
    grad = torch.randn(6, 9, 4, dtype=dtype)
    torch.manual_seed(7)
    out = dropout_bmm(probs, v, 0.3)
    out.backward(grad)
    torch.manual_seed(7)
    mask = keep_mask(probs.shape, 0.3, dtype, seed=draw_seed())
    p2, v2 = probs.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
    expected = torch.bmm(p2 * mask, v2) * keep_scale(0.3)
    expected.backward(grad)
    tol = dict(atol=0, rtol=0) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    assert 0 < (mask == 0).sum() < mask.numel()
    torch.testing.assert_close(out, expected, **tol)
    torch.testing.assert_close(probs.grad, p2.grad, **tol)
    torch.testing.assert_close(v.grad, v2.grad, **tol)


def test_fp32_attention_dropout_holds_no_mask_for_backward():
    """In fp32, dropout_bmm keeps the seed, not the mask: it saves only its inputs for
    backward (which softmax and bmm hold anyway)."""
    probs, v = torch.rand(2, 5, 5, requires_grad=True), torch.randn(2, 5, 3, requires_grad=True)
    saved = dropout_bmm(probs, v, 0.1).grad_fn.saved_tensors
    assert [t.data_ptr() for t in saved] == [probs.data_ptr(), v.data_ptr()]
