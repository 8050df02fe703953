"""Mixed precision from the hardware profile: autocast, fp16 loss scaling, TF32.

The model's weights, gradients and optimizer state stay fp32; `autocast` runs the
forward in bf16/fp16 where that is safe. fp16 needs loss scaling so that small gradients
do not underflow:

- "dynamic" (the default): torch.amp.GradScaler. The scale halves when a step's
  gradients overflow and doubles after 2000 clean steps.
- a number (e.g. "1024"): a static scale (`StaticLossScaler`).

Either way the trainer skips an optimizer step whose gradients are not finite (and does
not advance the LR schedule for it), so an overflow costs one step, not the run.
Both scalers work on CPU as well as CUDA.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager

import torch

from hone.errors import HoneError
from hone.hardware import HardwareProfile


class PrecisionConfigError(HoneError, ValueError):
    """A precision setting in the hardware profile that cannot work."""


_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(profile: HardwareProfile) -> torch.dtype | None:
    """The autocast dtype for `profile.precision` (None for fp32)."""
    if profile.precision not in _DTYPES:
        raise PrecisionConfigError(
            f"hardware profile '{profile.name}': precision '{profile.precision}' is not one of "
            f"{', '.join(_DTYPES)}; fix the 'precision' field.")
    return _DTYPES[profile.precision]


def autocast(profile: HardwareProfile) -> AbstractContextManager:
    """Context for forward passes: autocast to bf16/fp16 on the profile's device, or a no-op."""
    dtype = autocast_dtype(profile)
    device_type = torch.device(profile.device).type
    return torch.autocast(device_type=device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


class StaticLossScaler:
    """A fixed loss scale with GradScaler's interface (scale, unscale_, step, update).

    It never changes the scale; non-finite steps are skipped by the trainer.
    """

    def __init__(self, scale: float):
        if not scale > 0:
            raise PrecisionConfigError(f"loss_scaling must be 'dynamic' or a number > 0, got {scale}.")
        self.scale_value = float(scale)
        self._unscaled: set[int] = set()

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return self.scale_value

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    @torch.no_grad()
    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) in self._unscaled:
            raise RuntimeError("unscale_() was already called on this optimizer since the last update().")
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale_value)
        self._unscaled.add(id(optimizer))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) not in self._unscaled:
            self.unscale_(optimizer)
        optimizer.step()

    def update(self) -> None:
        self._unscaled.clear()

    def state_dict(self) -> dict:
        return {"scale": self.scale_value}

    def load_state_dict(self, state: dict) -> None:
        self.scale_value = float(state["scale"])


LossScaler = torch.amp.GradScaler | StaticLossScaler


def build_loss_scaler(profile: HardwareProfile) -> LossScaler:
    """The profile's loss scaler; a disabled GradScaler (a no-op) unless precision is fp16."""
    device_type = torch.device(profile.device).type
    if autocast_dtype(profile) is not torch.float16:
        return torch.amp.GradScaler(device_type, enabled=False)
    if str(profile.loss_scaling).strip().lower() == "dynamic":
        return torch.amp.GradScaler(device_type)
    try:
        value = float(profile.loss_scaling)
    except ValueError:
        raise PrecisionConfigError(
            f"hardware profile '{profile.name}': loss_scaling '{profile.loss_scaling}' is neither "
            "'dynamic' nor a number; use e.g. loss_scaling=dynamic or loss_scaling=1024.") from None
    return StaticLossScaler(value)


def configure_tf32(enabled: bool) -> None:
    """Let fp32 matmuls and convolutions use TF32 tensor cores (Ampere and newer GPUs)."""
    precision = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    if enabled and not torch.cuda.is_available():
        warnings.warn("tf32=True has no effect without a CUDA GPU.", stacklevel=2)
