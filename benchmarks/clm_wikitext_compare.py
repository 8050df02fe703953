"""hone clm vs the transformers Trainer baseline: a small GPT-2 trained from scratch on WikiText-2.

One fresh GPT-2 (the gpt2 preset shrunk to --layers x --width, --heads heads; seeded) is saved
once; `hone clm` and benchmarks/clm_transformers_baseline.py (run_clm's recipe with the Trainer)
both train it from that folder with the same settings on wiki.valid.raw, blocks of
--block_size tokens of the real GPT-2 tokenizer (bf16 or fp32), and evaluate on wiki.test.raw
before and after training, both in fp32 (the Trainer evaluates in fp32 on the CPU, --bf16 or not;
hone's evaluations are runs of their own on the cpu profile). Writes one JSON (perplexities before and after, their difference, wall and training
times, loss curves, machine, versions, commands) and a PNG of both training-loss curves to
benchmarks/results/. The issue's bar: the perplexities after training within 3% of each other.

    flock /tmp/hone-bench.lock python benchmarks/clm_wikitext_compare.py --precision bf16 --parallel

Duration of the defaults (6 x 384, block 256, batch 16, 3 epochs: 183 steps of 4,096 tokens,
~31M parameters, ~0.19 GFLOP per trained token): about 40 minutes per system in bf16 on the
2-core CPU (bf16 ~2x faster than fp32 there), i.e. about 45 minutes for both with --parallel
(one core each) and more when the machine is shared. `--tiny` checks the whole path in a few
minutes (a sliver of the text, a 2 x 64 model; not a result):

    flock /tmp/hone-bench.lock python benchmarks/clm_wikitext_compare.py --tiny --out /tmp/clm-compare.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from compare_common import HERE, RESULTS, comparison_arguments, environment, run_systems, write_result
from pretrain_two_phase import DATA, plot, read_log, results, run_hone

from hone.data.tokenizer import load_tokenizer
from hone.models.checkpoint import build_model
from hone.models.presets import preset

# what each evaluation records: its result and its runtime (the evaluation alone, as the Trainer times it)
EVAL_KEYS = ("eval_loss", "perplexity", "eval_runtime")

# --tiny: the whole path on a sliver of the data (not a result)
TINY = dict(text_lines=400, layers=2, width=64, heads=2, block_size=64, epochs=1.0, logging_steps=2)


def save_fresh_model(folder: Path, size: dict, tokenizer: str, seed: int) -> None:
    """The shared starting point: fresh weights of the gpt2 preset at the given size, and the
    tokenizer saved beside them (transformers' AutoTokenizer needs the folder's config.json)."""
    import torch

    torch.manual_seed(seed)
    config = {**preset("gpt2"), "n_layer": size["layers"], "n_embd": size["width"], "n_head": size["heads"]}
    build_model(config, "clm").save_pretrained(folder)
    load_tokenizer(tokenizer).save(folder)


def text_files(wikitext: Path, work: Path, lines: int | None) -> dict[str, Path]:
    """wiki.valid.raw (training) and wiki.test.raw (evaluation), or their first `lines` lines."""
    files = {"train": wikitext / "wiki.valid.raw", "eval": wikitext / "wiki.test.raw"}
    if lines is None:
        return files
    for split, path in files.items():
        files[split] = work / path.name
        head = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
        files[split].write_text("".join(head), encoding="utf-8")
    return files


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wikitext", default=str(DATA / "wikitext" / "wikitext-2-raw"))
    p.add_argument("--tokenizer", default=str(DATA / "tokenizers" / "gpt2"))
    p.add_argument("--work_dir", default=str(HERE / "work" / "clm-compare"))
    p.add_argument("--out", help="result JSON (default: benchmarks/results/clm-wikitext2-gpt2-<layers>x<width>-"
                                 "<precision>-<date>.json); the PNG goes beside it")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--eval_batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--warmup_ratio", type=float, default=0.05)
    p.add_argument("--weight_decay", type=float, default=0.01)
    comparison_arguments(p)
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--text_lines", type=int, help="Use only the first N lines of each file (a quick check).")
    p.add_argument("--max_steps", type=int, help="Stop training after N steps (a quick check, or to time steps).")
    p.add_argument("--max_eval_samples", type=int, help="Evaluate only the first N blocks (a quick check).")
    p.add_argument("--tiny", action="store_true", help="Tiny sizes (overriding the flags) to check the path.")
    a = p.parse_args(argv)
    size = {**vars(a), **(TINY if a.tiny else {})}

    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    files = text_files(Path(a.wikitext), work, size["text_lines"])
    init = work / "init"
    save_fresh_model(init, size, a.tokenizer, a.seed)
    bf16 = a.precision == "bf16"
    eval_limit = ["--max_eval_samples", a.max_eval_samples] if a.max_eval_samples else []
    step_limit = ["--max_steps", a.max_steps] if a.max_steps else []
    threads = 1 if a.parallel else None

    def hone_eval(model: Path, name: str) -> dict:
        """hone's evaluation of a folder in fp32, as the Trainer evaluates on the CPU."""
        step = run_hone(["clm", "--model_name_or_path", model, "--validation_file", files["eval"], "--do_eval",
                         "--block_size", size["block_size"], "--per_device_eval_batch_size", a.eval_batch_size,
                         "--hardware", "cpu", "--disable_tqdm", "--overwrite_output_dir", *eval_limit, "--output_dir",
                         work / name], work, name, threads)
        return {**step, "metrics": results(work / name)}

    systems = a.systems.split(",")
    before = hone_eval(init, "hone-before") if "hone" in systems else None
    commands: dict[str, list[str]] = {}
    if "hone" in systems:
        commands["hone"] = [sys.executable, "-m", "hone", *map(str, [
            "clm", "--model_name_or_path", init, "--train_file", files["train"], "--validation_file",
            files["eval"], "--do_train", "--block_size",
            size["block_size"], "--per_device_train_batch_size", a.batch_size, "--learning_rate", a.lr,
            "--num_train_epochs", size["epochs"], "--warmup_ratio", a.warmup_ratio, "--weight_decay", a.weight_decay,
            "--seed", a.seed, "--logging_steps", size["logging_steps"], "--save_strategy", "no", "--hardware",
            "cpu-bf16" if bf16 else "cpu", "--disable_tqdm", "--overwrite_output_dir", *step_limit, "--output_dir",
            work / "hone"])]
    if "transformers" in systems:
        commands["transformers"] = [sys.executable, str(HERE / "clm_transformers_baseline.py"), *map(str, [
            "--model_name_or_path", init, "--tokenizer", init, "--train_file", files["train"],
            "--validation_file", files["eval"], "--output_dir", work / "transformers", "--block_size",
            size["block_size"], "--epochs", size["epochs"], "--lr", a.lr, "--batch_size", a.batch_size,
            "--eval_batch_size", a.eval_batch_size, "--warmup_ratio", a.warmup_ratio, "--weight_decay",
            a.weight_decay, "--seed", a.seed, "--logging_steps", size["logging_steps"], "--eval_before",
            *eval_limit, *step_limit, *(["--bf16"] if bf16 else [])])]
    walls = run_systems(commands, work, a.parallel)
    after = hone_eval(work / "hone", "hone-after") if "hone" in commands else None

    model = f"gpt2-{size['layers']}x{size['width']}"
    result: dict = {"benchmark": "clm-wikitext2-from-scratch", "date": datetime.date.today().isoformat(),
                    **environment(), "model": model, "files": {k: str(v) for k, v in files.items()},
                    "settings": size, "systems": {}}
    curves = {}
    if "hone" in commands:
        res, (train_log, _) = results(work / "hone"), read_log(work / "hone")  # the training run
        curves["hone"] = {"step": [r["step"] for r in train_log], "loss": [r["loss"] for r in train_log]}
        result["systems"]["hone"] = {
            "wall_seconds": walls["hone"] + after["wall_time_s"], "train_runtime": res["train_runtime"],
            "eval_seconds": after["metrics"]["eval_runtime"], "eval_wall_seconds": after["wall_time_s"],
            "train_samples_per_second": res["train_samples_per_second"],
            "train_loss": res["train_loss"], "train_samples": res["train_samples"],
            "eval_samples": after["metrics"]["eval_samples"],
            "before": {k: before["metrics"][k] for k in EVAL_KEYS},
            "after": {k: after["metrics"][k] for k in EVAL_KEYS},
            "commands": [commands["hone"], before["command"], after["command"]]}
    if "transformers" in commands:
        res = json.loads((work / "transformers" / "baseline_results.json").read_text())
        curves["transformers"] = {"step": [r["step"] for r in res["loss_curve"]],
                                  "loss": [r["loss"] for r in res["loss_curve"]]}
        result["systems"]["transformers"] = {
            "wall_seconds": walls["transformers"], "train_runtime": res["train_seconds"],
            "eval_seconds": res["eval_seconds"], "train_samples_per_second": res["train_samples_per_second"],
            "train_loss": res["train_loss"], "train_samples": res["train_samples"],
            "eval_samples": res["eval_samples"],
            "before": {k: res["eval_before"][k] for k in EVAL_KEYS},
            "after": {k: res["eval_after"][k] for k in EVAL_KEYS}, "command": commands["transformers"]}
    if len(result["systems"]) == 2:
        h, t = result["systems"]["hone"], result["systems"]["transformers"]
        difference = h["after"]["perplexity"] / t["after"]["perplexity"] - 1
        result["comparison"] = {
            "perplexity_after_relative_difference": difference, "within_3_percent": abs(difference) <= 0.03,
            "perplexity_before_relative_difference": h["before"]["perplexity"] / t["before"]["perplexity"] - 1,
            "same_blocks": h["train_samples"] == t["train_samples"] and h["eval_samples"] == t["eval_samples"],
            "train_speedup": h["train_samples_per_second"] / t["train_samples_per_second"],
            "eval_speedup_before_after": [t[w]["eval_runtime"] / h[w]["eval_runtime"] for w in ("before", "after")],
            "wall_speedup": t["wall_seconds"] / h["wall_seconds"]}
    target = Path(a.out) if a.out else RESULTS / f"clm-wikitext2-{model}-{a.precision}-{result['date']}.json"
    figure = target.with_suffix(".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, {"loss": "training loss"}, figure, f"{model} from scratch on wiki.valid.raw, block "
         f"{size['block_size']}, {a.precision}")
    result["plot"] = figure.name
    write_result(result, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
