"""What every task recipe does before and after its own part: one place, not one per task."""

from __future__ import annotations

import logging
import random
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from hone.config import TrainingArguments, format_effective_config
from hone.engine import distributed
from hone.hardware import HardwareProfile
from hone.hardware import parse_overrides as split_overrides
from hone.models.checkpoint import build_model, load_model
from hone.reporting import hyperparameters_for_card, log_metrics, save_metrics, write_model_card

log = logging.getLogger("hone")


@dataclass
class Run:
    command_line: str
    started: float
    world_size: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(args: TrainingArguments, profile: HardwareProfile, argv: list[str], prog: str) -> Run:
    """Seed, print the effective configuration, and remember the command line for the model card."""
    seed_everything(args.seed)
    world = distributed.get_world_size()
    if distributed.is_main_process():
        log.info(format_effective_config(args, profile, world))
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    return Run(command_line=shlex.join([*prog.split(), *argv]), started=time.time(), world_size=world)


def parse_overrides(text: str | None) -> dict:
    """--config_overrides 'k=v,k=v' -> {k: v} with YAML scalars (ints, floats, bools) typed."""
    return {key: yaml.safe_load(value) for key, value in split_overrides(text, flag="--config_overrides").items()}


def load_task_model(model_args, task: str, **extra):
    """The model for `task`: from a checkpoint folder, or from a config alone (fresh weights)."""
    overrides = {**parse_overrides(model_args.config_overrides), **extra}
    if model_args.model_name_or_path:
        return load_model(model_args.model_name_or_path, task=task, **overrides)
    return build_model(model_args.config_name, task=task, **overrides)


def finish_run(run: Run, args: TrainingArguments, profile: HardwareProfile, *, train_metrics: dict | None,
               eval_metrics: dict | None, predict_metrics: dict | None = None, model_name_or_path: str,
               task_name: str, task_type: str,
               dataset_names: list[str], index_metrics: dict[str, str]) -> None:
    """Print and save the eval and predict blocks, then write the model card (rank 0 only)."""
    if not distributed.is_main_process():
        return
    for split, metrics in (("eval", eval_metrics), ("predict", predict_metrics)):
        if metrics:
            log_metrics(split, metrics)
            save_metrics(args.output_dir, split, metrics)
    index_results = [{"name": name, "type": name, "value": round(float(eval_metrics[key]), 4)}
                     for name, key in index_metrics.items() if eval_metrics and key in eval_metrics]
    write_model_card(
        args.output_dir, model_name=Path(args.output_dir).name, base_model=model_name_or_path,
        task_name=task_name, task_type=task_type, dataset_names=[Path(d).name for d in dataset_names],
        command_line=run.command_line, hyperparameters=hyperparameters_for_card(args, profile, run.world_size),
        train_metrics=train_metrics, eval_metrics=eval_metrics, index_results=index_results)
