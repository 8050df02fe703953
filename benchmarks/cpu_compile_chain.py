"""Does torch.compile speed up BERT's element-wise chains on this CPU? The chain after each
attention and MLP output, LayerNorm(x + dropout(y)) (fp32 residual x, bf16 branch y, under bf16
autocast, as in hone's bf16 training steps), forward + backward at MiniLM's width on a QA
batch's token count, eager (hone.models.dropout's masks) against inductor with static shapes
(a bucketed token count) and with dynamic ones, with dropout 0.1 and without. Repeats
alternate eager and compiled; the compile time is reported apart.

    flock /tmp/hone-bench.lock env PYTHONPATH=src python benchmarks/cpu_compile_chain.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from compare_common import RESULTS, environment, write_result

from hone.models.dropout import dropout

WIDTH = 384  # all-MiniLM-L6-v2
TOKENS = 2880  # a bucketed token stream of a batch of 16 SQuAD windows (about 2,800 real tokens)


def residual_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, p: float) -> torch.Tensor:
    return F.layer_norm(x + dropout(y, p), (WIDTH,), weight, bias, 1e-12)


def time_chain(fn, tokens: list[int], p: float, weight: torch.Tensor, bias: torch.Tensor) -> float:
    """Mean seconds of forward + backward over the given token counts."""
    start = time.perf_counter()
    for n in tokens:
        x = torch.randn(n, WIDTH, requires_grad=True)
        y = torch.randn(n, WIDTH, dtype=torch.bfloat16, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(x, y, weight, bias, p)
        out.backward(torch.ones_like(out))
    return (time.perf_counter() - start) / len(tokens)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calls", type=int, default=20, help="timed calls per repeat")
    p.add_argument("--out", default=str(RESULTS / "cpu-compile-chain-minilm-bf16.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    weight, bias = torch.ones(WIDTH, requires_grad=True), torch.zeros(WIDTH, requires_grad=True)
    shapes = {"static": [TOKENS] * a.calls, "dynamic": [TOKENS - 180 + 17 * i for i in range(a.calls)]}
    report = {"benchmark": "cpu-compile-chain", "command": f"python benchmarks/cpu_compile_chain.py --threads {a.threads}",
              **environment(), "chain": "LayerNorm(x + dropout(y)), forward + backward, bf16 autocast",
              "width": WIDTH, "tokens": TOKENS, "results": {}}
    for shape, tokens in shapes.items():
        for drop in (0.1, 0.0):
            torch._dynamo.reset()
            compiled = torch.compile(residual_norm, dynamic=shape == "dynamic")
            started = time.perf_counter()
            time_chain(compiled, tokens[:2], drop, weight, bias)
            compile_s = time.perf_counter() - started
            times = {"eager": [], "compiled": []}
            for _ in range(a.repeats):
                times["eager"].append(time_chain(residual_norm, tokens, drop, weight, bias))
                times["compiled"].append(time_chain(compiled, tokens, drop, weight, bias))
            eager, comp = statistics.mean(times["eager"]), statistics.mean(times["compiled"])
            report["results"][f"{shape}/dropout={drop}"] = {
                "eager_ms": [1e3 * t for t in times["eager"]], "compiled_ms": [1e3 * t for t in times["compiled"]],
                "compiled_speedup": eager / comp, "compile_and_first_calls_s": compile_s}
            print(f"{shape} shapes, dropout {drop}: eager {1e3 * eager:.1f} ms, compiled {1e3 * comp:.1f} ms "
                  f"({eager / comp:.2f}x), compile {compile_s:.0f} s", flush=True)
    write_result(report, Path(a.out))


if __name__ == "__main__":
    main()
