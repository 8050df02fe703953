"""The transformers baseline for causal language modelling: what a user runs today.

run_clm.py's recipe written out with transformers and datasets only: the text files read by
datasets' "text" loader (one sample per line, line breaks kept), tokenized by the fast
tokenizer, concatenated and cut into blocks by run_clm's own `group_texts` (datasets' map
batches of 1,000 samples), AutoModelForCausalLM (sdpa attention; a checkpoint folder, or fresh
weights from a config folder), default_data_collator and the Trainer. Evaluation is the
Trainer's (eval_loss; perplexity = exp(eval_loss), run_clm's key), before training when asked
and after it; on the CPU it runs in fp32 even with --bf16 (which autocasts training only).

transformers 5's Trainer divides each batch's summed loss by its labels counted BEFORE the
causal shift unless the model's `loss_type` is ForCausalLM, and GPT2LMHeadModel's is None (its
class name has no "ForCausalLM"): eval_loss came out (T-1)/T of the mean over the predicted
tokens (10.650 instead of 10.819 at block 64), and training losses likewise. The model's
loss_type is set to ForCausalLM, the loss GPT2LMHeadModel computes, so that the Trainer counts
the predicted tokens, as it does for *ForCausalLM models.

    python benchmarks/clm_transformers_baseline.py --model_name_or_path DIR --tokenizer DIR \
        --train_file wiki.valid.raw --validation_file wiki.test.raw --output_dir OUT \
        [--block_size 256 --epochs 3 --lr 1e-3 --batch_size 16 --seed 42 --bf16 --eval_before]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from itertools import chain
from pathlib import Path

import torch
from compare_common import environment, trainer_arguments
from datasets import load_dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, default_data_collator


def lm_datasets(a: argparse.Namespace, tokenizer, cache_dir: Path):
    """run_clm's tokenize_function and group_texts over datasets' text loader."""
    raw = load_dataset("text", data_files={"train": a.train_file, "validation": a.validation_file},
                       keep_linebreaks=True, cache_dir=str(cache_dir))
    tokenized = raw.map(lambda examples: tokenizer(examples["text"]), batched=True, remove_columns=["text"])
    block_size = a.block_size

    def group_texts(examples):  # run_clm.py's, verbatim
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated_examples.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True)
    train, valid = grouped["train"], grouped["validation"]
    if a.max_train_samples is not None:
        train = train.select(range(min(len(train), a.max_train_samples)))
    if a.max_eval_samples is not None:
        valid = valid.select(range(min(len(valid), a.max_eval_samples)))
    return train, valid


def with_perplexity(metrics: dict) -> dict:
    return {**metrics, "perplexity": math.exp(metrics["eval_loss"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", help="Checkpoint folder to start from.")
    p.add_argument("--config_name", help="config.json folder: fresh weights (seeded by --seed).")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--train_file", required=True)
    p.add_argument("--validation_file", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--eval_batch_size", type=int, default=16)
    p.add_argument("--warmup_ratio", type=float, default=0.05)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--logging_steps", type=int, default=5)
    p.add_argument("--max_train_samples", type=int)
    p.add_argument("--max_eval_samples", type=int)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--eval_before", action="store_true", help="Also evaluate the weights before training.")
    a = p.parse_args()
    if (a.model_name_or_path is None) == (a.config_name is None):
        p.error("give --model_name_or_path or --config_name")

    out = Path(a.output_dir)
    torch.manual_seed(a.seed)
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    if a.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(a.model_name_or_path, attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(a.config_name), attn_implementation="sdpa")
    model.loss_type = "ForCausalLM"  # see the module docstring
    t0 = time.perf_counter()
    train, valid = lm_datasets(a, tokenizer, out / "datasets-cache")
    prep_s = time.perf_counter() - t0

    targs = trainer_arguments(str(out), batch_size=a.batch_size, eval_batch_size=a.eval_batch_size, lr=a.lr,
                              epochs=a.epochs, warmup_ratio=a.warmup_ratio, weight_decay=a.weight_decay, seed=a.seed,
                              bf16=a.bf16, max_steps=a.max_steps, logging_steps=a.logging_steps)
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=valid,
                      data_collator=default_data_collator)
    before = with_perplexity(trainer.evaluate()) if a.eval_before else None
    t0 = time.perf_counter()
    train_out = trainer.train()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = with_perplexity(trainer.evaluate())
    eval_s = time.perf_counter() - t0

    result = {
        "system": "transformers-baseline", **environment(), "settings": vars(a),
        "train_samples": len(train), "eval_samples": len(valid),
        "preprocess_seconds": prep_s, "train_seconds": train_s, "eval_seconds": eval_s,
        "train_samples_per_second": train_out.metrics["train_samples_per_second"],
        "train_loss": train_out.training_loss,
        "eval_before": before, "eval_after": after,
        "loss_curve": [{"step": r["step"], "loss": r["loss"]} for r in trainer.state.log_history if "loss" in r],
    }
    (out / "baseline_results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "loss_curve"}, indent=2))


if __name__ == "__main__":
    main()
