"""Checkpoints: what they hold, rotation, and everything needed for an exact resume.

A checkpoint is `output_dir/checkpoint-{step}/`, a complete model folder plus the state:

    the model        save_pretrained(dir) when the model has it (an HF folder), else
                     model.safetensors of its state_dict
    extra files      what the run adds to every model folder (the tokenizer)
    optimizer.pt     optimizer.state_dict()
    scheduler.pt     scheduler.state_dict()
    scaler.pt        the fp16 loss scaler's state (scale, growth tracker)
    rng_state.pt     python, numpy, torch CPU (and CUDA) generator states of every rank
    trainer_state.json  global_step, epoch, data position in samples, world size, logs,
                     the run's configuration (`run_config`: what a resume must match)

The run's OutputDir writes it atomically (a temporary folder renamed into place), so a
crash leaves a complete checkpoint or a temporary folder nothing takes for one.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_model as save_safetensors_model
from torch import nn

from hone.engine.output_dir import OutputDir, json_default
from hone.errors import CheckpointError
from hone.models.checkpoint import read_state_dict

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# ----------------------------------------------------------------------------- model weights

def save_model(model: nn.Module, directory: str | os.PathLike, *, safe_serialization: bool = True) -> None:
    """Write `model` into `directory`: save_pretrained when it has it, else model.safetensors."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if callable(getattr(model, "save_pretrained", None)):
        model.save_pretrained(directory, safe_serialization=safe_serialization)
    else:
        save_safetensors_model(model, str(directory / "model.safetensors"))


def load_model_weights(model: nn.Module, directory: str | os.PathLike) -> None:
    """Load weights written by `save_model` back into `model`, in place.

    A model whose save_pretrained writes transformers' names and layouts has the inverse,
    `load_hf_state_dict` (hone's models); it is used when present. Otherwise the file holds
    state_dict names: keys left out on save because they are tied to another parameter
    (save_pretrained and safetensors drop those) are accepted; anything else missing or
    extra is an error.
    """
    directory = Path(directory)
    state, _ = read_state_dict(directory)
    if callable(getattr(model, "load_hf_state_dict", None)):
        try:
            model.load_hf_state_dict(state)
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"weights in {directory} do not match {type(model).__name__} ({e}). "
                                  "Resume with the model the checkpoint was trained with.") from None
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a tied weight is stored once, under one of its names
    aliases: dict[int, set[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        aliases.setdefault(id(t), set()).add(name)
    alias_of = {name: names for names in aliases.values() for name in names}
    really_missing = [k for k in missing if not alias_of.get(k, set()) & state.keys()]
    if really_missing or unexpected:
        raise CheckpointError(
            f"weights in {directory} do not match {type(model).__name__}: "
            f"missing {really_missing[:5]}{'...' if len(really_missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
            "Resume with the model the checkpoint was trained with.")


# ----------------------------------------------------------------------------- RNG state

def capture_rng_state() -> dict:
    """This process's generator states (python, numpy, torch CPU, every CUDA device)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        # numpy's key array as a tensor keeps the file loadable with weights_only=True
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- save / find

def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint folder name, or None when it is not one."""
    m = _CHECKPOINT_NAME.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest (lowest step) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir()
             if p.is_dir() and checkpoint_step(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(spec: str, output_dir: str | os.PathLike) -> Path:
    """The folder `resume_from_checkpoint` names: a path, or "latest" in output_dir."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"resume_from_checkpoint='latest' but {output_dir} holds no complete checkpoint "
                f"({CHECKPOINT_PREFIX}N/ with {STATE_FILE}); start without resume_from_checkpoint.")
        return found[-1]
    path = Path(spec)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"resume_from_checkpoint='{spec}' is not a complete checkpoint folder (no {STATE_FILE}); "
            "pass a checkpoint-N folder or 'latest'.")
    return path


def save_checkpoint(output: OutputDir, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, scaler, state: dict, rng_states: list[dict],
                    extras: Callable[[Path], None] | None = None, safe_serialization: bool = True) -> Path:
    """Write checkpoint-{step} through the run's OutputDir (atomically) and return its path.
    Call on rank 0 only. `rng_states` holds every rank's `capture_rng_state()`, in rank order;
    `extras(folder)` adds the run's other model files (the tokenizer)."""
    def fill(folder: Path) -> None:
        save_model(model, folder, safe_serialization=safe_serialization)
        if extras is not None:
            extras(folder)
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        torch.save(scaler.state_dict(), folder / "scaler.pt")
        torch.save({"world_size": len(rng_states), "ranks": rng_states}, folder / "rng_state.pt")
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2, default=json_default) + "\n")

    return output.write_folder(f"{CHECKPOINT_PREFIX}{step}", fill, kind="checkpoint")


def rotate_checkpoints(output: OutputDir, limit: int | None, keep: set[Path]) -> list[Path]:
    """Delete the run's oldest checkpoints so that at most `limit` remain; those in `keep`
    (the newest, the best) always stay. Returns the deleted folders."""
    if limit is None:
        return []
    kept = {p.resolve() for p in keep}
    found = [p for p in list_checkpoints(output.path) if output.outputs.get(p.name) == "checkpoint"]
    excess = len(found) - max(limit, len(kept))
    deleted = [p for p in found if p.resolve() not in kept][:max(0, excess)]
    for p in deleted:
        output.remove(p.name)
    return deleted


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's trainer_state.json."""
    try:
        return json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{Path(path) / STATE_FILE} cannot be read ({e}); the checkpoint is damaged: "
                              "resume from an earlier one or start over.") from None


def run_config_differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """What differs between the configuration a checkpoint was trained with and this run's,
    as 'name: saved -> now' lines (empty when they match or the checkpoint predates the record)."""
    if saved is None:
        return []
    return [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


# ----------------------------------------------------------------------------- load

def load_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, scaler, rank: int = 0) -> tuple[dict, dict | None]:
    """Restore model, optimizer, scheduler and scaler from `path` in place.

    Returns (trainer_state, this rank's RNG state or None when the checkpoint was written by
    a smaller world); the caller restores the RNG state right before the next step.
    """
    path = Path(path)
    device = next(model.parameters()).device
    load_model_weights(model, path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    scaler_state = torch.load(path / "scaler.pt", weights_only=True)
    if scaler_state:  # a disabled GradScaler saves {}
        scaler.load_state_dict(scaler_state)
    rng = torch.load(path / "rng_state.pt", weights_only=True)
    state = json.loads((path / STATE_FILE).read_text())
    return state, rng["ranks"][rank] if rank < len(rng["ranks"]) else None
