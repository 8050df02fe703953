"""hone vs the transformers Trainer baseline on GLUE SST-2: same model, data, settings, seed.

Runs `hone glue` and benchmarks/glue_transformers_baseline.py on this machine, one after the
other or (--parallel) side by side on one core each, and writes one JSON with both dev
accuracies, wall times and training speeds, the machine and the versions:

    flock /tmp/hone-bench.lock python benchmarks/glue_sst2_compare.py \
        --model ../shared/data/models/all-MiniLM-L6-v2 --data_dir ../shared/data/glue/SST-2 \
        --lr 1e-4 --epochs 1 --precision bf16 --baseline_padding dynamic

--max_train_samples / --max_eval_samples / --max_steps make a subset run (the same for both
systems; stated in the JSON's settings) to check the setup or when time forbids the full set.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from compare_common import HERE, RESULTS, comparison_arguments, environment, run_systems, write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data_dir", required=True, help="the SST-2 folder of the GLUE release (or the one above it)")
    p.add_argument("--work_dir", default=str(HERE / "work" / "glue-compare"))
    p.add_argument("--out", help="result JSON (default: benchmarks/results/glue-sst2-minilm-<precision>-"
                                 "<baseline_padding>-<date>.json)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--warmup_ratio", type=float, default=0.06)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--max_seq_length", type=int, default=128)
    comparison_arguments(p)
    p.add_argument("--hone_mode", choices=["unpadded", "packed"], default="unpadded",
                   help="hone's training batches: unpadded rows (the cpu profiles' default) or packed rows")
    p.add_argument("--baseline_padding", choices=["max_length", "dynamic"], default="dynamic",
                   help="run_glue pads every row to max_seq_length by default; 'dynamic' is its faster option")
    p.add_argument("--max_train_samples", type=int)
    p.add_argument("--max_eval_samples", type=int)
    p.add_argument("--max_steps", type=int, default=-1)
    a = p.parse_args()

    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    systems = a.systems.split(",")
    subset = [flag for name in ("max_train_samples", "max_eval_samples") if getattr(a, name) is not None
              for flag in (f"--{name}", str(getattr(a, name)))]
    steps = ["--max_steps", str(a.max_steps)] if a.max_steps > 0 else []
    commands: dict[str, list[str]] = {}
    if "hone" in systems:
        commands["hone"] = [
            sys.executable, "-m", "hone", "glue", "--model_name_or_path", a.model, "--task_name", "sst2",
            "--data_dir", a.data_dir, "--do_train", "--do_eval", "--max_seq_length", str(a.max_seq_length),
            "--per_device_train_batch_size", str(a.batch_size), "--per_device_eval_batch_size", "64",
            "--learning_rate", str(a.lr), "--num_train_epochs", str(a.epochs), "--warmup_ratio", str(a.warmup_ratio),
            "--weight_decay", str(a.weight_decay), "--seed", str(a.seed), "--logging_steps", "50",
            "--save_steps", "-1", "--hardware", "cpu-bf16" if a.precision == "bf16" else "cpu",
            *(["--hardware_overrides", "pack=true"] if a.hone_mode == "packed" else []),
            "--output_dir", str(work / "hone"), "--overwrite_output_dir", "--disable_tqdm", *subset, *steps]
    if "transformers" in systems:
        commands["transformers"] = [
            sys.executable, str(HERE / "glue_transformers_baseline.py"), "--model", a.model, "--task_name", "sst2",
            "--data_dir", a.data_dir, "--output_dir", str(work / "transformers"), "--epochs", str(a.epochs),
            "--lr", str(a.lr), "--batch_size", str(a.batch_size), "--warmup_ratio", str(a.warmup_ratio),
            "--weight_decay", str(a.weight_decay), "--max_seq_length", str(a.max_seq_length), "--seed", str(a.seed),
            *(["--bf16"] if a.precision == "bf16" else []),
            *(["--dynamic_padding"] if a.baseline_padding == "dynamic" else []), *subset, *steps]
    walls = run_systems(commands, work, a.parallel)

    result: dict = {"benchmark": "glue-sst2-finetune", "date": date.today().isoformat(), **environment(),
                    "model": a.model, "data_dir": a.data_dir, "settings": vars(a), "systems": {}}
    if "hone" in commands:
        res = json.loads((work / "hone" / "all_results.json").read_text())
        result["systems"]["hone"] = {
            "wall_seconds": walls["hone"], "train_runtime": res["train_runtime"],
            "train_samples_per_second": res["train_samples_per_second"], "train_loss": res["train_loss"],
            "metrics": {"accuracy": res["eval_accuracy"], "samples": res["eval_samples"]},
            "command": commands["hone"]}
    if "transformers" in commands:
        res = json.loads((work / "transformers" / "baseline_results.json").read_text())
        result["systems"]["transformers"] = {
            "wall_seconds": walls["transformers"], "train_runtime": res["train_seconds"],
            "train_samples_per_second": res["train_samples_per_second"], "train_loss": res["train_loss"],
            "metrics": {"accuracy": res["metrics"]["accuracy"], "samples": res["metrics"]["samples"]},
            "command": commands["transformers"]}
    if len(result["systems"]) == 2:
        h, t = result["systems"]["hone"], result["systems"]["transformers"]
        result["accuracy_difference_points"] = 100 * (h["metrics"]["accuracy"] - t["metrics"]["accuracy"])
        result["train_speedup"] = h["train_samples_per_second"] / t["train_samples_per_second"]
        result["wall_speedup"] = t["wall_seconds"] / h["wall_seconds"]
    target = Path(a.out) if a.out else \
        RESULTS / f"glue-sst2-minilm-{a.precision}-{a.baseline_padding}-{date.today().isoformat()}.json"
    write_result(result, target)


if __name__ == "__main__":
    main()
