"""Prepared pre-training data on disk: shards of numpy arrays plus a manifest, read memory-mapped.

A prepared folder (written by hone.data.pretraining.prepare_pretraining):

    manifest.json          settings, tokenizer, seed, counts, statistics, the shard list
    tokenizer/             the tokenizer the ids come from (HoneTokenizer.save)
    shard-00000/           one folder per shard, one .npy file per array:
        input_ids.npy          (T,) uint16 (int32 for vocabularies over 65,536): every instance's
                               tokens, one after another, [CLS] A [SEP] B [SEP] (static masks applied)
        offsets.npy            (n + 1,) int64: instance i is input_ids[offsets[i]:offsets[i + 1]]
      objective "mlm_nsp" also:
        segment_a_lengths.npy  (n,) uint16: len([CLS] A [SEP]); token types are 0 there, 1 after
        masked_positions.npy   (M,) uint16: positions of the targets inside their instance
        masked_offsets.npy     (n + 1,) int64: instance i's targets are masked_*[masked_offsets[i]:...]
        masked_labels.npy      (M,) the original tokens at those positions
        next_sentence_label.npy (n,) uint8: 1 when B is from another document, 0 when it follows A

Objective "mlm" (RoBERTa's full sentences) stores unmasked blocks only (input_ids, offsets):
the collator masks them afresh every epoch (hone.data.masking.MaskingCollator).

A shard is written into a temporary folder and renamed into place, and the manifest last, so a
folder with a manifest is complete. Datasets read rows without padding, as every hone dataset.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hone.errors import HoneError
from hone.models.padding import IGNORE_INDEX

__all__ = ["MANIFEST", "OBJECTIVES", "PretrainingDataset", "ShardError", "read_manifest", "train_eval_split",
           "write_shard"]

MANIFEST = "manifest.json"
FORMAT = "hone-pretraining-shards"
FORMAT_VERSION = 1
OBJECTIVES = ("mlm_nsp", "mlm")


class ShardError(HoneError, ValueError):
    """A prepared folder that is missing, incomplete or not of this format."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def write_shard(folder: Path, name: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write the arrays of one shard as `folder/name/*.npy`, atomically (temporary folder, rename)."""
    final, tmp = folder / name, folder / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key, array in arrays.items():
        np.save(tmp / f"{key}.npy", np.ascontiguousarray(array))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    file = folder / MANIFEST
    if not file.is_file():
        hint = (" (a preparation that did not finish: run hone prepare-pretraining again)"
                if folder.is_dir() and any(folder.glob("shard-*")) else "")
        raise ShardError(f"{folder} has no {MANIFEST}{hint}; point at the --output folder of hone prepare-pretraining")
    manifest = json.loads(file.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{file}: not a {FORMAT} v{FORMAT_VERSION} manifest (format {manifest.get('format')!r}, "
                         f"version {manifest.get('format_version')!r}); prepare the data again with this hone")
    return manifest


class Shard:
    """One shard's arrays: memory-mapped from its folder on first use, or held in memory."""

    def __init__(self, count: int, directory: Path | None = None, arrays: Mapping[str, np.ndarray] | None = None):
        self.count = count
        self.directory = directory
        self._arrays = dict(arrays) if arrays is not None else None

    def __getstate__(self) -> dict:
        # DataLoader workers map the files themselves instead of receiving pickled copies
        return {**self.__dict__, "_arrays": None} if self.directory is not None else self.__dict__

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            if not self.directory.is_dir():
                raise ShardError(f"shard {self.directory} is missing; prepare the data again")
            self._arrays = {f.stem: np.load(f, mmap_mode="r") for f in sorted(self.directory.glob("*.npy"))}
        return self._arrays

    def lengths(self) -> np.ndarray:
        return np.diff(self.arrays["offsets"])

    def row(self, i: int) -> dict:
        """Instance i, unpadded: input_ids, attention_mask and, when stored, token_type_ids,
        labels (-100 except the targets) and next_sentence_label."""
        a = self.arrays
        lo, hi = a["offsets"][i], a["offsets"][i + 1]
        ids = a["input_ids"][lo:hi].astype(np.int64)
        row = {"input_ids": ids, "attention_mask": np.ones(len(ids), dtype=np.int64)}
        if "segment_a_lengths" in a:
            row["token_type_ids"] = (np.arange(len(ids)) >= a["segment_a_lengths"][i]).astype(np.int64)
        if "masked_positions" in a:
            m_lo, m_hi = a["masked_offsets"][i], a["masked_offsets"][i + 1]
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
            labels[a["masked_positions"][m_lo:m_hi]] = a["masked_labels"][m_lo:m_hi]
            row["labels"] = labels
        if "next_sentence_label" in a:
            row["next_sentence_label"] = int(a["next_sentence_label"][i])
        return row


class PretrainingDataset:
    """Random access to the instances of some shards of a prepared folder (all by default).

    Rows are `Shard.row`'s dicts. Picklable (DataLoader workers re-map the files). `manifest`
    says how the data was made; `lengths()` gives every row's length without reading tokens.
    """

    def __init__(self, shards: Sequence[Shard], manifest: dict):
        self.shards = list(shards)
        self.manifest = manifest
        self.ends = np.cumsum([s.count for s in self.shards])  # (shards,) rows before each shard's end

    @classmethod
    def open(cls, folder: str | Path, shards: Sequence[str] | None = None) -> PretrainingDataset:
        """The instances of `folder` (the shards named, or all of them)."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        listed = {s["name"]: s for s in manifest["shards"]}
        names = list(listed) if shards is None else list(shards)
        unknown = [n for n in names if n not in listed]
        if unknown:
            raise ShardError(f"{folder}: no shard(s) {unknown}; it has {', '.join(listed)}")
        return cls([Shard(listed[n]["instances"], folder / n) for n in names], manifest)

    @property
    def objective(self) -> str:
        return self.manifest["objective"]

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, i: int) -> dict:
        i = range(len(self))[i]  # negative indices, IndexError past the end
        s = int(np.searchsorted(self.ends, i, side="right"))
        return self.shards[s].row(i - (int(self.ends[s - 1]) if s else 0))

    def lengths(self) -> np.ndarray:
        """(len,) tokens of every row."""
        return np.concatenate([s.lengths() for s in self.shards]) if self.shards else np.zeros(0, np.int64)


def train_eval_split(folder: str | Path, *, eval_shards: int = 0,
                     eval_fraction: float | None = None) -> tuple[PretrainingDataset, PretrainingDataset | None]:
    """(train, held-out) datasets: the last `eval_shards` shards, or the fewest last shards that
    hold at least `eval_fraction` of the instances, are held out. Whole shards hold whole
    documents (random next sentences come from the shard's own documents), so nothing of a
    held-out document is trained on. No held-out set when both are 0 / None."""
    manifest = read_manifest(folder)
    counts = [s["instances"] for s in manifest["shards"]]
    names = [s["name"] for s in manifest["shards"]]
    if eval_fraction is not None:
        if not 0.0 < eval_fraction < 1.0:
            raise ShardError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        tail = np.cumsum(counts[::-1])
        eval_shards = int(np.searchsorted(tail, math.ceil(eval_fraction * sum(counts)))) + 1
    if eval_shards < 0 or (eval_shards and eval_shards >= len(names)):
        raise ShardError(f"{folder} has {len(names)} shard(s): holding out {eval_shards} leaves no training data; "
                         "prepare it with a smaller --documents_per_shard to get more shards")
    train = PretrainingDataset.open(folder, names[:len(names) - eval_shards])
    held_out = PretrainingDataset.open(folder, names[len(names) - eval_shards:]) if eval_shards else None
    return train, held_out
