"""What a host-memory setting costs a CPU training step (issue 23: at most 2%): `hone qa` for
--max_steps steps under each --variants entry (hardware overrides, e.g. `bound_host_memory=true`
or `bucket_tokens=128`, and upper-case names for the run's environment, e.g.
`MIMALLOC_ALLOW_THP=1`), alternating, --repeats times each, one run at a time. Reports each
run's training samples/s, peak resident memory (the log's peak_memory_mb) and user/system CPU
seconds, and each variant's mean rate over the first variant's, in one JSON:

    flock /tmp/hone-bench.lock python benchmarks/host_memory_ab.py --hardware cpu-bf16
    flock /tmp/hone-bench.lock python benchmarks/host_memory_ab.py --hardware cpu-bf16 \
        --variants unbucketed=bucket_tokens=0 buckets128=bucket_tokens=128 --out results/x.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import shlex
import statistics
import sys

from compare_common import HERE, environment, finish, setup_run, start, write_result

SHARED = HERE.parent.parent / "shared" / "data"
TINY = dict(max_steps=3, repeats=1, max_seq_length=256)


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME=k=v,ENV_VAR=v' -> (NAME, {"overrides": 'k=v', "environment": {ENV_VAR: v}})."""
    name, sep, settings = text.partition("=")
    pairs = [item.partition("=") for item in settings.split(",")]
    if not sep or not name or not all(key and eq for key, eq, _ in pairs):
        raise SystemExit(f"--variants: {text!r} is not NAME=k=v[,k=v] (example: buckets=bucket_tokens=128)")
    return name, {"overrides": ",".join(f"{k}={v}" for k, _, v in pairs if not k.isupper()),
                  "environment": {k: v for k, _, v in pairs if k.isupper()}}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    p.add_argument("--train_file", default=str(SHARED / "squad" / "splits" / "dev-v2.0-articles-00-19.json"))
    p.add_argument("--hardware", default="cpu-bf16")
    p.add_argument("--max_steps", type=int, default=60)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=["unbounded=bound_host_memory=false",
                                                      "bounded=bound_host_memory=true"],
                   help="NAME=OVERRIDES each (--hardware_overrides of that run); ratios are over the first.")
    p.add_argument("--work", default="/tmp/hone-host-memory-ab")
    p.add_argument("--tiny", action="store_true", help="Tiny sizes (overriding the flags) to check the path.")
    p.add_argument("--out", help="JSON report (default benchmarks/results/host-memory-ab-<hardware>-<date>.json).")
    args = p.parse_args(argv)
    size, work, out = setup_run(args, TINY, "host-memory-ab")

    variants = dict(parse_variant(v) for v in args.variants)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for repeat in range(size["repeats"]):
        for name, variant in variants.items():
            folder = work / f"{name}-{repeat}"
            cmd = [sys.executable, "-m", "hone", "qa", "--model_name_or_path", args.model, "--train_file",
                   args.train_file, "--version_2_with_negative", "--do_train", "--max_steps", str(size["max_steps"]),
                   "--max_seq_length", str(size["max_seq_length"]), "--per_device_train_batch_size", "16",
                   "--logging_steps", "10", "--save_strategy", "no", "--hardware", args.hardware,
                   *(["--hardware_overrides", variant["overrides"]] if variant["overrides"] else []),
                   "--disable_tqdm", "true", "--seed", "42", "--output_dir", str(folder), "--overwrite_output_dir"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds = finish(start(cmd, work / f"{name}-{repeat}.log", args.threads, variant["environment"]), name)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            train = json.loads((folder / "train_results.json").read_text())
            log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
            runs[name].append({"command": shlex.join([*(f"{k}={v}" for k, v in variant["environment"].items()),
                                                      "python", *cmd[1:]]),
                               "wall_time_s": round(seconds, 1),
                               "user_cpu_s": round(after.ru_utime - before.ru_utime, 1),
                               "system_cpu_s": round(after.ru_stime - before.ru_stime, 1),
                               "train_samples_per_second": train["train_samples_per_second"],
                               "peak_memory_mb": max(r.get("peak_memory_mb", 0) for r in log)})
    base = next(iter(runs))
    rate = {name: statistics.fmean(r["train_samples_per_second"] for r in rs) for name, rs in runs.items()}
    report = {
        "benchmark": "hone qa training under host-memory settings (alternating runs)",
        "command": shlex.join(["python", "benchmarks/host_memory_ab.py", *argv]),
        "date": datetime.date.today().isoformat(), **environment(), "settings": size, "variants": variants,
        "runs": runs, "samples_per_second_mean": rate,
        "over_first": {name: {"samples_per_second_ratio": rate[name] / rate[base],
                              "per_repeat_ratio": [r["train_samples_per_second"] / b["train_samples_per_second"]
                                                   for r, b in zip(runs[name], runs[base])],
                              "peak_memory_mb_mean": statistics.fmean(r["peak_memory_mb"] for r in runs[name])}
                       for name in runs},
    }
    write_result(report, out)
    for name, row in report["over_first"].items():
        print(f"{name}: {row['samples_per_second_ratio']:.3f}x {base}'s samples/s, peak "
              f"{[r['peak_memory_mb'] for r in runs[name]]} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
