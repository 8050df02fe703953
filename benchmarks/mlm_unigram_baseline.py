"""The held-out MLM loss a model reaches by knowing word frequencies alone: the cross-entropy
of a unigram model (add-one counts of the training shards' masked targets) on the held-out
shards' targets, and its accuracy (always the most frequent target). A pre-trained encoder's
held-out MLM loss only means something beside this number.

    python benchmarks/mlm_unigram_baseline.py --train /tmp/ptp4/train-128 --held_out /tmp/ptp4/held_out-128 \
        --out benchmarks/results/mlm-unigram-baseline-2026-12-02.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np


def targets(folder: Path) -> np.ndarray:
    """Every masked-position label of a `hone prepare-pretraining` folder (all its shards)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    labels = np.concatenate([np.load(folder / shard["name"] / "masked_labels.npy") for shard in manifest["shards"]])
    return labels[labels >= 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="Prepared training folder (hone prepare-pretraining).")
    p.add_argument("--held_out", required=True, help="Prepared held-out folder.")
    p.add_argument("--out", help="JSON report.")
    args = p.parse_args()
    train, held_out = targets(Path(args.train)), targets(Path(args.held_out))
    vocab = json.loads((Path(args.train) / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    report = {"benchmark": "held-out MLM loss of a unigram model of the training targets",
              "date": datetime.date.today().isoformat(), "train": args.train, "held_out": args.held_out,
              "train_targets": int(train.size), "held_out_targets": int(held_out.size),
              "unigram_cross_entropy_nats": float(-np.log(counts / counts.sum())[held_out].mean()),
              "unigram_accuracy": float((held_out == counts.argmax()).mean())}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
