"""Dropout with cheap masks on CPUs.

torch draws a CPU dropout mask one element at a time from its Mersenne Twister unless MKL's
generator applies (Intel CPUs only), and dropout was a quarter of a bf16 training step on an
AMD EPYC (benchmarks/results/profile-qa-minilm-cpu-bf16-*.txt). Here a mask costs one numpy
SFC64 stream, seeded by one draw of torch's generator (so seeds, checkpoints and resume see
torch's generator alone), whose 64-bit outputs are cut into four 16-bit lanes; a lane keeps
its unit if it is at least a threshold, and the 0/1 mask is made with integer ops, written
straight in the bit pattern of 1.0 for bf16/fp16. The drop probability is rounded to a
multiple of 1/65536 (0.1 becomes 0.100006) and kept values are scaled by the exact inverse of
the keep rate, so the expectation is unchanged.

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


def random_lanes(n: int) -> torch.Tensor:
    """n int16 values uniform on [-32768, 32767], from a numpy SFC64 stream (about twice as fast
    as torch's CPU generator) seeded by one 64-bit draw of torch's generator."""
    seed = int(torch.empty((), dtype=torch.int64).random_(-(2**63), None)) % 2**64
    draws = np.random.SFC64(seed).random_raw(-(-n // 4))
    return torch.from_numpy(draws.view(np.int16)[:n])


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, dtype: torch.dtype = torch.bool,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """A mask of `shape` in `dtype`: 1 (keep) with probability 1 - p (p rounded to 1/65536), else 0."""
    drop = _drop_levels(p)
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p).to(dtype)
    if drop in (0, _LEVELS):
        return torch.full(shape, drop == 0, dtype=dtype)
    threshold = drop - _LEVELS // 2  # lanes below it drop
    keep = random_lanes(math.prod(shape)).clamp_(threshold - 1, threshold).sub_(threshold - 1)  # 0 or 1
    if dtype in _ONE_BITS:
        return keep.mul_(_ONE_BITS[dtype]).view(dtype).view(shape)
    return keep.to(dtype).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout with `keep_mask` on CPUs; torch's own dropout elsewhere and when compiled."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p == 1.0 or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    return (x * keep_mask(x.shape, p, x.dtype)).mul_(keep_scale(p))


class Dropout(nn.Dropout):
    """nn.Dropout (same argument, same `p`, same repr) with cheap masks on CPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
