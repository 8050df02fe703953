"""Model outputs with transformers' attribute names (`out.logits`, `out.loss`, ...)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch


class ModelOutput(dict):
    """A dict whose keys are also attributes; absent fields read as None.

    Mirrors transformers' ModelOutput closely enough that code written for it
    (`out.loss`, `out["logits"]`, `out.start_logits`) works unchanged.

    A field can be deferred (`defer`): computed on first access, under the grad, inference
    and autocast modes of the forward that deferred it, then stored. Until then it is not
    among the keys, so code that walks `items()` (e.g. moving outputs to the host) never
    pays for it.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __missing__(self, key: str) -> Any:
        compute = self.__dict__.get("_deferred", {}).pop(key, None)
        if compute is None:
            raise KeyError(key)
        self[key] = value = compute()
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def defer(self, name: str, compute: Callable[[], Any]) -> None:
        """Let `out.name` / `out[name]` call `compute()` when first read, in today's torch modes."""
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        autocasts = [(d, torch.get_autocast_dtype(d), torch.is_autocast_enabled(d)) for d in devices]

        def in_forward_modes() -> Any:
            with ExitStack() as stack:
                stack.enter_context(torch.inference_mode(inference))
                stack.enter_context(torch.set_grad_enabled(grad))
                for device, dtype, enabled in autocasts:
                    stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
                return compute()

        self.__dict__.setdefault("_deferred", {})[name] = in_forward_modes
