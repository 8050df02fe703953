"""The training loop shared by every task.

It trains "a model whose forward(**batch) returns an object with `.loss`" (hone's models
and transformers' alike) on "a dataset + collate function", and calls back into the task
for evaluation. What it does per optimizer step:

    for each of the step's micro batches (DDP gradient sync only on the last):
        loss = model(**batch).loss                        # under autocast (bf16/fp16)
        scaler.scale(loss / n_micro).backward()           # fp16: scaled loss
    unscale, clip to max_grad_norm, optimizer.step(), scheduler.step(), zero_grad

Gradient accumulation: each micro batch's loss is divided by the number of micro
batches in the step (gradient_accumulation_steps, fewer only in an epoch's last step), so
the gradient is the mean of the micro-batch mean losses: batch 8 x accumulation 1 and
batch 4 x accumulation 2 give the same update. The logged step loss is that same mean.

Data order: every epoch is a permutation of the dataset drawn from a generator seeded
with `seed + epoch`; each optimizer step takes the next micro_batch x accumulation x
world_size indices of it, and under DDP rank r takes every world_size-th of them from
position r. The position is kept in samples, so a resume (even with another world size)
continues the same sequence.

The loop does not wait for the device between steps: the running loss, the non-finite
loss flag and the grad norm stay device tensors and are read at logging steps. fp16 is
the exception: deciding whether to skip an overflowing step needs one read per step (as
torch.amp.GradScaler itself does).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from hone.config import TrainingArguments, effective_batch_sizes, validate_training_args
from hone.engine import checkpointing, distributed
from hone.engine.host_memory import bound_host_memory, peak_memory_bytes, release_free_host_memory
from hone.engine.optim import build_optimizer, build_scheduler
from hone.engine.output_dir import TRAINING_OUTPUTS, OutputDir, json_default
from hone.engine.precision import autocast, build_loss_scaler, configure_tf32
from hone.errors import HoneError, RunInterrupted
from hone.hardware import HardwareProfile
from hone.reporting import timed


class TrainingDivergedError(HoneError, RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- data order

@dataclass
class StepPlan:
    """One optimizer step on this rank: its micro batches (dataset indices) and the
    number of permutation positions it consumes across all ranks."""
    micro_batches: list[list[int]]
    samples: int


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro batches for the steps from a position in an epoch.

    Call `set_position(epoch, start)` before iterating (the DataLoader iterates it). An
    epoch covers every sample (the last step may be short) or, with drop_last, only whole
    steps. Under DDP a short last step is padded with the epoch's first indices so every
    rank gets the same number of micro batches, as DistributedSampler does.
    """

    def __init__(self, num_samples: int, micro_batch_size: int, accumulation_steps: int, seed: int, *,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False):
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size
        self.accumulation_steps = accumulation_steps
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.plan: list[StepPlan] = []

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.accumulation_steps * self.world_size

    @property
    def epoch_length(self) -> int:
        """Permutation positions one epoch consumes."""
        if self.drop_last:
            return self.num_samples // self.global_batch_size * self.global_batch_size
        return self.num_samples

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.epoch_length / self.global_batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def set_position(self, epoch: int, start: int) -> list[StepPlan]:
        """Plan the rest of `epoch` from permutation position `start`; returns the steps."""
        perm = self.permutation(epoch)
        self.plan = []
        for pos in range(start, self.epoch_length, self.global_batch_size):
            chunk = perm[pos:min(pos + self.global_batch_size, self.epoch_length)]
            samples = len(chunk)
            if samples % self.world_size:
                chunk = torch.cat([chunk, perm[:self.world_size - samples % self.world_size]])
            share = chunk[self.rank::self.world_size].tolist()
            micro = [share[i:i + self.micro_batch_size] for i in range(0, len(share), self.micro_batch_size)]
            self.plan.append(StepPlan(micro, samples))
        return self.plan

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.plan:
            yield from step.micro_batches

    def __len__(self) -> int:
        return sum(len(step.micro_batches) for step in self.plan)


# ----------------------------------------------------------------------------- helpers

