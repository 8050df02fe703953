"""The transformers baseline for SQuAD fine-tuning: what a user runs today.

run_qa.py's recipe written out with transformers only (AutoModelForQuestionAnswering,
its fast tokenizer, Trainer, features padded to max_seq_length as run_qa pads them,
utils_qa-style post-processing). The official metric is hone's `squad_evaluate`, which
tests check against the official numbers, so both runs are scored by the same rules.

    python benchmarks/qa_transformers_baseline.py --model DIR --train_file F --validation_file F \
        --output_dir OUT [--epochs 2 --lr 1e-4 --batch_size 16 --seed 42 --bf16]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np
import torch
from compare_common import environment, trainer_arguments
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    default_data_collator,
)

from hone.data.squad import read_squad
from hone.metrics.squad import squad_evaluate


def encode(tokenizer, examples, max_len, stride, pad):
    questions = [e["question"].lstrip() for e in examples]
    return tokenizer(questions, [e["context"] for e in examples], truncation="only_second", max_length=max_len,
                     stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                     padding="max_length" if pad else False)


def train_features(tokenizer, examples, max_len, stride, pad):
    enc = encode(tokenizer, examples, max_len, stride, pad)
    rows = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        seq = enc.sequence_ids(i)
        start_pos = end_pos = 0
        if ex["answers"]["text"]:
            s_char = ex["answers"]["answer_start"][0]
            e_char = s_char + len(ex["answers"]["text"][0])
            ts = seq.index(1)
            te = len(seq) - 1 - seq[::-1].index(1)
            if offsets[ts][0] <= s_char and offsets[te][1] >= e_char:
                while ts < len(offsets) and offsets[ts][0] <= s_char:
                    ts += 1
                while offsets[te][1] >= e_char:
                    te -= 1
                start_pos, end_pos = ts - 1, te + 1
        rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                     "token_type_ids": enc["token_type_ids"][i], "start_positions": start_pos,
                     "end_positions": end_pos})
    return rows


def eval_features(tokenizer, examples, max_len, stride, pad):
    enc = encode(tokenizer, examples, max_len, stride, pad)
    rows, meta = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(i)
        meta.append((enc["overflow_to_sample_mapping"][i], [o if seq[k] == 1 else None for k, o in enumerate(offsets)]))
        rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                     "token_type_ids": enc["token_type_ids"][i]})
    return rows, meta


def postprocess(examples, meta, start_logits, end_logits, n_best=20, max_answer=30):
    """utils_qa.postprocess_qa_predictions for SQuAD 2.0, as a plain loop."""
    by_example = collections.defaultdict(list)
    for f, (ex_idx, _) in enumerate(meta):
        by_example[ex_idx].append(f)
    predictions, null_odds = {}, {}
    for ex_idx, ex in enumerate(examples):
        null_score, candidates = None, []
        for f in by_example[ex_idx]:
            s, e, offsets = start_logits[f], end_logits[f], meta[f][1]
            feature_null = s[0] + e[0]
            if null_score is None or feature_null < null_score:
                null_score = feature_null
            for i in np.argsort(s)[-1: -n_best - 1: -1]:
                for j in np.argsort(e)[-1: -n_best - 1: -1]:
                    if i >= len(offsets) or j >= len(offsets) or offsets[i] is None or offsets[j] is None:
                        continue
                    if j < i or j - i + 1 > max_answer:
                        continue
                    candidates.append((s[i] + e[j], offsets[i][0], offsets[j][1]))
        candidates.sort(key=lambda c: -c[0])
        best = candidates[0] if candidates else None
        if best is None or null_score - best[0] > 0.0:
            predictions[ex["id"]] = ""
        else:
            predictions[ex["id"]] = ex["context"][best[1]: best[2]]
        null_odds[ex["id"]] = float(null_score - (best[0] if best else 0.0))
    return predictions, null_odds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--train_file", required=True)
    p.add_argument("--validation_file", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--eval_batch_size", type=int, default=64)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--dynamic_padding", action="store_true",
                   help="run_qa's --pad_to_max_length False: pad each batch to its longest row (faster)")
    a = p.parse_args()

    torch.manual_seed(a.seed)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForQuestionAnswering.from_pretrained(a.model, attn_implementation="sdpa")
    train_ex, eval_ex = read_squad(a.train_file), read_squad(a.validation_file)
    t0 = time.perf_counter()
    pad = not a.dynamic_padding
    train_rows = train_features(tokenizer, train_ex, a.max_seq_length, a.doc_stride, pad)
    eval_rows, meta = eval_features(tokenizer, eval_ex, a.max_seq_length, a.doc_stride, pad)
    collator = default_data_collator if pad else DataCollatorWithPadding(tokenizer)
    prep_s = time.perf_counter() - t0

    targs = trainer_arguments(a.output_dir, batch_size=a.batch_size, eval_batch_size=a.eval_batch_size, lr=a.lr,
                              epochs=a.epochs, warmup_ratio=a.warmup_ratio, weight_decay=a.weight_decay, seed=a.seed,
                              bf16=a.bf16)
    trainer = Trainer(model=model, args=targs, train_dataset=train_rows, data_collator=collator)
    t0 = time.perf_counter()
    train_out = trainer.train()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = trainer.predict(eval_rows)
    start, end = pred.predictions
    predictions, null_odds = postprocess(eval_ex, meta, start, end)
    eval_s = time.perf_counter() - t0
    scores = squad_evaluate(eval_ex, predictions, na_probs=null_odds)

    result = {
        "system": "transformers-baseline",
        **environment(),
        "settings": vars(a),
        "train_features": len(train_rows), "eval_features": len(eval_rows),
        "preprocess_seconds": prep_s, "train_seconds": train_s, "eval_seconds": eval_s,
        "train_samples_per_second": len(train_rows) * a.epochs / train_s,
        "train_loss": train_out.training_loss,
        "metrics": scores,
    }
    out = Path(a.output_dir) / "baseline_results.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
