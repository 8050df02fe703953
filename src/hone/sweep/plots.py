"""PNG plots of a sweep from its run folders: training loss curves overlaid (log.jsonl), the metric
over training steps (intermediate evaluations), and the metric against each swept hyperparameter."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hone.sweep.records import FINISHED, RunRecord, as_number, swept_settings  # noqa: E402


def _curve(run: RunRecord, key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in run.log
              if as_number(r.get("step")) is not None and as_number(r.get(key)) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def curves_figure(runs: list[RunRecord], key: str, title: str) -> Figure | None:
    """One line per run of `key` against the step, or None when no run logged it."""
    figure, axes = plt.subplots(figsize=(8, 5))
    for run in runs:
        steps, values = _curve(run, key)
        if steps:
            axes.plot(steps, values, label=run.name, linewidth=1.2, marker=".", markersize=4)  # one point shows too
    if not axes.lines:
        plt.close(figure)
        return None
    axes.set(xlabel="step", ylabel=key, title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small" if len(axes.lines) <= 12 else "xx-small", ncol=1 + len(axes.lines) // 16)
    figure.tight_layout()
    return figure


def metric_figure(runs: list[RunRecord], setting: str, metric: str, best: RunRecord | None) -> Figure | None:
    """The metric of each finished run against one hyperparameter (log axis when it spans 10x or more)."""
    points = [(run.settings.get(setting), run.value(metric), run) for run in runs
              if run.status == FINISHED and run.value(metric) is not None]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(6, 4.5))
    xs = [p[0] for p in points]
    numeric = all(as_number(x) is not None for x in xs)
    if numeric:
        positions = [float(x) for x in xs]
        if min(positions) > 0 and max(positions) / min(positions) >= 10:
            axes.set_xscale("log")
    else:
        categories = sorted({str(x) for x in xs})
        positions = [categories.index(str(x)) for x in xs]
        axes.set_xticks(range(len(categories)), categories)
    axes.scatter(positions, [p[1] for p in points], s=36, alpha=0.8)
    for position, (_, value, run) in zip(positions, points):
        if run is best:
            axes.scatter([position], [value], s=160, marker="*", color="tab:red", label=f"best: {run.name}", zorder=3)
    skipped = len(runs) - len(points)
    axes.set(xlabel=setting, ylabel=metric,
             title=f"{metric} vs {setting}" + (f" ({skipped} runs without a result not shown)" if skipped else ""))
    axes.grid(alpha=0.3)
    if best is not None and any(p[2] is best for p in points):
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_plots(runs: list[RunRecord], metric: str, best: RunRecord | None, out_dir: Path) -> list[Path]:
    """Write every plot that the runs have data for; returns the PNG paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {"training_loss.png": curves_figure(runs, "loss", "training loss"),
               f"{_file_name(metric)}_during_training.png": curves_figure(runs, metric, f"{metric} during training")}
    for setting in swept_settings(runs):
        figures[f"{_file_name(metric)}_vs_{_file_name(setting)}.png"] = metric_figure(runs, setting, metric, best)
    written = []
    for name, figure in figures.items():
        if figure is None:
            continue
        figure.savefig(out_dir / name, dpi=110)
        plt.close(figure)
        written.append(out_dir / name)
    return written
