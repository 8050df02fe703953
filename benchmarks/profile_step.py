"""torch.profiler's top ops of hone training steps (QA, a real checkpoint, real SQuAD windows),
as `hone bench train` runs them: the same data, collate, optimizer, loop and host allocator.

Writes the op table (self CPU time, sorted) as text, so that a profile before and after a
change can be compared. Wrap runs on a shared machine in `flock /tmp/hone-bench.lock`:

    flock /tmp/hone-bench.lock env PYTHONPATH=src python benchmarks/profile_step.py \
        --model ../shared/data/models/all-MiniLM-L6-v2 --data ../shared/data/squad/dev-v2.0.json \
        --hardware cpu-bf16 --threads 2 --out benchmarks/results/profile-qa-minilm-cpu-bf16.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from hone.bench import make_batches, qa_data, sample_order
from hone.config import TrainingArguments
from hone.data.collate import make_collator
from hone.data.tokenizer import load_tokenizer
from hone.engine.host_memory import exec_with_allocator
from hone.engine.optim import build_optimizer
from hone.engine.precision import autocast
from hone.engine.trainer import apply_execution_profile
from hone.hardware import resolve_profile
from hone.models.checkpoint import load_model


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder (its tokenizer too)")
    p.add_argument("--data", required=True, help="SQuAD json")
    p.add_argument("--hardware", default="cpu-bf16")
    p.add_argument("--hardware_overrides")
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="profiled steps")
    p.add_argument("--threads", type=int)
    p.add_argument("--rows", type=int, default=30, help="ops in the table")
    p.add_argument("--out", help="text file for the table (default: print only)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    profile_ = resolve_profile(args.hardware, args.hardware_overrides)
    exec_with_allocator(profile_.allocator, [sys.executable, *sys.argv], profile_.host_allocator_purge_ms)  # as `hone bench` would
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    data = qa_data(Path(args.data), tokenizer, args.max_seq_length, 128)
    order = sample_order(len(data.rows), (args.warmup + args.steps) * args.batch_size, 42)
    torch.manual_seed(42)
    model = load_model(args.model, "qa")
    apply_execution_profile(model, profile_)
    collate = make_collator(profile_.execution_mode, pad_token_id=data.pad_token_id,
                            position_offset=model.config.position_offset, max_seq_len=args.max_seq_length)
    batches = make_batches(data, order, args.batch_size, collate=collate, layout=profile_.execution_mode,
                           token_types=model.config.model_type == "bert")
    model.train()
    optimizer = build_optimizer(model, TrainingArguments(learning_rate=5e-5), profile_)

    def step(batch) -> None:
        with autocast(profile_):
            loss = model(**batch.inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:args.warmup]:
        step(batch)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[args.warmup:]:
            step(batch)
    seconds = time.perf_counter() - start
    samples = sum(len(b.indices) for b in batches[args.warmup:])
    real = np.mean([b.real_tokens / len(b.indices) for b in batches[args.warmup:]])
    header = (f"# {args.hardware} ({profile_.precision}, attention {profile_.attention}), "
              f"{torch.get_num_threads()} threads, {args.steps} profiled steps of batch {args.batch_size} "
              f"(mean {real:.0f} real tokens per sample), {samples / seconds:.2f} samples/s under the profiler\n"
              f"# torch {torch.__version__}; model {args.model}\n")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60)
    text = header + table + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
