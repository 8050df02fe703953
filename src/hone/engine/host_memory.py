"""Host memory while training on a CPU: bounded caches, freed pages handed back, and the peaks
the log reports.

Batches of varying shape (dynamic padding, unpadded tokens) make resident memory climb step
after step, for two reasons (measured in benchmarks/results/qa-epoch-memory-*):
- oneDNN (bf16 matmuls) caches a primitive for every new shape, up to 1,024 of them, each
  holding its own buffers: about 1 MB apiece here. `bound_host_memory` caps the cache at
  one step's worth of shapes.
- glibc's heap fragments: one step's activations are freed, but the next step's differently
  sized ones do not fit the holes. Above glibc's mmap threshold an allocation gets its own
  mapping, which goes back to the OS when freed; glibc raises that threshold as large blocks
  are freed, so activations move onto the heap. `bound_host_memory` fixes the threshold, and
  `malloc_trim` (every few steps) returns what the heap still frees.
`bound_host_memory` is opt-in (the profile field of that name): every large tensor is then
mapped and faulted in afresh, which cost 28% of the samples/s of bf16 QA training here
(benchmarks/results/host-memory-ab-*).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path

ONEDNN_CACHE_CAPACITY = 64  # primitives; one MiniLM/BERT training step creates a few dozen
MMAP_THRESHOLD = 1 << 20  # bytes: tensors from 1 MiB up get their own mapping
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


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


def bound_host_memory() -> None:
    """Cap oneDNN's primitive cache and fix glibc's mmap threshold (see the module docstring),
    unless the environment sets them (ONEDNN_PRIMITIVE_CACHE_CAPACITY, MALLOC_MMAP_THRESHOLD_).
    oneDNN reads its variable when it creates its first primitive: call this before the first
    forward."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))
    libc = _glibc()
    if libc is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


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
