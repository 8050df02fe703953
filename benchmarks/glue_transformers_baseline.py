"""The transformers baseline for GLUE fine-tuning: what a user runs today.

run_glue.py's recipe written out with transformers only: AutoModelForSequenceClassification
with a head sized from the task's labels, its fast tokenizer (one text or a pair, truncated to
max_seq_length), rows padded to max_seq_length as run_glue pads them by default (or, with
--dynamic_padding, each batch to its longest row: DataCollatorWithPadding), the Trainer. The
GLUE files are read by hone.data.glue and scored by hone.metrics.glue (scikit-learn / scipy,
tested against them), so both systems see the same examples and are scored by the same rules.

    python benchmarks/glue_transformers_baseline.py --model DIR --task_name sst2 --data_dir DIR \
        --output_dir OUT [--epochs 1 --lr 5e-5 --batch_size 32 --seed 42 --bf16 --dynamic_padding]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from compare_common import environment, trainer_arguments
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    default_data_collator,
)

from hone.data.glue import load_glue
from hone.metrics.glue import compute_metrics, metric_names, predictions_from_logits


def features(tokenizer, split, max_len: int, pad: bool, count: int | None) -> list[dict]:
    """run_glue's preprocess_function: one row per example, `labels` the label id or target."""
    n = len(split) if count is None else min(count, len(split))
    pairs = None if split.pairs is None else split.pairs[:n]
    enc = tokenizer(split.texts[:n], pairs, padding="max_length" if pad else False, max_length=max_len,
                    truncation=True)
    rows = [dict(zip(enc.keys(), values)) for values in zip(*enc.values())]
    for row, label in zip(rows, split.labels[:n]):
        row["labels"] = label.item()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--task_name", default="sst2")
    p.add_argument("--data_dir", required=True, help="GLUE release folder (or the task's folder)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval_batch_size", type=int, default=64)
    p.add_argument("--warmup_ratio", type=float, default=0.06)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--max_train_samples", type=int)
    p.add_argument("--max_eval_samples", type=int)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--dynamic_padding", action="store_true",
                   help="run_glue's --pad_to_max_length False: pad each batch to its longest row (faster)")
    a = p.parse_args()

    torch.manual_seed(a.seed)
    data = load_glue(a.task_name, a.data_dir, ("train", "validation"))
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        a.model, num_labels=data.num_labels, id2label=data.id2label, label2id=data.label2id,
        attn_implementation="sdpa")
    t0 = time.perf_counter()
    pad = not a.dynamic_padding
    train_rows = features(tokenizer, data.splits["train"], a.max_seq_length, pad, a.max_train_samples)
    eval_sets = {split.metric_suffix: (split, features(tokenizer, split, a.max_seq_length, pad, a.max_eval_samples))
                 for split in data.of_kind("validation")}
    collator = default_data_collator if pad else DataCollatorWithPadding(tokenizer)
    prep_s = time.perf_counter() - t0

    targs = trainer_arguments(a.output_dir, batch_size=a.batch_size, eval_batch_size=a.eval_batch_size, lr=a.lr,
                              epochs=a.epochs, warmup_ratio=a.warmup_ratio, weight_decay=a.weight_decay, seed=a.seed,
                              bf16=a.bf16, max_steps=a.max_steps, logging_steps=50)
    trainer = Trainer(model=model, args=targs, train_dataset=train_rows, data_collator=collator)
    t0 = time.perf_counter()
    train_out = trainer.train()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = {}
    for suffix, (split, rows) in eval_sets.items():
        pred = trainer.predict(rows)
        predictions = predictions_from_logits(pred.predictions, data.is_regression)
        scores = compute_metrics(metric_names(a.task_name, data.is_regression), predictions,
                                 split.labels[:len(rows)])
        metrics.update({f"{k}{suffix}": v for k, v in scores.items()})
        metrics[f"samples{suffix}"] = len(rows)
    eval_s = time.perf_counter() - t0

    result = {
        "system": "transformers-baseline",
        **environment(),
        "settings": vars(a),
        "train_samples": len(train_rows),
        "preprocess_seconds": prep_s, "train_seconds": train_s, "eval_seconds": eval_s,
        "train_samples_per_second": train_out.metrics["train_samples_per_second"],  # the Trainer's count
        "train_loss": train_out.training_loss,
        "metrics": metrics,
    }
    out = Path(a.output_dir) / "baseline_results.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
