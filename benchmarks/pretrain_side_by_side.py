"""BERT pre-training steps (MLM + NSP), hone against transformers' BertForPreTraining, side by side.

Until `hone bench train` grows a pre-training task, this times the same loop as it does
(hone.bench.train_steps: forward under autocast, backward, AdamW step, zero_grad) on instances
prepared by `hone prepare-pretraining` (Google's recipe, static masks), so both systems see the
same samples, the same masks and the same weights:

- transformers: BertForPreTraining (sdpa attention) on batches padded to the batch's longest
  instance, predicting every position (its MLM loss ignores the -100 labels);
- hone: BertForPreTraining in the profile's mode (unpadded on the CPU profiles), with sparse
  prediction: only the ~15% masked positions go through the LM head and vocabulary projection.

    flock /tmp/hone-bench.lock python benchmarks/pretrain_side_by_side.py \\
        --text ../shared/data/wikitext/wikitext-2-raw/wiki.valid.raw \\
        --tokenizer ../shared/data/tokenizers/bert-base-uncased --model small --hardware cpu --threads 1

Writes a JSON report (hone bench's fields) to --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hone.bench import (
    BenchData,
    baseline_collate,
    batch_flops,
    load_transformers_model,
    make_batches,
    sample_order,
    system_report,
    train_steps,
)
from hone.data.collate import make_collator
from hone.data.pretraining import prepare_pretraining
from hone.data.shards import PretrainingDataset
from hone.engine.trainer import apply_execution_profile
from hone.hardware import resolve_profile
from hone.models.checkpoint import build_model, config_from_dict, load_model
from hone.models.presets import preset
from hone.reporting import machine_info, versions

MODELS = {
    "small": {**preset("bert-base-uncased"), "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 1024},
    "minilm": preset("minilm"),
    "bert-base": preset("bert-base-uncased"),
}


def prepared_data(args: argparse.Namespace, tmp: Path) -> Path:
    if args.data:
        return Path(args.data)
    folder = tmp / "data"
    prepare_pretraining(["--input", *args.text, "--tokenizer", args.tokenizer, "--output", str(folder),
                         "--max_seq_length", str(args.seq_len), "--max_predictions_per_seq",
                         str(round(args.seq_len * 0.15 + 0.5)), "--dupe_factor", "1", "--seed", str(args.seed)])
    return folder


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="A folder prepared by hone prepare-pretraining (objective mlm_nsp).")
    p.add_argument("--text", nargs="+", help="Raw text to prepare instead (WikiText raw, ...).")
    p.add_argument("--tokenizer", help="With --text: the tokenizer folder.")
    p.add_argument("--model", default="small", choices=list(MODELS))
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--hardware", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", help="JSON report (default benchmarks/results/pretrain-<model>-<hardware>.json).")
    args = p.parse_args(argv)
    if not args.data and not (args.text and args.tokenizer):
        p.error("give --data, or --text and --tokenizer")

    profile = resolve_profile(args.hardware, None)
    if args.threads:
        profile = replace(profile, cpu_threads=args.threads)
        torch.set_num_threads(args.threads)  # for both systems
    with tempfile.TemporaryDirectory(prefix="hone-pretrain-bench-") as tmp:
        dataset = PretrainingDataset.open(prepared_data(args, Path(tmp)))
        rows = [dataset[i] for i in range(len(dataset))]
        data = BenchData(rows, pad_token_id=0, baseline_padding="longest")
        config = config_from_dict(dict(MODELS[args.model], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                                  source=args.model)
        order = sample_order(len(rows), (args.warmup + args.steps) * args.batch_size, args.seed)
        baseline = make_batches(data, order, args.batch_size, collate=baseline_collate("longest", 0, args.seq_len),
                                layout="longest", token_types=True)
        flops = batch_flops(data, baseline, config, "mlm", args.seq_len)
        torch.manual_seed(args.seed)
        folder = Path(tmp) / "model"
        build_model(config, "pretraining").save_pretrained(folder)
        reports = {}
        for name in ("hone", "transformers"):
            torch.manual_seed(args.seed)
            if name == "hone":
                model = load_model(folder, "pretraining")
                apply_execution_profile(model, profile)
                mode = profile.execution_mode
                collate = make_collator(mode, pad_token_id=0, max_seq_len=args.seq_len)
                batches = make_batches(data, order, args.batch_size, collate=collate, layout=mode, token_types=True)
            else:
                model, mode, batches = load_transformers_model(folder, "AutoModelForPreTraining"), "longest", baseline
            run = train_steps(model, batches, profile, lr=5e-5, warmup=args.warmup, compile_model=False,
                              dynamic=True, desc=name)
            reports[name] = {"mode": mode, **system_report(run, batches, args.warmup, flops, None)}
            del model
    lengths = dataset.lengths()
    report = {
        "benchmark": "BERT pre-training steps, hone vs transformers BertForPreTraining",
        "command": shlex.join(["python", "benchmarks/pretrain_side_by_side.py", *argv]),
        "machine": machine_info(), "versions": versions(),
        "settings": {**vars(args), "profile": profile.name, "precision": profile.precision, "mode": profile.execution_mode,
                     "threads": torch.get_num_threads()},
        "data": {"instances": len(dataset), "mean_real_tokens": float(lengths.mean()),
                 "padding_share_at_seq_len": float(1 - lengths.mean() / args.seq_len),
                 "masked_per_instance": float(np.mean([(r["labels"] != -100).sum() for r in rows]))},
        "systems": reports,
        "hone_vs_transformers": {"samples_per_second_ratio": reports["hone"]["samples_per_second"]
                                 / reports["transformers"]["samples_per_second"],
                                 "loss_first_difference": reports["hone"]["loss_first"]
                                 - reports["transformers"]["loss_first"]},
    }
    out = Path(args.out or f"benchmarks/results/pretrain-{args.model}-{args.hardware}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in reports.items():
        print(f"{name:>12} ({r['mode']}): {r['samples_per_second']:.2f} samples/s, step {r['step_time_mean_s']:.3f} "
              f"+- {r['step_time_std_s']:.3f} s, loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}")
    print(f"hone / transformers: {report['hone_vs_transformers']['samples_per_second_ratio']:.2f}x; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
