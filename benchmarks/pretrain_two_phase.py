"""Evidence for `hone pretrain`: a small BERT pre-trained from scratch in two phases on WikiText-2,
then fine-tuned on SST-2 beside the same fine-tuning from random weights.

1. `hone prepare-pretraining` on wiki.valid.raw and wiki.test.raw but its last 10 articles
   (training; WikiText-2's train split is not available here) and those 10 articles (held out),
   with the real bert-base-uncased vocabulary, at seq 128 (20 targets) and seq 512 (80).
2. `hone pretrain` phase 1 from a config (bert-base-uncased shrunk by --layers/--hidden/...;
   LAMB without bias correction, warmup + linear decay, accumulation), then phase 2: a new run
   from phase 1's folder at seq 512 with its own batch and schedule. Both evaluate the
   held-out MLM and NSP loss/accuracy every --phase{1,2}_eval_every steps.
3. `hone glue` SST-2 (a subset) from phase 2's weights, and from random weights of the same
   config (skipped with a message while `hone glue` does not exist).
4. One JSON report (commands, data statistics, curves, metrics, wall times, verdicts) and a PNG
   of the MLM and NSP curves of both phases, in benchmarks/results/.

Every step is a `python -m hone ...` command, recorded in the report. The defaults (4 x 256 BERT;
phase 1: 1,000 steps of 64 sequences of 128; phase 2: 100 steps of 32 sequences of 512; SST-2:
8,000 sentences x 2 epochs, twice) take about 55 minutes on the quiet 2-core CPU (measured
there: phase 1 ~29 sequences/s, phase 2 ~7.5 sequences/s, fp32), 2-4x that when it is shared;
the --phase*_steps flags scale it. `--tiny` checks the whole path in a few minutes:

    flock /tmp/hone-bench.lock python benchmarks/pretrain_two_phase.py --hardware cpu
    flock /tmp/hone-bench.lock python benchmarks/pretrain_two_phase.py --tiny --out /tmp/two-phase.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import sys
import time
from pathlib import Path

from compare_common import HERE, environment, finish, setup_run, start, write_result

from hone.cli import SUBCOMMANDS
from hone.data.glue import read_glue_file

DATA = HERE.parent.parent / "shared" / "data"
ARTICLE = re.compile(r"^ = [^=].* = $", re.MULTILINE)  # a WikiText article's title line
# --tiny: every step on a sliver of the data, to check the path (not a result)
TINY = dict(text_chars=60_000, held_out_articles=1, dupe_factor=1, phase1_steps=6, phase1_batch=8, phase1_accumulation=2, phase2_steps=4,
            phase2_batch=2, phase2_accumulation=2, phase1_eval_every=3, phase2_eval_every=2, eval_samples=64,
            glue_train_samples=256, glue_eval_samples=128, glue_epochs=1, layers=2, hidden=64, heads=2,
            intermediate=128)


def split_wikitext(folder: Path, work: Path, held_out_articles: int, text_chars: int | None) -> dict[str, list[Path]]:
    """The training and held-out files: WikiText-2's validation split and its test split but for
    the last `held_out_articles` articles, which are held out (train is not available here).
    With text_chars, only the first characters of each file (--tiny). Written to work/ under
    wiki.*.raw names, which pick the WikiText reader."""
    valid, test = ((folder / name).read_text(encoding="utf-8")[:text_chars or None]
                   for name in ("wiki.valid.raw", "wiki.test.raw"))
    starts = [m.start() for m in ARTICLE.finditer(test)]
    if not 1 <= held_out_articles < len(starts):
        raise SystemExit(f"--held_out_articles must be between 1 and {len(starts) - 1} (the articles of "
                         f"{folder / 'wiki.test.raw'}), got {held_out_articles}")
    cut = starts[-held_out_articles]
    parts = {"wiki.valid.raw": valid, "wiki.test-head.raw": test[:cut], "wiki.test-tail.raw": test[cut:]}
    for name, text in parts.items():
        (work / name).write_text(text, encoding="utf-8")
    return {"train": [work / "wiki.valid.raw", work / "wiki.test-head.raw"],
            "held_out": [work / "wiki.test-tail.raw"]}


def sst2_text(glue_dir: Path, work: Path, sentences_per_document: int = 10) -> Path:
    """SST-2's training sentences without their labels, as blank-line documents of
    `sentences_per_document` lines each (in-domain text for the "task-adaptive" variant; the dev
    sentences, which the fine-tuning scores on, are not in it)."""
    sentences = [text.strip() for text in read_glue_file(glue_dir / "train.tsv", "sst2", "train").texts]
    documents = ["\n".join(sentences[i:i + sentences_per_document])
                 for i in range(0, len(sentences), sentences_per_document)]
    path = work / "sst2-train-sentences.txt"
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def run_hone(args: list, work: Path, name: str, threads: int | None) -> dict:
    """`python -m hone ARGS` (this checkout's hone), its output in work/NAME.log: the command and
    its wall time; stops the script when it fails."""
    argv = [sys.executable, "-m", "hone", *map(str, args)]
    seconds = finish(start(argv, work / f"{name}.log", threads), name)
    return {"command": shlex.join(["python", *argv[1:]]), "wall_time_s": round(seconds, 1)}


def read_log(folder: Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of a run's log.jsonl."""
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "eval_loss" in r]


