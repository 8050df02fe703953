"""The run table of seed 002 (steps, epochs, batch size, learning rate, lr decay, the metric, the
best marked), built from run folders alone, as Markdown or CSV.

Columns beyond the seed's are the other settings that differ between the runs (what was swept).
Failed, pruned and cut runs are rows too, with their status in place of the metric.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone.sweep.records import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    PRUNED,
    RUNNING,
    SWEEP_FILE,
    RunRecord,
    RunsError,
    read_json,
    swept_settings,
)
from hone.sweep.space import format_value


def _whole(epochs: float | None) -> float | int | None:
    """2.0 epochs read as 2, as the seed writes them; 2.5 stays."""
    return int(epochs) if epochs is not None and epochs.is_integer() else epochs


# The seed's columns: header -> how to read it from a run.
SEED_COLUMNS: dict[str, Callable[[RunRecord], Any]] = {
    "steps": RunRecord.steps,
    "epochs": lambda r: _whole(r.epochs()),
    "batch size": RunRecord.train_batch_size,
    "learning rate": lambda r: r.settings.get("learning_rate"),
    "lr decay": lambda r: r.settings.get("layerwise_lr_decay"),
}
# Settings the seed's columns already show.
SHOWN_BY_SEED_COLUMNS = frozenset({"learning_rate", "layerwise_lr_decay", "per_device_train_batch_size",
                                   "num_train_epochs", "max_steps"})
# When no --metric is given and the sweep folder does not name one: the first of these that a run reports.
USUAL_METRICS = ("eval_best_f1", "eval_f1", "eval_accuracy", "eval_matthews_correlation", "eval_pearson",
                 "eval_perplexity", "eval_loss", "train_loss")
STATUS_WORDS = {FAILED: "failed", PRUNED: "pruned", RUNNING: "running", INTERRUPTED: "cut"}


@dataclass
class Row:
    run: RunRecord
    cells: dict[str, Any]          # header -> raw value
    value: float | None            # the metric (finished runs only)
    best: bool = False


def default_direction(metric: str) -> str:
    return "minimize" if any(word in metric for word in ("loss", "perplexity", "runtime")) else "maximize"


def sweep_definition(directory: Path) -> dict:
    path = directory / SWEEP_FILE
    return read_json(path) if path.exists() else {}


def choose_metric(runs: list[RunRecord], metric: str | None, directory: Path) -> str:
    """--metric, else the sweep's own metric, else the first usual metric any run reports."""
    if metric:
        return metric
    named = sweep_definition(directory).get("metric")
    if named:
        return named
    reported = {key for run in runs for key in run.metrics}
    for name in USUAL_METRICS:
        if name in reported:
            return name
    raise RunsError(f"{directory}: no usual metric in the runs' results; give --metric, one of: "
                    f"{', '.join(sorted(reported)) or '(none: no run has metrics)'}")


def build_rows(runs: list[RunRecord], metric: str, direction: str) -> tuple[list[str], list[Row]]:
    extra = [name for name in swept_settings(runs) if name not in SHOWN_BY_SEED_COLUMNS]
    headers = [*SEED_COLUMNS, *extra]
    rows = []
    for run in runs:
        cells = {h: read(run) for h, read in SEED_COLUMNS.items()}
        cells.update({name: run.settings.get(name) for name in extra})
        rows.append(Row(run, cells, run.value(metric) if run.status == FINISHED else None))
    scored = [r for r in rows if r.value is not None]
    if scored:
        pick = max if direction == "maximize" else min
        pick(scored, key=lambda r: r.value).best = True
    return headers, rows


def _note(row: Row, metric: str) -> str:
    run = row.run
    if row.best:
        return "best"
    if run.status == FAILED:
        return " ".join(str(run.error or "no error recorded").split())
    if run.status == PRUNED:
        step = run.sweep.get("pruned_at_step")
        return f"pruned at step {step}" if step is not None else "pruned"
    if run.status == FINISHED:
        return "" if row.value is not None else f"no {metric} in its results"
    return STATUS_WORDS.get(run.status, run.status)


def _cell(value: Any) -> str:
    """Floats to 4 significant digits (a sampled 0.00044303752 reads 0.000443), keeping 1.0 a float."""
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".en") else text + ".0"
    return "" if value is None else format_value(value)


def _metric_cell(row: Row) -> str:
    if row.value is None:
        return STATUS_WORDS.get(row.run.status, "")
    text = f"{row.value:.3f}" if abs(row.value) >= 1 else f"{row.value:.4g}"
    return f"***{text}***" if row.best else text


def format_markdown(headers: list[str], rows: list[Row], metric: str) -> str:
    """The seed's layout: one row per run, centred columns, the best value in bold italics."""
    table = [["run", *headers, metric, "note"]]
    for row in rows:
        note = _note(row, metric)
        if len(note) > 120:
            note = note[:117] + "..."
        table.append([row.run.name, *(_cell(row.cells[h]) for h in headers), _metric_cell(row), note])
    table = [[text.replace("|", "\\|") for text in line] for line in table]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.center(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join(":" + "-" * w + ":" for w in widths) + "|"
    return "\n".join([line(table[0]), rule, *(line(r) for r in table[1:])]) + "\n"


def format_csv(headers: list[str], rows: list[Row], metric: str) -> str:
    """Raw values (full precision) for spreadsheets: one row per run, with its status and error."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "status", *headers, metric, "best", "error"])
    for row in rows:
        cells = [json.dumps(v) if isinstance(v, dict | list) else ("" if v is None else v)
                 for v in (row.cells[h] for h in headers)]
        writer.writerow([row.run.name, row.run.status, *cells, "" if row.value is None else row.value,
                         "true" if row.best else "false", row.run.error or ""])
    return out.getvalue()

