"""What a run leaves behind: metric blocks, *_results.json and the model card.

The formats are transformers' Trainer's (log_metrics / save_metrics / the generated
README.md), as the seed model cards show them, so results read and compare the same.
"""

from __future__ import annotations

import json
import numbers
import os
import platform
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from hone.config import TrainingArguments, effective_batch_sizes
from hone.errors import HoneError
from hone.hardware import HardwareProfile


class ModelCardError(HoneError, ValueError):
    """Model-card input that cannot be written; the message names the entry and the fix."""


def _is_main_process() -> bool:
    """Rank 0, or not distributed. Looks torch up without importing it."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return True
    return torch.distributed.get_rank() == 0


def _write_atomic(path: Path, text: str) -> None:
    """Readers never see a half-written file: write a temporary sibling, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """json.dumps' `default`: numpy / torch scalars -> Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a metric")


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# ----------------------------------------------------------------------------- metric blocks

def format_duration(seconds: float) -> str:
    """H:MM:SS.ss, hundredths truncated as transformers' Trainer prints *_runtime."""
    whole = int(seconds)
    hundredths = int(abs(seconds - whole) * 100)
    hours, rest = divmod(abs(whole), 3600)
    sign = "-" if whole < 0 else ""
    return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}.{hundredths:02d}"


def _format_value(key: str, value: Any) -> Any:
    if "_mem_" in key:
        return f"{int(value) >> 20}MB"
    if "_runtime" in key:
        return format_duration(float(value))
    if key == "total_flos":
        return f"{int(value) >> 30}GF"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return round(float(value), 4)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def format_metrics(split: str, metrics: Mapping[str, Any]) -> str:
    """The Trainer's block: '***** {split} metrics *****' then '  key = value', keys sorted and aligned."""
    shown = {key: str(_format_value(key, value)) for key, value in metrics.items()}
    lines = [f"***** {split} metrics *****"]
    if shown:
        k_width = max(len(k) for k in shown)
        v_width = max(len(v) for v in shown.values())
        lines += [f"  {key:<{k_width}} = {shown[key]:>{v_width}}" for key in sorted(shown)]
    return "\n".join(lines)


def log_metrics(split: str, metrics: Mapping[str, Any]) -> None:
    """Print the metric block (rank 0 only when torch.distributed is initialised)."""
    if _is_main_process():
        print(format_metrics(split, metrics), flush=True)


def save_metrics(output_dir: str | Path, split: str, metrics: Mapping[str, Any], combined: bool = True) -> None:
    """Write {split}_results.json and merge into all_results.json (raw numbers, keys sorted), atomically."""
    if not _is_main_process():
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / f"{split}_results.json", json.dumps(dict(metrics), indent=4, sort_keys=True, default=_plain))
    if combined:
        path = out / "all_results.json"
        merged = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        merged.update(metrics)
        _write_atomic(path, json.dumps(merged, indent=4, sort_keys=True, default=_plain))


# ----------------------------------------------------------------------------- model card

def hyperparameters_for_card(args: TrainingArguments, profile: HardwareProfile, world_size: int) -> dict[str, Any]:
    """The card's 'Training hyperparameters' list, in the seeds' order and wording."""
    micro, accumulation, total = effective_batch_sizes(args, profile, world_size)
    betas_eps = f"betas=({args.adam_beta1},{args.adam_beta2}) and epsilon={args.adam_epsilon}"
    if args.optimizer_name == "lamb":
        optimizer = f"LAMB with {betas_eps}" + (", no bias correction" if args.lamb_no_bias_correction else "")
    else:
        optimizer = f"AdamW with {betas_eps}"
    hp: dict[str, Any] = {
        "learning_rate": args.learning_rate,
        "train_batch_size": micro,
        "eval_batch_size": args.per_device_eval_batch_size,
        "seed": args.seed,
        "distributed_type": "no" if world_size == 1 else "multi-GPU" if profile.device == "cuda" else "multi-CPU",
    }
    if world_size > 1:
        hp["num_devices"] = world_size
    if accumulation > 1:
        hp["gradient_accumulation_steps"] = accumulation
    hp["total_train_batch_size"] = total
    hp["total_eval_batch_size"] = args.per_device_eval_batch_size * world_size
    hp["optimizer"] = optimizer
    if args.weight_decay:
        hp["weight_decay"] = args.weight_decay
    if args.layerwise_lr_decay != 1.0:
        hp["layerwise_lr_decay"] = args.layerwise_lr_decay
    hp["lr_scheduler_type"] = args.lr_scheduler_type
    if args.warmup_steps > 0:
        hp["lr_scheduler_warmup_steps"] = args.warmup_steps
    elif args.warmup_ratio:
        hp["lr_scheduler_warmup_ratio"] = args.warmup_ratio
    if args.max_steps > 0:
        hp["training_steps"] = args.max_steps
    else:
        hp["num_epochs"] = args.num_train_epochs
    hp["training precision"] = "fp32" if profile.precision == "fp32" else f"Mixed Precision ({profile.precision})"
    return hp


