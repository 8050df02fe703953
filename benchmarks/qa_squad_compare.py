"""hone vs the transformers Trainer baseline on SQuAD 2.0: same model, data, settings, seed.

Runs `hone qa` and benchmarks/qa_transformers_baseline.py on this machine, one after the
other or (--parallel) side by side on one core each, and writes one JSON with both scores
and wall times:

    python benchmarks/qa_squad_compare.py --model ../shared/data/models/all-MiniLM-L6-v2 \
        --train_file ../shared/data/squad/splits/dev-v2.0-articles-00-19.json \
        --validation_file ../shared/data/squad/splits/dev-v2.0-articles-20-34.json \
        --lr 2e-4 --epochs 2 --precision bf16 --baseline_padding dynamic --parallel

The recorded result and how to read it: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ["exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1",
        "best_f1_thresh"]


def start(cmd: list[str], log: Path, threads: int | None) -> tuple[subprocess.Popen, float]:
    """Start a command with its output in `log` (and `threads` torch/OpenMP threads when given)."""
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env), time.perf_counter()


def finish(job: tuple[subprocess.Popen, float], name: str) -> float:
    """Wait for a started command; its wall time in seconds."""
    proc, started = job
    if proc.wait() != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see its log in the work dir")
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--train_file", required=True)
    p.add_argument("--validation_file", required=True)
    p.add_argument("--work_dir", default=str(HERE / "work" / "qa-compare"))
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--systems", default="hone,transformers")
    p.add_argument("--baseline_padding", choices=["max_length", "dynamic"], default="max_length",
                   help="run_qa pads every window to max_seq_length by default; 'dynamic' is its faster option")
    p.add_argument("--parallel", action="store_true",
                   help="run both at once, one core and one thread each (same conditions, half the wall time)")
    a = p.parse_args()

    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    systems = a.systems.split(",")
    threads = 1 if a.parallel else None
    jobs: dict[str, tuple] = {}
    walls: dict[str, float] = {}
    common = dict(lr=a.lr, epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, warmup_ratio=0.1,
                  weight_decay=0.01, max_seq_length=384, doc_stride=128, precision=a.precision,
                  baseline_padding=a.baseline_padding, torch_threads=1 if a.parallel else os.environ.get("OMP_NUM_THREADS", "all"),
                  parallel=a.parallel)
    result: dict = {"benchmark": "squad2-finetune", "date": date.today().isoformat(),
                    "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                "python": platform.python_version()},
                    "model": a.model, "train_file": a.train_file, "validation_file": a.validation_file,
                    "settings": common, "systems": {}}
    if "hone" in systems:
        out = work / "hone"
        cmd = [sys.executable, "-m", "hone", "qa", "--model_name_or_path", a.model,
               "--train_file", a.train_file, "--validation_file", a.validation_file, "--version_2_with_negative",
               "--do_train", "--do_eval", "--max_seq_length", "384", "--doc_stride", "128",
               "--per_device_train_batch_size", str(a.batch_size), "--per_device_eval_batch_size", "64",
               "--learning_rate", str(a.lr), "--num_train_epochs", str(a.epochs), "--warmup_ratio", "0.1",
               "--weight_decay", "0.01", "--seed", str(a.seed), "--logging_steps", "20", "--save_steps", "-1",
               "--hardware", "cpu-bf16" if a.precision == "bf16" else "cpu", "--output_dir", str(out),
               "--overwrite_output_dir", "--disable_tqdm"]
        jobs["hone"] = (start(cmd, work / "hone.log", threads), cmd)
        if not a.parallel:
            walls["hone"] = finish(jobs["hone"][0], "hone")
    if "transformers" in systems:
        out = work / "transformers"
        cmd = [sys.executable, str(HERE / "qa_transformers_baseline.py"), "--model", a.model,
               "--train_file", a.train_file, "--validation_file", a.validation_file, "--output_dir", str(out),
               "--epochs", str(a.epochs), "--lr", str(a.lr), "--batch_size", str(a.batch_size),
               "--seed", str(a.seed)] + (["--bf16"] if a.precision == "bf16" else []) \
            + (["--dynamic_padding"] if a.baseline_padding == "dynamic" else [])
        jobs["transformers"] = (start(cmd, work / "transformers.log", threads), cmd)
    for name, (job, _) in jobs.items():
        if name not in walls:
            walls[name] = finish(job, name)

    if "hone" in jobs:
        out, cmd, wall = work / "hone", jobs["hone"][1], walls["hone"]
        res = json.loads((out / "all_results.json").read_text())
        result["systems"]["hone"] = {"wall_seconds": wall, "train_runtime": res["train_runtime"],
                                     "train_samples_per_second": res["train_samples_per_second"],
                                     "train_loss": res["train_loss"],
                                     "metrics": {k: res[f"eval_{k}"] for k in KEYS}, "command": cmd}
    if "transformers" in jobs:
        out, cmd, wall = work / "transformers", jobs["transformers"][1], walls["transformers"]
        res = json.loads((out / "baseline_results.json").read_text())
        result["versions"] = res["versions"]
        result["systems"]["transformers"] = {"wall_seconds": wall, "train_runtime": res["train_seconds"],
                                             "train_samples_per_second": res["train_samples_per_second"],
                                             "train_loss": res["train_loss"],
                                             "metrics": {k: res["metrics"][k] for k in KEYS}, "command": cmd}
    if len(result["systems"]) == 2:
        h, t = result["systems"]["hone"], result["systems"]["transformers"]
        result["f1_difference"] = h["metrics"]["f1"] - t["metrics"]["f1"]
        result["train_speedup"] = h["train_samples_per_second"] / t["train_samples_per_second"]
        result["wall_speedup"] = t["wall_seconds"] / h["wall_seconds"]
    target = HERE / "results" / f"qa-squad2-minilm-{a.precision}-{date.today().isoformat()}.json"
    target.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {target}")


if __name__ == "__main__":
    main()
