"""Data-parallel training under torchrun: process group, device, DDP wrapping.

`torchrun --nproc_per_node N -m hone <task> ...` sets RANK, WORLD_SIZE and LOCAL_RANK;
the trainer calls `init_distributed` which joins the group (nccl on CUDA, gloo on CPU)
and picks this process's device. A plain `python -m hone ...` is a world of one and
never touches torch.distributed.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hone.errors import HoneError
from hone.hardware import HardwareProfile


class DistributedConfigError(HoneError, ValueError):
    """The launch environment and the hardware profile disagree."""


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedConfigError(f"environment variable {name}={value!r} is not an integer; "
                                     "launch with torchrun, which sets it.") from None


def init_distributed(profile: HardwareProfile) -> DistributedContext:
    """Join the torchrun process group (once) and return this process's rank and device."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if profile.device == "cuda":
        if not torch.cuda.is_available():
            raise DistributedConfigError(
                f"hardware profile '{profile.name}' asks for device 'cuda' but no CUDA GPU is visible; "
                "use --hardware cpu (or --hardware auto).")
        if local_rank >= torch.cuda.device_count():
            raise DistributedConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "lower --nproc_per_node.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif profile.device == "cpu":
        device = torch.device("cpu")
    else:
        raise DistributedConfigError(
            f"hardware profile '{profile.name}': device '{profile.device}' is not 'cpu' or 'cuda'.")
    if profile.replicas > 1 and world_size != profile.replicas:
        warnings.warn(f"hardware profile '{profile.name}' asks for {profile.replicas} replicas but this run "
                      f"has {world_size} process(es); launch with `torchrun --nproc_per_node "
                      f"{profile.replicas} -m hone ...` to get them.", stacklevel=2)
    if world_size > 1 and not dist.is_initialized():
        # DDP imports this module lazily, and its functions take `group=group.WORLD` as a default
        # argument: imported after init_process_group, those defaults keep the process group
        # alive forever, so destroy_process_group never joins gloo's worker threads, and a worker
        # still releasing a finished collective when Python shuts down aborts the process
        # ("terminate called without an active exception"). Imported before the group exists,
        # they are None. Here, not at the top: single-process runs never pay for it.
        importlib.import_module("torch.distributed.nn.functional")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
        atexit.register(cleanup)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def get_rank() -> int:
    """This process's rank; before init_distributed, the one torchrun gave it (RANK)."""
    return dist.get_rank() if dist.is_initialized() else _env_int("RANK", 0)


def get_world_size() -> int:
    """Processes in the run; before init_distributed, torchrun's WORLD_SIZE."""
    return dist.get_world_size() if dist.is_initialized() else _env_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the process that writes files and logs."""
    return get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (safe to call twice or without one).

    Unreachable DDP wrappers still hold the group, so they are collected first: with the
    last reference gone, destroying the group joins gloo's worker threads while Python is
    still whole, not during interpreter shutdown.
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DDP-wrap `model` (already on ctx.device) when the world has more than one process."""
    if ctx.world_size == 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def all_reduce(tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """`tensor` reduced over ranks with op sum, mean, min or max (a copy; itself in one process)."""
    if not dist.is_initialized():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=_OPS[op])
    return out / dist.get_world_size() if op == "mean" else out


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order, on every rank ([obj] in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