def _to_device(batch: Any, device: torch.device, non_blocking: bool) -> dict:
    """Tensors and objects that move like them (hone's VarlenMetadata: `.to(device, non_blocking)`)."""
    if not isinstance(batch, Mapping):
        raise TypeError("collate_fn must return a mapping of model inputs (the model is called as "
                        f"forward(**batch)), got {type(batch).__name__}.")
    return {k: v.to(device, non_blocking=non_blocking) if callable(getattr(v, "to", None)) else v
            for k, v in batch.items()}


def _loss_of(output: Any) -> torch.Tensor:
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: the training batches must include the labels "
                         "(labels, start_positions/end_positions, next_sentence_label, ...).")
    return loss


def _to_host(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).cpu().numpy()


def apply_execution_profile(model: nn.Module, profile: HardwareProfile) -> None:
    """Switch the model to the profile's execution mode and attention kernel (hone models only).

    Also sets the process's CPU thread count when the profile names one: on a shared
    machine, fewer threads than cores avoids oversubscription, which hurts most.
    """
    if profile.cpu_threads is not None and torch.get_num_threads() != profile.cpu_threads:
        torch.set_num_threads(profile.cpu_threads)
    if callable(getattr(model, "set_unpadded", None)):
        model.set_unpadded(profile.execution_mode != "padded")
    if callable(getattr(model, "set_attention", None)):
        model.set_attention(profile.attention)


