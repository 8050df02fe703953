"""Hyperparameter sweeps (`hone sweep`) and run tables, plots and comparisons (`hone runs`).

A sweep calls a recipe's `run(argv, on_evaluate=...)` once per configuration, each run in
its own sub-folder; everything the tables and plots show is read back from those folders
(`run.json`, `log.jsonl`), so a table can be rebuilt from the folders alone.

This module stays import-light (no optuna, no torch): recipes import `PruneRun` from here.
"""

from __future__ import annotations

from hone.errors import HoneError


class SweepError(HoneError, ValueError):
    """A sweep command line, search space or sweep folder that cannot work; the message names the fix."""


class PruneRun(HoneError):
    """Raised from a recipe's `on_evaluate` callback to stop a hopeless run early.

    The recipe lets it propagate out of `run()` after recording the run (status "pruned"),
    so the sweep can tell the search that the trial was pruned, not failed.
    """

    run_status = "pruned"  # what the run skeleton records in run.json when this ends a run


__all__ = ["PruneRun", "SweepError"]
