"""Sequence packing: several short examples share one row, and each attends only to itself.

A packed batch is what `pack_collate` returns and what every hone model's forward takes
(`model(**batch)`); S examples sit in R rows of L <= max_seq_len tokens:

    input_ids       (R, L) int64    examples one after another, padding only at a row's end
    attention_mask  (R, L) int64    1 on example tokens, 0 on that padding
    position_ids    (R, L) int64    restart at every example: first_position, first_position + 1, ...
                                    (0 for BERT and GPT-2, pad_token_id + 1 for RoBERTa:
                                    the config's `position_offset`)
    token_type_ids  (R, L) int64    when the rows have them
    cu_seqlens      (S + 1,) int32  example s is real tokens cu_seqlens[s]:cu_seqlens[s + 1],
                                    counted row by row (row-major order of attention_mask)
    labels ...                      per example (S, ...) or per token (R, L), see below

The model sees `cu_seqlens` and runs the varlen layout of hone.models.padding: attention
is block-diagonal (per example, causal within it for GPT-2), every token-wise op runs on
real tokens only, and the heads work per example:
- QA: `start_positions` / `end_positions` (S,) count from the example's own first token, as
  in an unpacked feature (pack_collate leaves them as they are); each example's softmax
  covers its own tokens only, so the loss equals the unpacked batch's loss under unpadded
  execution (`model.set_unpadded(True)`).
- classification / NSP: one label per example (S,); pooled on each example's first token
  (BERT [CLS], RoBERTa <s>) or last token (GPT-2); logits (S, num_labels).
- MLM / CLM: token labels as unpacked; the causal LM never predicts across an example
  boundary (the model ignores each example's last position), so no -100 is needed there.
Per-token outputs (logits, start/end logits, last_hidden_state) keep the (R, L) shape;
`unpack` splits them per example.

Examples are in packing order: the rows of `first_fit_decreasing(lengths, max_seq_len)`
one after another; per-example fields and outputs follow that order (losses, being means
over examples or tokens, do not depend on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hone.data.collate import _pad_value
from hone.errors import HoneError
from hone.models.padding import VarlenMetadata

POSITION_FIELD = "position_ids"


class PackingError(HoneError, ValueError):
    """Examples that cannot be packed as asked (too long, inconsistent fields)."""


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bin-pack example indices into rows of at most `capacity` tokens: longest example
    first, each into the first row with room (ties keep input order). Returns the rows."""
    if capacity < 1:
        raise PackingError(f"max_seq_len must be positive, got {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = int(lengths[i])
        if n > capacity:
            raise PackingError(
                f"example {i} has {n} tokens, more than max_seq_len={capacity}; truncate it "
                f"(e.g. max_seq_length <= {capacity} when building features) or raise max_seq_len"
            )
        if n < 1:
            raise PackingError(f"example {i} has no tokens")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def _length(row: dict) -> int:
    """Real tokens of an example: its attention_mask's sum (right padding), else all of input_ids."""
    if "attention_mask" in row:
        return int(np.asarray(row["attention_mask"]).sum())
    return len(row["input_ids"])


def pack_collate(
    rows: Sequence[dict], max_seq_len: int, pad_token_id: int, *, first_position: int = 0,
    bucket_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pack `rows` (dicts as for pad_collate: 1-D token sequences and scalars) into a packed
    batch (see the module docstring). A 1-D integer field as long as the row's input_ids is
    per token; every other field (scalars, e.g. multi-label vectors) is per example.
    Padding values are pad_collate's: pad_token_id for input_ids, -100 for labels, else 0.

    The batch also carries `varlen`, its VarlenMetadata computed here on the host (the model
    then reads nothing back from the device); with `bucket_tokens` rows are max_seq_len wide
    and the token stream is padded to a multiple of bucket_tokens (few shapes)."""
    if not rows:
        raise PackingError("pack_collate got an empty batch")
    if POSITION_FIELD in rows[0]:
        raise PackingError("rows already have position_ids; pack_collate builds them (restarting per example)")
    lengths = [_length(row) for row in rows]
    plan = first_fit_decreasing(lengths, max_seq_len)  # R rows of example indices
    order = [i for packed in plan for i in packed]  # packing order of the S examples
    width = max(sum(lengths[i] for i in packed) for packed in plan)  # L: the fullest row

    keys = [key for key in rows[0] if key != "attention_mask"]  # rebuilt below from the lengths
    for i, row in enumerate(rows):
        if missing := [key for key in keys if key not in row]:
            raise PackingError(f"example {i} lacks field(s) {missing} that example 0 has")
    columns = {key: [np.asarray(row[key]) for row in rows] for key in keys}
    n_ids = [len(v) for v in columns["input_ids"]]
    per_token = {
        key for key, values in columns.items()
        if all(v.ndim == 1 and np.issubdtype(v.dtype, np.integer) and len(v) == n for v, n in zip(values, n_ids))
    }
    columns["attention_mask"] = [np.ones(n, dtype=np.int64) for n in lengths]
    columns[POSITION_FIELD] = [np.arange(first_position, first_position + n) for n in lengths]
    per_token |= {"attention_mask", POSITION_FIELD}

    batch: dict[str, torch.Tensor] = {}
    for key, values in columns.items():
        if key in per_token:
            out = np.full((len(plan), width), _pad_value(key, pad_token_id), dtype=np.int64)  # (R, L)
            for r, packed in enumerate(plan):
                tokens = np.concatenate([values[i][: lengths[i]] for i in packed])
                out[r, : len(tokens)] = tokens
            batch[key] = torch.from_numpy(out)
        else:
            stacked = np.stack([values[i] for i in order])  # (S, ...)
            dtype = np.float32 if np.issubdtype(stacked.dtype, np.floating) else np.int64
            batch[key] = torch.from_numpy(stacked.astype(dtype))
    cu_seqlens = np.concatenate([[0], np.cumsum([lengths[i] for i in order])])
    batch["cu_seqlens"] = torch.from_numpy(cu_seqlens.astype(np.int32))  # (S + 1,)
    if bucket_tokens is not None:  # fixed row width: few shapes
        batch = {k: F.pad(v, (0, max_seq_len - width), value=_pad_value(k, pad_token_id)) if k in per_token else v
                 for k, v in batch.items()}
    batch["varlen"] = VarlenMetadata.from_mask(batch["attention_mask"], cu_seqlens=batch["cu_seqlens"],
                                               bucket_tokens=bucket_tokens)
    return batch


def unpack(per_token: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """(R, L, ...) output of a packed batch -> one (length_s, ...) tensor per example, in packing order."""
    tokens = per_token[batch["attention_mask"].bool()]  # (N, ...)
    return list(tokens.split(batch["cu_seqlens"].diff().tolist()))


class PackCollator:
    """`pack_collate` with its settings bound; picklable for DataLoader workers."""

    def __init__(self, max_seq_len: int, pad_token_id: int, first_position: int = 0, *,
                 bucket_tokens: int | None = None):
        self.max_seq_len = max_seq_len
        self.pad_token_id = pad_token_id
        self.first_position = first_position
        self.bucket_tokens = bucket_tokens

    @classmethod
    def for_config(cls, config: Any, max_seq_len: int, pad_token_id: int | None = None) -> PackCollator:
        """Settings from a model config (model_type, pad_token_id); GPT-2 configs often lack
        a pad id, then pass one (any id: padding is never attended to)."""
        pad = config.pad_token_id if pad_token_id is None else pad_token_id
        if pad is None:
            raise PackingError(f"{config.model_type} config has no pad_token_id; pass pad_token_id=")
        return cls(max_seq_len, pad, config.position_offset)

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        return pack_collate(rows, self.max_seq_len, self.pad_token_id, first_position=self.first_position,
                            bucket_tokens=self.bucket_tokens)