def results(folder: Path) -> dict:
    return json.loads((folder / "all_results.json").read_text())


def falls(values: list[float]) -> bool | None:
    """Whether a curve ends below where it starts (None with fewer than two points)."""
    return None if len(values) < 2 else values[-1] < values[0]


def plot(curves: dict[str, dict[str, list]], keys: dict[str, str], file: Path, title: str,
         xlabel: str = "step") -> None:
    """One panel per key (e.g. MLM and NSP loss), every curve (phase) in each, against the step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(8, 5 * len(keys)), 4))
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate(keys.items()):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for name, curve in curves.items():
            if curve.get(key):
                ax.plot(curve["step"], curve[key], marker="o", markersize=3, label=name)
        ax.set(xlabel=xlabel, ylabel=label, title=label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(file, dpi=100)


def glue(args: argparse.Namespace, work: Path, model: list, name: str, size: dict) -> dict:
    """`hone glue` SST-2 on a subset, from `model` (--model_name_or_path or --config_name ...)."""
    out = work / name
    step = run_hone(
        ["glue", *model, "--task_name", "sst2", "--data_dir", args.glue_dir, "--do_train", "--do_eval",
         "--max_seq_length", "128", "--max_train_samples", size["glue_train_samples"], "--max_eval_samples",
         size["glue_eval_samples"], "--num_train_epochs", size["glue_epochs"], "--learning_rate", args.glue_lr,
         "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--warmup_ratio", "0.1",
         "--weight_decay", "0.01", "--seed", args.seed, "--save_strategy", "no", "--logging_steps", "20",
         "--hardware", args.hardware, "--disable_tqdm", "--output_dir", out, "--overwrite_output_dir"],
        work, name, args.threads)
    return {**step, "metrics": results(out)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wikitext", default=str(DATA / "wikitext" / "wikitext-2-raw"))
    p.add_argument("--tokenizer", default=str(DATA / "tokenizers" / "bert-base-uncased"))
    p.add_argument("--glue_dir", default=str(DATA / "glue" / "SST-2"))
    p.add_argument("--work", default="/tmp/hone-pretrain-two-phase", help="Prepared data and run folders.")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--dupe_factor", type=int, default=5, help="Passes over the text, each with new masks.")
    p.add_argument("--text_chars", type=int, help="Use only the first N characters of each text file.")
    p.add_argument("--held_out_articles", type=int, default=10,
                   help="The last N articles of wiki.test are held out; the rest of it and wiki.valid train.")
    p.add_argument("--phase1_steps", type=int, default=1000)
    p.add_argument("--phase1_batch", type=int, default=32, help="Micro batch of phase 1.")
    p.add_argument("--phase1_accumulation", type=int, default=2)
    p.add_argument("--phase1_lr", type=float, default=4e-3)
    p.add_argument("--phase1_warmup_ratio", type=float, default=0.1)
    p.add_argument("--phase2_steps", type=int, default=100)
    p.add_argument("--phase2_batch", type=int, default=8)
    p.add_argument("--phase2_accumulation", type=int, default=4)
    p.add_argument("--phase2_lr", type=float, default=2e-3)
    p.add_argument("--phase2_warmup_ratio", type=float, default=0.1)
    p.add_argument("--phase1_eval_every", type=int, default=100, help="Steps between held-out evaluations.")
    p.add_argument("--phase2_eval_every", type=int, default=25)
    p.add_argument("--eval_samples", type=int, default=500, help="Held-out instances per evaluation.")
    p.add_argument("--glue_train_samples", type=int, default=8000)
    p.add_argument("--glue_eval_samples", type=int, default=872, help="SST-2 dev has 872.")
    p.add_argument("--glue_epochs", type=float, default=2)
    p.add_argument("--glue_lr", type=float, default=1e-4)
    p.add_argument("--skip_glue", action="store_true")
    p.add_argument("--with_sst2_text", action="store_true",
                   help="Add SST-2's training sentences, without labels, to the pre-training text (task-adaptive "
                        "pre-training: in-domain text that WikiText-2 lacks).")
    p.add_argument("--hardware", default="cpu")
    p.add_argument("--threads", type=int, help="torch/OpenMP threads per process.")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tiny", action="store_true", help="Tiny sizes (overriding the flags) to check the path.")
    p.add_argument("--out", help="JSON report (default benchmarks/results/pretrain-two-phase-<hardware>-<date>.json); "
                                 "the plot goes beside it.")
    args = p.parse_args(argv)
    size, work, out = setup_run(args, TINY, "pretrain-two-phase")
    started = time.perf_counter()

    # 1. data: training text and held-out text (other articles), at both lengths
    texts = split_wikitext(Path(args.wikitext), work, size["held_out_articles"], size["text_chars"])
    if args.with_sst2_text:
        texts["train"].append(sst2_text(Path(args.glue_dir), work))
    steps: dict[str, dict] = {}
    for length, targets in ((128, 20), (512, 80)):
        for split, path in texts.items():
            steps[f"prepare_{split}_{length}"] = run_hone(
                ["prepare-pretraining", "--input", *path, "--tokenizer", args.tokenizer, "--output",
                 work / f"{split}-{length}", "--max_seq_length", length, "--max_predictions_per_seq", targets,
                 "--dupe_factor", size["dupe_factor"] if split == "train" else 1, "--seed", args.seed, "--overwrite"],
                work, f"prepare-{split}-{length}", args.threads)
    data = {name: json.loads((work / name / "manifest.json").read_text())["statistics"]
            for name in ("train-128", "held_out-128", "train-512", "held_out-512")}

    # 2. two phases of pre-training
    model = (f"num_hidden_layers={size['layers']},hidden_size={size['hidden']},num_attention_heads={size['heads']},"
             f"intermediate_size={size['intermediate']}")
    phases = {}
    for phase, length, origin in ((1, 128, ["--config_name", "bert-base-uncased", "--config_overrides", model,
                                            "--tokenizer_name", args.tokenizer]),
                                  (2, 512, ["--model_name_or_path", work / "phase1"])):
        n = f"phase{phase}"
        steps[n] = run_hone(
            ["pretrain", *origin, "--train_file", work / f"train-{length}", "--validation_file",
             work / f"held_out-{length}", "--do_train", "--do_eval", "--max_seq_length", length, "--lamb",
             "--lamb_no_bias_correction", "--learning_rate", size[f"{n}_lr"], "--weight_decay", "0.01",
             "--lr_scheduler_type", "linear", "--warmup_ratio", size[f"{n}_warmup_ratio"], "--max_steps",
             size[f"{n}_steps"], "--per_device_train_batch_size", size[f"{n}_batch"],
             "--gradient_accumulation_steps", size[f"{n}_accumulation"], "--eval_steps", size[f"{n}_eval_every"],
             "--max_eval_samples", size["eval_samples"], "--per_device_eval_batch_size", "32", "--logging_steps",
             max(1, size[f"{n}_eval_every"] // 5), "--save_strategy", "no", "--seed", args.seed, "--hardware",
             args.hardware, "--disable_tqdm", "--output_dir", work / n, "--overwrite_output_dir"], work, n, args.threads)
        training, evals = read_log(work / n)
        final = results(work / n)  # the evaluation after the last step
        evals = list({r["step"]: r for r in [*evals, {"step": size[f"{n}_steps"], **final}]}.values())
        phases[n] = {"seq_len": length, "train_metrics": {k: v for k, v in final.items() if k.startswith("train")},
                     "eval_metrics": {k: v for k, v in final.items() if k.startswith("eval")},
                     "eval_curve": {key: [r[key] for r in evals] for key in
                                    ("step", "eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_loss",
                                     "eval_nsp_accuracy")},
                     "train_loss_curve": {"step": [r["step"] for r in training],
                                          "loss": [r["loss"] for r in training]}}
        curve = phases[n]["eval_curve"]
        phases[n]["falls"] = {"mlm_loss": falls(curve["eval_mlm_loss"]), "nsp_loss": falls(curve["eval_nsp_loss"]),
                              "train_loss": falls(phases[n]["train_loss_curve"]["loss"])}

    offset = size["phase1_steps"]
    curves = {f"phase {i} (seq {phases[f'phase{i}']['seq_len']})": {
        **phases[f"phase{i}"]["eval_curve"], "step": [s + (offset if i == 2 else 0)
                                                      for s in phases[f"phase{i}"]["eval_curve"]["step"]]}
        for i in (1, 2)}
    figure = out.with_name(out.stem + "-losses.png")
    plot(curves, {"eval_mlm_loss": "held-out MLM loss", "eval_nsp_loss": "held-out NSP loss"}, figure,
         f"BERT {size['layers']}x{size['hidden']} pre-trained on WikiText-2"
         f"{' + SST-2 train sentences' if args.with_sst2_text else ''} "
         f"(held out: the last {size['held_out_articles']} articles of wiki.test)",
         xlabel="step (phase 2 after phase 1)")

    # 3. SST-2 from phase 2's weights and from random ones
    fine_tuning = {}
    if "glue" not in SUBCOMMANDS:
        fine_tuning["skipped"] = "`hone glue` does not exist in this checkout yet; rerun once it is merged"
        print(f"SST-2 skipped: {fine_tuning['skipped']}")
    elif not args.skip_glue:
        fine_tuning["pretrained"] = glue(args, work, ["--model_name_or_path", work / "phase2"], "sst2-pretrained",
                                         size)
        fine_tuning["random"] = glue(args, work, ["--config_name", work / "phase2", "--tokenizer_name",
                                                  work / "phase2"], "sst2-random", size)
        accuracy = {k: v["metrics"]["eval_accuracy"] for k, v in fine_tuning.items()}
        fine_tuning["accuracy_gain"] = accuracy["pretrained"] - accuracy["random"]
        fine_tuning["pretraining_helps"] = fine_tuning["accuracy_gain"] > 0

    report = {
        "benchmark": "hone pretrain: two-phase BERT pre-training on WikiText-2, then SST-2 against random weights",
        "command": shlex.join(["python", "benchmarks/pretrain_two_phase.py", *argv]), "date": datetime.date.today().isoformat(),
        "provisional": "timings on a shared 2-core CPU; the learning results do not depend on it",
        **environment(), "settings": size, "data": data, "steps": steps,
        "phases": phases, "sst2": fine_tuning, "plot": figure.name,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    write_result(report, out)
    for name, phase in phases.items():
        print(f"{name}: held-out MLM loss {phase['eval_curve']['eval_mlm_loss'][0]:.3f} -> "
              f"{phase['eval_curve']['eval_mlm_loss'][-1]:.3f}, NSP loss {phase['eval_curve']['eval_nsp_loss'][0]:.3f}"
              f" -> {phase['eval_curve']['eval_nsp_loss'][-1]:.3f} ({steps[name]['wall_time_s']:.0f} s)")
    if "accuracy_gain" in fine_tuning:
        print(f"SST-2 accuracy: {fine_tuning['pretrained']['metrics']['eval_accuracy']:.4f} from phase 2, "
              f"{fine_tuning['random']['metrics']['eval_accuracy']:.4f} from random weights "
              f"(gain {fine_tuning['accuracy_gain']:+.4f})")
    print(f"plot: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
