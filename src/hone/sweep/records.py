"""Reading run folders back (`run.json`, `log.jsonl`) and amending their record after a sweep run.

Every recipe run writes `run.json` (task, command, status, error, resolved settings, hardware,
versions, git commit, times, metrics) and `log.jsonl` (one record per logging step). The sweep
adds a `sweep` entry (its name, params, trial) and fixes the status when the recipe could not
(a crashed process, an interruption, a pruned trial).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from hone.engine.output_dir import OutputDir
from hone.errors import HoneError

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
SWEEP_FILE = "sweep.json"  # the sweep's definition, in its folder: what resuming checks against

FINISHED, FAILED, PRUNED, RUNNING, INTERRUPTED = "finished", "failed", "pruned", "running", "interrupted"
DONE_STATUSES = (FINISHED, FAILED, PRUNED)  # a sweep does not redo these; running/interrupted are re-run

# Settings that name a run's place, not a hyperparameter: never "swept", never a difference worth showing.
PLACE_SETTINGS = frozenset({"output_dir", "logging_dir", "run_name", "overwrite_output_dir", "resume_from_checkpoint",
                            "config"})


class RunsError(HoneError, ValueError):
    """A run folder that cannot be read; the message names the file and the fix."""


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write a sweep's JSON file whole, through the one writer of output folders."""
    OutputDir(path.parent).write_json(path.name, data, kind="results", indent=2)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunsError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise RunsError(f"{path}: not valid JSON ({e}); fix or delete the file") from None
    if not isinstance(data, dict):
        raise RunsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def as_number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class RunRecord:
    """One run folder: its run.json, and its log.jsonl read on demand."""

    folder: Path
    data: dict

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def status(self) -> str:
        return str(self.data.get("status") or RUNNING)

    @property
    def error(self) -> str | None:
        return self.data.get("error")

    @property
    def settings(self) -> dict:
        return self.data.get("settings") or {}

    @property
    def metrics(self) -> dict:
        return self.data.get("metrics") or {}

    @property
    def hardware(self) -> dict:
        return self.data.get("hardware") or {}

    @property
    def sweep(self) -> dict:
        return self.data.get("sweep") or {}

    @cached_property
    def log(self) -> list[dict]:
        """log.jsonl's records; a cut run's half-written last line is skipped."""
        path = self.folder / LOG_FILE
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def value(self, metric: str) -> float | None:
        return as_number(self.metrics.get(metric))

    def steps(self) -> int | None:
        """Optimizer steps taken: from the metrics, else the last logged step, else --max_steps."""
        for key in ("global_step", "train_steps", "step"):
            if as_number(self.metrics.get(key)) is not None:
                return int(self.metrics[key])
        logged = [r["step"] for r in self.log if as_number(r.get("step")) is not None]
        if logged:
            return int(max(logged))
        max_steps = as_number(self.settings.get("max_steps"))
        return int(max_steps) if self.status == FINISHED and max_steps and max_steps > 0 else None

    def epochs(self) -> float | None:
        epoch = as_number(self.metrics.get("epoch"))
        return epoch if epoch is not None else as_number(self.settings.get("num_train_epochs"))

    def train_batch_size(self) -> int | None:
        """Examples per optimizer step: micro batch x accumulation x replicas (the profile's values win)."""
        total = as_number(self.data.get("total_train_batch_size", self.settings.get("total_train_batch_size")))
        if total is not None:
            return int(total)
        micro = self.hardware.get("micro_batch_size") or self.settings.get("per_device_train_batch_size")
        if as_number(micro) is None:
            return None
        accumulation = self.hardware.get("gradient_accumulation_steps") or self.settings.get(
            "gradient_accumulation_steps") or 1
        replicas = self.data.get("world_size") or self.hardware.get("replicas") or 1
        return int(micro) * int(accumulation) * int(replicas)


def read_run(folder: str | Path) -> RunRecord:
    folder = Path(folder)
    if not (folder / RUN_FILE).exists():
        hint = (" (a sweep folder: give one of its run sub-folders)" if any(folder.glob(f"*/{RUN_FILE}"))
                else "; is this a run's --output_dir?")
        raise RunsError(f"{folder}: no {RUN_FILE} here{hint}")
    return RunRecord(folder, read_json(folder / RUN_FILE))


def find_runs(directory: str | Path) -> list[RunRecord]:
    """The runs in a sweep folder (its sub-folders holding run.json), in the sweep's order.

    A single run folder is accepted too.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RunsError(f"{directory}: no such folder; give a sweep's --output_dir or a run folder")
    if (directory / RUN_FILE).exists():
        return [read_run(directory)]
    runs = [read_run(path.parent) for path in sorted(directory.glob(f"*/{RUN_FILE}"))]
    if not runs:
        raise RunsError(f"{directory}: no run folders (no */{RUN_FILE}); give a sweep's --output_dir or a run folder")
    return sorted(runs, key=_sweep_order)


def _sweep_order(run: RunRecord) -> tuple:
    """A sweep's own order (grid index, trial number), else the order the runs started."""
    position = run.sweep.get("index", run.sweep.get("trial"))
    if isinstance(position, int):
        return (0, position, "", run.name)
    return (1, 0, str(run.data.get("started") or ""), run.name)


def swept_settings(runs: list[RunRecord]) -> list[str]:
    """The settings whose values differ between the runs that record them, in first-seen order (the
    sweep's axes). A run without a setting (one that crashed before recording them all) is no difference."""
    names: list[str] = []
    for run in runs:
        names += [k for k in run.settings if k not in names and k not in PLACE_SETTINGS]

    def differs(name: str) -> bool:
        values = {json.dumps(r.settings[name], sort_keys=True, default=str) for r in runs if name in r.settings}
        return len(values) > 1

    return [n for n in names if differs(n)]


def record_outcome(folder: Path, *, status: str, error: str | None, metrics: dict | None, sweep: dict,
                   task: str, command: str, params: dict, started: float) -> dict:
    """Make run.json say how the run ended, writing a minimal one when the recipe wrote none.

    The recipe's own record wins for everything it knows; the sweep only fills what is missing
    and sets the status it observed (a crash or an interruption the recipe could not record).
    """
    path = folder / RUN_FILE
    data = read_json(path) if path.exists() else {}
    if not data:
        data = {"task": task, "command": command, "settings": dict(params), "hardware": {}, "versions": {},
                "git_commit": None, "started": datetime.fromtimestamp(started).astimezone().isoformat(
                    timespec="seconds")}
    if status == FAILED and data.get("status") == FAILED and data.get("error"):
        error = data["error"]  # the recipe's own message says more than the exception's repr
    data["status"] = status
    data["error"] = error
    if metrics:
        data["metrics"] = {**(data.get("metrics") or {}), **metrics}
    data.setdefault("metrics", {})
    if not data.get("finished"):
        data["finished"] = now_iso()
    if data.get("wall_time_s") is None:
        data["wall_time_s"] = round(time.time() - started, 3)
    data["sweep"] = {**(data.get("sweep") or {}), **sweep}
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)
    return data
