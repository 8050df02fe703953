"""Freed host memory goes back to the OS during CPU training (glibc's malloc_trim)."""

from __future__ import annotations

import platform
import sys

import pytest

from hone.engine import host_memory, trainer
from hone.engine.trainer import HOST_TRIM_EVERY, Trainer, predict
from test_trainer import CPU, QADataset, collate, make_args, single_thread, tiny_bert_qa  # noqa: F401

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="malloc_trim is glibc's")


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@glibc_only
def test_trim_returns_freed_heap_holes():
    """Free every other 100 KB block (heap, below the mmap threshold): only a trim gives the holes back."""
    blocks = [bytearray(100_000) for _ in range(3000)]  # ~300 MB, every page touched (zero-filled)
    del blocks[::2]
    before = resident_mb()
    assert host_memory.release_free_host_memory() is True
    assert before - resident_mb() > 100  # ~150 MB of holes; their whole pages are released
    del blocks


def test_trainer_trims_every_few_steps_on_cpu(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "release_free_host_memory", lambda: calls.append(1) or True)
    steps = 2 * HOST_TRIM_EVERY + 3
    Trainer(tiny_bert_qa(), make_args(tmp_path, max_steps=steps), CPU, QADataset(n=16), collate).train()
    assert len(calls) == steps // HOST_TRIM_EVERY
    list(predict(tiny_bert_qa(), QADataset(n=4), collate, batch_size=4, profile=CPU))
    assert len(calls) == steps // HOST_TRIM_EVERY + 1  # and once after a prediction pass


FREE_HALF = """
import sys
from hone.engine.host_memory import bound_host_memory, resident_bytes
if sys.argv[1] == "bound":
    bound_host_memory()
big = bytearray(16 << 20)  # freed: glibc's own rule raises its mmap threshold to 16 MB (its rule stops at 32 MB)
del big
blocks = [bytearray(2 << 20) for _ in range(200)]  # 400 MB of 2 MB blocks, every page touched
before = resident_bytes("VmRSS")
del blocks[::2]
import os
print((before - resident_bytes("VmRSS")) >> 20, os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"))
"""


@glibc_only
@pytest.mark.parametrize("bound", [False, True])
def test_bounded_host_memory_frees_large_blocks_at_once(bound, monkeypatch):
    """With bound_host_memory, a freed 2 MB tensor-sized block goes straight back to the OS; with
    glibc's moving threshold it stays in the heap (a hole until a trim). In a fresh process:
    mallopt and oneDNN's variable are process-wide."""
    import subprocess
    import sys

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    out = subprocess.run([sys.executable, "-c", FREE_HALF, "bound" if bound else "plain"], capture_output=True,
                         text=True, check=True).stdout.split()
    released_mb, capacity = int(out[0]), out[1]
    if bound:
        assert released_mb > 150 and capacity == str(host_memory.ONEDNN_CACHE_CAPACITY)
    else:
        assert released_mb < 50 and capacity == "None"


def test_bounded_host_memory_leaves_the_users_settings(monkeypatch):
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    calls = []
    monkeypatch.setattr(host_memory, "_glibc", lambda: type("Libc", (), {"mallopt": lambda *a: calls.append(a)})())
    host_memory.bound_host_memory()
    assert calls == [] and host_memory.os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"


# ----------------------------------------------------------------------------- host allocator

needs_mimalloc = pytest.mark.skipif(host_memory.find_mimalloc() is None or platform.system() != "Linux",
                                    reason="libmimalloc.so comes with cmeel-mimalloc, a Linux dependency of hone")


@pytest.fixture
def execs(monkeypatch):
    """os.execve calls of host_memory, recorded instead of made; no program marked yet."""
    calls = []
    monkeypatch.setattr(host_memory.os, "execve", lambda *args: calls.append(args))
    monkeypatch.setattr(host_memory, "_program_argv", None)
    for name in (host_memory.RELAUNCHED, "LD_PRELOAD", *host_memory.mimalloc_options(0)):
        monkeypatch.delenv(name, raising=False)
    return calls


