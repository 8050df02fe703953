"""Search spaces written on the command line: `--grid` value lists, `--search` ranges, run names.

Grid: `"learning_rate=1.5e-5,2e-5 per_device_train_batch_size=32,48"`: assignments separated by
whitespace, values by commas, each value typed (int, float, bool, else string).
Ranges: `"learning_rate=loguniform(1e-5,1e-3) per_device_train_batch_size=choice(16,32)"`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from hone.sweep import SweepError

GRID_EXAMPLE = '--grid "learning_rate=1.5e-5,2e-5,3e-5 per_device_train_batch_size=32,48"'
SEARCH_EXAMPLE = '--space "learning_rate=loguniform(1e-5,1e-3) per_device_train_batch_size=choice(16,32)"'

# Short names for the run folders of the usual hyperparameters; others keep their full name.
SHORT_NAMES = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "bs",
    "layerwise_lr_decay": "lrd",
    "num_train_epochs": "ep",
    "max_steps": "steps",
    "gradient_accumulation_steps": "ga",
    "weight_decay": "wd",
    "warmup_ratio": "wr",
    "warmup_steps": "ws",
    "lr_scheduler_type": "sched",
    "max_seq_length": "seq",
    "seed": "seed",
}
MAX_NAME_LENGTH = 80
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"[-+]?\d+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def parse_value(text: str) -> Any:
    """'32' -> 32, '1.5e-5' / '2e-5' -> float, 'true'/'false' -> bool, quoted or other text -> str."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def format_value(value: Any) -> str:
    """The command-line text of a value: floats as Python's shortest round-trip form (2e-05, 1.0)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def split_assignments(text: str, flag: str, example: str) -> list[tuple[str, str]]:
    """'a=1,2 b=f(3, 4)' -> [('a', '1,2'), ('b', 'f(3, 4)')]: whitespace splits outside parentheses."""
    items, depth, current = [], 0, []
    for char in text.strip() + " ":
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise SweepError(f"{flag}: unbalanced ')' in {text!r}; write it like {example}")
        if char.isspace() and depth == 0:
            if current:
                items.append("".join(current))
                current = []
        else:
            current.append(char)
    if depth:
        raise SweepError(f"{flag}: unclosed '(' in {text!r}; write it like {example}")
    pairs: list[tuple[str, str]] = []
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().lstrip("-")
        if not sep or not _NAME.fullmatch(name) or not values:
            raise SweepError(f"{flag}: '{item}' is not NAME=VALUES; write it like {example}")
        if name in (n for n, _ in pairs):
            raise SweepError(f"{flag}: '{name}' is given twice; give each hyperparameter once")
        if name == "output_dir":
            raise SweepError(f"{flag}: output_dir cannot be swept: each run gets a sub-folder of the sweep's "
                             "--output_dir")
        pairs.append((name, values))
    if not pairs:
        raise SweepError(f"{flag} is empty; write it like {example}")
    return pairs


def _split_commas(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def parse_grid(text: str) -> dict[str, list[Any]]:
    """'lr=1,2 bs=3' -> {'lr': [1, 2], 'bs': [3]}, in the order written."""
    grid: dict[str, list[Any]] = {}
    for name, values in split_assignments(text, "--grid", GRID_EXAMPLE):
        parts = _split_commas(values)
        if any(not p for p in parts):
            raise SweepError(f"--grid: {name}={values} has an empty value; separate values by single commas")
        typed = [parse_value(p) for p in parts]
        if len(set(map(format_value, typed))) != len(typed):
            raise SweepError(f"--grid: {name}={values} repeats a value; give each value once")
        grid[name] = typed
    return grid


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the last hyperparameter varying fastest (nested loops in the order written)."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def run_name(params: dict[str, Any]) -> str:
    """A readable folder name: {'learning_rate': 1.5e-5, 'per_device_train_batch_size': 32} -> lr1.5e-05_bs32."""
    parts = [SHORT_NAMES.get(name, name) + format_value(value) for name, value in params.items()]
    return _UNSAFE.sub("-", "_".join(parts)) or "run"


def run_names(combinations: list[dict[str, Any]]) -> list[str]:
    """Readable names when they are unique and short, else run-000, run-001, ... (sweep.json keeps the params)."""
    names = [run_name(p) for p in combinations]
    if len(set(names)) == len(names) and all(len(n) <= MAX_NAME_LENGTH for n in names):
        return names
    return [f"run-{i:03d}" for i in range(len(combinations))]


# ----------------------------------------------------------------------------- ranges (optuna)

RANGE_KINDS = {
    "uniform": "uniform(LOW,HIGH) or uniform(LOW,HIGH,STEP): a float",
    "loguniform": "loguniform(LOW,HIGH): a float, uniform in log space",
    "int": "int(LOW,HIGH) or int(LOW,HIGH,STEP): an integer, both ends included",
    "logint": "logint(LOW,HIGH): an integer, uniform in log space",
    "choice": "choice(A,B,...): one of the values",
}
_CALL = re.compile(r"(\w+)\((.*)\)", re.S)


@dataclass(frozen=True)
class Range:
    """One hyperparameter's range: kind in RANGE_KINDS and its arguments."""

    kind: str
    args: tuple

    def distribution(self):
        """The optuna distribution."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.args)
        if self.kind in ("uniform", "loguniform"):
            low, high, *step = self.args
            return FloatDistribution(float(low), float(high), log=self.kind == "loguniform",
                                     step=float(step[0]) if step else None)
        low, high, *step = self.args
        return IntDistribution(int(low), int(high), log=self.kind == "logint", step=int(step[0]) if step else 1)


def _parse_range(name: str, text: str) -> Range:
    where = f"--space: {name}={text}"
    call = _CALL.fullmatch(text.strip())
    if not call:  # a bare list 'a,b,c' is a choice, a single value is fixed
        return Range("choice", tuple(parse_value(p) for p in _split_commas(text)))
    kind, inner = call.group(1), call.group(2)
    if kind not in RANGE_KINDS:
        raise SweepError(f"{where}: unknown range '{kind}'; use one of: " + "; ".join(RANGE_KINDS.values()))
    args = tuple(parse_value(p) for p in _split_commas(inner))
    if kind == "choice":
        if not args or any(a == "" for a in args):
            raise SweepError(f"{where}: choice needs values: {RANGE_KINDS['choice']}")
        return Range(kind, args)
    numbers_needed = (2, 3) if kind in ("uniform", "int") else (2,)
    if len(args) not in numbers_needed or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise SweepError(f"{where}: expected {RANGE_KINDS[kind]}")
    if kind in ("int", "logint") and not all(isinstance(a, int) for a in args):
        raise SweepError(f"{where}: {kind} takes integers: {RANGE_KINDS[kind]}")
    low, high = args[0], args[1]
    if not low < high:
        raise SweepError(f"{where}: LOW must be below HIGH")
    if kind.startswith("log") and low <= 0:
        raise SweepError(f"{where}: a log range needs LOW > 0")
    return Range(kind, args)


def parse_space(text: str) -> dict[str, Range]:
    """'learning_rate=loguniform(1e-5,1e-3) per_device_train_batch_size=choice(16,32)' -> {name: Range}."""
    return {name: _parse_range(name, values) for name, values in split_assignments(text, "--space", SEARCH_EXAMPLE)}
