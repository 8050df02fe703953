"""Resident memory over one epoch of `hone qa` training on a CPU: the curve (VmRSS sampled every
half second by a thread of the same process) and the peak (VmHWM), with the step rates that
the run logged, written as JSON and plotted as PNG.

The issue 23 setting: all-MiniLM-L6-v2, batch 16, seq 384, the shared SQuAD split of 6,482
windows (406 steps). An epoch takes 15-25 minutes on two quiet cores; run it under the bench
lock, e.g.

    flock /tmp/hone-bench.lock env PYTHONPATH=src python benchmarks/qa_epoch_memory.py \
        --hardware cpu-bf16 --out benchmarks/results/qa-epoch-memory-minilm-cpu-bf16

`--max_steps` shortens the run (a partial epoch) for quicker comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from hone.engine.host_memory import exec_with_allocator, resident_bytes
from hone.hardware import resolve_profile
from hone.reporting import machine_info, versions

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    p.add_argument("--train_file", default=str(SHARED / "squad" / "splits" / "dev-v2.0-articles-00-19.json"))
    p.add_argument("--hardware", default="cpu")
    p.add_argument("--hardware_overrides")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--max_steps", type=int, default=-1, help="stop early (default: one epoch)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    p.add_argument("--extra", default="", help="more hone qa flags, one string")
    p.add_argument("--out", required=True, help="path without suffix: writes .json and .png")
    return p.parse_args()


class Sampler(threading.Thread):
    """VmRSS every `interval` seconds until stopped."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()
        self.start_time = time.perf_counter()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.perf_counter() - self.start_time, resident_bytes("VmRSS") or 0))
            self.stopped.wait(self.interval)


def plot(samples: list[tuple[float, int]], steps: list[dict], title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([t / 60 for t, _ in samples], [r / 2**30 for _, r in samples], lw=1, label="resident (VmRSS)")
    ax.axhline(2.5e9 / 2**30, color="red", ls="--", lw=1, label="2.5 GB target (2.33 GiB)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("GiB")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    args = parse_args()
    profile = resolve_profile(args.hardware, args.hardware_overrides)
    exec_with_allocator(profile.allocator, [sys.executable, *sys.argv], profile.host_allocator_purge_ms)  # as `hone qa` would
    from hone.tasks import qa

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    sampler = Sampler(args.interval)
    with tempfile.TemporaryDirectory(prefix="hone-epoch-") as tmp:
        argv = ["--model_name_or_path", args.model, "--train_file", args.train_file, "--do_train",
                "--version_2_with_negative", "--per_device_train_batch_size", str(args.batch_size),
                "--max_seq_length", str(args.max_seq_length), "--num_train_epochs", "1",
                "--max_steps", str(args.max_steps), "--output_dir", tmp, "--hardware", args.hardware,
                "--save_strategy", "no", "--logging_steps", "10", "--disable_tqdm", "true",
                *(["--hardware_overrides", args.hardware_overrides] if args.hardware_overrides else []),
                *shlex.split(args.extra)]
        sampler.start()
        started = time.perf_counter()
        metrics = qa.run(argv)
        seconds = time.perf_counter() - started
        sampler.stopped.set()
        sampler.join()
        log = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    peak = resident_bytes("VmHWM")
    steps = [r for r in log if "loss" in r]
    report = {
        "benchmark": "one epoch of hone qa training, resident memory",
        "command": "python benchmarks/qa_epoch_memory.py " + shlex.join(sys.argv[1:]),
        "hone_qa_argv": argv,
        "machine": machine_info(),
        "versions": versions(),
        "environment": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "ONEDNN", "DNNL", "GLIBC",
                                                                               "THP_", "OMP_", "LD_PRELOAD",
                                                                               "MIMALLOC_"))},
        "peak_resident_bytes": peak,
        "peak_resident_gib": None if peak is None else peak / 2**30,
        "wall_seconds": seconds,
        "metrics": metrics,
        "log": steps,
        "samples_per_second_logged_mean": sum(r["samples_per_second"] for r in steps) / max(1, len(steps)),
        "rss_samples": [[round(t, 2), r] for t, r in sampler.samples],
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    title = (f"hone qa, {Path(args.model).name}, {args.hardware}: batch {args.batch_size}, seq {args.max_seq_length}, "
             f"peak {report['peak_resident_gib']:.2f} GiB")
    plot(sampler.samples, steps, title, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in report.items() if k not in ("rss_samples", "log")}, indent=1))


if __name__ == "__main__":
    main()
