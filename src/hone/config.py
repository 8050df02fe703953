"""Training arguments, named and defaulted as transformers' TrainingArguments, and their parser.

Users arrive with command lines written for `run_qa.py`/`run_glue.py`; keeping the
names and meanings identical means those lines run with only IPU flags changed. The
IPU flags themselves are accepted with a one-line notice each (`IPU_FLAGS`), so a seed
command line runs unchanged.

`parse_args` builds one argparse parser from any number of dataclasses (like
transformers' HfArgumentParser), merges a `--config` YAML/JSON file under the command line
(the command line wins) and validates the result; every mistake exits with status 2 and a
one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hone.errors import HoneError
from hone.hardware import (
    HardwareError,
    HardwareProfile,
    convert_value,
    ipu_overrides_to_hardware,
    parse_overrides,
    resolve_profile,
)

log = logging.getLogger("hone")

@dataclass
class TrainingArguments:
    output_dir: str = field(default="outputs", metadata={"help": "Where checkpoints, results and the model card go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Reuse a non-empty output_dir."})
    do_train: bool = field(default=False, metadata={"help": "Run training."})
    do_eval: bool = field(default=False, metadata={"help": "Run evaluation on the validation set."})
    do_predict: bool = field(default=False, metadata={"help": "Run prediction on the test set."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs to train (fractions allowed)."})
    max_steps: int = field(default=-1, metadata={"help": "If > 0, total optimizer steps (overrides epochs)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Micro batch per device for training."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Batch per device for evaluation."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro batches per optimizer step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "Decoupled weight decay (not on biases/LayerNorm)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam/LAMB beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam/LAMB beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam/LAMB epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip gradients to this global norm (0 disables)."})
    lr_scheduler_type: str = field(
        default="linear",
        metadata={"help": "linear, cosine, polynomial, constant or constant_with_warmup.",
                  "choices": ["linear", "cosine", "polynomial", "constant", "constant_with_warmup"]},
    )
    lr_end: float = field(default=1e-7, metadata={"help": "Final learning rate of the polynomial schedule."})
    lr_power: float = field(default=1.0, metadata={"help": "Power of the polynomial schedule."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Warmup as a fraction of total steps."})
    warmup_steps: int = field(default=0, metadata={"help": "Warmup steps (overrides warmup_ratio when > 0)."})
    optim: str = field(default="adamw", metadata={"help": "adamw or lamb.", "choices": ["adamw", "lamb"]})
    lamb: bool = field(default=False, metadata={"help": "Use LAMB (same as --optim lamb)."})
    lamb_no_bias_correction: bool = field(default=False, metadata={"help": "LAMB without Adam bias correction."})
    layerwise_lr_decay: float = field(default=1.0, metadata={"help": "ELECTRA layer-wise LR decay factor (1.0 = off)."})
    seed: int = field(default=42, metadata={"help": "Random seed for weights init, shuffling and dropout."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N optimizer steps (<= 0: only at the end)."})
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep at most N checkpoints."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps during training."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Worker processes for data loading."})
    dataloader_drop_last: bool = field(default=False, metadata={"help": "Drop the last incomplete batch."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "Checkpoint folder, or 'latest'."})
    report_to: str = field(default="none", metadata={"help": "none or tensorboard.",
                                                     "choices": ["none", "tensorboard"]})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set (debugging)."})
    hardware: str = field(default="auto", metadata={"help": "Hardware profile: cpu, a100, h100, auto or a YAML file."})
    hardware_overrides: str | None = field(default=None, metadata={"help": "Edit the profile: 'k=v,k=v'."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})

    @property
    def optimizer_name(self) -> str:
        return "lamb" if self.lamb else self.optim


class ConfigError(HoneError, ValueError):
    """A command line or config file that cannot work; the message names the flag/file and the fix."""


# ----------------------------------------------------------------------------- seed IPU flags

# optimum-graphcore flag -> (takes a value, what hone does instead)
IPU_FLAGS: dict[str, tuple[bool, str]] = {
    "ipu_config_name": (True, "use --hardware (cpu, cpu-bf16, a100, h100, auto or a YAML file)"),
    "ipu_config_overrides": (True, "keys with a meaning here become --hardware_overrides"),
    "pod_type": (True, "replicas are the processes torchrun starts (--nproc_per_node)"),
    "n_ipu": (True, "replicas are the processes torchrun starts (--nproc_per_node)"),
    "loss_scaling": (True, "a static loss scale only applies to fp16 profiles"),
    "dataloader_mode": (True, "batches are prefetched by --dataloader_num_workers and the profile's pin_memory"),
    "compile_only": (False, "nothing is compiled ahead of time: profiles with compile=true compile "
                            "during the first steps, and the run goes on"),
    "push_to_hub": (False, "no hub here: the checkpoint and its README.md model card stay in --output_dir"),
    "hub_model_id": (True, "no hub here: the checkpoint and its README.md model card stay in --output_dir"),
    "is_already_preprocessed": (False, "data is read from local files and tokenized features are cached"),
    "executable_cache_dir": (True, "torch.compile keeps its own cache (set TORCHINDUCTOR_CACHE_DIR)"),
}


def _apply_seed_flags(given: dict[str, Any], args: TrainingArguments | None) -> list[str]:
    """One notice per seed flag; ipu_config_overrides / loss_scaling edit args.hardware_overrides in place."""
    notices: list[str] = []
    hardware_items: dict[str, str] = {}
    for name, value in given.items():
        if name == "ipu_config_overrides":
            items, key_notices = ipu_overrides_to_hardware(value)
            hardware_items.update(items)
            notices += key_notices or [f"--ipu_config_overrides '{value}': nothing to translate"]
        elif name != "loss_scaling":
            shown = f" {value}" if IPU_FLAGS[name][0] else ""
            notices.append(f"--{name}{shown}: ignored; {IPU_FLAGS[name][1]}")
    if args is None:
        if "loss_scaling" in given:
            notices.append(f"--loss_scaling {given['loss_scaling']}: ignored; {IPU_FLAGS['loss_scaling'][1]}")
        return notices
    user_items = parse_overrides(args.hardware_overrides)
    if "loss_scaling" in given:
        scale = given["loss_scaling"]
        try:
            positive = float(scale) > 0
        except ValueError:
            positive = False
        if not positive:
            raise ConfigError(f"--loss_scaling must be a positive number, got '{scale}'")
        profile = resolve_profile(args.hardware, _join({**hardware_items, **user_items}), check_device=False)
        if profile.precision == "fp16":
            hardware_items["loss_scaling"] = scale
            notices.append(f"--loss_scaling {scale} -> hardware_overrides loss_scaling={scale} "
                           "(static fp16 loss scale)")
        else:
            notices.append(f"--loss_scaling {scale}: ignored; profile '{profile.name}' trains in "
                           f"{profile.precision}, which needs no loss scaling")
    if hardware_items:
        args.hardware_overrides = _join({**hardware_items, **user_items})  # the user's own edits win
    return notices


def _join(items: dict[str, str]) -> str | None:
    return ",".join(f"{k}={v}" for k, v in items.items()) or None


# ----------------------------------------------------------------------------- validation

def validate_training_args(args: TrainingArguments) -> None:
    """Raise ConfigError for settings that cannot train; names the flag and the allowed range."""
    a = args
    checks = [  # (holds, field, rule)
        (a.per_device_train_batch_size > 0, "per_device_train_batch_size", "> 0"),
        (a.per_device_eval_batch_size > 0, "per_device_eval_batch_size", "> 0"),
        (a.gradient_accumulation_steps > 0, "gradient_accumulation_steps", "> 0"),
        (0.0 <= a.warmup_ratio <= 1.0, "warmup_ratio", "between 0 and 1"),
        (a.warmup_steps >= 0, "warmup_steps", ">= 0"),
        (a.learning_rate > 0, "learning_rate", "> 0"),
        (a.save_total_limit is None or a.save_total_limit >= 1, "save_total_limit", ">= 1"),
        (0.0 < a.layerwise_lr_decay <= 1.0, "layerwise_lr_decay", "in (0, 1] (1.0 = off)"),
        (a.logging_steps > 0, "logging_steps", "> 0"),
        (a.eval_steps is None or a.eval_steps > 0, "eval_steps", "> 0"),
        (a.max_grad_norm >= 0, "max_grad_norm", ">= 0 (0 disables clipping)"),
        (a.dataloader_num_workers >= 0, "dataloader_num_workers", ">= 0"),
    ]
    for holds, name, rule in checks:
        if not holds:
            raise ConfigError(f"--{name} must be {rule}, got {getattr(a, name)}")
    if a.do_train and a.max_steps <= 0 and a.num_train_epochs <= 0:
        raise ConfigError(f"--do_train needs --max_steps > 0 or --num_train_epochs > 0, "
                          f"got {a.max_steps} and {a.num_train_epochs}")

# ----------------------------------------------------------------------------- config files

def load_config_file(path: str | Path, valid_keys: Iterable[str]) -> dict[str, Any]:
    """A flat YAML/JSON mapping of field names to values; unknown keys are errors."""
    import yaml

    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"--config {path}: expected a .yaml, .yml or .json file")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {path}: not valid {path.suffix[1:].upper()}: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of argument names to values, "
                          f"got {type(data).__name__}")
    valid = list(valid_keys)
    for key in data:
        if key not in valid:
            raise ConfigError(f"--config {path}: unknown key '{key}'{_did_you_mean(str(key), valid)}")
    return data


def _did_you_mean(word: str, options: Iterable[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""


# ----------------------------------------------------------------------------- parser

class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, usage="%(prog)s [options]", **kwargs)


def _typed(tp: Any, what: str):
    """An argparse `type=` callable built on convert_value (ArgumentTypeError keeps messages short)."""
    def convert(text: str) -> Any:
        try:
            return convert_value(text, tp)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = what
    return convert


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field, tp: Any) -> list[str]:
    """Add one dataclass field as --name; returns its option strings."""
    base = _strip_optional(tp)
    default = _default(f)
    help_ = f.metadata.get("help", "").replace("%", "%%")
    if default is not dataclasses.MISSING:
        help_ += f" (default: {default})".replace("%", "%%")
    else:
        help_ += " (required)"
    options = [f"--{f.name}"]
    kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
    if base is bool:
        kwargs.update(type=_typed(tp, "bool"), nargs="?", const=True, metavar="BOOL")
    elif typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        kwargs.update(type=_typed(item, item.__name__), nargs="+", metavar=item.__name__.upper())
    elif base in (int, float, str):
        kwargs.update(type=_typed(tp, base.__name__), metavar=base.__name__.upper())
    else:
        raise TypeError(f"{f.name}: unsupported field type {tp} (use bool, int, float, str, X | None or list[X])")
    if "choices" in f.metadata:
        kwargs["choices"] = f.metadata["choices"]
        kwargs.pop("metavar", None)
    group.add_argument(*options, **kwargs)
    if base is bool and default is True:
        options.append(f"--no_{f.name}")
        group.add_argument(options[-1], dest=f.name, action="store_false", default=argparse.SUPPRESS,
                           help=f"Set {f.name} to false.")
    return options


def _build_parser(dataclass_types: tuple[type, ...], prog: str, description: str):
    """Parser, {dest: (type, default, choices)} for fields and seed flags, and all option strings."""
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON mapping of argument names to values; "
                        "flags on the command line win over the file.")
    specs: dict[str, tuple[Any, Any, list | None]] = {}
    option_strings = ["--config", "--help"]
    for dtype in dataclass_types:
        if not dataclasses.is_dataclass(dtype):
            raise TypeError(f"parse_args takes dataclass types, got {dtype!r}")
        group = parser.add_argument_group(dtype.__name__)
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if not f.init:
                continue
            if f.name in specs or f.name == "config":
                raise TypeError(f"argument '{f.name}' of {dtype.__name__} is defined twice")
            option_strings += _add_field(group, f, hints[f.name])
            specs[f.name] = (hints[f.name], _default(f), f.metadata.get("choices"))
    group = parser.add_argument_group("seed IPU flags", "Accepted so that optimum-graphcore command lines run\n"
                                      "unchanged; each prints what hone does instead.")
    for name, (takes_value, what) in IPU_FLAGS.items():
        if name in specs:  # a recipe's own field wins
            continue
        if takes_value:
            group.add_argument(f"--{name}", dest=name, metavar="VALUE", default=argparse.SUPPRESS, help=what)
        else:
            group.add_argument(f"--{name}", dest=name, nargs="?", const=True, type=_typed(bool, "bool"),
                               metavar="BOOL", default=argparse.SUPPRESS, help=what)
        specs[name] = (str if takes_value else bool, None, None)
        option_strings.append(f"--{name}")
    return parser, specs, option_strings


def _unknown_error(leftovers: list[str], option_strings: list[str]) -> str:
    flags = [a for a in leftovers if a.startswith("-") and not _is_number(a)]
    if not flags:
        return f"unrecognized arguments: {' '.join(leftovers)}"
    parts = []
    for a in flags:
        flag = a.split("=", 1)[0]
        parts.append(f"unrecognized argument {flag}{_did_you_mean(flag, option_strings)}")
    return "; ".join(parts) + " (see --help)"


def _underscored(argv: list[str], option_strings: list[str]) -> list[str]:
    """--per-device-train-batch-size -> --per_device_train_batch_size, as HfArgumentParser accepts both."""
    known = set(option_strings)
    out = []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        if arg.startswith("--") and "-" in flag[2:] and "--" + flag[2:].replace("-", "_") in known:
            arg = "--" + flag[2:].replace("-", "_") + sep + value
        out.append(arg)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_args(argv: list[str] | None, *dataclass_types: type, prog: str, description: str = "") -> tuple:
    """One instance per dataclass type, from the command line merged over an optional --config file.

    Exits with status 2 and a one-line message on any error (unknown flag, bad value, bad file).
    """
    parser, specs, option_strings = _build_parser(dataclass_types, prog, description)
    argv = _underscored(list(sys.argv[1:] if argv is None else argv), option_strings)
    try:
        values = {name: default for name, (_, default, _) in specs.items()}
        pre = _Parser(prog=prog, add_help=False)
        pre.add_argument("--config")
        config_path = pre.parse_known_args(argv)[0].config
        if config_path:
            file_values = load_config_file(config_path, specs)
            for key, raw in file_values.items():
                tp, _, choices = specs[key]
                try:
                    value = convert_value(raw, tp)
                except ValueError as e:
                    raise ConfigError(f"--config {config_path}: key '{key}': {e}") from None
                if choices and value not in choices:
                    raise ConfigError(f"--config {config_path}: key '{key}': '{value}' is not one of "
                                      f"{', '.join(map(str, choices))}")
                values[key] = value
        namespace, leftovers = parser.parse_known_args(argv)
        if leftovers:
            parser.error(_unknown_error(leftovers, option_strings))
        given = vars(namespace)
        given.pop("config", None)
        values.update(given)
        missing = [f"--{k}" for k, v in values.items() if v is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"the following arguments are required: {', '.join(missing)}")
        try:  # a recipe's __post_init__ may validate too
            instances = tuple(dtype(**{f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init})
                              for dtype in dataclass_types)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        training = next((x for x in instances if isinstance(x, TrainingArguments)), None)
        fields_ = {f.name for dtype in dataclass_types for f in dataclasses.fields(dtype)}
        seed_flags = {name: values[name] for name in IPU_FLAGS
                      if name not in fields_ and values.get(name) not in (None, False)}
        for notice in _apply_seed_flags(seed_flags, training):
            log.warning("notice: %s", notice)
        if training is not None:
            validate_training_args(training)
            resolve_profile(training.hardware, training.hardware_overrides)  # fail now, not after loading data
    except (ConfigError, HardwareError) as e:
        parser.error(str(e))
    return instances


# ----------------------------------------------------------------------------- effective config

def effective_batch_sizes(args: TrainingArguments, profile: HardwareProfile, world_size: int) -> tuple[int, int, int]:
    """(micro batch per device, accumulation steps, total train batch); the profile's values win."""
    micro = profile.micro_batch_size or args.per_device_train_batch_size
    accumulation = profile.gradient_accumulation_steps or args.gradient_accumulation_steps
    return micro, accumulation, micro * accumulation * world_size


