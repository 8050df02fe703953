"""Dropout with cheap masks on CPUs.

torch draws a CPU dropout mask one element at a time from its Mersenne Twister unless MKL's
generator applies (Intel CPUs only), and dropout was a quarter of a bf16 training step on an
AMD EPYC (benchmarks/results/profile-qa-minilm-cpu-bf16-*.txt). Here a mask costs one numpy
SFC64 stream, seeded by one draw of torch's generator (so seeds, checkpoints and resume see
torch's generator alone), whose 64-bit outputs are cut into four 16-bit lanes; a lane keeps
its unit if it is at least a threshold, and the 0/1 mask is made with integer ops, written
straight in the bit pattern of 1.0 for bf16/fp16. The drop probability is rounded to a
multiple of 1/65536 (0.1 becomes 0.100006) and kept values are scaled by the exact inverse of
the keep rate, so the expectation is unchanged. A mask is a function of its seed, so fp32
attention (`dropout_bmm`) draws it again in backward instead of keeping it: that saves two
tensors of the (L, L) weights' size per layer, the largest activations of a training step.

On CUDA, torch's fused dropout runs instead (its Philox generator is already cheap), and so
it does under torch.compile, which generates its own masks inside the fused kernels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # 16-bit lanes: four per 64-bit draw
_ONE_BITS = {torch.bfloat16: 0x3F80, torch.float16: 0x3C00}  # 1.0 as int16 bits


def _drop_levels(p: float) -> int:
    """The number of 16-bit values (of 65536) that drop a unit, for drop probability p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    return round(p * _LEVELS)


def keep_scale(p: float) -> float:
    """1 / keep rate of `keep_mask(p)`: the factor that keeps the expectation of x unchanged."""
    return _LEVELS / (_LEVELS - _drop_levels(p))


def draw_seed() -> int:
    """One 64-bit draw of torch's CPU generator: the seed of one mask."""
    return int(torch.empty((), dtype=torch.int64).random_(-(2**63), None)) % 2**64


def random_lanes(n: int, seed: int) -> torch.Tensor:
    """n int16 values uniform on [-32768, 32767] from a numpy SFC64 stream (about twice as fast
    as torch's CPU generator): four per 64-bit output."""
    draws = np.random.SFC64(seed).random_raw(-(-n // 4))
    return torch.from_numpy(draws.view(np.int16)[:n])


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, dtype: torch.dtype = torch.bool,
              seed: int | None = None) -> torch.Tensor:
    """A CPU mask of `shape` in `dtype`: 1 (keep) with probability 1 - p (p rounded to 1/65536),
    else 0. The same seed gives the same mask (default: a fresh draw_seed())."""
    drop = _drop_levels(p)
    if drop in (0, _LEVELS):
        return torch.full(shape, drop == 0, dtype=dtype)
    threshold = drop - _LEVELS // 2  # lanes below it drop
    lanes = random_lanes(math.prod(shape), draw_seed() if seed is None else seed)
    keep = lanes.clamp_(threshold - 1, threshold).sub_(threshold - 1)  # 0 or 1
    if dtype in _ONE_BITS:
        return keep.mul_(_ONE_BITS[dtype]).view(dtype).view(shape)
    return keep.to(dtype).view(shape)


def _masked_bmm(probs: torch.Tensor, v: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    dropped = probs * keep_mask(probs.shape, p, probs.dtype, seed=seed)
    return torch.bmm(dropped, v).mul_(keep_scale(p))  # the scale on (L, D), not on (L, L)


class _DroppedBmm(torch.autograd.Function):
    """bmm(dropout(probs), v) holding for backward only what softmax and bmm hold anyway (probs
    and v) and the mask's seed: the mask and the dropped probabilities, two more tensors of
    probs' size, are made again in backward instead of kept."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
        ctx.seed, ctx.p = draw_seed(), p
        ctx.save_for_backward(probs, v)
        return _masked_bmm(probs, v, p, ctx.seed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        probs, v = ctx.saved_tensors
        mask = keep_mask(probs.shape, ctx.p, probs.dtype, seed=ctx.seed)
        grad = grad * keep_scale(ctx.p)
        grad_v = torch.bmm((probs * mask).transpose(1, 2), grad)
        grad_probs = torch.bmm(grad, v.transpose(1, 2)).mul_(mask)
        return grad_probs, grad_v, None


def _torch_dropout_runs(x: torch.Tensor, p: float) -> bool:
    """Where torch's own dropout runs instead: off the CPU, under torch.compile, and for p = 1."""
    return x.device.type != "cpu" or p == 1.0 or torch.compiler.is_compiling()


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout with `keep_mask` on CPUs; torch's own dropout elsewhere and when compiled."""
    if not training or p == 0.0:
        return x
    if _torch_dropout_runs(x, p):
        return F.dropout(x, p, training=True)
    return (x * keep_mask(x.shape, p, x.dtype)).mul_(keep_scale(p))


def dropout_bmm(probs: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """bmm(dropout(probs, p), v) for (G, Lq, Lk) attention weights and (G, Lk, D) values. On a CPU in
    fp32 the mask is drawn again in backward rather than kept (_DroppedBmm): with the dropped
    weights, 4-byte masks were the largest tensors an fp32 step held (a fifth of its peak:
    benchmarks/results/seeded-dropout-ab-*.json), and a second draw costs about 2% of an fp32
    step; in bf16/fp16, whose memory is within bounds and whose faster step would pay twice that
    share, the mask is kept."""
    if p == 0.0:
        return torch.bmm(probs, v)
    if _torch_dropout_runs(probs, p):
        return torch.bmm(F.dropout(probs, p), v)
    if probs.dtype == torch.float32:
        return _DroppedBmm.apply(probs, v, p)
    return _masked_bmm(probs, v, p, draw_seed())


class Dropout(nn.Dropout):
    """nn.Dropout (same argument, same `p`, same repr) with cheap masks on CPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
