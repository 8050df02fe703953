"""Training arguments, named and defaulted as transformers' TrainingArguments, and their parser.

Users arrive with command lines written for `run_qa.py`/`run_glue.py`; keeping the
names and meanings identical means those lines run with only IPU flags changed. The
IPU flags, and transformers flags that mean nothing here, are accepted with a one-line
notice each (`NOTICE_FLAGS`), so a seed command line runs unchanged. Flags about how a run
executes (--fp16, --bf16, --tf32, --gradient_checkpointing, --torch_compile, --use_cpu)
become edits of the hardware profile, which decides execution in one place.

`parse_args` builds one argparse parser from any number of dataclasses (like
transformers' HfArgumentParser), merges a `--config` YAML/JSON file under the command line
(the command line wins) and validates the result; every mistake raises ConfigError, which
the CLI prints as one line, never a traceback.
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
from collections.abc import Iterable, Sequence
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

def arg(default: Any = dataclasses.MISSING, help: str = "", *, choices: Sequence[str] | None = None,
        trains: bool = False, **kwargs: Any) -> Any:
    """A dataclass field that becomes a `--flag`: its help, allowed values, and whether it shapes
    training (`trains`: a checkpoint trained otherwise is refused on resume, unless overridden)."""
    metadata = {"help": help, "trains": trains}
    if choices is not None:
        metadata["choices"] = list(choices)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


STRATEGIES = ("no", "steps", "epoch")
SCHEDULE_NAMES = ("linear", "cosine", "cosine_with_restarts", "cosine_with_min_lr", "polynomial", "constant",
                  "constant_with_warmup", "inverse_sqrt")
# transformers' --optim values -> hone's optimiser (the profile decides fused or foreach)
OPTIMIZER_NAMES = {"adamw": "adamw", "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw",
                   "adamw_apex_fused": "adamw", "lamb": "lamb", "sgd": "sgd", "adafactor": "adafactor"}


@dataclass
class TrainingArguments:
    """transformers' TrainingArguments that hone implements: same names, defaults and meaning."""

    output_dir: str = arg("outputs", "Where checkpoints, results and the model card go.")
    overwrite_output_dir: bool = arg(False, "Start over in a used output_dir: remove what earlier hone runs "
                                            "wrote there (checkpoints included); other files stay.")
    do_train: bool = arg(False, "Run training.")
    do_eval: bool = arg(False, "Run evaluation on the validation set.")
    do_predict: bool = arg(False, "Run prediction on the test set.")
    num_train_epochs: float = arg(3.0, "Epochs to train (fractions allowed).", trains=True)
    max_steps: int = arg(-1, "If > 0, total optimizer steps (overrides epochs).", trains=True)
    per_device_train_batch_size: int = arg(8, "Micro batch per device for training.")
    per_device_eval_batch_size: int = arg(8, "Batch per device for evaluation.")
    gradient_accumulation_steps: int = arg(1, "Micro batches per optimizer step.")
    learning_rate: float = arg(5e-5, "Peak learning rate.", trains=True)
    weight_decay: float = arg(0.0, "Decoupled weight decay (not on biases/LayerNorm).", trains=True)
    adam_beta1: float = arg(0.9, "Adam/LAMB beta1.", trains=True)
    adam_beta2: float = arg(0.999, "Adam/LAMB beta2.", trains=True)
    adam_epsilon: float = arg(1e-8, "Adam/LAMB epsilon.", trains=True)
    max_grad_norm: float = arg(1.0, "Clip gradients to this global norm (0 disables).", trains=True)
    lr_scheduler_type: str = arg("linear", "Learning-rate schedule.", choices=SCHEDULE_NAMES, trains=True)
    lr_scheduler_kwargs: str | None = arg(None, "JSON options of the schedule, e.g. '{\"num_cycles\": 2}' "
                                                "(cosine_with_restarts) or '{\"min_lr_rate\": 0.1}' "
                                                "(cosine_with_min_lr).", trains=True)
    lr_end: float = arg(1e-7, "Final learning rate of the polynomial schedule.", trains=True)
    lr_power: float = arg(1.0, "Power of the polynomial schedule.", trains=True)
    warmup_ratio: float = arg(0.0, "Warmup as a fraction of total steps.", trains=True)
    warmup_steps: int = arg(0, "Warmup steps (overrides warmup_ratio when > 0).", trains=True)
    optim: str = arg("adamw_torch", "Optimizer: adamw_torch (and its aliases), lamb, sgd or adafactor.",
                     choices=OPTIMIZER_NAMES, trains=True)
    lamb: bool = arg(False, "Use LAMB (same as --optim lamb).", trains=True)
    lamb_no_bias_correction: bool = arg(False, "LAMB without Adam bias correction.", trains=True)
    layerwise_lr_decay: float = arg(1.0, "ELECTRA layer-wise LR decay factor (1.0 = off).", trains=True)
    seed: int = arg(42, "Random seed for weights init, shuffling and dropout.", trains=True)
    fp16: bool = arg(False, "Mixed precision in fp16 with loss scaling (sets the profile's precision).")
    bf16: bool = arg(False, "Mixed precision in bf16 (sets the profile's precision).")
    tf32: bool | None = arg(None, "Allow TF32 matmuls on Ampere+ GPUs (sets the profile's tf32).")
    use_cpu: bool = arg(False, "Run on the CPU even where a GPU is present (the cpu profile).")
    no_cuda: bool = arg(False, "Older name of --use_cpu.")
    gradient_checkpointing: bool = arg(False, "Recompute every layer in backward to save memory.")
    torch_compile: bool = arg(False, "torch.compile the model (sets the profile's compile).")
    logging_strategy: str = arg("steps", "When to log training loss.", choices=STRATEGIES)
    logging_steps: int = arg(10, "Log every N optimizer steps.")
    logging_first_step: bool = arg(False, "Also log the first step.")
    eval_strategy: str = arg("no", "When to evaluate during training (steps: every eval_steps).",
                             choices=STRATEGIES)
    eval_steps: int | None = arg(None, "Evaluate every N steps (default: logging_steps).")
    save_strategy: str = arg("steps", "When to save checkpoints.", choices=STRATEGIES)
    save_steps: int = arg(500, "Checkpoint every N optimizer steps (<= 0: only at the end).")
    save_total_limit: int | None = arg(None, "Keep at most N checkpoints (the best one always stays).")
    save_safetensors: bool = arg(True, "Write model.safetensors (false: pytorch_model.bin).")
    load_best_model_at_end: bool = arg(False, "Keep the checkpoint with the best metric_for_best_model as "
                                              "the final model.")
    metric_for_best_model: str | None = arg(None, "Eval metric that picks the best checkpoint, e.g. f1 "
                                                  "(default: loss).")
    greater_is_better: bool | None = arg(None, "Higher metric is better (default: true unless it is a loss).")
    dataloader_num_workers: int | None = arg(None, "Worker processes for data loading (default: the CPUs that "
                                                   "the compute threads leave free, at most 4; 0: none).")
    dataloader_drop_last: bool = arg(False, "Drop the last incomplete batch.", trains=True)
    resume_from_checkpoint: str | None = arg(None, "Checkpoint folder, or 'latest'.")
    ignore_checkpoint_mismatch: bool = arg(False, "Resume even when the checkpoint was trained with other "
                                                  "settings, data or model (they are listed).")
    report_to: str = arg("none", "Where to log besides log.jsonl: none, tensorboard or all.")
    logging_dir: str | None = arg(None, "TensorBoard folder (default: output_dir/runs).")
    run_name: str | None = arg(None, "A name for this run (model card, run.json, TensorBoard).")
    max_train_samples: int | None = arg(None, "Use only the first N training examples (debugging).", trains=True)
    max_eval_samples: int | None = arg(None, "Use only the first N evaluation examples.")
    max_predict_samples: int | None = arg(None, "Use only the first N prediction examples.")
    hardware: str = arg("auto", "Hardware profile: cpu, cpu-bf16, a100, h100, auto or a YAML file.")
    hardware_overrides: str | None = arg(None, "Edit the profile: 'k=v,k=v'.")
    disable_tqdm: bool = arg(False, "No progress bars.")

    def __post_init__(self) -> None:
        # transformers' defaults that depend on other flags: eval_steps falls back to logging_steps and
        # an evaluation strategy implies do_eval; hone also reads --eval_steps alone as "every N steps"
        if self.eval_steps is not None and self.eval_strategy == "no":
            self.eval_strategy = "steps"
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps
        if self.eval_strategy != "no":
            self.do_eval = True

    @property
    def optimizer_name(self) -> str:
        """hone's optimiser for --optim (and --lamb)."""
        return "lamb" if self.lamb else OPTIMIZER_NAMES[self.optim]

    @property
    def best_metric_key(self) -> str:
        """The eval metric key load_best_model_at_end compares, e.g. 'eval_f1'."""
        name = self.metric_for_best_model or "loss"
        return name if name.startswith("eval_") else f"eval_{name}"

    @property
    def best_is_greater(self) -> bool:
        if self.greater_is_better is not None:
            return self.greater_is_better
        return not self.best_metric_key.endswith("loss")

    @property
    def report_destinations(self) -> set[str]:
        """report_to as a set of destinations hone writes ({"tensorboard"} or empty)."""
        names = {n.strip().lower() for n in self.report_to.replace(" ", ",").split(",") if n.strip()}
        return {"tensorboard"} if names & {"tensorboard", "all"} else set()


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


