"""Freed host memory goes back to the OS during CPU training (glibc's malloc_trim)."""

from __future__ import annotations

import platform

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
