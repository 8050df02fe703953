"""Which CPU attention path trains faster: hone's QA training steps (all-MiniLM-L6-v2, SQuAD
windows of 384, batch 16, dropout 0.1) with unpadded attention run on each sequence alone
(`padding.attention_per_sequence`) or on sequences grouped by length (`padding.attention_grouped`),
in fp32 and bf16, the variants alternating round after round (hone only, `hone bench train`'s
loop). `padding.attention` runs the grouped one in every dtype from what this measures. The report is rewritten after every run, so a cut run keeps what it measured.

    flock /tmp/hone-bench.lock env PYTHONPATH=src python benchmarks/cpu_attention_ab.py --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compare_common import RESULTS, environment

import hone.models.padding as padding
from hone.bench import parse_args, run_benchmark

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS = {"grouped": padding.attention_grouped, "per_sequence": padding.attention_per_sequence}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "cpu-attention-ab-qa-minilm.json"))
    a = p.parse_args()
    bench = ["train", "--task", "qa", "--model_config", str(DATA / "models" / "all-MiniLM-L6-v2"), "--data",
             str(DATA / "squad" / "dev-v2.0.json"), "--max_seq_length", "384", "--per_device_train_batch_size", "16",
             "--steps", str(a.steps), "--warmup", "2", "--repeats", "1", "--systems", "hone", "--threads", str(a.threads)]
    report = {"benchmark": "cpu-attention-ab", "command": bench, **environment(), "samples_per_second": {}}
    for _ in range(a.rounds):
        for hardware in ("cpu", "cpu-bf16"):
            for name, function in VARIANTS.items():
                padding.attention_grouped = function  # what `padding.attention` calls
                result = run_benchmark(parse_args([*bench, "--hardware", hardware]))
                rate = result["systems"]["hone"]["samples_per_second"]
                report["samples_per_second"].setdefault(f"{hardware}/{name}", []).append(rate)
                print(hardware, name, rate, flush=True)
                Path(a.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
