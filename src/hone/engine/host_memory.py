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

The profile's `host_allocator: mimalloc` replaces glibc's malloc with mimalloc (the
cmeel-mimalloc wheel), which keeps same-sized blocks together and returns pages unused for the
profile's host_allocator_purge_ms (5 s; never in fp32, where returning them cost system CPU
time and there is room to keep them): resident memory stays near the live tensors at full
speed, once it is kept off transparent huge pages (mimalloc_options). An allocator has to be
there before the process's first allocation, so `hone` relaunches itself once with it preloaded (`relaunch_with_allocator`;
`relaunch_early`, before torch loads, where the flags settle the allocator),
before any work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from pathlib import Path

from hone.hardware import command_line_allocator

log = logging.getLogger("hone")

ONEDNN_CACHE_CAPACITY = 64  # primitives; one MiniLM/BERT training step creates a few dozen
MMAP_THRESHOLD = 1 << 20  # bytes: tensors from 1 MiB up get their own mapping
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
RELAUNCHED = "HONE_HOST_ALLOCATOR"  # set in the environment of the relaunched process
# the commands whose runs pick a host allocator: each recipe's Run, and `hone bench train`
RELAUNCHING_COMMANDS = (["qa"], ["glue"], ["clm"], ["pretrain"], ["bench", "train"])
_program_argv: list[str] | None = None  # `hone ...` as typed, when hone runs as the program


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


def mark_program(argv: list[str]) -> None:
    """Record that this process is the `hone` program with these arguments (cli.main, when it
    reads sys.argv): only then may a run relaunch it. Calls from Python (tests) never relaunch."""
    global _program_argv
    _program_argv = list(argv)


def find_mimalloc() -> Path | None:
    """libmimalloc.so from the cmeel-mimalloc wheel on sys.path, or None."""
    for root in sys.path:
        lib = Path(root or ".") / "cmeel.prefix" / "lib" / "libmimalloc.so"
        if lib.is_file():
            return lib
    return None


def allocator_in_use() -> str:
    """"mimalloc" when libmimalloc is mapped into this process, else "system"."""
    try:
        return "mimalloc" if "libmimalloc" in Path("/proc/self/maps").read_text() else "system"
    except OSError:
        return "system"


def mimalloc_options(purge_ms: int) -> dict[str, str]:
    """The environment hone gives mimalloc (the user's own values win). It hands pages back after
    they have been unused for `purge_ms` (-1: never; mimalloc's own 10 ms returns them within a
    step and faults them in again: 0.8x the samples/s measured here). And it backs its arenas
    with transparent huge pages where the system allows them, whose faults make the kernel
    compact memory: 4-6x glibc's system CPU time and 0.87x its samples/s in fp32 and bf16
    training (benchmarks/results/host-memory-ab-cpu*-mimalloc-thp-2026-12-02.json; the cause
    mimalloc's authors give in microsoft/mimalloc#1323), so hone turns them off."""
    return {"MIMALLOC_PURGE_DELAY": str(purge_ms), "MIMALLOC_ALLOW_THP": "0"}


def relaunch_with_allocator(allocator: str, command: str, purge_ms: int) -> None:
    """When this process is the `hone COMMAND ...` program (not a call from Python, nor a
    recipe run inside another command), relaunch it with `allocator` (exec_with_allocator)."""
    if _program_argv and _program_argv[0] == command:
        exec_with_allocator(allocator, [sys.executable, "-m", "hone", *_program_argv], purge_ms)


def relaunch_early(argv: list[str]) -> None:
    """Relaunch the `hone` program (argv: its arguments) with its run's allocator before torch is
    imported, where the flags alone settle which (hardware.command_line_allocator): torch then
    loads once. Elsewhere the run relaunches once it knows its profile (relaunch_with_allocator),
    and the first load of torch is wasted. A missing library is left to the run to report, once."""
    if not any(argv[:len(command)] == command for command in RELAUNCHING_COMMANDS):
        return
    if (chosen := command_line_allocator(argv[1:])) and find_mimalloc() is not None:
        exec_with_allocator(chosen[0], [sys.executable, "-m", "hone", *argv], chosen[1])


def exec_with_allocator(allocator: str, argv: list[str], purge_ms: int) -> None:
    """Replace this process (os.execve: same PID and environment) by `argv` with `allocator`
    preloaded, on Linux, unless it is loaded already; mimalloc purges pages unused for
    `purge_ms` (-1: never). Where the library is missing, or a relaunch already happened, say so
    once and carry on with the system allocator: memory is then less bounded, nothing else changes."""
    if allocator == "system" or not sys.platform.startswith("linux") or allocator_in_use() == allocator:
        return
    if find_mimalloc() is None:
        _missing_library_notice(allocator)
        return
    if os.environ.get(RELAUNCHED):
        log.warning("notice: host_allocator %s: it did not load with LD_PRELOAD=%s; using the system allocator.",
                    allocator, os.environ.get("LD_PRELOAD"))
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, allocator_environment(allocator, purge_ms))


def allocator_environment(allocator: str, purge_ms: int) -> dict[str, str]:
    """This process's environment for a new process that runs on `allocator`: mimalloc preloaded
    first with hone's options (the user's own settings win), or, for "system", without any
    mimalloc in LD_PRELOAD. Without the library, "mimalloc" gives the system allocator (and says so)."""
    env = dict(os.environ)
    env.pop(RELAUNCHED, None)
    preload = [p for p in env.pop("LD_PRELOAD", "").split(os.pathsep) if p and "libmimalloc" not in Path(p).name]
    if allocator != "system" and sys.platform.startswith("linux"):
        if (lib := find_mimalloc()) is None:
            _missing_library_notice(allocator)
        else:
            preload.insert(0, str(lib))
            env = {**mimalloc_options(purge_ms), **env, RELAUNCHED: allocator}
    return {**env, "LD_PRELOAD": os.pathsep.join(preload)} if preload else env


def _missing_library_notice(allocator: str) -> None:
    log.warning("notice: host_allocator %s: libmimalloc.so is not installed (pip install cmeel-mimalloc); "
                "using the system allocator.", allocator)


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
