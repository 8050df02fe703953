"""The attention layout: where the real tokens of a batch are, built once per forward.

Layers never look at `attention_mask` themselves. A model builds one `AttentionLayout`,
gathers its integer inputs with `remove_padding`, runs every layer on the result and calls
`attention(q, k, v, layout)` with tensors shaped `(*tokens, heads, head_dim)`; the heads
scatter per-token results back with `restore_padding` and pool with `first_tokens` /
`last_tokens`. Layers only use the last dim, so the same code runs in both layouts:

- padded (`from_attention_mask`): `*tokens` is `(B, T)`; padding is computed and masked
  inside scaled_dot_product_attention. Matches transformers everywhere, e.g. its QA loss
  keeps the padding positions in the softmax.
- varlen (`varlen`, or `from_metadata`): `*tokens` is `(N,)`, the real tokens only, sequence
  after sequence: sequence s is tokens `cu_seqlens[s]:cu_seqlens[s + 1]` of that stream.
  Built from an attention mask (one sequence per row: unpadded execution) or from a packed
  batch (several sequences per row, `cu_seqlens` given; see hone.data.packing). Every
  token-wise op (embeddings, projections, MLP, LayerNorm, heads) runs on real tokens only.

Where the real tokens are can be computed by the model (two reads from the device per
forward: `nonzero` and the lengths) or, better, by the collate function on the host
(`VarlenMetadata`, moved to the device with the batch): then the forward never waits for
the device, and with `bucket_tokens` the stream is padded to a few fixed lengths so that
torch.compile and CUDA graphs see few shapes. A bucketed stream ends with one padding
segment: tokens that attend among themselves, gathered from nowhere (their inputs are
`fill`) and scattered nowhere.

Attention kernels (`KERNELS`, the hardware profile's `attention` field, set on a model with
`set_attention`), resolved per call by `attention_kernel` for the device and dtype:
- flash: CUDA fp16/bf16, torch's varlen flash kernel on the token stream itself (cu_seqlens),
  attention dropout inside the kernel (`aten._flash_attention_forward`, the kernel behind
  `torch.nn.attention.varlen.varlen_attn`, which exposes no dropout). Elsewhere: sdpa.
- sdpa: scaled_dot_product_attention over sequences padded to a common length with a key
  mask: on CUDA one call over all sequences (torch picks its efficient or math backend); on a
  CPU, sequences of similar length grouped into a few calls (`attention_grouped`), in the
  compute dtype (sdpa's math path, the only CPU one with dropout, would upcast bf16 to fp32)
  with a cheap dropout mask (hone.models.dropout): measured faster in fp32 and bf16 than one
  sdpa call per sequence (benchmarks/results/cpu-attention-ab-qa-minilm.json). Causal
  sequences on a CPU: one call per sequence on its own tokens (`attention_per_sequence`),
  with dropout in blocks of queries through the same dense kernel (`causal_attention`).
- math: the same padded grid through sdpa's math backend only (the reference).
- auto: flash where it runs, else sdpa.

Padding is removed and restored here and nowhere else.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hone.errors import HoneError
from hone.models.dropout import dropout_bmm

IGNORE_INDEX = -100  # label value that the losses skip (transformers' convention)

KERNELS = ("auto", "flash", "sdpa", "math")  # the hardware profile's `attention` values


class LayoutError(HoneError, ValueError):
    """An attention mask or packed batch that does not describe a valid set of sequences."""


# ----------------------------------------------------------------------------- kernels

def flash_available(device: torch.device) -> bool:
    """Whether torch's varlen flash kernel runs on `device` (a CUDA build with flash attention)."""
    return device.type == "cuda" and torch.backends.cuda.is_flash_attention_available()


