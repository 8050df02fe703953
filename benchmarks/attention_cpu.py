"""Varlen attention on a CPU: forward + backward of the ways hone can run it, on the sequence
lengths of real SQuAD windows (MiniLM's 12 heads of 32, dropout 0.1, bf16 or fp32).

Compares one sdpa call per sequence, sequences grouped by length into a few padded sdpa
calls, the same groups in hand-written attention with a cheap dropout mask, all sequences on
one padded grid, and nested (jagged) tensors. Wrap runs in `flock /tmp/hone-bench.lock`:

    flock /tmp/hone-bench.lock env PYTHONPATH=src python benchmarks/attention_cpu.py \
        --tokenizer ../shared/data/models/all-MiniLM-L6-v2 --data ../shared/data/squad/dev-v2.0.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hone.data.squad import prepare_train_features, read_squad
from hone.data.tokenizer import load_tokenizer
from hone.models import padding
from hone.models.padding import AttentionLayout


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--batches", type=int, default=4, help="batches of real lengths (each timed)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head_dim", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--out")
    return p.parse_args()


def nested_attention(q, k, v, layout, *, dropout_p, scale):
    """Nested jagged tensors: sdpa on (S, H, j, D)."""
    offsets = layout.cu_seqlens.long()
    qn, kn, vn = (torch.nested.nested_tensor_from_jagged(t, offsets, max_seqlen=layout.max_seqlen).transpose(1, 2)
                  for t in (q, k, v))
    out = F.scaled_dot_product_attention(qn, kn, vn, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2).values()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.tokenizer)
    features = prepare_train_features(read_squad(Path(args.data)), tokenizer, max_seq_length=384, doc_stride=128,
                                      progress=False)
    rng = np.random.default_rng(0)
    batches = [rng.choice(features.lengths, args.batch_size) for _ in range(args.batches)]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    H, D = args.heads, args.head_dim

    candidates = {
        "per_sequence_sdpa": lambda q, k, v, lay: padding.attention_per_sequence(
            q, k, v, lay, dropout_p=args.dropout, scale=None),
        "grid_sdpa": lambda q, k, v, lay: padding.attention_on_grid(q, k, v, lay, dropout_p=args.dropout, scale=None),
        "nested_sdpa": lambda q, k, v, lay: nested_attention(q, k, v, lay, dropout_p=args.dropout, scale=None),
    }
    for name in getattr(padding, "CPU_ATTENTION_VARIANTS", {}):
        candidates[name] = (lambda variant: lambda q, k, v, lay: padding.CPU_ATTENTION_VARIANTS[variant](
            q, k, v, lay, dropout_p=args.dropout, scale=None))(name)

    results: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.repeats):
        for lengths in batches:
            mask = torch.from_numpy((np.arange(lengths.max()) < lengths[:, None]).astype(np.int64))
            layout = AttentionLayout.varlen(mask, tuple(mask.shape))
            N = int(lengths.sum())
            torch.manual_seed(0)
            q, k, v = (torch.randn(N, H, D, dtype=dtype, requires_grad=True) for _ in range(3))
            grad = torch.randn(N, H, D, dtype=dtype)
            for name, fn in candidates.items():
                try:
                    start = time.perf_counter()
                    out = fn(q, k, v, layout)
                    out.backward(grad)
                    results[name].append(time.perf_counter() - start)
                except Exception as e:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
                    results[name].append(float("nan"))
                    print(f"{name}: {type(e).__name__}: {e}")
                q.grad = k.grad = v.grad = None
    report = {
        "settings": {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "mean_length": float(np.mean(np.concatenate(batches)))},
        "seconds_per_batch_fwd_bwd": {name: statistics.median(t) for name, t in results.items()},
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
