"""`hone sweep` and `hone runs`: the command lines (cli.py's table names sweep_main and runs_main)."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from collections import Counter
from pathlib import Path

from hone.engine.output_dir import OutputDir
from hone.sweep import SweepError
from hone.sweep.execute import import_task
from hone.sweep.records import FINISHED, find_runs, read_run
from hone.sweep.search import SweepConfig, run_grid, run_optuna
from hone.sweep.space import parse_grid, parse_space
from hone.sweep.table import build_rows, choose_metric, default_direction, format_csv, format_markdown, sweep_definition

log = logging.getLogger("hone")

# The metric a sweep optimises when --metric is not given.
TASK_METRICS = {"qa": "eval_best_f1", "glue": "eval_accuracy", "clm": "eval_loss", "pretrain": "eval_loss"}

SWEEP_EPILOG = """\
Every flag hone sweep does not know goes to every run (e.g. --model_name_or_path, --do_train);
put them after -- to be explicit. Each run gets the sub-folder OUTPUT_DIR/NAME; its run.json
and log.jsonl are what `hone runs table|plot|compare` read.

examples:
  hone sweep --task qa --config base.yaml --output_dir sweeps/lr \\
      --grid "learning_rate=1.5e-5,2e-5,3e-5 per_device_train_batch_size=32,48 layerwise_lr_decay=1.0,0.75"
  hone sweep --task qa --config base.yaml --output_dir sweeps/tpe --search optuna --n_trials 20 \\
      --space "learning_rate=loguniform(1e-5,1e-3) per_device_train_batch_size=choice(16,32)"