# transformers flags with no meaning in hone -> (takes a value, what hone does instead)
TRAINER_NOTICE_FLAGS: dict[str, tuple[bool, str]] = {
    "local_rank": (True, "torchrun passes the rank in the environment (LOCAL_RANK)"),
    "fp16_opt_level": (True, "no apex: --fp16 is torch autocast with loss scaling"),
    "half_precision_backend": (True, "mixed precision is torch autocast"),
    "ddp_backend": (True, "nccl on GPUs, gloo on CPUs"),
    "ddp_find_unused_parameters": (True, "every parameter of a hone model takes part in the loss"),
    "group_by_length": (False, "hone drops padding tokens (unpadded execution), so length grouping buys nothing"),
    "auto_find_batch_size": (False, "set --per_device_train_batch_size (and --gradient_accumulation_steps)"),
    "eval_accumulation_steps": (True, "evaluation already moves each batch's outputs to the host"),
    "remove_unused_columns": (True, "recipes feed the model only its inputs"),
    "label_names": (True, "each recipe knows its labels"),
    "log_level": (True, "hone logs at INFO; set HONE_DEBUG=1 for tracebacks"),
    "preprocessing_num_workers": (True, "the tokenizers library already encodes batches on every core"),
    "dataloader_pin_memory": (True, "pinned memory follows the hardware profile's pin_memory"),
    "torch_compile_backend": (True, "torch.compile uses inductor"),
    "torch_compile_mode": (True, "torch.compile uses inductor's default mode"),
    "dataset_config_name": (True, "hone reads local files (--train_file, --validation_file)"),
    "data_seed": (True, "the data order follows --seed"),
    "ignore_data_skip": (False, "resuming continues the exact data order at no cost"),
    "skip_memory_metrics": (True, "hone bench reports peak memory"),
    "prediction_loss_only": (False, "evaluation computes the task's metrics"),
    "save_only_model": (False, "checkpoints keep the optimizer state for exact resume"),
    "hub_token": (True, "no hub here: the model stays in --output_dir"),
    "hub_strategy": (True, "no hub here: the model stays in --output_dir"),
    "hub_private_repo": (False, "no hub here: the model stays in --output_dir"),
    "use_ipex": (False, "hone's CPU path is its own (unpadded execution, bf16 autocast)"),
    "jit_mode_eval": (False, "hone's CPU path is its own (unpadded execution, bf16 autocast)"),
}
# every flag accepted only to print what hone does instead
NOTICE_FLAGS: dict[str, tuple[bool, str]] = {**IPU_FLAGS, **TRAINER_NOTICE_FLAGS}
# older transformers spellings -> the current field
FLAG_ALIASES: dict[str, str] = {"evaluation_strategy": "eval_strategy"}


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
            shown = f" {value}" if NOTICE_FLAGS[name][0] else ""
            notices.append(f"--{name}{shown}: ignored; {NOTICE_FLAGS[name][1]}")
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
        (a.weight_decay >= 0, "weight_decay", ">= 0"),
        (0.0 <= a.adam_beta1 < 1.0, "adam_beta1", "in [0, 1)"),
        (0.0 <= a.adam_beta2 < 1.0, "adam_beta2", "in [0, 1)"),
        (a.adam_epsilon >= 0, "adam_epsilon", ">= 0"),
        (a.lr_end >= 0, "lr_end", ">= 0"),
        (a.lr_power > 0, "lr_power", "> 0"),
        (0 <= a.seed < 2**32, "seed", "in [0, 2**32)"),
        (a.num_train_epochs >= 0, "num_train_epochs", ">= 0"),
        (a.save_total_limit is None or a.save_total_limit >= 1, "save_total_limit", ">= 1"),
        (0.0 < a.layerwise_lr_decay <= 1.0, "layerwise_lr_decay", "in (0, 1] (1.0 = off)"),
        (a.logging_steps > 0, "logging_steps", "> 0"),
        (a.eval_steps is None or a.eval_steps > 0, "eval_steps", "> 0"),
        (a.max_grad_norm >= 0, "max_grad_norm", ">= 0 (0 disables clipping)"),
        (a.dataloader_num_workers is None or a.dataloader_num_workers >= 0, "dataloader_num_workers", ">= 0"),
    ]
    checks += [(getattr(a, name) is None or getattr(a, name) >= 1, name, ">= 1 (or unset for all)")
               for name in ("max_train_samples", "max_eval_samples", "max_predict_samples")]
    for holds, name, rule in checks:
        if not holds:
            raise ConfigError(f"--{name} must be {rule}, got {getattr(a, name)}")
    if a.do_train and a.max_steps <= 0 and a.num_train_epochs <= 0:
        raise ConfigError(f"--do_train needs --max_steps > 0 or --num_train_epochs > 0, "
                          f"got {a.max_steps} and {a.num_train_epochs}")
    if a.fp16 and a.bf16:
        raise ConfigError("--fp16 and --bf16 are both set; choose one precision")
    schedule_options(a)  # the JSON must parse
    if a.load_best_model_at_end:
        if a.eval_strategy == "no":
            raise ConfigError("--load_best_model_at_end needs evaluations during training: "
                              "add --eval_strategy steps (with --eval_steps N) or --eval_strategy epoch")
        if a.save_strategy != a.eval_strategy:
            raise ConfigError(f"--load_best_model_at_end needs checkpoints where it evaluates: --save_strategy "
                              f"{a.save_strategy} differs from --eval_strategy {a.eval_strategy}; make them equal")
        if a.eval_strategy == "steps" and (a.save_steps <= 0 or a.save_steps % a.eval_steps):
            raise ConfigError(f"--load_best_model_at_end needs --save_steps ({a.save_steps}) to be a multiple "
                              f"of --eval_steps ({a.eval_steps})")


