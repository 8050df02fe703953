"""bf16 against fp32 in `hone qa` (issue 23): one fine-tuning run twice, under the `cpu` (fp32)
and `cpu-bf16` profiles, side by side on one core each. Reports the training losses logged over
the first --loss_steps steps (the relative gap of their mean, and the largest gap of one logged
value) and the SQuAD metrics of both runs, in one JSON, with a PNG of the two loss curves.

The default setting is the sweep's base config (benchmarks/configs/sweep-minilm-squad2.yaml):
all-MiniLM-L6-v2, the first 3,000 training questions of the shared split, windows of 128 with
stride 64, one epoch of batch 16, evaluated on 1,500 questions. It runs at the sweep's best
point (learning rate 6e-4, layer-wise decay 0.8) and logs every 10 steps. It takes about 15
minutes on the 2-core CPU. `--tiny` checks the path:

    flock /tmp/hone-bench.lock python benchmarks/qa_precision_compare.py
    python benchmarks/qa_precision_compare.py --tiny --out /tmp/precision.json
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys

from compare_common import HERE, environment, run_systems, setup_run, write_result
from pretrain_two_phase import plot, read_log, results

PROFILES = {"fp32": "cpu", "bf16": "cpu-bf16"}
METRICS = ("eval_exact", "eval_f1", "eval_best_f1", "eval_HasAns_f1", "eval_NoAns_f1")
TINY = dict(max_train_samples=48, max_eval_samples=24, loss_steps=3, logging_steps=1)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(HERE / "configs" / "sweep-minilm-squad2.yaml"))
    p.add_argument("--learning_rate", type=float, default=6e-4)
    p.add_argument("--layerwise_lr_decay", type=float, default=0.8)
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--loss_steps", type=int, default=100, help="Compare the losses logged up to this step.")
    p.add_argument("--max_train_samples", type=int, help="Override the config's.")
    p.add_argument("--max_eval_samples", type=int, help="Override the config's.")
    p.add_argument("--work", default="/tmp/hone-qa-precision", help="Run folders.")
    p.add_argument("--hardware", default="cpu", help="Names the result file; the runs use cpu and cpu-bf16.")
    p.add_argument("--tiny", action="store_true", help="Tiny sizes (overriding the flags) to check the path.")
    p.add_argument("--out", help="JSON report (default benchmarks/results/qa-precision-compare-cpu-<date>.json).")
    args = p.parse_args(argv)
    size, work, out = setup_run(args, TINY, "qa-precision-compare")

    commands = {}
    for name, profile in PROFILES.items():
        cmd = [sys.executable, "-m", "hone", "qa", "--config", args.config, "--hardware", profile,
               "--learning_rate", str(args.learning_rate), "--layerwise_lr_decay", str(args.layerwise_lr_decay),
               "--logging_steps", str(size["logging_steps"]), "--output_dir", str(work / name),
               "--overwrite_output_dir"]
        for key in ("max_train_samples", "max_eval_samples"):
            if size[key]:
                cmd += [f"--{key}", str(size[key])]
        commands[name] = cmd
    walls = run_systems(commands, work, parallel=True)

    losses = {name: [(r["step"], r["loss"]) for r in read_log(work / name)[0] if r["step"] <= size["loss_steps"]]
              for name in PROFILES}
    if [s for s, _ in losses["fp32"]] != [s for s, _ in losses["bf16"]] or not losses["fp32"]:
        raise SystemExit(f"the two runs logged different steps: {losses}")
    fp32, bf16 = ([v for _, v in losses[n]] for n in PROFILES)
    mean_gap = abs(statistics.fmean(bf16) - statistics.fmean(fp32)) / statistics.fmean(fp32)
    largest_gap = max(abs(b - f) / f for b, f in zip(bf16, fp32))
    metrics = {name: {k: results(work / name).get(k) for k in METRICS} for name in PROFILES}
    f1_gap = metrics["bf16"]["eval_f1"] - metrics["fp32"]["eval_f1"]

    figure = out.with_name(out.stem + ".png")
    logged = {name: read_log(work / name)[0] for name in PROFILES}
    curves = {name: {"step": [r["step"] for r in rows], "loss": [r["loss"] for r in rows]} for name, rows in logged.items()}
    plot(curves, {"loss": "training loss"}, figure, "hone qa, all-MiniLM-L6-v2: fp32 against bf16")
    report = {
        "benchmark": "hone qa: bf16 (cpu-bf16) against fp32 (cpu), the same run otherwise",
        "command": shlex.join(["python", "benchmarks/qa_precision_compare.py", *argv]),
        "date": datetime.date.today().isoformat(), **environment(), "settings": size,
        "commands": {n: shlex.join(["python", *c[1:]]) for n, c in commands.items()},
        "wall_time_s": {n: round(w, 1) for n, w in walls.items()},
        "losses": {n: dict(losses[n]) for n in PROFILES},
        "loss_mean_relative_gap": mean_gap, "loss_largest_relative_gap": largest_gap,
        "metrics": metrics, "f1_gap": f1_gap,
        "verdicts": {"losses_within_1_percent": mean_gap <= 0.01, "f1_within_0.5": abs(f1_gap) <= 0.5},
        "plot": figure.name,
    }
    write_result(report, out)
    print(f"losses over steps 1-{size['loss_steps']}: mean gap {100 * mean_gap:.2f}%, largest {100 * largest_gap:.2f}%; "
          f"F1 fp32 {metrics['fp32']['eval_f1']:.2f}, bf16 {metrics['bf16']['eval_f1']:.2f} ({f1_gap:+.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
