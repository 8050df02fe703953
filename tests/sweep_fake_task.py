"""A recipe with the contract of hone.tasks.<name>.run, for the sweep tests: no model, milliseconds.

`run(argv, on_evaluate=None)` parses transformers' flag names (plus --config YAML, the command
line winning), "trains" for --max_steps steps, reports an evaluation every --eval_steps steps
through on_evaluate, and writes run.json and log.jsonl as every recipe does. Its F1 is a known
function of the hyperparameters, so tests can check which run is best:

    quality = 90 - 10 * |log10(learning_rate / 3e-4)| - (per_device_train_batch_size == 16)
    eval_f1 after step s = quality * s / max_steps

The hardware entry records the OMP_NUM_THREADS and CUDA_VISIBLE_DEVICES it was given.
Each step waits while the file named by --hold_file exists; --fail makes it raise a HoneError; --crash kills the process (os._exit); a file named by
--interrupt_once_file raises KeyboardInterrupt at step 2 once (the file is removed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path

import yaml

from hone.errors import HoneError


class FakeError(HoneError):
    """The fake recipe's user error."""


def quality(learning_rate: float, batch_size: int) -> float:
    return 90.0 - 10.0 * abs(math.log10(learning_rate / 3e-4)) - (batch_size == 16)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fake", allow_abbrev=False)
    p.add_argument("--config")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--overwrite_output_dir", action="store_true")
    p.add_argument("--resume_from_checkpoint")
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--per_device_train_batch_size", type=int, default=8)
    p.add_argument("--layerwise_lr_decay", type=float, default=1.0)
    p.add_argument("--max_steps", type=int, default=4)
    p.add_argument("--eval_steps", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fail", type=lambda s: s == "true", default=False)
    p.add_argument("--crash", type=lambda s: s == "true", default=False)
    p.add_argument("--interrupt_once_file")
    p.add_argument("--hold_file")
    return p


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="microseconds")


def run(argv: list[str], on_evaluate=None) -> dict:
    parser = _parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**yaml.safe_load(Path(pre.config).read_text()))
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    if out.is_dir() and any(out.iterdir()) and not (args.overwrite_output_dir or args.resume_from_checkpoint):
        raise FakeError(f"output_dir {out} is not empty; pass --overwrite_output_dir")
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "config"}
    record = {"task": "fake", "command": "fake " + " ".join(argv), "status": "running", "error": None,
              "settings": settings, "hardware": {"name": "cpu", "replicas": 1, "threads": os.environ.get("OMP_NUM_THREADS"),
                           "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}, "versions": {"hone": "test"},
              "git_commit": None, "started": _now(), "finished": None, "wall_time_s": None, "metrics": {}}
    begin = time.time()

    def save(status: str, error: str | None = None, metrics: dict | None = None) -> None:
        record.update(status=status, error=error, metrics=metrics or {})
        if status != "running":
            record.update(finished=_now(), wall_time_s=time.time() - begin)
        (out / "run.json").write_text(json.dumps(record, indent=2))

    save("running")
    if args.crash:
        os._exit(3)
    best = quality(args.learning_rate, args.per_device_train_batch_size)
    log = (out / "log.jsonl").open("w")
    eval_metrics: dict = {}
    try:
        if args.fail:
            raise FakeError("--fail was given: this run fails on purpose")
        for step in range(1, args.max_steps + 1):
            while args.hold_file and os.path.exists(args.hold_file):
                time.sleep(0.05)
            loss = 2.0 / step + args.learning_rate * 1e3
            log.write(json.dumps({"step": step, "epoch": step / args.max_steps, "loss": loss,
                                  "learning_rate": args.learning_rate}) + "\n")
            if args.interrupt_once_file and step == 2 and os.path.exists(args.interrupt_once_file):
                os.remove(args.interrupt_once_file)
                raise KeyboardInterrupt
            if step % args.eval_steps == 0:
                f1 = best * step / args.max_steps
                eval_metrics = {"eval_f1": f1, "eval_best_f1": f1 + 0.5, "eval_exact": f1 - 3.0}
                log.write(json.dumps({"step": step, "epoch": step / args.max_steps, **eval_metrics}) + "\n")
                log.flush()
                if on_evaluate is not None:
                    on_evaluate(step, dict(eval_metrics))
    except BaseException as e:
        save("failed", f"{type(e).__name__}: {e}", eval_metrics)
        raise
    finally:
        log.close()
    metrics = {"train_loss": 1.0, "train_runtime": time.time() - begin, "epoch": 1.0, **eval_metrics}
    save("finished", None, metrics)
    return metrics
