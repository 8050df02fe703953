"""Model outputs with transformers' attribute names (`out.logits`, `out.loss`, ...)."""

from __future__ import annotations

from typing import Any


class ModelOutput(dict):
    """A dict whose keys are also attributes; absent fields read as None.

    Mirrors transformers' ModelOutput closely enough that code written for it
    (`out.loss`, `out["logits"]`, `out.start_logits`) works unchanged.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value
