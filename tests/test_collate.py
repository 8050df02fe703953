"""Dynamic padding collate: pad values, shapes, dtypes, multiple-of rounding."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hone.data.collate import Collator, pad_collate


def rows():
    return [
        {"input_ids": np.array([5, 6, 7], dtype=np.int32), "attention_mask": np.ones(3, dtype=np.int32),
         "token_type_ids": np.array([0, 1, 1]), "start_positions": 2, "end_positions": 2},
        {"input_ids": [8], "attention_mask": [1], "token_type_ids": [0], "start_positions": 0, "end_positions": 0},
    ]


def test_pads_each_field_with_its_value_and_stacks_scalars():
    batch = pad_collate(rows(), pad_token_id=9)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert batch["start_positions"].tolist() == [2, 0] and batch["end_positions"].tolist() == [2, 0]
    assert all(t.dtype == torch.int64 for t in batch.values())
    assert batch["start_positions"].shape == (2,)


def test_label_sequences_pad_with_ignore_index_and_float_labels_stay_float():
    batch = pad_collate([{"input_ids": [1, 2], "labels": [3, 4]}, {"input_ids": [1], "labels": [5]}], pad_token_id=0)
    assert batch["labels"].tolist() == [[3, 4], [5, -100]]
    # the ignored positions drop out of cross-entropy, as transformers' collators intend
    logits = torch.zeros(2, 2, 6)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, 6), batch["labels"].view(-1))
    assert loss.item() == pytest.approx(np.log(6))
    batch = pad_collate([{"input_ids": [1], "labels": 0.5}, {"input_ids": [2, 3], "labels": 4.0}], pad_token_id=0)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, 4.0]
    mlm = pad_collate([{"input_ids": [1], "mlm_labels": [7]}, {"input_ids": [1, 2], "mlm_labels": [7, 8]}], 0)
    assert mlm["mlm_labels"].tolist() == [[7, -100], [7, 8]]


@pytest.mark.parametrize("multiple, width", [(None, 3), (1, 3), (4, 4), (8, 8), (3, 3)])
def test_pad_to_multiple_of(multiple, width):
    batch = pad_collate(rows(), pad_token_id=0, pad_to_multiple_of=multiple)
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"].sum().item() == 4


def test_tensors_in_rows_and_collator_class():
    collate = Collator(pad_token_id=1, pad_to_multiple_of=8)
    collate = pickle.loads(pickle.dumps(collate))  # DataLoader workers may need to pickle it
    batch = collate([{"input_ids": torch.tensor([4, 5]), "labels": torch.tensor(1)}])
    assert batch["input_ids"].tolist() == [[4, 5, 1, 1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [1]


def test_bad_batches_are_explained():
    with pytest.raises(ValueError, match="empty batch"):
        pad_collate([], pad_token_id=0)
    with pytest.raises(ValueError, match="'input_ids'.*1-D"):
        pad_collate([{"input_ids": [[1, 2]]}], pad_token_id=0)
    with pytest.raises(ValueError, match="positive"):
        pad_collate(rows(), pad_token_id=0, pad_to_multiple_of=0)


def test_collator_drops_an_all_ones_mask_only():
    equal = [{"input_ids": np.arange(1, 5), "attention_mask": np.ones(4, dtype=np.int64)} for _ in range(2)]
    assert "attention_mask" not in Collator(pad_token_id=0)(equal)
    ragged = [equal[0], {"input_ids": np.arange(1, 3), "attention_mask": np.ones(2, dtype=np.int64)}]
    batch = Collator(pad_token_id=0)(ragged)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