Run the same command again to resume: finished, failed and pruned runs are kept, cut runs run
again. Several machines share one optuna study through --storage postgresql://... (docs/sweeps.md).
"""


def _sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hone sweep", allow_abbrev=False, epilog=SWEEP_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Run a recipe over a grid of hyperparameters or an optuna search.")
    p.add_argument("--task", required=True, help="Recipe: qa, glue, clm, pretrain (or a module with run(argv)).")
    p.add_argument("--output_dir", required=True, help="The sweep folder: one sub-folder per run.")
    p.add_argument("--config", help="Base YAML/JSON config given to every run (the swept values win).")
    p.add_argument("--grid", help='Every combination: "name=v1,v2 name=v1,v2".')
    p.add_argument("--search", choices=["grid", "optuna"], help="grid (with --grid) or optuna (with --space).")
    p.add_argument("--space", help='optuna ranges: "name=loguniform(lo,hi) name=uniform(lo,hi) name=int(lo,hi) '
                                   'name=choice(a,b)".')
    p.add_argument("--n_trials", type=int, help="optuna: runs in the whole study (all machines together).")
    p.add_argument("--metric", help="The result to optimise and mark as best (default: " + ", ".join(
        f"{metric} for {task}" for task, metric in TASK_METRICS.items()) + ").")
    p.add_argument("--direction", choices=["maximize", "minimize"],
                   help="Default: minimize for losses and perplexity, else maximize.")
    p.add_argument("--parallel", type=int, default=1, help="Runs at once, each in its own process with 1/K of the "
                                                           "CPU cores or one GPU (default 1: in this process).")
    p.add_argument("--isolate", action="store_true", help="Run each run in its own process even when sequential.")
    p.add_argument("--retry_failed", action="store_true", help="Grid: run the failed runs again when resuming.")
    p.add_argument("--storage", help="optuna storage URL (default: sqlite:///OUTPUT_DIR/optuna.db); a PostgreSQL "
                                     "URL lets several machines share the study.")
    p.add_argument("--study_name", help="optuna study name (default: the name of OUTPUT_DIR).")
    p.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe", help="optuna sampler (default tpe).")
    p.add_argument("--sampler_seed", type=int, help="Seed of the sampler, for a reproducible search on one machine.")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="Stop hopeless runs from their intermediate evaluations (runs need --eval_steps).")
    p.add_argument("--pruner_startup_trials", type=int, default=5, help="median pruner: trials before it prunes.")
    p.add_argument("--pruner_warmup_steps", type=int, default=0, help="median pruner: steps before it prunes a run.")
    return p


def _sweep_config(argv: list[str]) -> SweepConfig:
    parser = _sweep_parser()
    a, run_args = parser.parse_known_args(argv)
    run_args = [x for x in run_args if x != "--"]
    search = a.search or ("optuna" if a.space else "grid")
    if search == "grid" and not a.grid:
        raise SweepError("give --grid \"name=v1,v2 ...\" (every combination), or --search optuna --space \"...\"")
    if search == "optuna" and not a.space:
        raise SweepError("--search optuna needs --space \"name=loguniform(lo,hi) name=choice(a,b) ...\""
                         + (" (--grid is for grid sweeps)" if a.grid else ""))
    if search == "grid" and a.space:
        raise SweepError("--space is for --search optuna; a grid sweep takes --grid")
    if a.parallel < 1:
        raise SweepError(f"--parallel {a.parallel}: give 1 or more runs at once")
    metric = a.metric or TASK_METRICS.get(a.task)
    if not metric:
        raise SweepError(f"--task {a.task}: give --metric (the result to optimise, e.g. eval_accuracy)")
    if a.config:
        if not Path(a.config).is_file():
            raise SweepError(f"--config {a.config}: file not found")
        run_args = ["--config", str(Path(a.config).resolve()), *run_args]
    grid = parse_grid(a.grid) if search == "grid" else None
    space = parse_space(a.space) if search == "optuna" else None
    import_task(a.task)  # a wrong --task fails now, not once per run
    return SweepConfig(
        task=a.task, output_dir=Path(a.output_dir), run_args=run_args, metric=metric,
        direction=a.direction or default_direction(metric), command=shlex.join(["hone", "sweep", *argv]),
        parallel=a.parallel, isolate=a.isolate, retry_failed=a.retry_failed,
        grid=grid, space=space, space_text=" ".join((a.space or "").split()),
        n_trials=a.n_trials, storage=a.storage, study_name=a.study_name, sampler=a.sampler,
        sampler_seed=a.sampler_seed, pruner=a.pruner, pruner_startup_trials=a.pruner_startup_trials,
        pruner_warmup_steps=a.pruner_warmup_steps)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def sweep_main(argv: list[str]) -> int:
    """`hone sweep`: returns 0 when at least one run finished, 1 when none did, 130 when interrupted."""
    cfg = _sweep_config(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` and schedulers cut cleanly too
    try:
        (run_optuna if cfg.space is not None else run_grid)(cfg)
    except KeyboardInterrupt:
        print(f"hone sweep: interrupted; run the same command to resume (finished runs are kept, the cut "
              f"ones run again):\n  {cfg.command}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    runs = find_runs(cfg.output_dir)
    headers, rows = build_rows(runs, cfg.metric, cfg.direction)
    table = format_markdown(headers, rows, cfg.metric)
    OutputDir(cfg.output_dir).write_text("runs.md", table, kind="results")
    print(table, end="")
    counts = Counter(run.status for run in runs)
    log.info("hone sweep: %d runs, %s; table in %s", len(runs),
             ", ".join(f"{n} {status}" for status, n in sorted(counts.items())), cfg.output_dir / "runs.md")
    return 0 if counts[FINISHED] else 1


# ----------------------------------------------------------------------------- hone runs

def _runs_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hone runs", allow_abbrev=False,
                                description="Tables, plots and comparisons of run folders (their run.json files).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{table,plot,compare}")
    for name, help_ in (("table", "Print the sweep's table: steps, epochs, batch, lr, lr decay, metric, best."),
                        ("plot", "Write PNG plots: loss curves, metric during training, metric vs each setting.")):
        s = sub.add_parser(name, help=help_, description=help_, allow_abbrev=False)
        s.add_argument("directory", help="A sweep's --output_dir (or one run folder).")
        s.add_argument("--metric", help="Default: the sweep's metric, else eval_best_f1, eval_f1, eval_accuracy, ...")
        s.add_argument("--direction", choices=["maximize", "minimize"], help="Which end is best.")
        if name == "table":
            s.add_argument("--format", choices=["markdown", "csv"], default="markdown")
            s.add_argument("--output", help="Write the table to this file instead of printing it.")
        else:
            s.add_argument("--output_dir", help="Where the PNGs go (default: DIRECTORY/plots).")
    s = sub.add_parser("compare", help="Diff two runs' settings and results.", allow_abbrev=False,
                       description="Diff two runs' settings and results.")
    s.add_argument("a", help="A run folder.")
    s.add_argument("b", help="Another run folder.")
    return p


def runs_main(argv: list[str]) -> int:
    """`hone runs table|plot|compare`."""
    a = _runs_parser().parse_args(argv)
    if a.command == "compare":
        from hone.sweep.compare import compare_runs

        print(compare_runs(read_run(a.a), read_run(a.b)), end="")
        return 0
    directory = Path(a.directory)
    runs = find_runs(directory)
    metric = choose_metric(runs, a.metric, directory)
    direction = a.direction or sweep_definition(directory).get("direction") or default_direction(metric)
    headers, rows = build_rows(runs, metric, direction)
    if a.command == "table":
        text = (format_markdown if a.format == "markdown" else format_csv)(headers, rows, metric)
        if a.output:
            Path(a.output).write_text(text)
            log.info("hone runs: table of %d runs written to %s", len(runs), a.output)
        else:
            print(text, end="")
        return 0
    from hone.sweep.plots import write_plots

    best = next((r.run for r in rows if r.best), None)
    written = write_plots(runs, metric, best, Path(a.output_dir) if a.output_dir else directory / "plots")
    for path in written:
        print(path)
    if not written:
        log.warning("hone runs plot: nothing to plot (no log.jsonl records and no finished run with %s)", metric)
    return 0
