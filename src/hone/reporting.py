"""What a run leaves behind: metric blocks, *_results.json, the model card, and the facts
(machine, versions, git commit) that make a result reproducible.

The formats are transformers' Trainer's (log_metrics / save_metrics / the generated
README.md), as the seed model cards show them, so results read and compare the same. Files
are written through the run's OutputDir (one writer, atomic writes).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import numbers
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from hone.config import TrainingArguments, effective_batch_sizes
from hone.engine.host_memory import allocator_in_use
from hone.engine.output_dir import OutputDir, json_default
from hone.errors import HoneError
from hone.hardware import HardwareProfile, cpu_supports_bf16


class ModelCardError(HoneError, ValueError):
    """Model-card input that cannot be written; the message names the entry and the fix."""


def _is_main_process() -> bool:
    """Rank 0, or not distributed. Looks torch up without importing it."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return True
    return torch.distributed.get_rank() == 0


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


def timed(split: str, phase: Callable[[Any], dict], model: Any) -> dict:
    """`phase(model)`'s metrics plus the speed keys transformers' Trainer reports with them:
    {split}_runtime (seconds) and {split}_samples_per_second, counting the samples the phase
    reports as {split}_samples* (MNLI's two dev sets add up). Comparable with run_qa, run_glue
    and run_clm's figures, as the phase returns with its outputs on the host."""
    start = time.perf_counter()
    metrics = phase(model)
    seconds = time.perf_counter() - start
    samples = sum(v for k, v in metrics.items() if k.startswith(f"{split}_samples"))
    speed = {f"{split}_runtime": round(seconds, 4)}
    if samples:
        speed[f"{split}_samples_per_second"] = round(samples / max(seconds, 1e-9), 3)
    return {**metrics, **speed}


def log_metrics(split: str, metrics: Mapping[str, Any]) -> None:
    """Print the metric block (rank 0 only when torch.distributed is initialised)."""
    if _is_main_process():
        print(format_metrics(split, metrics), flush=True)


def _as_output(output: OutputDir | str | Path) -> OutputDir:
    return output if isinstance(output, OutputDir) else OutputDir(output, writes=_is_main_process())


def save_results(output: OutputDir | str | Path, results: Mapping[str, Mapping[str, Any]]) -> None:
    """{split}_results.json for each split, and all_results.json holding every split's metrics of
    THIS run (never merged with an earlier run's file); raw numbers, keys sorted, as the Trainer."""
    output = _as_output(output)
    merged: dict[str, Any] = {}
    for split, metrics in results.items():
        output.write_json(f"{split}_results.json", dict(metrics), kind="results", sort_keys=True, newline=False)
        merged.update(metrics)
    output.write_json("all_results.json", merged, kind="results", sort_keys=True, newline=False)


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on, without its host name."""
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"platform": platform.platform(), "cpu": cpu, "cpu_cores": os.cpu_count(),
            "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu_bf16": cpu_supports_bf16(),
            "host_allocator": allocator_in_use(),
            "gpu": torch.cuda.get_device_name(0) if gpus else None, "gpu_count": gpus}


def versions() -> dict[str, str | None]:
    """hone, Python, torch (CUDA, cuDNN) and the libraries a result depends on."""
    import torch

    from hone import __version__

    out = {"hone": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda,
           "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None}
    for package in ("transformers", "tokenizers", "numpy", "onnxruntime"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def git_commit() -> str | None:
    """The commit of the hone source tree in use (with '-dirty' for uncommitted changes), or None."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "."],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


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
        return [json.loads(json.dumps(entry, default=json_default)) for entry in index_results]
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


def write_model_card(output: OutputDir | str | Path, *, model_name: str, base_model: str | None, task_name: str,
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

    return _as_output(output).write_text("README.md", "\n\n".join(parts) + "\n", kind="model")
