"""Model FLOPs, device peaks and peak memory: what benchmark rates and MFU are measured against.

Training FLOPs of one sequence of s tokens (reference.md "Performance facts"; Kaplan et al.
2020, PaLM appendix B):

    6 * N * s + 12 * L * s^2 * d

N counts the matmul weights every token passes through: the layers' q/k/v, attention
output and the two feed-forward matmuls (4 d^2 + 2 d d_ff per layer), plus the task head
where it runs on every token (QA's span head; the LM heads' transform and vocabulary
projection, a large share of a small model). The second term is attention's QK^T and AV
(2 * 2 * s^2 * d forward per layer, x3 with backward). Heads that see one token per
sequence (classification) add 6 * their weights once. Embedding lookups, biases, norms and
softmax are left out, as in the standard formula. bert-base QA at s = 384: 212 GFLOP.

MFU = achieved model FLOP/s / the device's dense bf16 peak. A benchmark counts the same
model FLOPs per sample for every system (those of the padded baseline), so MFU compares
like with like; "useful" FLOPs are the same formula on each sample's real tokens only.
"""

from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path

import torch

from hone.engine.host_memory import release_free_host_memory, resident_bytes
from hone.models.base import ModelConfig

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' data sheets.
PEAK_BF16_DENSE: dict[str, float] = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "A100": 312e12,
}


def device_peak(device_name: str) -> tuple[str, float] | None:
    """(table key, bf16 dense peak FLOP/s) for a torch.cuda.get_device_name(), None when unknown."""
    name = device_name.upper()
    if "H200" in name:
        key = "H200"
    elif "H100" in name:
        key = "H100 PCIe" if "PCIE" in name else "H100 NVL" if "NVL" in name else "H100 SXM"
    elif "A100" in name:
        key = "A100"
    else:
        return None
    return key, PEAK_BF16_DENSE[key]


def _dims(config: ModelConfig) -> tuple[int, int, int, int]:
    """(layers L, width d, feed-forward width, vocabulary) of a BERT/RoBERTa or GPT-2 config."""
    d = config.hidden_size
    ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
    return config.num_hidden_layers, d, ff, config.vocab_size


def matmul_params(config: ModelConfig, task: str | None) -> tuple[int, int]:
    """Matmul weights (per token, per sequence) for `task` (hone's names: qa, classification,
    mlm, clm, None). Per token: the layers plus a head that runs on every token."""
    L, d, ff, vocab = _dims(config)
    per_token = L * (4 * d * d + 2 * d * ff)
    per_sequence = 0
    if task == "qa":
        per_token += 2 * d
    elif task in ("mlm", "pretraining"):
        per_token += d * d + d * vocab  # transform dense, then the tied vocabulary projection
        if task == "pretraining":
            per_sequence = d * d + 2 * d  # pooler, next-sentence head
    elif task == "clm":
        per_token += d * vocab
    elif task == "classification":
        pooled = 0 if config.model_type == "gpt2" else d * d  # BERT's pooler / RoBERTa's dense
        per_sequence = pooled + d * config.num_labels
    return per_token, per_sequence


def train_flops(config: ModelConfig, task: str | None, seq_len: int) -> float:
    """Training FLOPs (forward + backward) of one sequence of `seq_len` tokens."""
    L, d, _, _ = _dims(config)
    per_token, per_sequence = matmul_params(config, task)
    return 6.0 * per_token * seq_len + 6.0 * per_sequence + 12.0 * L * seq_len**2 * d


# ----------------------------------------------------------------------------- memory

def _current_rss() -> int:
    """Resident set size now, in bytes (Linux /proc; 0 elsewhere)."""
    return resident_bytes("VmRSS") or 0


def _max_rss() -> int:
    """Peak resident set size of this process in bytes: /proc's VmHWM, which clear_refs resets and
    an exec starts afresh, else getrusage (kB on Linux, bytes on macOS). getrusage is not used on
    Linux: after hone's allocator relaunch (an exec) it also counts the process before it."""
    peak = resident_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak memory of one stretch of work (a benchmark system's load + train steps).

    CUDA: torch.cuda.max_memory_allocated after resetting the peak (tensors only, not
    the allocator's cache). CPU: the peak RSS (VmHWM) minus the RSS at
    start, after freeing what earlier work left (gc, glibc malloc_trim) and resetting the
    kernel's high-water mark through /proc/self/clear_refs. Where that reset is not
    possible (not Linux) the figure is a lower bound: growth above the earlier peak.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.exact = True
        self._start = 0

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "cuda max_memory_allocated"
        return "cpu peak RSS minus RSS at start" + ("" if self.exact else " (lower bound: peak not resettable)")

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = 0
            return
        release_free_host_memory()  # hand freed heap pages back to the OS
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
            self._start = _current_rss()
        except OSError:
            self.exact = False
            self._start = _max_rss()

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(0, _max_rss() - self._start)