def _describe_profile(profile: HardwareProfile) -> str:
    precision = profile.precision
    if precision == "fp16":
        precision += f" (loss scaling {profile.loss_scaling})"
    switches = [label for label, on in (
        ("tf32", profile.tf32 and profile.device == "cuda"), ("torch.compile", profile.compile),
        ("unpadded", profile.unpad), ("activation checkpointing", profile.activation_checkpointing),
        ("fused optimizer", profile.fused_optimizer), ("pinned memory", profile.pin_memory)) if on]
    return ", ".join([f"{profile.name}: {profile.device}", precision, f"attention {profile.attention}", *switches])


def format_effective_config(args: TrainingArguments, profile: HardwareProfile, world_size: int) -> str:
    """The configuration a run really uses, as a block like the metric blocks."""
    micro, accumulation, total = effective_batch_sizes(args, profile, world_size)
    optimizer = (f"{args.optimizer_name} (lr {args.learning_rate}, weight decay {args.weight_decay}, "
                 f"betas ({args.adam_beta1}, {args.adam_beta2}), eps {args.adam_epsilon}, "
                 f"max grad norm {args.max_grad_norm})")
    if args.optimizer_name == "lamb" and args.lamb_no_bias_correction:
        optimizer += ", no bias correction"
    warmup = f"{args.warmup_steps} steps" if args.warmup_steps > 0 else f"ratio {args.warmup_ratio}"
    rows = [
        ("hardware", _describe_profile(profile)),
        ("replicas (world size)", world_size),
        ("micro batch per device", micro),
        ("gradient accumulation steps", accumulation),
        ("total train batch size",
         f"{total} (micro batch {micro} x accumulation {accumulation} x replicas {world_size})"),
        ("eval batch per device", args.per_device_eval_batch_size),
        ("optimizer", optimizer),
        ("lr schedule", f"{args.lr_scheduler_type}, warmup {warmup}"),
        ("training length", f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs} epochs"),
    ]
    if args.layerwise_lr_decay != 1.0:
        rows.append(("layerwise lr decay", args.layerwise_lr_decay))
    rows += [("seed", args.seed), ("output_dir", args.output_dir)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["***** effective configuration *****", *(f"  {k:<{width}} = {v}" for k, v in rows)])
