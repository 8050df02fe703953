"""Batches from rows: dynamic padding (each batch padded only to its own longest row, not to
max_seq_length), or packing for training (`make_collator` picks by execution mode).

Shared by every task. Rows are dicts of 1-D sequences (numpy arrays, lists or tensors)
and scalars; sequences are padded to a common length and stacked, scalars are stacked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hone.models.padding import VarlenMetadata

# Padding value per sequence field; `input_ids` gets the tokenizer's pad id, any field
# named `labels` or ending in `_labels` gets -100 (ignored by cross-entropy), the rest 0.
_IGNORE_INDEX = -100


def _pad_value(key: str, pad_token_id: int) -> int:
    if key == "input_ids":
        return pad_token_id
    if key == "labels" or key.endswith("_labels"):
        return _IGNORE_INDEX
    return 0


def pad_collate(rows: Sequence[dict], pad_token_id: int,
                pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Batch `rows`: pad 1-D fields to the longest row (rounded up to `pad_to_multiple_of`),
    stack scalar fields. Integer fields become int64 tensors, floating ones float32."""
    if not rows:
        raise ValueError("pad_collate got an empty batch")
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of}")
    columns = {key: [np.asarray(row[key]) for row in rows] for key in rows[0]}
    seq_len = max((len(v) for values in columns.values() for v in values if v.ndim == 1), default=0)
    if pad_to_multiple_of:
        seq_len = -(-seq_len // pad_to_multiple_of) * pad_to_multiple_of

    batch = {}
    for key, values in columns.items():
        dtype = np.float32 if any(np.issubdtype(v.dtype, np.floating) for v in values) else np.int64
        ndims = {v.ndim for v in values}
        if ndims == {0}:
            batch[key] = torch.from_numpy(np.stack(values).astype(dtype))
        elif ndims == {1}:
            out = np.full((len(values), seq_len), _pad_value(key, pad_token_id), dtype=dtype)  # (B, T)
            for i, v in enumerate(values):
                out[i, : len(v)] = v
            batch[key] = torch.from_numpy(out)
        else:
            raise ValueError(f"pad_collate: field {key!r} must be a scalar or a 1-D sequence in every row, "
                             f"got ndim {sorted(ndims)}")
    return batch


class Collator:
    """`pad_collate` with its pad id and multiple bound; picklable for DataLoader workers.

    A batch without padding (equal rows, e.g. language-model blocks) loses its all-ones
    attention_mask: the model then runs attention without a mask, its fastest path, with
    the same result.

    `varlen=True` (unpadded execution) adds `varlen`, the batch's VarlenMetadata (where the
    real tokens sit, computed here on the host), so that the model's forward reads nothing
    back from the device. `bucket_tokens` (with varlen) pads every row to `pad_to_multiple_of`
    and the token stream to a multiple of bucket_tokens: few shapes for torch.compile and
    CUDA graphs (see hone.models.padding)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, *, varlen: bool = False,
                 bucket_tokens: int | None = None):
        if bucket_tokens is not None and not (varlen and pad_to_multiple_of):
            raise ValueError("bucket_tokens needs varlen=True and pad_to_multiple_of (the fixed row width)")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.varlen = varlen
        self.bucket_tokens = bucket_tokens

    def __call__(self, rows: Sequence[dict]) -> dict:
        batch = pad_collate(rows, self.pad_token_id, self.pad_to_multiple_of)
        if self.varlen:
            mask = batch.get("attention_mask")
            if mask is None:  # rows without a mask: every token of a row is real
                lengths = torch.tensor([len(row["input_ids"]) for row in rows])
                mask = (torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]).long()
            if self.bucket_tokens or not bool(mask.all()):
                batch["varlen"] = VarlenMetadata.from_mask(mask, bucket_tokens=self.bucket_tokens)
        if "attention_mask" in batch and bool(batch["attention_mask"].all()):
            del batch["attention_mask"]
        return batch


def make_collator(mode: str, *, pad_token_id: int, position_offset: int = 0, max_seq_len: int | None = None,
                  training: bool = True, pad_to_max_length: bool = False, bucket_tokens: int | None = None):
    """The collate function of an execution mode ("padded", "unpadded", "packed"; see
    HardwareProfile.execution_mode). Padded and unpadded batches are dynamically padded (the
    model drops the padding itself when unpadded, from the metadata computed here), or padded
    to max_seq_len with pad_to_max_length; packed training batches put several rows in one of
    at most max_seq_len tokens. Evaluation never packs: outputs stay in row order.

    bucket_tokens (unpadded/packed, e.g. max_seq_len // 2 when the model is compiled): rows
    padded to max_seq_len and token streams to a multiple of bucket_tokens, so that batches
    come in few shapes."""
    if mode not in ("padded", "unpadded", "packed"):
        raise ValueError(f"unknown execution mode {mode!r}")
    if bucket_tokens is not None and max_seq_len is None:
        raise ValueError("bucket_tokens needs max_seq_len (the fixed row width)")
    if mode == "packed" and training:
        from hone.data.packing import PackCollator

        if max_seq_len is None:
            raise ValueError("packed batches need max_seq_len")
        return PackCollator(max_seq_len, pad_token_id, position_offset, bucket_tokens=bucket_tokens)
    if mode == "padded":
        return Collator(pad_token_id, max_seq_len if pad_to_max_length else None)
    fixed = bucket_tokens is not None or pad_to_max_length
    return Collator(pad_token_id, max_seq_len if fixed else None, varlen=True, bucket_tokens=bucket_tokens)