def attention_kernel(requested: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The kernel that runs for the `requested` one (KERNELS) on this device and compute dtype:
    "flash" (CUDA, fp16/bf16, a torch with flash kernels), else "sdpa"; "math" stays "math"."""
    if requested not in KERNELS:
        raise LayoutError(f"attention kernel {requested!r} is not one of {', '.join(KERNELS)}")
    if requested == "math":
        return "math"
    device = torch.device(device)
    if requested in ("auto", "flash") and dtype in (torch.float16, torch.bfloat16) and flash_available(device):
        return "flash"
    if requested == "flash":
        _warn_once(f"attention=flash: torch's flash kernel needs a CUDA GPU and fp16/bf16 "
                   f"(here {device.type}, {str(dtype).removeprefix('torch.')}); running sdpa instead")
    return "sdpa"


def describe_kernel(kernel: str, device: torch.device | str) -> str:
    """What a resolved kernel does on `device`, for reports and logs."""
    device = torch.device(device)
    if kernel == "flash":
        return "flash (torch varlen flash kernel on the token stream, dropout in the kernel)"
    if kernel == "math":
        return "math (sdpa math backend on sequences padded to the longest)"
    if device.type == "cuda":
        return "sdpa (one call on sequences padded to the longest, key mask)"
    return "sdpa (CPU: sequences grouped by length, one call per group, compute dtype)"


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


# ----------------------------------------------------------------------------- metadata

@dataclass(eq=False)
class VarlenMetadata:
    """Where the sequences of a (B, T) batch sit, computed on the host by the collate function
    and moved to the device with the batch (the trainer moves anything with `.to`), so that the
    model reads nothing back from the device to build its layout.

    cu_seqlens:  (S + 1 + tail,) int32 starts of every segment of the token stream: the S
                 sequences, then `tail` (0 or 1) padding segment of a bucketed stream.
    indices:     (N,) int64, where each stream token sits in the flattened (B * T) batch;
                 padding-segment tokens point at B * T (nothing).
    max_seqlen:  an int >= every segment's length (the kernels' grid bound).
    tail:        1 when the stream ends with a padding segment (bucketed), else 0.
    """

    cu_seqlens: torch.Tensor
    indices: torch.Tensor
    max_seqlen: int
    tail: int = 0

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor | np.ndarray, *, cu_seqlens: torch.Tensor | None = None,
                  bucket_tokens: int | None = None) -> VarlenMetadata:
        """Metadata of a batch from its (B, T) attention mask (1 = real token) and, for a packed
        batch, its cu_seqlens (S + 1,) in row-major order; otherwise each row is one sequence.
        On the device this reads the mask back (host syncs); collate functions call it on the host.

        bucket_tokens: pad the token stream to the next multiple (a padding segment), so that
        batches come in few shapes; it must not exceed T (the segment has to fit max_seqlen).
        """
        mask = torch.as_tensor(attention_mask)
        if mask.dim() != 2:
            raise LayoutError(f"attention_mask must be (batch, seq_len), got shape {tuple(mask.shape)}")
        B, T = mask.shape
        indices = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
        if cu_seqlens is None:  # one sequence per row
            cu_seqlens = F.pad(mask.sum(1).cumsum(0), (1, 0))
        elif cu_seqlens.dim() != 1 or len(cu_seqlens) < 2:
            raise LayoutError(
                f"cu_seqlens must be 1-D (S + 1,) sequence starts from 0, got shape {tuple(cu_seqlens.shape)}"
            )
        cu_seqlens = cu_seqlens.to(device=indices.device, dtype=torch.int32)
        lengths = cu_seqlens.diff()
        first, shortest, longest, total = torch.stack(
            [cu_seqlens[0], lengths.min(), lengths.max(), cu_seqlens[-1]]
        ).tolist()  # one host read (a sync when the mask is on a GPU)
        if first != 0 or total != len(indices):
            raise LayoutError(
                f"cu_seqlens runs from {first} to {total} but the batch has {len(indices)} real tokens: "
                "it must start at 0 and end at attention_mask.sum() (build packed batches with "
                "hone.data.packing.pack_collate)"
            )
        if shortest < 1:
            raise LayoutError(
                "every sequence needs at least one real token; an attention_mask row is all zeros "
                "or cu_seqlens repeats a value"
            )
        if not bucket_tokens:
            return cls(cu_seqlens, indices, int(longest))
        if not 1 <= bucket_tokens <= T:
            raise LayoutError(f"bucket_tokens must be in [1, seq_len={T}], got {bucket_tokens}")
        padded = -(-total // bucket_tokens) * bucket_tokens
        cu_seqlens = F.pad(cu_seqlens, (0, 1), value=padded)
        indices = F.pad(indices, (0, padded - total), value=B * T)
        return cls(cu_seqlens, indices, T, tail=1)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VarlenMetadata:
        return replace(self, cu_seqlens=self.cu_seqlens.to(device, non_blocking=non_blocking),
                       indices=self.indices.to(device, non_blocking=non_blocking))

    def pin_memory(self, device: torch.device | str | None = None) -> VarlenMetadata:
        """DataLoader(pin_memory=True) calls this on the collate function's output."""
        return replace(self, cu_seqlens=self.cu_seqlens.pin_memory(), indices=self.indices.pin_memory())