def schedule_options(args: TrainingArguments) -> dict[str, Any]:
    """--lr_scheduler_kwargs as a dict (a JSON object)."""
    if not args.lr_scheduler_kwargs:
        return {}
    try:
        options = json.loads(args.lr_scheduler_kwargs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--lr_scheduler_kwargs is not JSON ({e.msg}); write e.g. "
                          "'{\"num_cycles\": 2}'") from None
    if not isinstance(options, dict):
        raise ConfigError("--lr_scheduler_kwargs must be a JSON object, e.g. '{\"num_cycles\": 2}'")
    return options


def _apply_trainer_flags(args: TrainingArguments) -> None:
    """--fp16/--bf16/--tf32/--gradient_checkpointing/--torch_compile/--use_cpu edit the hardware
    profile, the one place that decides how a run executes; explicit --hardware_overrides win."""
    items: dict[str, str] = {}
    if args.fp16 or args.bf16:
        items["precision"] = "fp16" if args.fp16 else "bf16"
    if args.tf32 is not None:
        items["tf32"] = str(args.tf32).lower()
    if args.gradient_checkpointing:
        items["activation_checkpointing"] = "true"
    if args.torch_compile:
        items["compile"] = "true"
    if args.use_cpu or args.no_cuda:
        flag = "--use_cpu" if args.use_cpu else "--no_cuda"
        if args.hardware == "auto":
            args.hardware = "cpu"
        elif resolve_profile(args.hardware, check_device=False).device != "cpu":
            raise ConfigError(f"{flag} conflicts with --hardware {args.hardware}, a GPU profile; drop one of them")
    if items:
        args.hardware_overrides = _join({**items, **parse_overrides(args.hardware_overrides)})


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
    """argparse that raises ConfigError (a HoneError) instead of exiting, so that a recipe's
    Python entry `run(argv)` reports bad flags as an exception; --help still prints and exits."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, usage="%(prog)s [options]", **kwargs)

    def error(self, message: str):
        raise ConfigError(message)


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
    group = parser.add_argument_group("accepted for familiar command lines", "Seed IPU flags and transformers "
                                      "flags with no meaning here: each prints what hone does instead.")
    for name, (takes_value, what) in NOTICE_FLAGS.items():
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


def _canonical(argv: list[str], option_strings: list[str]) -> list[str]:
    """--per-device-train-batch-size -> --per_device_train_batch_size, as HfArgumentParser accepts
    both, and older spellings (FLAG_ALIASES) -> today's."""
    known = set(option_strings)
    out = []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        if arg.startswith("--"):
            name = flag[2:].replace("-", "_")
            name = FLAG_ALIASES.get(name, name)
            if "--" + name in known:
                arg = "--" + name + sep + value
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

    Raises ConfigError (a HoneError, one line) on any mistake: unknown flag, bad value, bad file,
    settings that cannot train. --help prints the options and exits.
    """
    parser, specs, option_strings = _build_parser(dataclass_types, prog, description)
    argv = _canonical(list(sys.argv[1:] if argv is None else argv), option_strings)
    try:
        values = {name: default for name, (_, default, _) in specs.items()}
        pre = _Parser(prog=prog, add_help=False)
        pre.add_argument("--config")
        config_path = pre.parse_known_args(argv)[0].config
        if config_path:
            file_values = {FLAG_ALIASES.get(k, k): v
                           for k, v in load_config_file(config_path, [*specs, *FLAG_ALIASES]).items()}
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
        seed_flags = {name: values[name] for name in NOTICE_FLAGS
                      if name not in fields_ and values.get(name) not in (None, False)}
        for notice in _apply_seed_flags(seed_flags, training):
            log.warning("notice: %s", notice)
        if training is not None:
            _apply_trainer_flags(training)
            validate_training_args(training)
    except HardwareError as e:
        raise ConfigError(str(e)) from None
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
        (profile.execution_mode, profile.execution_mode != "padded"),
        ("activation checkpointing", profile.activation_checkpointing),
        ("fused optimizer", profile.fused_optimizer), ("pinned memory", profile.pin_memory),
        (f"token streams in multiples of {profile.bucket_tokens}", bool(profile.bucket_tokens)),
        ("bounded host memory", profile.bound_host_memory),
        (f"{profile.allocator} allocator", profile.allocator != "system")) if on]
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
