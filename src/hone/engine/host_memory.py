"""Host memory while training on a CPU: handing freed pages back, and the peaks the log reports.

Batches of varying shape (dynamic padding, unpadded tokens) fragment glibc's heap: the
activations of one step are freed, but the next step's differently sized ones do not fit
the holes, so the process's resident memory climbs step after step. `malloc_trim` returns
the free pages; the engine calls it every few steps on CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to do
        return None


def release_free_host_memory() -> bool:
    """Return the heap's free pages to the OS; False where the C library has no malloc_trim."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def resident_bytes(field: str = "VmHWM") -> int | None:
    """The process's resident memory from /proc/self/status: its peak ("VmHWM", the high-water
    mark since start or since a reset through /proc/self/clear_refs) or now ("VmRSS"); None
    where /proc is absent (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


def peak_memory_bytes(device) -> int | None:
    """The run's peak memory so far, for its log: on CUDA the tensors' peak on the device
    (`max_memory_allocated`), elsewhere the process's peak resident memory (VmHWM)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resident_bytes("VmHWM")
