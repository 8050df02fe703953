"""Language-model loss and perplexity over a whole evaluation set.

`eval_loss` is the mean over every predicted token, not a mean of per-batch means (batches
of sliding windows, or a short last batch, predict different numbers of tokens), and
perplexity is exp(eval_loss) (inf past float range, as run_clm reports it).
"""

from __future__ import annotations

import math

import numpy as np

IGNORE_INDEX = -100


def predicted_tokens(labels: np.ndarray, *, causal: bool = True) -> int:
    """How many tokens a batch's loss averages over: labels (B, T) not -100, after the causal
    shift (position 0 of a row is never predicted) when `causal`."""
    labels = np.asarray(labels)
    if causal:
        labels = labels[..., 1:]
    return int((labels != IGNORE_INDEX).sum())


def perplexity(loss: float) -> float:
    """exp(loss); inf when it overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def lm_metrics(loss_sum: float, num_tokens: int) -> dict[str, float]:
    """{"eval_loss", "perplexity"} from the summed token losses (each batch's mean loss times its
    `predicted_tokens`) and the number of tokens; NaN loss when no token was predicted."""
    loss = loss_sum / num_tokens if num_tokens else float("nan")
    return {"eval_loss": loss, "perplexity": perplexity(loss)}
