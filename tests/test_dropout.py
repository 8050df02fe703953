"""hone.models.dropout: cheap CPU masks with torch's dropout statistics and semantics."""

import pytest
import torch
from torch import nn

from hone.models.dropout import Dropout, dropout, keep_mask, keep_scale


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
