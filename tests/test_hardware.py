"""Hardware profiles: built-ins, auto-detection, user YAML files, overrides and their errors."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from hone import hardware
from hone.hardware import (
    PROFILES,
    HardwareError,
    HardwareProfile,
    detect_profile,
    ipu_overrides_to_hardware,
    profile_for_device,
    resolve_profile,
)

GPU = dict(device="cuda", precision="bf16", tf32=True, compile=True, attention="flash", unpad=True,
           fused_optimizer=True, pin_memory=True)
EXPECTED = {
    "cpu": dict(device="cpu", precision="fp32", compile=False, attention="auto", unpad=True, fused_optimizer=True,
                host_allocator="mimalloc", host_allocator_purge_ms=-1),
    "cpu-bf16": dict(device="cpu", precision="bf16", compile=False, attention="auto", unpad=True, fused_optimizer=True,
                     host_allocator="mimalloc", host_allocator_purge_ms=5000),
    "a100": GPU,
    "h100": GPU,
}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builtin_profiles(name):
    profile = resolve_profile(name, check_device=False)
    assert profile.name == name
    for key, value in EXPECTED[name].items():
        assert getattr(profile, key) == value, key
    assert profile.replicas == 1 and profile.micro_batch_size is None and profile.gradient_accumulation_steps is None


def test_resolve_returns_a_copy():
    profile = resolve_profile("cpu")
    profile.compile = True
    assert PROFILES["cpu"].compile is False


@no_cuda
def test_auto_on_this_cpu_machine_is_cpu():
    assert asdict(resolve_profile("auto")) == asdict(PROFILES["cpu"])


@no_cuda
def test_gpu_profile_without_gpu_says_use_cpu():
    with pytest.raises(HardwareError, match=r"needs a CUDA GPU.*--hardware cpu"):
        resolve_profile("h100")


@pytest.mark.parametrize("device_name, capability, expected", [
    ("NVIDIA H100 80GB HBM3", (9, 0), dict(name="h100", precision="bf16", attention="flash", tf32=True)),
    ("NVIDIA H200", (9, 0), dict(name="h100", precision="bf16")),
    ("NVIDIA GH200 480GB", (9, 0), dict(name="h100", precision="bf16")),
    ("NVIDIA A100-SXM4-40GB", (8, 0), dict(name="a100", precision="bf16", tf32=True, attention="flash")),
    ("NVIDIA L4", (8, 9), dict(name="a100", precision="bf16")),
    ("Tesla V100-SXM2-16GB", (7, 0), dict(name="a100", precision="fp16", loss_scaling="dynamic", tf32=False,
                                          attention="sdpa")),
    ("Tesla T4", (7, 5), dict(precision="fp16", loss_scaling="dynamic")),
    (None, None, dict(name="cpu", device="cpu", precision="fp32")),
])
def test_profile_for_device(device_name, capability, expected):
    profile = profile_for_device(device_name, capability)
    for key, value in expected.items():
        assert getattr(profile, key) == value, key


def test_detect_profile_reads_the_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    assert asdict(detect_profile()) == asdict(PROFILES["h100"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 0))
    assert detect_profile().precision == "fp16"


def test_yaml_file_with_base(tmp_path):
    path = tmp_path / "my-gpu.yaml"
    path.write_text("base: h100\ncompile: false\nmicro_batch_size: 16\nloss_scaling: 1024\n")
    profile = resolve_profile(str(path), check_device=False)
    assert profile.name == "my-gpu"
    assert profile.compile is False and profile.micro_batch_size == 16 and profile.loss_scaling == "1024"
    assert profile.precision == "bf16" and profile.attention == "flash"  # from the base


def test_yaml_file_without_base_starts_from_cpu(tmp_path):
    path = tmp_path / "p.yml"
    path.write_text("name: mine\nprecision: bf16\n")
    profile = resolve_profile(str(path))
    assert (profile.name, profile.device, profile.precision) == ("mine", "cpu", "bf16")


@pytest.mark.parametrize("text, match", [
    ("base: h100\ncompiled: true\n", r"p\.yaml: unknown hardware field 'compiled' \(did you mean 'compile'\?\)"
                                     r".*Valid fields: name, device"),
    ("base: h200\n", r"base 'h200' is not a built-in profile.*h100"),
    ("compile: maybe\n", r"p\.yaml: field 'compile': expected true or false"),
    ("micro_batch_size: 1.5\n", r"field 'micro_batch_size': expected an integer"),
    ("- a\n- b\n", r"must be a mapping"),
    ("precision: fp8\n", r"precision must be one of fp32, bf16, fp16"),
])
def test_yaml_file_errors(tmp_path, text, match):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(HardwareError, match=match):
        resolve_profile(str(path), check_device=False)


def test_missing_file_and_unknown_name():
    with pytest.raises(HardwareError, match="does not exist"):
        resolve_profile("nope.yaml")
    with pytest.raises(HardwareError, match=r"unknown hardware profile 'h10'.*did you mean 'h100'"):
        resolve_profile("h10")


def test_overrides_are_typed():
    profile = resolve_profile("cpu", "compile=true, micro_batch_size=8,loss_scaling=1024,attention=math,tf32=0,"
                                     "gradient_accumulation_steps=none,precision=fp16,cpu_threads=3")
    assert profile.compile is True and profile.tf32 is False
    assert profile.micro_batch_size == 8 and profile.gradient_accumulation_steps is None
    assert profile.loss_scaling == "1024" and profile.static_loss_scale == 1024.0
    assert profile.attention == "math" and profile.cpu_threads == 3


def test_later_override_wins():
    assert resolve_profile("cpu", "replicas=2,replicas=3").replicas == 3


@pytest.mark.parametrize("overrides, match", [
    ("compiel=true", r"unknown hardware field 'compiel' \(did you mean 'compile'\?\)"),
    ("replicas=two", r"field 'replicas': expected an integer, got 'two'"),
    ("compile", r"'compile' is not 'key=value'"),
    ("precision=fp8", r"precision must be one of fp32, bf16, fp16, got 'fp8'"),
    ("attention=flashy", r"attention must be one of .*did you mean 'flash'"),
    ("loss_scaling=-3", r"loss_scaling must be 'dynamic' or a positive number"),
    ("loss_scaling=lots", r"loss_scaling must be 'dynamic' or a positive number"),
    ("replicas=0", r"replicas must be >= 1"),
    ("cpu_threads=0", r"cpu_threads must be >= 1"),
    ("host_allocator_purge_ms=-5", r"host_allocator_purge_ms must be >= 0 \(milliseconds\) or -1 \(never\)"),
    ("device=tpu", r"device must be one of cpu, cuda"),
])
def test_override_errors(overrides, match):
    with pytest.raises(HardwareError, match=match):
        resolve_profile("cpu", overrides)


def test_static_loss_scale_only_for_fp16():
    assert HardwareProfile(precision="fp16").static_loss_scale is None  # dynamic
    assert HardwareProfile(precision="fp16", loss_scaling="128").static_loss_scale == 128.0
    assert HardwareProfile(precision="bf16", loss_scaling="128").static_loss_scale is None


def test_ipu_overrides_translation():
    items, notices = ipu_overrides_to_hardware(
        "replication_factor=4,gradient_accumulation_steps=16,recompute_checkpoint_every_layer=true,"
        "enable_half_partials=true,matmul_proportion=0.22,inference_device_iterations=5,layers_per_ipu=0 4 4 4")
    assert items == {"replicas": "4", "gradient_accumulation_steps": "16", "activation_checkpointing": "true"}
    assert len(notices) == 7 and all("\n" not in n for n in notices)
    assert "replication_factor=4 -> hardware_overrides replicas=4" in notices[0]
    assert "enable_half_partials=true: ignored" in notices[3]
    # The translated items are valid overrides.
    profile = resolve_profile("cpu", ",".join(f"{k}={v}" for k, v in items.items()))
    assert (profile.replicas, profile.gradient_accumulation_steps, profile.activation_checkpointing) == (4, 16, True)


def test_token_bucket_defaults_to_half_the_length_when_compiled():
    """bucket_tokens unset: streams are bucketed only where shapes cost a compile; 0 turns it
    off; padded execution has no token stream to bucket."""
    assert HardwareProfile(unpad=True).token_bucket(384) is None
    assert HardwareProfile(unpad=True, compile=True).token_bucket(384) == 192
    assert HardwareProfile(unpad=True, compile=True, bucket_tokens=0).token_bucket(384) is None
    assert HardwareProfile(unpad=True, bucket_tokens=128).token_bucket(384) == 128
    assert HardwareProfile(pack=True, bucket_tokens=64).token_bucket(128) == 64
    assert HardwareProfile(compile=True, bucket_tokens=128).token_bucket(384) is None  # padded
    assert HardwareProfile(unpad=True, compile=True).token_bucket(None) is None
    with pytest.raises(HardwareError, match=r"'bucket_tokens' must be between 1 and max_seq_length \(96\)"):
        HardwareProfile(unpad=True, bucket_tokens=128).token_bucket(96)
    assert resolve_profile("cpu", "bucket_tokens=256").bucket_tokens == 256


def test_host_allocator_choices():
    assert resolve_profile("cpu", "host_allocator=system").host_allocator == "system"
    with pytest.raises(HardwareError, match="host_allocator must be one of system, mimalloc, got 'jemalloc'"):
        resolve_profile("cpu", "host_allocator=jemalloc")


def test_only_cpu_runs_preload_an_allocator():
    assert resolve_profile("cpu-bf16").allocator == resolve_profile("cpu").allocator == "mimalloc"
    assert HardwareProfile(device="cuda", host_allocator="mimalloc").allocator == "system"


@pytest.mark.parametrize("units", [True, False])
def test_precision_warning_names_missing_cpu_bf16_units(monkeypatch, units):
    """cpu-bf16 on a CPU without avx512_bf16/AMX computes right but emulates every matmul: the run
    says so and names the fp32 profile; fp32 profiles and GPUs never get the notice."""
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: units)
    warning = hardware.precision_warning(resolve_profile("cpu-bf16"))
    if units:
        assert warning is None
    else:
        assert "no bf16 units" in warning and "--hardware cpu" in warning and "'cpu-bf16'" in warning
    assert hardware.precision_warning(resolve_profile("cpu")) is None
    assert hardware.precision_warning(resolve_profile("h100", check_device=False)) is None


def test_cpu_has_reads_cpuinfo_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 fma\n")
    real_path = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    assert hardware.cpu_has("avx2") and hardware.cpu_has("avx512_bf16", "avx2")
    assert not hardware.cpu_has("avx512_bf16", "amx_bf16") and not hardware.cpu_supports_bf16()


# ----------------------------------------------------------------------------- allocator from flags

SETTLED = [
    ["--hardware", "cpu"],
    ["--hardware=cpu-bf16", "--bf16"],
    ["--hardware", "cpu", "--hardware-overrides", "host_allocator=system,cpu_threads=1"],
    ["--hardware", "cpu-bf16", "--hardware_overrides=host_allocator_purge_ms=7"],
    ["--hardware", "h100", "--fp16"],
    ["--learning_rate", "1e-4"],  # auto, on a machine without an NVIDIA driver
]


@pytest.mark.parametrize("argv", SETTLED, ids=" ".join)
def test_command_line_allocator_is_the_runs_own(argv, monkeypatch):
    """What `hone` relaunches with before torch loads is what the run's parser and profile pick."""
    from hone.config import TrainingArguments, parse_args

    monkeypatch.setattr(hardware, "nvidia_driver_present", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args, = parse_args([*argv, "--output_dir", "out"], TrainingArguments, prog="hone qa")
    profile = resolve_profile(args.hardware, args.hardware_overrides, check_device=False)
    assert hardware.command_line_allocator(argv) == (profile.allocator, profile.host_allocator_purge_ms)


@pytest.mark.parametrize("argv", [
    ["--hardware", "cpu", "--config", "run.yaml"],  # the file may name another profile
    ["--hardware", "profile.yaml"],
    ["--use_cpu"],
    ["--hardware", "cpu", "--ipu_config_overrides", "x"],
    ["--hardware", "cpu", "--help"],
    ["--hardware"],  # no value: the run's parser reports it
    ["--hardware", "cpx"],
    ["--hardware", "cpu", "--hardware_overrides", "host_allocator=jemalloc"],
], ids=" ".join)
def test_command_line_allocator_leaves_unsettled_lines_to_the_run(argv):
    assert hardware.command_line_allocator(argv) is None


def test_auto_is_left_to_torch_where_an_nvidia_driver_is_loaded(monkeypatch):
    monkeypatch.setattr(hardware, "nvidia_driver_present", lambda: True)
    assert hardware.command_line_allocator([]) is None
    assert hardware.command_line_allocator(["--hardware", "cpu"]) == ("mimalloc", -1)
