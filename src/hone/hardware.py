"""Hardware profiles: what the seeds' IPUConfig was, for GPUs and CPUs.

A profile says how to run (device, precision, kernels, memory savers), never what to
train. It comes from a built-in name (`PROFILES`), "auto" (detected), or a user YAML
file (`base: h100` plus any fields), and is then edited by `--hardware_overrides
"k=v,k=v"`. The seeds' IPUConfig fields that still mean something here are translated in
one place, `ipu_overrides_to_hardware`.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import types
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hone.errors import HoneError

log = logging.getLogger("hone")


@dataclass
class HardwareProfile:
    name: str = "cpu"
    device: str = "cpu"                       # cpu | cuda
    precision: str = "fp32"                   # fp32 | bf16 | fp16
    loss_scaling: str = "dynamic"             # fp16 only: "dynamic" or a number (static scale)
    tf32: bool = False
    compile: bool = False                     # torch.compile the model
    attention: str = "auto"                   # auto | flash | sdpa | math (hone.models.padding.KERNELS)
    unpad: bool = False                       # drop padding tokens before the layers
    pack: bool = False                        # training batches pack several sequences per row (implies unpad)
    activation_checkpointing: bool = False    # recompute every layer in backward
    fused_optimizer: bool = False             # torch's fused AdamW / our fused LAMB
    replicas: int = 1                         # data-parallel replicas (torchrun world size)
    micro_batch_size: int | None = None       # default per_device_train_batch_size
    gradient_accumulation_steps: int | None = None  # default accumulation
    pin_memory: bool = False
    cpu_threads: int | None = None            # torch intra-op threads (default: torch's, one per core)
    bound_host_memory: bool = False           # CPU: cap oneDNN's cache, fix glibc's mmap threshold; slower (host_memory)
    bucket_tokens: int | None = None          # unpadded: pad token streams to a multiple (0 off; None: seq/2 if compiled)
    host_allocator: str = "system"            # CPU: system | mimalloc (preloaded; bounded memory, see host_memory)
    host_allocator_purge_ms: int = 5000       # mimalloc: ms before unused pages go back to the OS (-1: never)

    @property
    def execution_mode(self) -> str:
        """How batches run: "packed" (training rows hold several sequences), "unpadded" (padding
        dropped before the layers) or "padded" (transformers' layout, also what export uses)."""
        return "packed" if self.pack else "unpadded" if self.unpad else "padded"

    def token_bucket(self, max_seq_len: int | None) -> int | None:
        """The multiple that unpadded batches pad their token stream to (data.collate), or None.
        Few stream lengths mean few shapes: torch.compile and CUDA graphs build few graphs, and
        the host allocator and oneDNN's kernel cache reuse what the last batch of that length
        left. Unset, half of max_seq_len when the model is compiled, else off."""
        if self.execution_mode == "padded" or max_seq_len is None or self.bucket_tokens == 0:
            return None
        if self.bucket_tokens is None:
            return max_seq_len // 2 if self.compile else None
        if not 1 <= self.bucket_tokens <= max_seq_len:
            raise HardwareError(f"hardware field 'bucket_tokens' must be between 1 and max_seq_length "
                                f"({max_seq_len}), got {self.bucket_tokens}; 0 turns bucketing off")
        return self.bucket_tokens

    @property
    def allocator(self) -> str:
        """The host allocator runs use: host_allocator on a CPU; GPU runs keep the system's
        (host memory is not what limits them)."""
        return self.host_allocator if self.device == "cpu" else "system"

    @property
    def static_loss_scale(self) -> float | None:
        """The fixed fp16 loss scale, or None for dynamic scaling (and for bf16/fp32)."""
        if self.precision != "fp16" or self.loss_scaling == "dynamic":
            return None
        return float(self.loss_scaling)


class HardwareError(HoneError, ValueError):
    """A hardware profile that cannot be built or used; the message names the source and the fix."""


DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
ATTENTIONS = ("auto", "flash", "sdpa", "math")  # hone.models.padding.KERNELS (kept free of torch here)
HOST_ALLOCATORS = ("system", "mimalloc")  # hone.engine.host_memory.relaunch_with_allocator

_GPU = dict(device="cuda", precision="bf16", tf32=True, compile=True, attention="flash", unpad=True,
            fused_optimizer=True, pin_memory=True)
PROFILES: dict[str, HardwareProfile] = {
    # fused AdamW: one kernel per parameter for the whole update (torch has it on CPUs too);
    # mimalloc: an epoch's resident memory stays bounded (engine/host_memory.py). In fp32 it
    # never hands pages back: purging cost 2-3x glibc's system CPU time and 0.96x its speed;
    # kept pages ran at 1.008x glibc (3 pairs) with a fp32 epoch's peak under the bound (2.13 GiB;
    # benchmarks/results/host-memory-ab-cpu-*-avx2-2026-12-02.json, qa-epoch-memory-*-nopurge-*)
    "cpu": HardwareProfile(name="cpu", unpad=True, fused_optimizer=True, host_allocator="mimalloc",
                           host_allocator_purge_ms=-1),
    # bf16 autocast: ~2.4x on matmuls where the CPU has avx512_bf16 / AMX (see reference.md);
    # mimalloc purging after 5 s: 1.03x glibc's speed, and a bf16 epoch's peak (2.32 GiB) has no
    # room for pages kept
    "cpu-bf16": HardwareProfile(name="cpu-bf16", precision="bf16", unpad=True, fused_optimizer=True,
                                host_allocator="mimalloc"),
    "a100": HardwareProfile(name="a100", **_GPU),
    "h100": HardwareProfile(name="h100", **_GPU),
}
_NAMES = (*PROFILES, "auto")


# ----------------------------------------------------------------------------- typed values

def parse_bool(text: str) -> bool:
    """transformers' truthy strings: yes/no, true/false, t/f, y/n, 1/0 (any case)."""
    low = text.strip().lower()
    if low in ("yes", "true", "t", "y", "1"):
        return True
    if low in ("no", "false", "f", "n", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def convert_value(value: Any, tp: Any) -> Any:
    """`value` (a string from a command line, or a YAML/JSON scalar) as type `tp`.

    Shared by profile overrides, profile files and the config-file loader in config.py.
    Supports bool, int, float, str, `X | None` ("none"/"null" -> None) and list[X].
    Raises ValueError with a short "expected ..." message; callers add where it came from.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        if len(args) != 1:
            raise TypeError(f"unsupported field type {tp}")
        return convert_value(value, args[0])
    if origin is list:
        (item,) = typing.get_args(tp)
        values = value if isinstance(value, (list, tuple)) else [value]
        return [convert_value(v, item) for v in values]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            return parse_bool(value)
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported field type {tp}")


def _suggest(word: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


_FIELD_TYPES = typing.get_type_hints(HardwareProfile)


def _edit(profile: HardwareProfile, values: dict[str, Any], where: str) -> HardwareProfile:
    """`profile` with `values` applied, each converted by its field's type."""
    typed = {}
    for key, raw in values.items():
        if key not in _FIELD_TYPES:
            raise HardwareError(f"{where}: unknown hardware field '{key}'{_suggest(key, _FIELD_TYPES)}. "
                                f"Valid fields: {', '.join(_FIELD_TYPES)}")
        try:
            typed[key] = convert_value(raw, _FIELD_TYPES[key])
        except ValueError as e:
            raise HardwareError(f"{where}: field '{key}': {e}") from None
    return replace(profile, **typed)


def parse_overrides(text: str | None, flag: str = "--hardware_overrides") -> dict[str, str]:
    """'k=v,k=v' -> {k: v} (strings; later keys win). Empty items are skipped."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HardwareError(f"{flag}: '{item.strip()}' is not 'key=value' "
                                f"(example: {flag} \"k=v,k=v\")")
        out[key.strip()] = value.strip()
    return out


# ----------------------------------------------------------------------------- detection

def profile_for_device(device_name: str | None, capability: tuple[int, int] | None = None) -> HardwareProfile:
    """The profile "auto" picks for a CUDA device (None: no CUDA -> cpu)."""
    if device_name is None:
        return replace(PROFILES["cpu"])
    if any(tag in device_name.upper() for tag in ("H100", "H200", "GH200")):
        return replace(PROFILES["h100"])
    profile = replace(PROFILES["a100"])
    if capability is not None and capability < (8, 0):
        # Pre-Ampere: no bf16, no TF32, no flash kernels.
        profile = replace(profile, precision="fp16", loss_scaling="dynamic", tf32=False, attention="sdpa")
    return profile


def cpu_has(*flags: str) -> bool:
    """True when /proc/cpuinfo lists any of `flags` (False where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in text for flag in flags)


def cpu_supports_bf16() -> bool:
    """True when the CPU has bf16 units, avx512_bf16 or AMX (where cpu-bf16 pays off)."""
    return cpu_has("avx512_bf16", "amx_bf16")


def precision_warning(profile: HardwareProfile) -> str | None:
    """Why `profile`'s precision will be slow on this machine, or None: bf16 on a CPU without bf16
    units still computes correctly, but oneDNN then emulates every bf16 matmul, dozens of times
    slower than fp32 (an AVX2-only EPYC measured 1 GFLOP/s against 108 in fp32)."""
    if profile.device == "cpu" and profile.precision == "bf16" and not cpu_supports_bf16():
        return (f"hardware profile '{profile.name}' computes in bf16, but this CPU has no bf16 units "
                "(no avx512_bf16 or amx_bf16 in /proc/cpuinfo): bf16 matmuls are emulated, dozens of times "
                "slower than fp32. Use --hardware cpu (fp32) on this machine.")
    return None


@functools.cache
def _report_once(message: str) -> None:
    log.info(message)


def detect_profile() -> HardwareProfile:
    """The "auto" profile for this machine (what it picked is reported once per process)."""
    import torch

    if not torch.cuda.is_available():
        if cpu_supports_bf16():
            _report_once("hardware auto: no CUDA GPU -> cpu profile (this CPU has bf16 units: "
                         "--hardware cpu-bf16 is ~2x faster on matmuls)")
        return profile_for_device(None)
    name = torch.cuda.get_device_name(0)
    profile = profile_for_device(name, torch.cuda.get_device_capability(0))
    _report_once(f"hardware auto: {name} -> {profile.name} profile ({profile.precision})")
    return profile


# ----------------------------------------------------------------------------- validation

def validate_profile(profile: HardwareProfile, *, check_device: bool = True) -> HardwareProfile:
    """Raise HardwareError for values that cannot work; with check_device, for a missing GPU too."""
    where = f"hardware profile '{profile.name}'"
    for key, allowed in (("device", DEVICES), ("precision", PRECISIONS), ("attention", ATTENTIONS),
                         ("host_allocator", HOST_ALLOCATORS)):
        value = getattr(profile, key)
        if value not in allowed:
            raise HardwareError(f"{where}: {key} must be one of {', '.join(allowed)}, "
                                f"got '{value}'{_suggest(value, allowed)}")
    if profile.loss_scaling != "dynamic":
        try:
            ok = float(profile.loss_scaling) > 0
        except ValueError:
            ok = False
        if not ok:
            raise HardwareError(f"{where}: loss_scaling must be 'dynamic' or a positive number, "
                                f"got '{profile.loss_scaling}'")
    for key in ("replicas", "micro_batch_size", "gradient_accumulation_steps", "cpu_threads"):
        value = getattr(profile, key)
        if value is not None and value < 1:
            raise HardwareError(f"{where}: {key} must be >= 1, got {value}")
    if profile.host_allocator_purge_ms < -1:
        raise HardwareError(f"{where}: host_allocator_purge_ms must be >= 0 (milliseconds) or -1 (never), "
                            f"got {profile.host_allocator_purge_ms}")
    if check_device and profile.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise HardwareError(f"{where} needs a CUDA GPU, but torch {torch.__version__} sees none "
                                "(torch.cuda.is_available() is False). Use --hardware cpu "
                                "(or cpu-bf16, or auto).")
        if profile.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise HardwareError(f"{where}: {torch.cuda.get_device_name(0)} has no bf16 support; "
                                "use --hardware_overrides precision=fp16 (or --hardware auto).")
    return profile


def effective_attention(profile: HardwareProfile) -> str:
    """The attention kernel that runs under `profile` and what it does, e.g. "flash (torch varlen
    flash kernel ...)": `attention` resolved for the device and precision (flash needs a CUDA
    GPU and fp16/bf16; elsewhere sdpa runs). For reports and the run's effective configuration."""
    import torch

    from hone.engine.precision import autocast_dtype
    from hone.models.padding import attention_kernel, describe_kernel

    dtype = autocast_dtype(profile) or torch.float32
    return describe_kernel(attention_kernel(profile.attention, profile.device, dtype), profile.device)


# ----------------------------------------------------------------------------- resolution

def load_profile_file(path: str | Path) -> HardwareProfile:
    """A user YAML profile: optional `base: <builtin or auto>` plus any HardwareProfile fields."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise HardwareError(f"hardware profile file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise HardwareError(f"hardware profile file {path} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HardwareError(f"hardware profile file {path} must be a mapping of field: value, "
                            f"got {type(data).__name__}")
    base = str(data.pop("base", "cpu"))
    if base not in _NAMES:
        raise HardwareError(f"{path}: base '{base}' is not a built-in profile{_suggest(base, _NAMES)}; "
                            f"choose one of {', '.join(_NAMES)}")
    profile = detect_profile() if base == "auto" else replace(PROFILES[base])
    data.setdefault("name", path.stem)
    return _edit(profile, data, where=str(path))


def resolve_profile(name_or_path: str = "auto", overrides: str | None = None, *,
                    check_device: bool = True) -> HardwareProfile:
    """The profile to run with: built-in name, "auto" or YAML file, then `overrides` ("k=v,k=v").

    check_device=False skips the "is the GPU there?" checks (to inspect a GPU profile on a CPU).
    """
    if name_or_path == "auto":
        profile = detect_profile()
    elif name_or_path in PROFILES:
        profile = replace(PROFILES[name_or_path])
    elif name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file():
        profile = load_profile_file(name_or_path)
    else:
        raise HardwareError(f"unknown hardware profile '{name_or_path}'{_suggest(name_or_path, _NAMES)}: "
                            f"use one of {', '.join(_NAMES)} or a YAML file path")
    profile = _edit(profile, parse_overrides(overrides), where="--hardware_overrides")
    return validate_profile(profile, check_device=check_device)


def command_line_allocator(argv: list[str]) -> tuple[str, int] | None:
    """(host allocator, purge delay in ms) of the profile that a run's flags select, read without
    importing torch, or None where the flags alone do not settle it: a --config file, a profile
    file, IPU overrides, --use_cpu/--no_cuda, or "auto" on a machine with an NVIDIA driver (where
    torch decides). `hone` relaunches with that allocator before torch loads, instead of once the
    run has read its settings, which loaded torch twice (relaunch_early in engine.host_memory)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flag in ("--hardware", "--hardware_overrides", "--config", "--ipu_config_overrides"):
        parser.add_argument(flag)
    for flag in ("--use_cpu", "--no_cuda", "-h", "--help"):
        parser.add_argument(flag, nargs="?", const="true")
    try:
        flags = parser.parse_known_args([_underscored(arg) for arg in argv])[0]
    except argparse.ArgumentError:  # a flag without its value: the run's own parser says so
        return None
    if any((flags.config, flags.ipu_config_overrides, flags.use_cpu, flags.no_cuda, flags.h, flags.help)):
        return None
    name = flags.hardware or "auto"
    if name == "auto":
        if nvidia_driver_present():
            return None
        name = "cpu"  # what detect_profile picks where torch can see no CUDA device
    if name not in PROFILES:
        return None
    try:
        profile = resolve_profile(name, flags.hardware_overrides, check_device=False)
    except HardwareError:  # the run reports it, in full
        return None
    return profile.allocator, profile.host_allocator_purge_ms


def nvidia_driver_present() -> bool:
    """True where an NVIDIA driver is loaded (torch may then see a CUDA device), read from /proc
    and /dev without importing torch."""
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidia0").exists()


def _underscored(arg: str) -> str:
    """--hardware-overrides=x -> --hardware_overrides=x (both spellings work, as in the run's parser)."""
    if not arg.startswith("--"):
        return arg
    flag, sep, value = arg.partition("=")
    return "--" + flag[2:].replace("-", "_") + sep + value


# ----------------------------------------------------------------------------- IPUConfig

# IPUConfig field -> (HardwareProfile field or None, what hone does instead)
IPU_CONFIG_FIELDS: dict[str, tuple[str | None, str]] = {
    "replication_factor": ("replicas", "data-parallel replicas (launch with torchrun --nproc_per_node)"),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", "micro batches per optimizer step"),
    "recompute_checkpoint_every_layer": ("activation_checkpointing", "recompute every layer in backward"),
    "enable_half_partials": (None, "matmul accumulation follows the profile's precision (tf32/bf16/fp16)"),
    "layers_per_ipu": (None, "no pipeline stages: each device runs the whole model"),
    "ipus_per_replica": (None, "no pipeline stages: each device runs the whole model"),
    "device_iterations": (None, "batches stream to the device one step at a time"),
    "inference_device_iterations": (None, "batches stream to the device one step at a time"),
    "matmul_proportion": (None, "no on-chip memory split; save memory with activation_checkpointing"),
    "embedding_serialization_factor": (None, "matmuls are not split; save memory with activation_checkpointing"),
    "projection_serialization_factor": (None, "matmuls are not split; save memory with activation_checkpointing"),
    "optimizer_state_offchip": (None, "optimizer state stays in device memory"),
    "replicated_tensor_sharding": (None, "optimizer state is not sharded; each replica holds a copy"),
    "executable_cache_dir": (None, "torch.compile keeps its own cache (TORCHINDUCTOR_CACHE_DIR)"),
}


def ipu_overrides_to_hardware(text: str) -> tuple[dict[str, str], list[str]]:
    """Seed `--ipu_config_overrides "k=v,..."` -> (hardware overrides {field: value}, one notice per key)."""
    items: dict[str, str] = {}
    notices: list[str] = []
    for key, value in parse_overrides(text, flag="--ipu_config_overrides").items():
        default = "evaluation runs with the training profile" if key.startswith("inference_") \
            else "has no counterpart on GPUs/CPUs"
        target, what = IPU_CONFIG_FIELDS.get(key, (None, default))
        if target is None:
            notices.append(f"--ipu_config_overrides {key}={value}: ignored; {what}")
        else:
            items[target] = value
            notices.append(f"--ipu_config_overrides {key}={value} -> hardware_overrides {target}={value} ({what})")
    return items, notices
