"""Where pre-training pays on SST-2: `hone glue` from a pre-trained checkpoint and from random
weights of the same config, at several labelled-data budgets (--budgets sentences of the train
set) and seeds, evaluated on the whole dev set. Writes one JSON (commands, metrics, mean gain per
budget) and a PNG of dev accuracy against the budget:

    flock /tmp/hone-bench.lock env PYTHONPATH=src python benchmarks/sst2_label_budget.py \
        --checkpoint /tmp/hone-pretrain-two-phase/phase2 --budgets 1000,2000,4000,8000 --seeds 42,43

Fine-tuning as in pretrain_two_phase.py (seq 128, batch 32, 2 epochs, learning rate 1e-4).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
from pathlib import Path

from compare_common import RESULTS, environment, write_result
from pretrain_two_phase import DATA, glue

from hone.data.glue import read_glue_file


def majority_rate(glue_dir: Path) -> float:
    """The dev accuracy of always answering the more frequent label."""
    positive = float(read_glue_file(glue_dir / "dev.tsv", "sst2", "validation").labels.mean())
    return max(positive, 1.0 - positive)


def plot(budgets: list[int], accuracy: dict[str, dict[int, list[float]]], majority: float, file: Path,
         title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, by_budget in accuracy.items():
        means = [statistics.mean(by_budget[b]) for b in budgets]
        (line,) = ax.plot(budgets, means, marker="o", label=f"{name} (mean over seeds)")
        for b in budgets:
            ax.scatter([b] * len(by_budget[b]), by_budget[b], s=12, alpha=0.5, color=line.get_color())
    ax.axhline(majority, color="grey", linestyle=":", label=f"majority label ({majority:.3f})")
    ax.set(xscale="log", xlabel="labelled SST-2 sentences", ylabel="dev accuracy (872)", title=title)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=100)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="pre-trained folder (e.g. pretrain_two_phase.py's phase2)")
    p.add_argument("--budgets", default="1000,2000,4000,8000")
    p.add_argument("--seeds", default="42,43")
    p.add_argument("--glue_dir", default=str(DATA / "glue" / "SST-2"))
    p.add_argument("--glue_lr", type=float, default=1e-4)
    p.add_argument("--glue_epochs", type=float, default=2)
    p.add_argument("--hardware", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--work", default="/tmp/hone-sst2-label-budget")
    p.add_argument("--out", default=str(RESULTS / f"sst2-label-budget-{datetime.date.today().isoformat()}.json"))
    args = p.parse_args(argv)
    budgets, seeds = [int(b) for b in args.budgets.split(",")], [int(s) for s in args.seeds.split(",")]
    work, checkpoint = Path(args.work), Path(args.checkpoint)
    work.mkdir(parents=True, exist_ok=True)
    starts = {"pretrained": ["--model_name_or_path", checkpoint],
              "random": ["--config_name", checkpoint, "--tokenizer_name", checkpoint]}
    runs, accuracy = [], {name: {b: [] for b in budgets} for name in starts}
    for seed in seeds:
        args.seed = seed
        for budget in budgets:
            size = {"glue_train_samples": budget, "glue_eval_samples": 872, "glue_epochs": args.glue_epochs}
            for name, model in starts.items():
                run = glue(args, work, model, f"{name}-{budget}-seed{seed}", size)
                acc = run["metrics"]["eval_accuracy"]
                accuracy[name][budget].append(acc)
                runs.append({"start": name, "budget": budget, "seed": seed, **run})
                print(f"{name:>10} {budget:>5} sentences, seed {seed}: dev accuracy {acc:.4f}", flush=True)
    gain = {b: statistics.mean(accuracy["pretrained"][b]) - statistics.mean(accuracy["random"][b]) for b in budgets}
    figure = Path(args.out).with_suffix(".png")
    majority = majority_rate(Path(args.glue_dir))
    plot(budgets, accuracy, majority, figure, f"SST-2 from {checkpoint.name} vs random weights")
    report = {"benchmark": "SST-2 accuracy against the labelled-data budget, pre-trained vs random weights",
              "command": shlex.join(["python", "benchmarks/sst2_label_budget.py", *argv]),
              "date": datetime.date.today().isoformat(), **environment(), "checkpoint": str(checkpoint),
              "budgets": budgets, "seeds": seeds, "majority_label_accuracy": majority, "accuracy": accuracy, "mean_gain_by_budget": gain,
              "runs": runs, "plot": figure.name}
    write_result(report, Path(args.out))
    for b in budgets:
        print(f"{b:>5} sentences: pre-trained {statistics.mean(accuracy['pretrained'][b]):.4f}, random "
              f"{statistics.mean(accuracy['random'][b]):.4f}, gain {gain[b]:+.4f}")
    print(f"plot: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