def predict(model: nn.Module, dataset, collate_fn: Callable, batch_size: int,
            profile: HardwareProfile, *, by_length: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Run `model` over `dataset` and yield each batch's outputs on the host, in dataset order.

    Float tensors come back as float32 numpy arrays, so evaluation never keeps logits on
    the device. Uses the device the model is on, the profile's execution mode, attention
    kernel and autocast; the model's train/eval mode is restored afterwards.

    by_length: the model sees batches of rows of similar length (longest first: least padding,
    and sequences the attention kernels group well), and the outputs are re-batched into
    dataset order, `batch_size` rows at a time. Every output must then have one row per sample
    (per-sample or per-token outputs, not a batch's mean loss); per-token outputs are cut to
    each row's length and padded to the widest row of a yielded batch with the value the model
    put at padding positions (0 when no row of the run had padding).
    """
    apply_execution_profile(model, profile)
    device = next(model.parameters()).device
    if device.type == "cpu" and profile.device == "cuda":
        model.to("cuda")
        device = next(model.parameters()).device
    lengths = sample_lengths(dataset) if by_length else None
    order = np.argsort(-lengths, kind="stable") if by_length else np.arange(len(dataset))
    loader = DataLoader(dataset, batch_sampler=[order[i:i + batch_size].tolist()
                                                for i in range(0, len(order), batch_size)],
                        collate_fn=collate_fn, pin_memory=profile.pin_memory and device.type == "cuda",
                        generator=torch.Generator())  # leaves the global RNG (dropout stream) alone
    was_training = model.training
    model.eval()
    try:
        outputs = _run_batches(model, loader, device, profile)
        yield from (_in_dataset_order(outputs, order, lengths, batch_size) if by_length
                    else (out for out, _ in outputs))
    finally:
        model.train(was_training)
        if device.type == "cpu":
            release_free_host_memory()


def _run_batches(model: nn.Module, loader: DataLoader, device: torch.device,
                 profile: HardwareProfile) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Each batch's outputs on the host, and the batch's row width (its input_ids' second dim)."""
    with torch.inference_mode():
        for batch in loader:
            with autocast(profile):
                out = model(**_to_device(batch, device, non_blocking=True))
            yield {k: _to_host(v) for k, v in out.items() if isinstance(v, torch.Tensor)}, batch["input_ids"].shape[1]


def sample_lengths(dataset) -> np.ndarray:
    """(len(dataset),) tokens per sample: the dataset's `lengths` when it has them (QAFeatures),
    else each item's input_ids."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None and len(lengths) == len(dataset):
        return np.asarray(lengths)
    return np.array([len(dataset[i]["input_ids"]) for i in range(len(dataset))])


def _in_dataset_order(outputs: Iterator[tuple[dict[str, np.ndarray], int]], order: np.ndarray,
                      lengths: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Outputs of batches in `order` -> batches of `batch_size` rows in dataset order. An output
    is per token when its second dim is the batch's row width."""
    rows: dict[str, list] = {}
    fills: dict[str, Any] = {}
    start = 0
    for out, width in outputs:
        batch = order[start:start + batch_size]
        start += len(batch)
        for key, value in out.items():
            if value.ndim == 0 or len(value) != len(batch):
                raise HoneError(f"predict(by_length=True) cannot put output '{key}' back in dataset order: it "
                                f"has no row per sample (shape {value.shape}); predict without by_length.")
            per_token = value.ndim >= 2 and value.shape[1] == width
            column = rows.setdefault(key, [None] * len(order))
            for index, row in zip(batch, value):
                if per_token:
                    if key not in fills and value.shape[1] > lengths[index]:
                        fills[key] = row[lengths[index]].copy()
                    row = row[:lengths[index]]
                column[index] = row
    for a in range(0, len(order), batch_size):
        chunk = range(a, min(a + batch_size, len(order)))
        batch = {}
        for key, column in rows.items():
            items = [column[i] for i in chunk]
            if all(item.shape == items[0].shape for item in items):
                batch[key] = np.stack(items)
                continue
            width = max(len(item) for item in items)
            padded = np.empty((len(items), width, *items[0].shape[1:]), dtype=items[0].dtype)
            padded[...] = fills.get(key, 0)
            for i, item in enumerate(items):
                padded[i, :len(item)] = item
            batch[key] = padded
        yield batch


def data_workers(requested: int | None, device: torch.device, world_size: int = 1) -> int:
    """DataLoader workers per process: `requested` capped at this process's share of the CPUs,
    or by default the CPUs its compute leaves free (a GPU run's one feeding thread, or a CPU
    run's torch threads), at most 4: collation then overlaps the step without taking a core
    from the matmuls."""
    cpus = max(1, len(os.sched_getaffinity(0)) // world_size)
    if requested is None:
        busy = 1 if device.type == "cuda" else torch.get_num_threads()
        return max(0, min(4, cpus - busy))
    if requested > cpus:
        warnings.warn(f"--dataloader_num_workers {requested}: this machine has {cpus} CPU(s) for this process; "
                      f"using {cpus} worker(s).", stacklevel=3)
    return min(requested, cpus)


def quiet_hand_over_errors(worker_id: int) -> None:
    """DataLoader worker_init_fn: a worker passes each batch's shared memory to the main process
    from a background thread (multiprocessing.resource_sharer). When Ctrl-C stops the main process
    during a hand-over, that thread's broken connection would print a traceback under the run's
    one-line summary, for a batch nobody wants any more; every other error still prints."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: object) -> None:
        frames = traceback.extract_tb(tb) if tb is not None else []
        if issubclass(kind, (ConnectionError, EOFError)) and any(
                f.filename.endswith("resource_sharer.py") for f in frames):
            return
        previous(kind, error, tb)

    sys.excepthook = hook


class TrainerCallback:
    """Hooks into the loop (all optional): subclass and override what you need."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After optimizer step `step` (1-based), before logging, evaluation and saving."""

    def on_log(self, trainer: Trainer, record: dict) -> None:
        """After a log record (training or evaluation) is written."""

    def on_evaluate(self, trainer: Trainer, metrics: dict) -> None:
        """After an evaluation during training (every rank); may raise to stop the run."""

    def on_save(self, trainer: Trainer, checkpoint: Path) -> None:
        """After a checkpoint folder is complete (rank 0 only)."""


@dataclass
class TrainerState:
    """What trainer_state.json holds: where training is, in steps and in samples."""
    global_step: int = 0
    epoch: float = 0.0            # epochs done, fractional
    epoch_index: int = 0          # the epoch in progress
    epoch_samples: int = 0        # permutation positions of that epoch already consumed
    samples_seen: int = 0         # all ranks, all epochs
    total_loss: float = 0.0       # sum of step losses (train_loss = total_loss / global_step)
    skipped_steps: int = 0        # fp16 steps skipped for non-finite gradients
    world_size: int = 1
    global_batch_size: int = 0
    best_metric: float | None = None          # metric_for_best_model of the best checkpoint so far
    best_model_checkpoint: str | None = None  # its folder name
    run_config: dict = field(default_factory=dict)  # the settings a resume must match
    log_history: list[dict] = field(default_factory=list)


class CheckpointMismatchError(HoneError, ValueError):
    """A checkpoint trained with other settings, data or model than the run resuming it."""


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """Train `model` on `train_dataset` as `args` and the hardware `profile` say.

    `collate_fn(list of dataset items) -> dict` of model inputs with labels;
    `eval_fn(model) -> dict` is the task's evaluation, run as --eval_strategy says (on every
    rank, with the bare model) and by `evaluate()`.

    Everything it writes goes through `output` (an OutputDir; by default one opened on
    args.output_dir with the training rules): checkpoint-{step}/ (complete model folders:
    `save_extras(folder)` adds the tokenizer) as --save_strategy says and at the end, the final
    model, log.jsonl (per logging step: step, epoch, loss = mean step loss since the previous
    record, learning_rate = the lr the step used, grad_norm before clipping, samples_per_second,
    skipped_steps, peak_memory_mb: peak resident memory on CPUs, peak tensor memory on CUDA;
    eval records carry the eval metrics instead), TensorBoard events (--report_to tensorboard)
    and loss_curve.png. `run_config` (the settings that shape training) is stored in every
    checkpoint; a resume from a checkpoint of another configuration is refused unless
    args.ignore_checkpoint_mismatch.
    """

    def __init__(self, model: nn.Module, args: TrainingArguments, profile: HardwareProfile,
                 train_dataset, collate_fn: Callable, eval_fn: Callable[[nn.Module], dict] | None = None,
                 callbacks: Sequence[TrainerCallback] = (), *, output: OutputDir | None = None,
                 save_extras: Callable[[Path], None] | None = None, run_config: dict | None = None):
        validate_training_args(args)
        self.args, self.profile = args, profile
        self.eval_fn = eval_fn
        self.callbacks = list(callbacks)
        self.save_extras = save_extras
        self.dist = distributed.init_distributed(profile)
        self.is_main = self.dist.is_main
        self._owns_output = output is None  # no Run around it: the trainer records the run itself
        if output is None:
            output = OutputDir.open(args.output_dir, planned=TRAINING_OUTPUTS, overwrite=args.overwrite_output_dir,
                                    continuing=bool(args.resume_from_checkpoint), training=True,
                                    writes=self.is_main)
            distributed.barrier()  # rank 0 has cleared the folder before anyone goes on
        self.output = output
        self.output_dir = output.path

        set_seed(args.seed)
        if self.dist.device.type == "cuda":
            configure_tf32(profile.tf32)
        elif profile.tf32:
            warnings.warn(f"hardware profile '{profile.name}': tf32 only applies on CUDA GPUs; ignored.", stacklevel=2)
        if self.dist.device.type == "cpu" and profile.bound_host_memory:
            bound_host_memory()
        if profile.activation_checkpointing:
            self._enable_activation_checkpointing(model)
        apply_execution_profile(model, profile)
        self.model = model.to(self.dist.device)
        self.model.train()

        self.micro_batch_size, self.accumulation_steps, self.global_batch_size = effective_batch_sizes(
            args, profile, self.dist.world_size)
        if len(train_dataset) == 0:
            raise HoneError("the training dataset is empty: check --train_file and --max_train_samples.")
        self.train_dataset = train_dataset
        self.sampler = StepBatchSampler(len(train_dataset), self.micro_batch_size, self.accumulation_steps,
                                        args.seed, rank=self.dist.rank, world_size=self.dist.world_size,
                                        drop_last=args.dataloader_drop_last)
        if self.sampler.steps_per_epoch == 0:
            raise HoneError(
                f"dataloader_drop_last with {len(train_dataset)} samples and a total batch of "
                f"{self.global_batch_size} leaves no step; lower the batch size or turn off dataloader_drop_last.")
        workers = data_workers(args.dataloader_num_workers, self.dist.device, self.dist.world_size)
        self.loader = DataLoader(
            train_dataset, batch_sampler=self.sampler, collate_fn=collate_fn, num_workers=workers,
            pin_memory=profile.pin_memory and self.dist.device.type == "cuda",
            prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
            worker_init_fn=quiet_hand_over_errors if workers else None,
            # its own generator: worker seeds must not draw from the global RNG (exact resume)
            generator=torch.Generator().manual_seed(args.seed))
        self.total_steps = (args.max_steps if args.max_steps > 0
                            else math.ceil(args.num_train_epochs * self.sampler.steps_per_epoch))

        self.optimizer = build_optimizer(self.model, args, profile)
        self.scheduler = build_scheduler(self.optimizer, args, self.total_steps)
        self.scaler = build_loss_scaler(profile)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._ddp = distributed.wrap_model(self.model, self.dist)
        self.train_model: nn.Module = torch.compile(self._ddp) if profile.compile else self._ddp

        self.run_config = {**(run_config or {}), "total_train_batch_size": self.global_batch_size}
        self.state = TrainerState(world_size=self.dist.world_size, global_batch_size=self.global_batch_size,
                                  run_config=self.run_config)
        self.last_checkpoint: Path | None = None

    # --------------------------------------------------------------------- setup

    def _enable_activation_checkpointing(self, model: nn.Module) -> None:
        # hone's name, then transformers' (5.x, 4.x)
        for method in ("enable_activation_checkpointing", "activation_checkpointing_enable",
                       "gradient_checkpointing_enable"):
            if callable(getattr(model, method, None)):
                getattr(model, method)()
                return
        warnings.warn(f"hardware profile '{self.profile.name}' asks for activation checkpointing but "
                      f"{type(model).__name__} has no enable_activation_checkpointing(); training without it.",
                      stacklevel=3)

    # --------------------------------------------------------------------- train

    def train(self) -> dict:
        """Run training to `total_steps`; returns the train metrics (the Run prints and saves them).

        Ctrl-C stops it with a RunInterrupted naming the last checkpoint.
        """
        args = self.args
        rng_state = self._resume() if args.resume_from_checkpoint else None
        state = self.state
        self.output.remove_temp()
        self._open_logs()
        device = self.dist.device
        self._window_loss = torch.zeros((), device=device)
        self._total_loss = torch.tensor(state.total_loss, device=device)
        self._first_bad = torch.full((), _NO_BAD_STEP, dtype=torch.int64, device=device)
        self._grad_norm = torch.zeros((), device=device)
        self._lr = max(g["lr"] for g in self.optimizer.param_groups)
        self._window_first, self._window_samples, self._window_start = state.global_step, 0, time.perf_counter()
        start_step, start_samples, start_time = state.global_step, state.samples_seen, time.perf_counter()
        self._last_saved = state.global_step if args.resume_from_checkpoint else None
        if rng_state is not None:
            checkpointing.restore_rng_state(rng_state)
        try:
            while state.global_step < self.total_steps:
                plan = self.sampler.set_position(state.epoch_index, state.epoch_samples)
                batches = iter(self.loader)
                for step in plan:
                    self._train_step(batches, step)
                    if device.type == "cpu" and state.global_step % HOST_TRIM_EVERY == 0:
                        release_free_host_memory()
                    self._after_step(epoch_end=state.epoch_samples >= self.sampler.epoch_length)
                    if state.global_step >= self.total_steps:
                        break
                if state.epoch_samples >= self.sampler.epoch_length or not plan:
                    state.epoch_index, state.epoch_samples = state.epoch_index + 1, 0
            if self._last_saved != state.global_step and args.save_strategy != "no":
                self._save_checkpoint()
            state.total_loss, _ = self._read(self._total_loss)
            runtime = time.perf_counter() - start_time
            if args.load_best_model_at_end:
                self._load_best_model()
            self.output.write_files(self._write_model, kind="model")
            if self._owns_output:
                self.output.write_record(status="finished")
            if self.is_main:
                self._plot_loss_curve()
            distributed.barrier()  # every rank returns with the output folder complete
        except KeyboardInterrupt:
            # the newest complete checkpoint of this run (Ctrl-C may land while one is being recorded)
            saved = [p for p in checkpointing.list_checkpoints(self.output_dir)
                     if self.output.outputs.get(p.name) == "checkpoint"]
            last = saved[-1] if saved else None
            where = (f"the last checkpoint is {last}: run the same command again to resume from it (or pass "
                     f"--resume_from_checkpoint {last})" if last else "no checkpoint was saved yet")
            raise RunInterrupted(f"interrupted at step {state.global_step} of {self.total_steps}; {where}") from None
        finally:
            self._close_logs()
            self._stop_workers()

        steps, samples = state.global_step - start_step, state.samples_seen - start_samples
        metrics = {
            "epoch": round(state.epoch, 4),
            "train_loss": state.total_loss / max(1, state.global_step),
            "train_runtime": round(runtime, 4),
            "train_samples": len(self.train_dataset),
            "train_samples_per_second": round(samples / max(runtime, 1e-9), 3),
            "train_steps_per_second": round(steps / max(runtime, 1e-9), 3),
        }
        if self.profile.precision == "fp16":
            metrics["train_skipped_steps"] = state.skipped_steps
        return metrics

    def _stop_workers(self) -> None:
        """Let the DataLoader's persistent worker processes go when training ends (they would
        otherwise live until the interpreter exits)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    def _due(self, strategy: str, every: int | None, epoch_end: bool) -> bool:
        """Whether a steps/epoch strategy fires after the step just taken."""
        if strategy == "epoch":
            return epoch_end
        return strategy == "steps" and bool(every) and every > 0 and self.state.global_step % every == 0

    def _after_step(self, epoch_end: bool) -> None:
        """Logging, evaluation and saving after an optimizer step, as the strategies say."""
        args, step = self.args, self.state.global_step
        last = step == self.total_steps
        if args.logging_strategy != "no" and (self._due(args.logging_strategy, args.logging_steps, epoch_end)
                                              or last or (args.logging_first_step and step == 1)):
            self._log_step()
        metrics = None
        if self.eval_fn is not None and self._due(args.eval_strategy, args.eval_steps, epoch_end):
            metrics = self.evaluate()
            for cb in self.callbacks:
                cb.on_evaluate(self, metrics)
        if self._due(args.save_strategy, args.save_steps, epoch_end):
            self._save_checkpoint(metrics)

    def _write_model(self, folder: Path) -> None:
        checkpointing.save_model(self.model, folder, safe_serialization=self.args.save_safetensors)
        if self.save_extras is not None:
            self.save_extras(folder)

    def _train_step(self, batches: Iterator[dict], plan: StepPlan) -> None:
        state, args = self.state, self.args
        device, n = self.dist.device, len(plan.micro_batches)
        non_blocking = self.loader.pin_memory
        step_loss = torch.zeros((), device=device)
        for i in range(n):
            batch = _to_device(next(batches), device, non_blocking)
            # DDP all-reduces gradients only on the step's last micro batch
            sync = nullcontext() if i == n - 1 or self._ddp is self.model else self._ddp.no_sync()
            with sync:
                with autocast(self.profile):
                    loss = _loss_of(self.train_model(**batch))
                self.scaler.scale(loss / n).backward()
            step_loss += loss.detach().float()
        step_loss /= n

        step = state.global_step + 1
        logging_step = step % args.logging_steps == 0 or step == self.total_steps
        self.scaler.unscale_(self.optimizer)  # no-op unless fp16
        if args.max_grad_norm > 0:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self._params, args.max_grad_norm)
        elif self.scaler.is_enabled() or logging_step:
            self._grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None])
        self._lr = max(g["lr"] for g in self.optimizer.param_groups)  # the lr this step uses
        if self.scaler.is_enabled():
            finite = bool(torch.isfinite(self._grad_norm))  # the one host read fp16 needs per step
            if finite:
                self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
            finite = True
        if finite:
            self.scheduler.step()
        else:
            state.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)

        # device-side bookkeeping: no host sync
        bad = ~torch.isfinite(step_loss)
        self._first_bad = torch.where(bad & (self._first_bad == _NO_BAD_STEP),
                                      torch.full_like(self._first_bad, step), self._first_bad)
        self._window_loss += step_loss
        self._total_loss += step_loss

        state.global_step = step
        state.samples_seen += plan.samples
        state.epoch_samples += plan.samples
        state.epoch = state.epoch_index + state.epoch_samples / self.sampler.epoch_length
        self._window_samples += plan.samples
        if self._pbar is not None:
            self._pbar.update(1)
        for cb in self.callbacks:
            cb.on_step_end(self, step)

    # --------------------------------------------------------------------- logging

    def _open_logs(self) -> None:
        self._pbar = self._log_file = self._tb = None
        if not self.is_main:
            return
        # rewrite from the checkpoint's history: records past it belong to the interrupted run
        self._log_file = self.output.file("log.jsonl", kind="log").open("w")
        for record in self.state.log_history:
            self._log_file.write(json.dumps(record, default=json_default) + "\n")
        self._log_file.flush()
        if "tensorboard" in self.args.report_destinations:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise HoneError("--report_to tensorboard needs the tensorboard package: "
                                "pip install 'hone[tensorboard]'.") from None
            if self.args.logging_dir:
                logging_dir = Path(self.args.logging_dir)
            else:
                logging_dir = self.output.file("runs", kind="log")
            self._tb = SummaryWriter(str(logging_dir / self.args.run_name if self.args.run_name else logging_dir))
        if not self.args.disable_tqdm:
            self._pbar = tqdm(total=self.total_steps, initial=self.state.global_step, desc="train",
                              unit="step", dynamic_ncols=True)

    def _close_logs(self) -> None:
        for handle in (self._pbar, self._log_file, self._tb):
            if handle is not None:
                handle.close()
        self._pbar = self._log_file = self._tb = None

    def _write_record(self, record: dict) -> None:
        self.state.log_history.append(record)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record, default=json_default) + "\n")
            self._log_file.flush()
        if self._tb is not None:
            prefix = "train" if "loss" in record else "eval"
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])
        for cb in self.callbacks:
            cb.on_log(self, record)

    def _read(self, loss: torch.Tensor) -> tuple[float, float]:
        """Host values of `loss` (mean over ranks) and of the last grad norm, in one sync.

        Raises TrainingDivergedError when any rank has seen a non-finite loss.
        """
        loss = distributed.all_reduce(loss, "mean")
        first_bad = distributed.all_reduce(self._first_bad, "min")
        loss, first_bad, grad_norm = torch.stack([loss.double(), first_bad.double(),
                                                  self._grad_norm.double()]).tolist()
        if first_bad != _NO_BAD_STEP:
            self._diverged(int(first_bad))
        return loss, grad_norm

    def _diverged(self, step: int) -> None:
        where = (f"The last good checkpoint is {self.last_checkpoint}; resume from it "
                 f"(--resume_from_checkpoint {self.last_checkpoint})"
                 if self.last_checkpoint else "No checkpoint was saved before it; restart")
        raise TrainingDivergedError(
            f"Training diverged: the loss became NaN or infinite at step {step} (seen at step "
            f"{self.state.global_step}). {where} with a lower learning rate, more warmup, a smaller "
            "max_grad_norm or bf16/fp32 precision.")

    def _log_step(self) -> None:
        state = self.state
        loss_sum, grad_norm = self._read(self._window_loss)
        now = time.perf_counter()
        record = {
            "step": state.global_step,
            "epoch": round(state.epoch, 4),
            "loss": loss_sum / max(1, state.global_step - self._window_first),
            "learning_rate": self._lr,
            "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
            "samples_per_second": round(self._window_samples / max(now - self._window_start, 1e-9), 3),
            "skipped_steps": state.skipped_steps,
        }
        peak = peak_memory_bytes(self.dist.device)
        if peak is not None:
            record["peak_memory_mb"] = round(peak / 2**20, 1)
        self._window_loss.zero_()
        self._window_first, self._window_samples, self._window_start = state.global_step, 0, now
        if self.is_main:
            self._write_record(record)
            if self._pbar is not None:
                self._pbar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}",
                                       samples_s=f"{record['samples_per_second']:.1f}", refresh=False)
            elif self.args.disable_tqdm:
                print(json.dumps(record), flush=True)

    def _plot_loss_curve(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        points = [(r["step"], r["loss"]) for r in self.state.log_history if r.get("loss") is not None]
        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{type(self.model).__name__}: training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.output.file("loss_curve.png", kind="log"), dpi=100)

    # --------------------------------------------------------------------- evaluation

    def evaluate(self) -> dict:
        """The task's eval_fn on the bare model; logged with the current step."""
        if self.eval_fn is None:
            raise HoneError("this Trainer was built without an eval_fn.")
        metrics = timed("eval", self.eval_fn, self.model)
        self.model.train()
        if self.is_main:
            self._write_record({"step": self.state.global_step, "epoch": round(self.state.epoch, 4), **metrics})
        return metrics

    # --------------------------------------------------------------------- checkpoints

    def _track_best(self, metrics: dict | None, checkpoint: str) -> None:
        """Remember `checkpoint` as the best when its evaluation beats the best so far."""
        args, state = self.args, self.state
        if metrics is None or not (args.load_best_model_at_end or args.metric_for_best_model):
            return
        key = args.best_metric_key
        if key not in metrics:
            raise HoneError(f"--metric_for_best_model {args.metric_for_best_model or 'loss'} -> '{key}' is not "
                            f"among this task's evaluation metrics ({', '.join(sorted(metrics))}); pick one of them.")
        value = float(metrics[key])
        better = state.best_metric is None or (value > state.best_metric if args.best_is_greater
                                               else value < state.best_metric)
        if better:
            state.best_metric, state.best_model_checkpoint = value, checkpoint

    def _save_checkpoint(self, metrics: dict | None = None) -> None:
        state = self.state
        name = f"{checkpointing.CHECKPOINT_PREFIX}{state.global_step}"
        self._track_best(metrics, name)
        state.total_loss, _ = self._read(self._total_loss)  # also: a diverged run writes no checkpoint
        rng_states = distributed.gather_objects(checkpointing.capture_rng_state())
        if self.is_main:
            path = checkpointing.save_checkpoint(
                self.output, state.global_step, model=self.model, optimizer=self.optimizer,
                scheduler=self.scheduler, scaler=self.scaler, state=asdict(state), rng_states=rng_states,
                extras=self.save_extras, safe_serialization=self.args.save_safetensors)
            keep = {path} | ({self.output_dir / state.best_model_checkpoint} if state.best_model_checkpoint else set())
            checkpointing.rotate_checkpoints(self.output, self.args.save_total_limit, keep=keep)
            self.output.write_record()  # run.json lists the checkpoint: a kill now loses nothing
            for cb in self.callbacks:
                cb.on_save(self, path)
        distributed.barrier()
        self.last_checkpoint = self.output_dir / name
        self._last_saved = state.global_step

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is None:
            return
        if self.is_main:
            print(f"Loading the best model from {self.output_dir / best} "
                  f"({self.args.best_metric_key} = {self.state.best_metric}).", flush=True)
        checkpointing.load_model_weights(self.model, self.output_dir / best)

    def _resume(self) -> dict | None:
        path = checkpointing.resolve_checkpoint(self.args.resume_from_checkpoint, self.output_dir)
        saved_state = json.loads((path / checkpointing.STATE_FILE).read_text())
        problems = checkpointing.run_config_differences(saved_state.get("run_config"), self.run_config)
        if saved_state["global_step"] > self.total_steps:
            problems.append(f"the checkpoint is at step {saved_state['global_step']}, beyond this run's "
                            f"{self.total_steps} steps")
        if problems and not self.args.ignore_checkpoint_mismatch:
            raise CheckpointMismatchError(
                f"{path} was trained differently from this run: {'; '.join(problems)}. Resume with the same "
                "settings, start over (--overwrite_output_dir, or another --output_dir), or pass "
                "--ignore_checkpoint_mismatch to resume anyway.")
        saved, rng_state = checkpointing.load_checkpoint(
            path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            rank=self.dist.rank)
        self.state = TrainerState(**saved)
        if problems:
            warnings.warn(f"resuming {path} despite: {'; '.join(problems)}", stacklevel=3)
        if rng_state is None:
            warnings.warn(f"{path} holds no RNG state for rank {self.dist.rank} (it was saved by "
                          f"{self.state.world_size} process(es)): dropout will differ from an uninterrupted run.",
                          stacklevel=3)
        self.state.world_size, self.state.global_batch_size = self.dist.world_size, self.global_batch_size
        self.state.run_config = self.run_config
        self.last_checkpoint = path
        if self.is_main:
            print(f"Resuming from {path} at step {self.state.global_step} (epoch {self.state.epoch:.4f}).", flush=True)
        return rng_state


# On CPU, freed heap pages go back to the OS every this many steps (docs/training.md).
HOST_TRIM_EVERY = 50
_NO_BAD_STEP = 2**62  # "no non-finite loss yet" for the device-side first-bad-step tracker
