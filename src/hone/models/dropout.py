"""Dropout with cheap masks on CPUs.

torch draws a CPU dropout mask one element at a time from its Mersenne Twister unless MKL's
generator applies (Intel CPUs only), and dropout was a quarter of a bf16 training step on an
AMD EPYC (benchmarks/results/profile-qa-minilm-cpu-bf16-*.txt). Here each 64-bit draw of
torch's generator gives four 16-bit lanes, each compared with a threshold: a quarter of the
draws, the rest vectorised. The drop probability is rounded to a multiple of 1/65536 (0.1
becomes 0.100006) and the kept values are scaled by the exact inverse of the keep rate, so
the expectation is unchanged. Seeds, checkpoints and resume see torch's own generator.

On CUDA, torch's fused dropout runs instead (its Philox generator is already cheap), and so
it does under torch.compile, which generates its own masks inside the fused kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # 16-bit lanes: four per 64-bit draw


def _drop_levels(p: float) -> int:
    """The number of 16-bit values (of 65536) that drop a unit, for drop probability p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    return round(p * _LEVELS)


def keep_scale(p: float) -> float:
    """1 / keep rate of `keep_mask(p)`: the factor that keeps the expectation of x unchanged."""
    return _LEVELS / (_LEVELS - _drop_levels(p))


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool mask of `shape`: True (keep) with probability 1 - p, p rounded to 1/65536."""
    n = math.prod(shape)
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p)
    draws = torch.empty(-(-n // 4), dtype=torch.int64).random_(-(2**63), None)  # 64 random bits each
    lanes = draws.view(torch.int16)[:n]  # uniform on [-32768, 32767]
    return (lanes >= _drop_levels(p) - _LEVELS // 2).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout with `keep_mask` on CPUs; torch's own dropout elsewhere and when compiled."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p == 1.0 or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    return x * keep_mask(x.shape, p).to(x.dtype) * keep_scale(p)


class Dropout(nn.Dropout):
    """nn.Dropout (same argument, same `p`, same repr) with cheap masks on CPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
