"""Evidence for `hone pretrain`: continued masked-LM pre-training of the real all-MiniLM-L6-v2.

The checkpoint is a bare encoder (a sentence-embedding model): `hone pretrain` adds a newly
initialised MLM head and trains RoBERTa style, straight from raw text (wiki.valid.raw, packed
into full-sentence blocks, masked afresh in every batch). The held-out MLM loss is measured on
wiki.test.raw before training (an evaluation-only run: the same seed gives the same new head
and the same evaluation masks) and every --eval_every steps. Writes one JSON report and a PNG of
the curves to benchmarks/results/.

The defaults (300 steps of 16 blocks of 128 tokens, 7 evaluations of 500 blocks) take about
10 minutes on the quiet 2-core CPU (measured there: ~12 blocks/s in fp32), 2-4x that when it
is shared; `--tiny` checks the path in a minute or two:

    flock /tmp/hone-bench.lock python benchmarks/pretrain_minilm_mlm.py --hardware cpu
    flock /tmp/hone-bench.lock python benchmarks/pretrain_minilm_mlm.py --tiny --out /tmp/minilm.json
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

from compare_common import environment, setup_run, write_result
from pretrain_two_phase import DATA, falls, plot, read_log, results, run_hone

TINY = dict(text_chars=40_000, steps=4, batch=4, eval_every=2, eval_samples=16)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DATA / "models" / "all-MiniLM-L6-v2"))
    p.add_argument("--wikitext", default=str(DATA / "wikitext" / "wikitext-2-raw"))
    p.add_argument("--work", default="/tmp/hone-pretrain-minilm", help="Run folders.")
    p.add_argument("--text_chars", type=int, help="Use only the first N characters of each text file.")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup_ratio", type=float, default=0.06)
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--eval_samples", type=int, default=500)
    p.add_argument("--hardware", default="cpu")
    p.add_argument("--threads", type=int, help="torch/OpenMP threads.")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tiny", action="store_true", help="Tiny sizes (overriding the flags) to check the path.")
    p.add_argument("--out", help="JSON report (default benchmarks/results/pretrain-minilm-mlm-<hardware>-<date>.json).")
    args = p.parse_args(argv)
    size, work, out = setup_run(args, TINY, "pretrain-minilm-mlm")
    texts = {"train": Path(args.wikitext) / "wiki.valid.raw", "held_out": Path(args.wikitext) / "wiki.test.raw"}
    if size["text_chars"]:
        for split, path in texts.items():
            (work / split).mkdir(exist_ok=True)
            texts[split] = work / split / path.name  # the same name: it picks the WikiText reader
            texts[split].write_text(path.read_text(encoding="utf-8")[:size["text_chars"]], encoding="utf-8")
    started = time.perf_counter()
    common = ["--model_name_or_path", args.model, "--validation_file", texts["held_out"], "--do_eval",
              "--max_seq_length", size["max_seq_length"], "--max_eval_samples", size["eval_samples"],
              "--per_device_eval_batch_size", "32", "--seed", args.seed, "--hardware", args.hardware, "--disable_tqdm",
              "--overwrite_output_dir"]
    steps = {"before": run_hone(["pretrain", *common, "--output_dir", work / "before"], work, "before", args.threads)}
    steps["train"] = run_hone(
        ["pretrain", *common, "--train_file", texts["train"], "--do_train", "--max_steps", size["steps"],
         "--per_device_train_batch_size", size["batch"], "--gradient_accumulation_steps", size["accumulation"],
         "--learning_rate", size["lr"], "--warmup_ratio", size["warmup_ratio"], "--weight_decay", "0.01",
         "--eval_steps", size["eval_every"], "--logging_steps", max(1, size["eval_every"] // 5), "--save_strategy",
         "no", "--output_dir", work / "train"], work, "train", args.threads)

    before, final = results(work / "before"), results(work / "train")
    training, evals = read_log(work / "train")
    evals = list({r["step"]: r for r in [{"step": 0, **before}, *evals, {"step": size["steps"], **final}]}.values())
    curve = {key: [r[key] for r in evals] for key in ("step", "eval_mlm_loss", "eval_mlm_accuracy", "eval_perplexity")}
    figure = out.with_name(out.stem + "-losses.png")
    plot({"held-out (wiki.test)": curve,
          "training loss": {"step": [r["step"] for r in training], "eval_mlm_loss": [r["loss"] for r in training]}},
         {"eval_mlm_loss": "MLM loss"}, figure, "all-MiniLM-L6-v2 (new MLM head): continued MLM on WikiText-2")
    report = {
        "benchmark": "hone pretrain: continued MLM of all-MiniLM-L6-v2 (MLM head added) on raw WikiText-2",
        "command": shlex.join(["python", "benchmarks/pretrain_minilm_mlm.py", *argv]), "date": datetime.date.today().isoformat(),
        "provisional": "timings on a shared 2-core CPU; the learning results do not depend on it",
        **environment(), "settings": size, "steps": steps,
        "eval_curve": curve, "train_loss_curve": {"step": [r["step"] for r in training],
                                                  "loss": [r["loss"] for r in training]},
        "train_metrics": {k: v for k, v in final.items() if k.startswith("train")},
        "falls": {"held_out_mlm_loss": falls(curve["eval_mlm_loss"]),
                  "train_loss": falls([r["loss"] for r in training])},
        "plot": figure.name, "wall_time_s": round(time.perf_counter() - started, 1),
    }
    write_result(report, out)
    print(f"held-out MLM loss {curve['eval_mlm_loss'][0]:.3f} (new head) -> {curve['eval_mlm_loss'][-1]:.3f}, accuracy "
          f"{curve['eval_mlm_accuracy'][0]:.3f} -> {curve['eval_mlm_accuracy'][-1]:.3f} after {size['steps']} steps; "
          f"written to {out} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