@needs_mimalloc
def test_the_program_relaunches_itself_with_mimalloc_preloaded(execs):
    assert host_memory.allocator_in_use() == "system"  # pytest runs on glibc's malloc
    host_memory.relaunch_with_allocator("mimalloc", "qa", 5000)  # a call from Python (tests): never
    host_memory.mark_program(["demo", "--output_dir", "d"])
    host_memory.relaunch_with_allocator("mimalloc", "qa", 5000)  # the qa run inside `hone demo`: no
    host_memory.relaunch_with_allocator("system", "demo", 5000)  # nothing to preload
    assert execs == []
    host_memory.mark_program(["qa", "--do_train"])
    host_memory.relaunch_with_allocator("mimalloc", "qa", 5000)
    host_memory.relaunch_with_allocator("mimalloc", "qa", -1)  # the profile's purge delay; -1: never
    ((executable, argv, env), (_, _, never)) = execs
    assert argv == [sys.executable, "-m", "hone", "qa", "--do_train"] and executable == sys.executable
    assert env["LD_PRELOAD"] == str(host_memory.find_mimalloc())
    assert env[host_memory.RELAUNCHED] == "mimalloc" and env["MIMALLOC_PURGE_DELAY"] == "5000"
    assert env["MIMALLOC_ALLOW_THP"] == "0" and never["MIMALLOC_PURGE_DELAY"] == "-1"


@needs_mimalloc
def test_the_program_relaunches_before_torch_loads_where_its_flags_settle_the_allocator(execs, monkeypatch):
    monkeypatch.setattr(host_memory, "command_line_allocator", lambda flags: None if "--config" in flags
                        else ("mimalloc", -1))
    host_memory.relaunch_early(["qa", "--config", "run.yaml"])  # unsettled: the run relaunches later
    host_memory.relaunch_early(["bench", "infer", "--model", "m"])  # picks no allocator
    host_memory.relaunch_early(["demo"])  # its qa run keeps the allocator it started with
    assert execs == []
    host_memory.relaunch_early(["qa", "--do_train"])
    ((executable, argv, env),) = execs
    assert argv == [sys.executable, "-m", "hone", "qa", "--do_train"]
    assert env["LD_PRELOAD"] == str(host_memory.find_mimalloc()) and env["MIMALLOC_PURGE_DELAY"] == "-1"
    host_memory.relaunch_early(["bench", "train", "--task", "qa"])
    assert execs[1][1] == [sys.executable, "-m", "hone", "bench", "train", "--task", "qa"]
    monkeypatch.setattr(host_memory, "find_mimalloc", lambda: None)
    host_memory.relaunch_early(["qa", "--do_train"])  # no library: the run says so, once
    assert len(execs) == 2


@needs_mimalloc
def test_the_users_own_mimalloc_settings_win(execs, monkeypatch):
    monkeypatch.setenv("MIMALLOC_ALLOW_THP", "1")
    host_memory.mark_program(["qa"])
    host_memory.relaunch_with_allocator("mimalloc", "qa", 5000)
    ((_, _, env),) = execs
    assert env["MIMALLOC_ALLOW_THP"] == "1" and env["MIMALLOC_PURGE_DELAY"] == "5000"


@needs_mimalloc
def test_a_failed_preload_or_a_missing_library_is_a_notice_not_a_loop(execs, monkeypatch, caplog):
    host_memory.mark_program(["qa"])
    monkeypatch.setenv(host_memory.RELAUNCHED, "mimalloc")  # relaunched, yet mimalloc is not mapped
    host_memory.relaunch_with_allocator("mimalloc", "qa", 5000)
    monkeypatch.delenv(host_memory.RELAUNCHED)
    monkeypatch.setattr(host_memory, "find_mimalloc", lambda: None)
    host_memory.relaunch_with_allocator("mimalloc", "qa", 5000)
    assert execs == []
    notices = [r.getMessage() for r in caplog.records]
    assert "did not load" in notices[0] and "pip install cmeel-mimalloc" in notices[1]