# ----------------------------------------------------------------------------- the layout

def _memoized(method):
    """A property computed once per object. functools.cached_property takes a lock on Python
    3.11, which torch.compile cannot trace; a layout lives for one forward on one thread."""
    key = "_memo_" + method.__name__

    @functools.wraps(method)
    def get(self):
        if key not in self.__dict__:
            self.__dict__[key] = method(self)
        return self.__dict__[key]

    return property(get)


@dataclass(eq=False)
class AttentionLayout:
    """How the tokens of one batch sit in memory.

    mask:       padded layout: bool, True where a query may attend to a key; (B, 1, 1, T)
                for an encoder, (B, 1, T, T) for a decoder with padding; None when nothing
                is masked beyond causality (then sdpa can take its fastest path).
    causal:     each token sees only itself and earlier tokens of its sequence (GPT-2).
    indices:    varlen layout: (N,) int64, where the stream's tokens sit in the flattened
                (B * T) batch, in stream order (B * T: a padding-segment token); None in the
                padded layout.
    segments:   varlen: (S + 1 + tail,) int32, segment starts in the stream of N tokens: the
                S sequences, then the padding segment of a bucketed stream (tail = 1).
    max_seqlen: varlen: >= the longest segment.
    shape:      varlen: (B, T) of the batch as the model received it.
    tail:       varlen: 1 when the stream ends with a padding segment.
    kernel:     the requested attention kernel (KERNELS).
    """

    mask: torch.Tensor | None
    causal: bool = False
    indices: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    max_seqlen: int = 0
    shape: tuple[int, int] | None = None
    tail: int = 0
    kernel: str = "auto"

    @classmethod
    def from_attention_mask(
        cls, attention_mask: torch.Tensor | None, *, causal: bool = False, past_length: int = 0,
        kernel: str = "auto",
    ) -> AttentionLayout:
        """Padded layout. attention_mask (B, T): 1 for real tokens, 0 for padding (transformers' meaning).

        `past_length` (causal, with a KV cache): the first past_length positions of the mask
        are cached keys, the rest are this call's queries.
        """
        if attention_mask is None:
            return cls(mask=None, causal=causal, kernel=kernel)
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T) keys
        if causal:
            keys = torch.arange(attention_mask.shape[-1], device=keep.device)  # (T,)
            queries = keys[past_length:, None]  # (T - past_length, 1)
            keep = keep & (keys <= queries)  # (B, 1, T - past_length, T)
            # A padding query before the first real token (left padding) sees no key and
            # would turn into NaN; letting it see itself changes no real token.
            keep = keep | (~keep.any(-1, keepdim=True) & (keys == queries))
        return cls(mask=keep, causal=causal, kernel=kernel)

    @classmethod
    def varlen(
        cls,
        attention_mask: torch.Tensor | None,
        shape: tuple[int, int],
        *,
        causal: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        kernel: str = "auto",
    ) -> AttentionLayout:
        """Varlen layout of a (B, T) batch, computed here (reads from the device).

        attention_mask (B, T): 1 for real tokens (None: all are). Without `cu_seqlens` each
        row is one sequence (unpadded execution); with it (a packed batch) sequence s is real
        tokens cu_seqlens[s]:cu_seqlens[s + 1] in row-major order.
        """
        if attention_mask is None:
            device = cu_seqlens.device if cu_seqlens is not None else None
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        elif tuple(attention_mask.shape) != tuple(shape):
            raise LayoutError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(shape)}")
        meta = VarlenMetadata.from_mask(attention_mask, cu_seqlens=cu_seqlens)
        return cls.from_metadata(meta, shape, causal=causal, kernel=kernel)

    @classmethod
    def from_metadata(cls, meta: VarlenMetadata, shape: tuple[int, int], *, causal: bool = False,
                      kernel: str = "auto") -> AttentionLayout:
        """Varlen layout from metadata the collate function computed (nothing read back)."""
        return cls(mask=None, causal=causal, indices=meta.indices, segments=meta.cu_seqlens,
                   max_seqlen=meta.max_seqlen, shape=tuple(shape), tail=meta.tail, kernel=kernel)

    @property
    def is_varlen(self) -> bool:
        return self.indices is not None

    @property
    def num_sequences(self) -> int:
        """S (varlen layout): the real sequences, not the padding segment."""
        return len(self.segments) - 1 - self.tail

    @property
    def cu_seqlens(self) -> torch.Tensor:
        """(S + 1,) int32 sequence starts in the stream (varlen layout)."""
        return self.segments if not self.tail else self.segments[: len(self.segments) - self.tail]

    def sequence_lengths(self) -> torch.Tensor:
        """(S,) int64 tokens per sequence (varlen layout)."""
        return self.cu_seqlens.diff().long()

    # ------------------------------------------------------------------ padding in and out

    def remove_padding(self, x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(B, T, ...) -> (*tokens, ...): the real tokens (padded layout: unchanged); tokens of
        a padding segment get `fill` (e.g. IGNORE_INDEX for labels)."""
        if not self.is_varlen:
            return x
        flat = x.flatten(0, 1)
        if self.tail:
            flat = torch.cat([flat, flat.new_full((1, *flat.shape[1:]), fill)])
        return flat.index_select(0, self.indices)  # (N, ...)

    def restore_padding(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(*tokens, ...) -> (B, T, ...), padding positions set to `fill` (padded layout: unchanged)."""
        if not self.is_varlen:
            return x
        B, T = self.shape
        out = _scatter_rows(x, self.indices, B * T + self.tail, fill)
        return (out[: B * T] if self.tail else out).unflatten(0, (B, T))

    def first_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(*tokens, C) -> (S, C): each sequence's first token ([CLS] / <s>); padded: column 0."""
        return x[self.cu_seqlens[:-1].long()] if self.is_varlen else x[:, 0]

    def last_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(*tokens, C) -> (S, C): each sequence's last token (varlen layout only)."""
        if not self.is_varlen:
            raise LayoutError("the padded layout does not know where sequences end; pool by the model's rule")
        return x[self.cu_seqlens[1:].long() - 1]

    def next_token_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, T) labels -> (*tokens) labels aligned with the logits of a causal LM: the
        token at t predicts label t + 1 of the same sequence; a sequence's last token
        predicts nothing (IGNORE_INDEX), so packed sequences never predict each other."""
        if not self.is_varlen:
            return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)
        shifted = self.remove_padding(labels, fill=IGNORE_INDEX).roll(-1)  # (N,)
        return shifted.index_fill(0, self.segments[1:].long() - 1, IGNORE_INDEX)

    # ------------------------------------------------------------------ per-sequence grid

    def to_sequences(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(*tokens, ...) -> (S, T', ...): one row per sequence, right-padded with `fill`
        (varlen: T' = max_seqlen; padded layout: the batch itself, T' = T)."""
        if not self.is_varlen:
            return x
        S, T = self.num_sequences, self.max_seqlen
        if not self.tail and len(x) == S * T:  # every sequence is max_seqlen long: a reshape
            return x.unflatten(0, (S, T))
        grid = _scatter_rows(x, self._grid_slots, S * T + self.tail, fill)
        return (grid[: S * T] if self.tail else grid).unflatten(0, (S, T))

    def from_sequences(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of to_sequences: (S, T', ...) -> (*tokens, ...); padding-segment tokens get 0."""
        if not self.is_varlen:
            return x
        x = x.flatten(0, 1)
        if self.tail:
            x = torch.cat([x, x.new_zeros((1, *x.shape[1:]))])
        elif len(x) == len(self.indices):
            return x
        return x.index_select(0, self._grid_slots)

    @_memoized
    def _grid_slots(self) -> torch.Tensor:
        """(N,) int64: where each token sits in the flattened (S, max_seqlen) grid (padding-segment
        tokens: S * max_seqlen, one past the grid)."""
        cu = self.segments.long()
        N, S, T = len(self.indices), self.num_sequences, self.max_seqlen
        seq = torch.repeat_interleave(torch.arange(len(cu) - 1, device=cu.device), cu.diff(), output_size=N)  # (N,)
        slots = seq * T + torch.arange(N, device=cu.device) - cu[seq]  # position inside its sequence
        return slots.clamp(max=S * T) if self.tail else slots

    @_memoized
    def bounds(self) -> list[tuple[int, int]]:
        """(start, end) of every sequence in the token stream, as Python ints (read from the
        device: CPU kernels only)."""
        cu = self.cu_seqlens.tolist()
        return list(zip(cu[:-1], cu[1:]))

    @_memoized
    def key_mask(self) -> torch.Tensor:
        """(S, 1, 1, max_seqlen) bool: the real keys of each grid row."""
        positions = torch.arange(self.max_seqlen, device=self.segments.device)
        return (positions < self.cu_seqlens.diff()[:, None])[:, None, None, :]

    @_memoized
    def length_groups(self) -> list[LengthGroup]:
        """The sequences grouped by similar length for the CPU kernel (see `group_lengths`)."""
        device = self.segments.device
        groups = []
        for members, width in group_lengths([b - a for a, b in self.bounds]):
            if len(members) == 1:
                groups.append(LengthGroup(self.bounds[members[0]], None, None, None, 1, width))
                continue
            starts = [self.bounds[s][0] for s in members]
            lengths = [self.bounds[s][1] - self.bounds[s][0] for s in members]
            positions = np.concatenate([np.arange(a, a + n) for a, n in zip(starts, lengths)])
            slots = np.concatenate([np.arange(n) + i * width for i, n in enumerate(lengths)])
            key_mask = None
            if min(lengths) < width:
                key_mask = (torch.arange(width) < torch.tensor(lengths)[:, None])[:, None, None, :].to(device)
            groups.append(LengthGroup(None, torch.from_numpy(positions).to(device),
                                      torch.from_numpy(slots).to(device), key_mask, len(members), width))
        return groups


@dataclass(eq=False)
class LengthGroup:
    """Sequences attended to in one call on a CPU: a single sequence (`span` of the stream), or
    `count` sequences padded to `width` (stream `positions` -> grid `slots`, `key_mask` when
    some are shorter than width)."""

    span: tuple[int, int] | None
    positions: torch.Tensor | None
    slots: torch.Tensor | None
    key_mask: torch.Tensor | None
    count: int
    width: int


# Grouping rule for the CPU kernel: a group holds sequences at least GROUP_RATIO times as long
# as its longest, at most GROUP_MAX of them (benchmarks/attention_cpu.py measured the choice).
GROUP_RATIO = 0.8
GROUP_MAX = 16


def group_lengths(lengths: Sequence[int], ratio: float = GROUP_RATIO,
                  max_size: int = GROUP_MAX) -> list[tuple[list[int], int]]:
    """Sequences (indices into `lengths`) in groups of similar length, longest first, each with
    its width (its longest length): padding wastes at most 1 - ratio^2 of a group's scores."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[tuple[list[int], int]] = []
    for i in order:
        if groups and len(groups[-1][0]) < max_size and lengths[i] >= ratio * groups[-1][1]:
            groups[-1][0].append(i)
        else:
            groups.append(([i], lengths[i]))
    return groups


def _scatter_rows(x: torch.Tensor, index: torch.Tensor, n: int, fill: float) -> torch.Tensor:
    """(len(index), ...) -> (n, ...): row i of x goes to row index[i], other rows are `fill`.
    Out of place, so autograd's backward is a plain gather of the gradient."""
    base = x.new_full((n, *x.shape[1:]), fill)
    return base.index_copy(0, index, x)


# ----------------------------------------------------------------------------- attention

def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: AttentionLayout,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Multi-head attention of q, k, v (*tokens, H, D) -> (*tokens, H, D) with the layout's
    kernel (see the module docstring). scale None means 1/sqrt(D), as in BERT and GPT-2."""
    kernel = attention_kernel(layout.kernel, q.device, q.dtype)
    if not layout.is_varlen:
        # sdpa wants (B, H, T, D)
        q, k, v = (t.transpose(-3, -2) for t in (q, k, v))
        with sdpa_kernel(SDPBackend.MATH) if kernel == "math" else nullcontext():
            if layout.causal and layout.mask is None:
                out = causal_attention(q, k, v, dropout_p=dropout_p, scale=scale)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask, dropout_p=dropout_p,
                                                     scale=scale)
        return out.transpose(-3, -2)
    if kernel == "flash":
        return attention_flash(q, k, v, layout, dropout_p=dropout_p, scale=scale)
    if kernel == "math":
        with sdpa_kernel(SDPBackend.MATH):
            return attention_on_grid(q, k, v, layout, dropout_p=dropout_p, scale=scale)
    if q.is_cuda:
        return attention_on_grid(q, k, v, layout, dropout_p=dropout_p, scale=scale)
    if layout.causal:
        return attention_per_sequence(q, k, v, layout, dropout_p=dropout_p, scale=scale)
    return attention_grouped(q, k, v, layout, dropout_p=dropout_p, scale=scale)


def attention_flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout, *, dropout_p: float,
    scale: float | None
) -> torch.Tensor:
    """torch's varlen flash kernel on the (N, H, D) stream: every segment (the padding one
    too) attends to itself; attention dropout happens inside the kernel (its backward replays
    the same mask from the saved RNG state)."""
    T = layout.max_seqlen
    out, *_ = _flash_forward(q, k, v, layout.segments, layout.segments, T, T, dropout_p, layout.causal, False,
                             scale=scale)
    return out


# torch's flash kernel with varlen inputs and dropout (differentiable: autograd runs
# aten._flash_attention_backward with the RNG state it returns)
_flash_forward = torch.ops.aten._flash_attention_forward


def attention_on_grid(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout, *, dropout_p: float, scale: float | None
) -> torch.Tensor:
    """Varlen attention as one sdpa call over the sequences padded to (S, H, max_seqlen, D):
    few kernel launches (GPUs), at the cost of S * max_seqlen^2 scores. Padding keys are masked;
    causal needs no mask, as padding keys only follow a sequence's real keys."""
    q, k, v = (layout.to_sequences(t).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=None if layout.causal else layout.key_mask,
        dropout_p=dropout_p, is_causal=layout.causal, scale=scale,
    )
    return layout.from_sequences(out.transpose(1, 2))


def attention_per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout, *, dropout_p: float, scale: float | None
) -> torch.Tensor:
    """Varlen attention as one sdpa call per sequence on its own tokens (CPUs): exactly
    sum(length^2) scores, no padding, no mask, no gather or scatter."""
    outs = []
    for a, b in layout.bounds:
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))  # (H, length, D)
        if layout.causal:
            out = causal_attention(qs, ks, vs, dropout_p=dropout_p, scale=scale)
        else:
            out = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p, scale=scale)
        outs.append(out.transpose(0, 1))
    return _with_tail(torch.cat(outs), layout)  # (N, H, D)


