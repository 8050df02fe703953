"""The CPU half of the prepared GPU check (benchmarks/gpu_check.py).

- The parity section passes on this CPU for every kernel that runs here (flash: skipped,
  needs CUDA), and fails when a kernel is broken: sdpa's CPU path made to ignore its key
  mask (padding keys attended) must be caught, while the math kernel, untouched, still passes.
- MFU and targets against a hand calculation: FLOP/s over the device's bf16 (or TF32) peak.
- The whole CPU half, run as the device machine would run it (a subprocess, src/ on the path),
  writes one JSON report with every section passed and the schema the GPU run will have.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hone.models import padding

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(gpu_check)

CPU_KERNELS = ("auto", "sdpa", "math")
CASES_PER_KERNEL = len(gpu_check.HEADS) * 2 * 2  # heads x (fp32, bf16) x (no bucket, bucket)


def cpu_check(tmp_path: Path) -> gpu_check.Check:
    return gpu_check.Check("cpu", tmp_path / "report.json", time.monotonic() + 120, tmp_path)


def test_parity_passes_on_every_cpu_kernel(tmp_path):
    result = gpu_check.parity_section(cpu_check(tmp_path), time.monotonic() + 120)
    assert result["status"] == "passed", result["failures"]
    assert result["kernels"] == {"auto": "ran", "flash": "skipped: needs CUDA", "sdpa": "ran", "math": "ran"}
    assert result["comparisons"] == len(CPU_KERNELS) * CASES_PER_KERNEL
    assert {(c["kernel"], c["kernel_run"]) for c in result["cases"]} == {
        ("auto", "sdpa"), ("sdpa", "sdpa"), ("math", "math")}
    assert all(v <= gpu_check.FP32_TOL for v in result["worst_errors"]["fp32"].values())
    assert {(c["model"], c["head"]) for c in result["cases"]} == set(gpu_check.HEADS)


def test_parity_catches_a_kernel_that_attends_to_padding(tmp_path, monkeypatch):
    exact = padding.dense_attention
    monkeypatch.setattr(padding, "dense_attention",
                        lambda q, k, v, key_mask, **kw: exact(q, k, v, None, **kw))  # padding keys seen
    result = gpu_check.parity_section(cpu_check(tmp_path), time.monotonic() + 120)
    assert result["status"] == "failed"
    broken = {c["kernel"] for c in result["cases"] if not c["passed"]}
    assert broken == {"auto", "sdpa"}  # the CPU sdpa path; math runs sdpa's math backend
    fp32 = [c for c in result["cases"] if c["dtype"] == "fp32" and not c["passed"]]
    assert fp32 and min(max(c["errors"].values()) for c in fp32) > 100 * gpu_check.FP32_TOL


def test_mfu_and_targets_by_hand():
    assert gpu_check.device_peak_flops("NVIDIA H200", "bf16") == ("H200", 989e12)
    assert gpu_check.device_peak_flops("NVIDIA H100 80GB HBM3", "fp32") == ("H100 SXM tf32", 494.5e12)
    assert gpu_check.device_peak_flops("Tesla T4", "bf16") is None
    assert gpu_check.device_peak_flops(None, "bf16") is None
    system = dict(mode="unpadded", compiled=True, samples_per_second=3100.0, real_tokens_per_second=5.5e5,
                  step_time_mean_s=0.02, step_time_std_s=0.001, warmup_time_s=40.0, model_flops_per_second=494.5e12,
                  useful_flops_per_second=247.25e12, peak_memory_bytes=1, loss_first=6.0, loss_last=5.9)
    report = {"systems": {"hone": system, "transformers": {**system, "samples_per_second": 1400.0}},
              "settings": {"attention_kernel": "flash", "autocast_dtype": "bfloat16"}, "data": {},
              "hone_vs_transformers": {"samples_per_second_ratio": 3100 / 1400}}
    bench = gpu_check.GPU_BENCHES["bench_qa"]
    numbers = gpu_check.bench_numbers(report, bench, ("H200", 989e12))
    assert numbers["systems"]["hone"]["mfu"] == pytest.approx(0.5)
    assert numbers["systems"]["hone"]["useful_mfu"] == pytest.approx(0.25)
    assert numbers["targets"]["samples_per_second"] == {"target": 3000, "measured": 3100.0, "met": True}
    assert numbers["targets"]["ratio"]["met"] is False  # 2.21x < 2.5x
    on_cpu = gpu_check.bench_numbers(report, bench, None)
    assert on_cpu["systems"]["hone"]["mfu"] is None and on_cpu["targets"]["ratio"]["met"] is None


def test_sections_record_errors_timeouts_and_lack_of_time(tmp_path, monkeypatch):
    check = cpu_check(tmp_path)
    check.report = {"sections": {}}

    def broken(check, deadline):
        raise RuntimeError("no kernel image")

    def sleeper(check, deadline):
        return gpu_check.child_failure(gpu_check.run_child([sys.executable, "-c", "import time; time.sleep(60)"],
                                                           deadline, tmp_path))

    gpu_check.run_section(check, "parity", 60, broken)
    gpu_check.run_section(check, "bench_qa", 1.0, sleeper)  # below MIN_SECTION_S: not started
    monkeypatch.setattr(gpu_check, "MIN_SECTION_S", 0.5)
    gpu_check.run_section(check, "bench_clm", 1.0, sleeper)  # started, stopped at its deadline
    written = json.loads(check.path.read_text())["sections"]
    assert written["parity"]["status"] == "error" and "RuntimeError: no kernel image" in written["parity"]["error"]
    assert written["bench_qa"]["status"] == "skipped" and "out of time" in written["bench_qa"]["reason"]
    assert written["bench_clm"]["status"] == "timeout" and written["bench_clm"]["seconds"] < 20


@pytest.mark.slow
def test_cpu_half_writes_one_report_with_every_section_passed(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob("gpu-check-cpu-*.json")
    report = json.loads(path.read_text())
    assert report["passed"] is True and report["device"] == "cpu" and report["device_name"] is None
    assert {"machine", "versions", "git_commit", "date", "command", "wall_time_s"} <= report.keys()
    assert report["versions"]["torch"] and report["machine"]["gpu_count"] == 0
    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    for name, record in sections.items():
        assert record["status"] == "passed", (name, record)
        assert 0 <= record["seconds"] <= record["budget_s"]
    assert sections["parity"]["comparisons"] == len(CPU_KERNELS) * CASES_PER_KERNEL
    assert sections["parity"]["kernels"]["flash"] == "skipped: needs CUDA"

    run = sections["torchrun_qa"]
    assert run["world_size"] == 1 and run["hardware"]["device"] == "cpu"
    assert math.isfinite(run["train_loss"]) and 0 <= run["eval_f1"] <= 100

    for name, task in (("bench_qa", "qa"), ("bench_clm", "clm"), ("bench_mlm", "mlm")):
        record = sections[name]
        assert record["report"]["benchmark"] == "hone bench train" and record["report"]["settings"]["task"] == task
        hone = record["systems"]["hone"]
        assert hone["samples_per_second"] > 0 and hone["mfu"] is None  # no peak known for a CPU
        assert record["peak"] is None and all(t["met"] is None for t in record["targets"].values())
    if importlib.util.find_spec("transformers"):
        assert sections["bench_qa"]["ratio"] > 0
    assert sections["bench_clm"]["data"]["baseline_padding_share"] == 0.0  # full blocks
    assert "overall: passed" in proc.stdout
