"""Language-model losses shared by the heads: cross-entropy over the vocabulary without the
logits of a whole batch.

`linear_cross_entropy(hidden, weight, labels)` equals
`F.cross_entropy(F.linear(hidden, weight).float(), labels, ignore_index=-100)` but computes
the vocabulary projection chunk by chunk: each chunk's logits (chunk, V) exist in fp32 only
while that chunk is processed, and their gradient (softmax - one-hot) is turned into the
gradients of `hidden` and `weight` right away, in the forward pass. So neither pass holds
(tokens, V) logits, log-probabilities or their gradient, and the backward pass does not
recompute the projection (the same matmuls as the plain loss: one forward, two backward).
Only tokens with a label are projected at all.

Measured on the 2-core CPU (benchmarks/clm_speed.py --loss_only; 2048 tokens, C = 768,
GPT-2's vocabulary, forward + backward, 1 thread, CPU seconds): plain 6.6 fp32 / 4.1 bf16,
this 5.9 / 3.2. Chunks under torch.utils.checkpoint instead (each chunk's logits recomputed
in backward) were slower than plain (10.6 / 7.6 s wall, 2 threads, against 7.1 / 6.3): they
pay one more projection and the log-softmax backward.
"""

from __future__ import annotations

import torch

from hone.models.padding import IGNORE_INDEX

# fp32 logits held at once: chunk tokens x vocabulary <= this many elements (128 MiB; 667
# tokens of GPT-2's vocabulary). Larger chunks measured faster on CPU (fewer passes over
# the (V, C) weight gradient), smaller ones hold less.
CHUNK_ELEMENTS = 1 << 25


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T (+ bias)` against `labels`, over the tokens
    whose label is not -100 (NaN when there are none, as F.cross_entropy).

    hidden (*tokens, C), weight (V, C), bias (V,), labels (*tokens). The projection runs in
    autocast's dtype when autocast is on (as nn.Linear would), the softmax in fp32;
    `chunk_size` tokens at a time (default: CHUNK_ELEMENTS // V).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    targets = (labels != IGNORE_INDEX).nonzero().squeeze(1)  # (n,)
    device = hidden.device.type
    if torch.is_autocast_enabled(device) and torch.float64 not in (hidden.dtype, weight.dtype):
        compute_dtype = torch.get_autocast_dtype(device)  # what autocast makes of nn.Linear
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    n = len(targets)
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // weight.shape[0])
    chunk = max(1, -(-n // max(1, -(-n // chunk))))  # the same number of chunks, of even sizes
    grad_enabled = torch.is_grad_enabled()
    needs = tuple(grad_enabled and t is not None and t.requires_grad for t in (hidden, weight, bias))
    return _LinearCrossEntropy.apply(
        hidden.index_select(0, targets), weight, bias, labels[targets], chunk, compute_dtype, needs
    )


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (n, C) hidden states whose every label counts; gradients are
    computed in forward (see the module docstring) and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk, compute_dtype, needs):
        need_h, need_w, need_b = needs
        n = len(labels)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(compute_dtype), weight.to(compute_dtype)  # (n, C), (V, C)
            b = None if bias is None else bias.to(compute_dtype)
            softmax_dtype = torch.promote_types(compute_dtype, torch.float32)
            loss = torch.zeros((), dtype=softmax_dtype, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            # the first chunk writes the weight gradient, later ones add to it (no zero fill)
            grad_w = (torch.empty_like if n else torch.zeros_like)(weight, dtype=softmax_dtype) if need_w else None
            grad_b = torch.zeros_like(bias, dtype=softmax_dtype) if need_b else None
            # Buffers reused by every chunk: no fresh (page-faulted) memory per chunk on CPU.
            in_place = compute_dtype == softmax_dtype  # fp32: BLAS writes and accumulates in place
            rows_max = min(chunk, n)
            logits_buffer = torch.empty(rows_max, w.shape[0], dtype=softmax_dtype, device=hidden.device)
            low_buffer = None if in_place else torch.empty(rows_max, w.shape[0], dtype=compute_dtype, device=hidden.device)
            scratch: dict[str, torch.Tensor] = {}
            for start in range(0, n, chunk):
                rows = slice(start, start + chunk)
                hc, target = h[rows], labels[rows, None]  # (c, C), (c, 1)
                c = len(hc)
                logits = logits_buffer[:c]  # (c, V)
                out = logits if in_place else low_buffer[:c]
                torch.mm(hc, w.t(), out=out) if b is None else torch.addmm(b, hc, w.t(), out=out)
                if not in_place:
                    logits.copy_(out)
                # log-sum-exp without (c, V) temporaries: shift by the max, exponentiate in place
                loss -= logits.gather(1, target).sum()
                top = logits.amax(-1, keepdim=True)  # (c, 1)
                total = logits.sub_(top).exp_().sum(-1, keepdim=True)  # (c, 1)
                loss += (top + total.log()).sum()
                if not any(needs):
                    continue
                # d loss_sum / d logits = softmax - one-hot, in place of the logits
                probs = logits.div_(total)
                g = probs.scatter_add_(1, target, probs.new_full(target.shape, -1.0))
                if not in_place:
                    g = low_buffer[:c].copy_(g)
                if need_h:
                    grad_h[rows] = g @ w  # (c, C)
                if need_w:
                    _accumulate_product(grad_w, g.t(), hc, first=start == 0, scratch=scratch)  # (V, C)
                if need_b:
                    grad_b += g.sum(0, dtype=softmax_dtype)
        ctx.n = n
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy's gradients were already used: its backward runs once "
                               "(compute the loss again instead of retain_graph=True)")
        grads, ctx.grads = ctx.grads, None
        scale = grad_loss / ctx.n
        grad_h, grad_w, grad_b = (None if g is None else g.mul_(scale).to(dtype) for g, dtype in zip(grads, ctx.dtypes))
        return grad_h, grad_w, grad_b, None, None, None, None


def _accumulate_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, first: bool,
                        scratch: dict[str, torch.Tensor]) -> None:
    """total (=, or += when not first) a @ b, the product in a and b's dtype, the sum in total's
    (fp32 for bf16 chunks); the low-precision product and its fp32 copy reuse `scratch`."""
    if a.dtype == total.dtype:
        torch.mm(a, b, out=total) if first else total.addmm_(a, b)
        return
    if "product" not in scratch:
        scratch["product"] = a.new_empty(total.shape)
    product = torch.mm(a, b, out=scratch["product"])
    if first:
        total.copy_(product)
    else:
        if "wide" not in scratch:
            scratch["wide"] = torch.empty_like(total)
        total += scratch["wide"].copy_(product)  # a same-dtype add: mixed-dtype adds are slow on CPU
