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
import sys
from datetime import date
from pathlib import Path

from compare_common import HERE, RESULTS, comparison_arguments, environment, run_systems, write_result

KEYS = ["exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1",
        "best_f1_thresh"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--train_file", required=True)
    p.add_argument("--validation_file", required=True)
    p.add_argument("--work_dir", default=str(HERE / "work" / "qa-compare"))
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch_size", type=int, default=16)
    comparison_arguments(p)
    p.add_argument("--baseline_padding", choices=["max_length", "dynamic"], default="max_length",
                   help="run_qa pads every window to max_seq_length by default; 'dynamic' is its faster option")
    a = p.parse_args()

    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    systems = a.systems.split(",")
    commands: dict[str, list[str]] = {}
    common = dict(lr=a.lr, epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, warmup_ratio=0.1,
                  weight_decay=0.01, max_seq_length=384, doc_stride=128, precision=a.precision,
                  baseline_padding=a.baseline_padding, torch_threads=1 if a.parallel else os.environ.get("OMP_NUM_THREADS", "all"),
                  parallel=a.parallel)
    result: dict = {"benchmark": "squad2-finetune", "date": date.today().isoformat(), **environment(),
                    "model": a.model, "train_file": a.train_file, "validation_file": a.validation_file,
                    "settings": common, "systems": {}}
    if "hone" in systems:
        out = work / "hone"
        commands["hone"] = [sys.executable, "-m", "hone", "qa", "--model_name_or_path", a.model,
                            "--train_file", a.train_file, "--validation_file", a.validation_file, "--version_2_with_negative",
                            "--do_train", "--do_eval", "--max_seq_length", "384", "--doc_stride", "128",
                            "--per_device_train_batch_size", str(a.batch_size), "--per_device_eval_batch_size", "64",
                            "--learning_rate", str(a.lr), "--num_train_epochs", str(a.epochs), "--warmup_ratio", "0.1",
                            "--weight_decay", "0.01", "--seed", str(a.seed), "--logging_steps", "20", "--save_steps", "-1",
                            "--hardware", "cpu-bf16" if a.precision == "bf16" else "cpu", "--output_dir", str(out),
                            "--overwrite_output_dir", "--disable_tqdm"]
    if "transformers" in systems:
        out = work / "transformers"
        commands["transformers"] = [sys.executable, str(HERE / "qa_transformers_baseline.py"), "--model", a.model,
                                    "--train_file", a.train_file, "--validation_file", a.validation_file, "--output_dir", str(out),
                                    "--epochs", str(a.epochs), "--lr", str(a.lr), "--batch_size", str(a.batch_size),
                                    "--seed", str(a.seed)] + (["--bf16"] if a.precision == "bf16" else []) \
            + (["--dynamic_padding"] if a.baseline_padding == "dynamic" else [])
    walls = run_systems(commands, work, a.parallel)

    if "hone" in commands:
        out, cmd, wall = work / "hone", commands["hone"], walls["hone"]
        res = json.loads((out / "all_results.json").read_text())
        result["systems"]["hone"] = {"wall_seconds": wall, "train_runtime": res["train_runtime"],
                                     "train_samples_per_second": res["train_samples_per_second"],
                                     "train_loss": res["train_loss"],
                                     "metrics": {k: res[f"eval_{k}"] for k in KEYS}, "command": cmd}
    if "transformers" in commands:
        out, cmd, wall = work / "transformers", commands["transformers"], walls["transformers"]
        res = json.loads((out / "baseline_results.json").read_text())
        result["systems"]["transformers"] = {"wall_seconds": wall, "train_runtime": res["train_seconds"],
                                             "train_samples_per_second": res["train_samples_per_second"],
                                             "train_loss": res["train_loss"],
                                             "metrics": {k: res["metrics"][k] for k in KEYS}, "command": cmd}
    if len(result["systems"]) == 2:
        h, t = result["systems"]["hone"], result["systems"]["transformers"]
        result["f1_difference"] = h["metrics"]["f1"] - t["metrics"]["f1"]
        result["train_speedup"] = h["train_samples_per_second"] / t["train_samples_per_second"]
        result["wall_speedup"] = t["wall_seconds"] / h["wall_seconds"]
    write_result(result, RESULTS / f"qa-squad2-minilm-{a.precision}-{date.today().isoformat()}.json")


if __name__ == "__main__":
    main()