def _with_tail(out: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """The real tokens' outputs plus zeros for the padding segment's tokens."""
    missing = len(layout.indices) - len(out)
    return F.pad(out, (0, 0, 0, 0, 0, missing)) if missing else out


def attention_grouped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout, *, dropout_p: float,
    scale: float | None
) -> torch.Tensor:
    """Varlen attention on a CPU: sequences of similar length padded into one batch per group
    (`AttentionLayout.length_groups`): few calls, little padding. Each group runs
    `dense_attention` in the compute dtype."""
    parts, positions = [], []
    for group in layout.length_groups:
        if group.span is not None:
            a, b = group.span
            qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))  # (1, H, length, D)
            parts.append(dense_attention(qs, ks, vs, None, dropout_p=dropout_p, scale=scale)[0].transpose(0, 1))
            positions.append(torch.arange(a, b))
            continue
        g, width = group.count, group.width
        grid = [_scatter_rows(t.index_select(0, group.positions), group.slots, g * width, 0.0)
                .unflatten(0, (g, width)).transpose(1, 2) for t in (q, k, v)]  # (g, H, width, D)
        out = dense_attention(*grid, group.key_mask, dropout_p=dropout_p, scale=scale)
        parts.append(out.transpose(1, 2).flatten(0, 1).index_select(0, group.slots))
        positions.append(group.positions)
    out = _scatter_rows(torch.cat(parts), torch.cat(positions), len(q), 0.0)
    return out


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None, *, dropout_p: float,
    scale: float | None
) -> torch.Tensor:
    """softmax(q k^T * scale over the allowed keys) v: queries (G, H, Lq, D), keys and values
    (G, H, Lk, D); `allowed` a boolean mask broadcastable to (G, H, Lq, Lk) (keys of each
    sequence, or a causal block), None for all. Written out in the inputs' dtype: bf16 stays
    bf16 (sdpa's math path, the only one with dropout on a CPU, upcasts to fp32), softmax
    accumulates in fp32 inside its kernel, and dropout uses a cheap mask, which fp32 draws again
    in backward rather than keeping it (hone.models.dropout.dropout_bmm)."""
    G, H, _, D = q.shape
    scale = D**-0.5 if scale is None else scale
    qf, kf, vf = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)  # (G * H, L, D)
    if allowed is None:
        scores = torch.baddbmm(qf.new_empty(()), qf, kf.transpose(1, 2), beta=0.0, alpha=scale)
    else:
        bias = torch.zeros(allowed.shape, dtype=q.dtype).masked_fill_(~allowed, float("-inf"))
        if bias.dim() == 4:
            bias = bias.expand(G, H, *bias.shape[2:]).flatten(0, 1)  # (G * H, 1 or Lq, Lk)
        scores = torch.baddbmm(bias, qf, kf.transpose(1, 2), alpha=scale)  # (G * H, Lq, Lk)
    probs = torch.softmax(scores, dim=-1)
    return dropout_bmm(probs, vf, dropout_p).unflatten(0, (G, H))


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float, scale: float | None
) -> torch.Tensor:
    """Causal attention of (..., H, T, D) queries, keys and values.

    With dropout on a CPU, sdpa has no fused kernel: its math path scores all T x T pairs, half
    of them masked, in fp32 even for bf16, with torch's slow mask draws. Run `dense_attention`
    instead on a few blocks of queries, each over only the keys it may see (the block's own
    keys masked causally): the same attention, about half the scores.
    """
    T = q.shape[-2]
    if dropout_p == 0.0 or q.device.type != "cpu" or k.shape[-2] != T:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    size = -(-T // max(1, min(4, T // 128)))
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    q4, k4, v4 = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))  # (G, H, T, D)
    outs = [
        dense_attention(q4[..., a : a + size, :], k4[..., : a + size, :], v4[..., : a + size, :],
                        allowed[a : a + size, : a + size], dropout_p=dropout_p, scale=scale)
        for a in range(0, T, size)
    ]
    return torch.cat(outs, dim=-2).reshape(*q.shape[:-1], v.shape[-1])
