"""`hone runs compare A B`: what differs between two runs' settings, and their results side by side."""

from __future__ import annotations

import json
from typing import Any

from hone.sweep.records import PLACE_SETTINGS, RunRecord, as_number
from hone.sweep.space import format_value

_MISSING = object()


def _text(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "None" if value is None else format_value(value)


def differences(a: dict, b: dict, skip: frozenset = frozenset()) -> list[tuple[str, Any, Any]]:
    """(key, a's value, b's value) for every key whose values differ, in a's order then b's."""
    keys = [*a, *(k for k in b if k not in a)]
    return [(k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in keys
            if k not in skip and a.get(k, _MISSING) != b.get(k, _MISSING)]


def _section(title: str, rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [title, *("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows), ""]


def compare_runs(a: RunRecord, b: RunRecord) -> str:
    """Settings that differ (output folders aside), every metric of either run with B - A, and the
    status, timing, hardware, versions and commit where they differ."""
    lines = [f"A: {a.folder}", f"B: {b.folder}", ""]
    head = ["", "A", "B"]
    settings = differences(a.settings, b.settings, skip=PLACE_SETTINGS)
    lines += _section("settings that differ:", [head, *([k, _text(x), _text(y)] for k, x, y in settings)]
                      if settings else [])
    if not settings:
        lines += ["settings: identical (output folders aside)", ""]
    metric_rows = []
    for key in [*a.metrics, *(k for k in b.metrics if k not in a.metrics)]:
        x, y = a.metrics.get(key, _MISSING), b.metrics.get(key, _MISSING)
        nx, ny = as_number(x) if x is not _MISSING else None, as_number(y) if y is not _MISSING else None
        delta = f"{ny - nx:+.6g}" if nx is not None and ny is not None else ""
        metric_rows.append([key, _metric(x), _metric(y), delta])
    lines += _section("metrics:", [["", "A", "B", "B - A"], *metric_rows] if metric_rows else [])
    fields = ("status", "error", "wall_time_s", "git_commit")
    rest = [[k, _text(x), _text(y)] for k, x, y in differences({k: a.data.get(k) for k in fields},
                                                                {k: b.data.get(k) for k in fields})]
    for part in ("hardware", "versions"):
        rest += [[f"{part}.{k}", _text(x), _text(y)]
                 for k, x, y in differences(a.data.get(part) or {}, b.data.get(part) or {})]
    lines += _section("run:", [head, *rest] if rest else [])
    return "\n".join(lines).rstrip() + "\n"


def _metric(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    number = as_number(value)
    return f"{number:.6g}" if number is not None else _text(value)
