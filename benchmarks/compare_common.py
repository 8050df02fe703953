"""What the evidence scripts (the qa, glue and clm comparisons, the pre-training runs) and their
transformers baselines share: starting and timing each system as a process, the baselines'
Trainer settings, and the record of the machine and versions (hone.reporting's)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from hone import reporting

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def start(cmd: list[str], log: Path, threads: int | None,
          extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, float]:
    """Start a command with its output in `log` (and `threads` torch/OpenMP threads when given,
    and `extra_env` in its environment), importing hone from this checkout."""
    print("$", " ".join(f"{k}={v}" for k, v in (extra_env or {}).items()), " ".join(cmd), flush=True)
    path = os.pathsep.join(p for p in (str(HERE.parent / "src"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
               **(extra_env or {}))
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env), time.perf_counter()


def finish(job: tuple[subprocess.Popen, float], name: str) -> float:
    """Wait for a started command; its wall time in seconds."""
    proc, started = job
    if proc.wait() != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see its log in the work dir")
    return time.perf_counter() - started


def run_systems(commands: dict[str, list[str]], work: Path, parallel: bool) -> dict[str, float]:
    """Run each system's command (one after the other, or all at once on one thread each);
    their wall times in seconds. Logs go to work/<name>.log."""
    threads = 1 if parallel else None
    jobs, walls = {}, {}
    for name, cmd in commands.items():
        jobs[name] = start(cmd, work / f"{name}.log", threads)
        if not parallel:
            walls[name] = finish(jobs[name], name)
    pending = {name: job for name, job in jobs.items() if name not in walls}
    while pending:  # side by side: each wall time ends when its own process does
        for name in [n for n, (proc, _) in pending.items() if proc.poll() is not None]:
            walls[name] = finish(pending.pop(name), name)
        time.sleep(0.2)
    return walls


def environment() -> dict[str, Any]:
    """The machine (no host name) and the versions a result was measured with."""
    return {"machine": reporting.machine_info(), "versions": reporting.versions()}


def trainer_arguments(output_dir: str, *, batch_size: int, eval_batch_size: int, lr: float, epochs: float,
                      warmup_ratio: float, weight_decay: float, seed: int, bf16: bool, max_steps: int = -1,
                      logging_steps: int = 20):
    """transformers' TrainingArguments as a run_*.py user sets them: linear schedule, no saving or
    evaluation during training, CPU unless a GPU is there."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, per_device_eval_batch_size=eval_batch_size,
        learning_rate=lr, num_train_epochs=epochs, max_steps=max_steps, weight_decay=weight_decay,
        # transformers 5 reads a float warmup_steps < 1 as a ratio (its warmup_ratio is gone)
        warmup_steps=warmup_ratio, lr_scheduler_type="linear", seed=seed, bf16=bf16,
        use_cpu=not torch.cuda.is_available(), logging_steps=logging_steps, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=False)


def comparison_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every hone-vs-transformers comparison takes: seed, precision, which systems,
    and --parallel."""
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--systems", default="hone,transformers")
    p.add_argument("--parallel", action="store_true",
                   help="run both at once, one core and one thread each (same conditions, half the wall time)")


def setup_run(args: argparse.Namespace, tiny: dict, stem: str) -> tuple[dict, Path, Path]:
    """(sizes: the flags, or the --tiny ones; the work folder, created; the result file:
    --out or results/STEM-<hardware>-<date>.json) of an evidence script."""
    size = {**vars(args), **(tiny if args.tiny else {})}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or RESULTS / f"{stem}-{args.hardware}-{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    return size, work, out


def write_result(result: dict, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {target}")