def format_command_line(command: str | Sequence[str]) -> str:
    """The seeds' layout: the program on the first line, then one flag (and its values) per line."""
    tokens = shlex.split(command) if isinstance(command, str) else [str(t) for t in command]
    lines: list[list[str]] = []
    for token in tokens:
        is_flag = token.startswith("-") and not re.fullmatch(r"-[\d.]+(e-?\d+)?", token)
        if is_flag or not lines:
            lines.append([token])
        else:
            lines[-1].append(token)
    return " \\\n  ".join(" ".join(shlex.quote(t) for t in line) for line in lines)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _link(name: str, kind: str = "") -> str:
    """A Hugging Face hub link for hub-style names; local paths and files stay plain."""
    if _HUB_ID.fullmatch(name) and not Path(name).exists() and not re.search(r"\.(json|jsonl|txt|csv)$", name):
        return f"[{name}](https://huggingface.co/{kind}{name})"
    return f"`{name}`"


def _index_results(index_results: list[dict] | None, task_type: str, task_name: str,
                   dataset_names: Sequence[str]) -> list[dict]:
    """model-index results: a list of {name, type, value} metrics becomes one entry for the eval dataset."""
    if not index_results:
        return []
    if all("metrics" in entry for entry in index_results):
        return [json.loads(json.dumps(entry, default=_plain)) for entry in index_results]
    for i, metric in enumerate(index_results):
        missing = [k for k in ("name", "type", "value") if k not in metric]
        if missing:
            raise ModelCardError(f"index_results[{i}] lacks {', '.join(missing)}: give each metric as "
                                 "{'name': ..., 'type': ..., 'value': ...} (or whole model-index entries)")
    entry: dict[str, Any] = {"task": {"type": task_type, "name": task_name}}
    if dataset_names:
        entry["dataset"] = {"name": dataset_names[-1], "type": dataset_names[-1]}
    entry["metrics"] = [{"name": m["name"], "type": m["type"], "value": _scalar(m["value"])} for m in index_results]
    return [entry]


def _framework_versions() -> list[str]:
    from hone import __version__

    torch = sys.modules.get("torch")
    versions = [f"hone {__version__}"]
    for label, module, dist in (("PyTorch", torch, "torch"), ("Tokenizers", None, "tokenizers")):
        try:
            versions.append(f"{label} {module.__version__ if module else metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return versions + [f"Python {platform.python_version()}"]


def write_model_card(output_dir: str | Path, *, model_name: str, base_model: str | None, task_name: str,
                     dataset_names: Sequence[str], command_line: str | Sequence[str],
                     hyperparameters: Mapping[str, Any], train_metrics: Mapping[str, Any] | None,
                     eval_metrics: Mapping[str, Any] | None, index_results: list[dict] | None,
                     license: str = "apache-2.0", tags: Sequence[str] = ("generated_from_trainer",),
                     task_type: str | None = None) -> Path:
    """output_dir/README.md in the seeds' format: YAML front matter (model-index), then the sections.

    index_results: the headline metrics as [{name, type, value}] (or whole model-index entries).
    task_type defaults to task_name in hub style ("Question Answering" -> "question-answering").
    """
    task_type = task_type or task_name.strip().lower().replace(" ", "-")
    results = _index_results(index_results, task_type, task_name, dataset_names)
    front: dict[str, Any] = {"license": license, "tags": list(tags)}
    if base_model:
        front["base_model"] = base_model
    if dataset_names:
        front["datasets"] = list(dataset_names)
    front["model-index"] = [{"name": model_name, "results": results}]

    datasets_text = ", ".join(dataset_names) or "the given"
    origin = f"a fine-tuned version of {_link(base_model)}" if base_model else "trained from scratch"
    headline = [m for entry in results for m in entry.get("metrics", [])]
    intended = f"This model is {origin} on the {datasets_text} dataset, trained with hone."
    if headline:
        intended += " It achieves the following results on the evaluation set:\n\n" + "\n".join(
            f"- {m['name']}: {m['value']}" for m in headline)
    parts = [
        f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---",
        f"# {model_name}",
        "## Model description",
        f"{base_model or 'A new model'} with a {task_name.lower()} head ({task_type}).",
        "## Intended uses & limitations",
        intended,
        "It was evaluated only on the data below: check it on your own data before relying on it.",
        "## Training and evaluation data",
        "Trained and evaluated on:\n" + "\n".join(f"- {_link(d, 'datasets/')}" for d in dataset_names)
        if dataset_names else "More information needed",
        "## Training procedure",
        "Command line:",
        f"```\n{format_command_line(command_line)}\n```",
        "### Training hyperparameters",
        "The following hyperparameters were used during training:\n"
        + "\n".join(f"- {key}: {value}" for key, value in hyperparameters.items()),
        "### Training results",
    ]
    blocks = [format_metrics(split, m) for split, m in (("train", train_metrics), ("eval", eval_metrics)) if m]
    parts.append("```\n" + "\n\n".join(blocks) + "\n```" if blocks else "No metrics were recorded.")
    parts += ["### Framework versions", "\n".join(f"- {v}" for v in _framework_versions())]

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "README.md"
    _write_atomic(path, "\n\n".join(parts) + "\n")
    return path
