"""parse_args: dataclass flags, --config files, seed command lines with IPU flags, validation."""

from __future__ import annotations

import json
import logging
import re
import shlex
from dataclasses import dataclass, field

import pytest

from hone.config import IPU_FLAGS, TrainingArguments, format_effective_config, parse_args
from hone.errors import HoneError
from hone.hardware import HardwareProfile, resolve_profile
from paths import SEEDS


def seed_command(prefix: str, script: str, end: str = "```") -> list[str]:
    """The argv of `script` in the seed file starting with `prefix` (skips when absent)."""
    files = sorted(SEEDS.glob(f"{prefix}_*.txt"))
    if not files:
        pytest.skip(f"seed {prefix} not found under {SEEDS}")
    text = files[0].read_text(encoding="utf-8")
    match = re.search(re.escape(script) + r"(.*?)" + re.escape(end), text, re.S)
    assert match, f"{script} not in {files[0]}"
    # Seed 001 lost its newlines: line continuations appear as " \ ".
    return shlex.split(re.sub(r"\s\\\s", " ", match.group(1).replace("\\\n", " ")))


@dataclass
class QAArgs:  # run_qa.py's model/data arguments that seed 000 uses
    model_name_or_path: str = field(metadata={"help": "Checkpoint."})
    dataset_name: str | None = field(default=None, metadata={"help": "Dataset."})
    version_2_with_negative: bool = field(default=False, metadata={"help": "SQuAD 2.0."})
    max_seq_length: int = field(default=384, metadata={"help": "Window length."})
    doc_stride: int = field(default=128, metadata={"help": "Window stride."})


@dataclass
class GlueArgs:
    model_name_or_path: str = field(metadata={"help": "Checkpoint."})
    task_name: str = field(default="sst2", metadata={"help": "GLUE task.", "choices": ["sst2", "mrpc", "cola"]})
    max_seq_length: int = field(default=128, metadata={"help": "Sequence length."})


@dataclass
class LMArgs:  # run_pretraining.py / run_clm.py
    config_name: str | None = None
    tokenizer_name: str | None = None
    model_name_or_path: str | None = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    config_overrides: str | None = None
    max_seq_length: int = 512


@dataclass
class Extra:
    labels: list[str] = field(default_factory=list, metadata={"help": "Label names."})
    sizes: list[int] | None = field(default=None, metadata={"help": "Sizes."})
    use_cache: bool = field(default=True, metadata={"help": "Cache features."})


def notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hone" and r.getMessage().startswith("notice:")]


def parse_error(capsys, argv, *types) -> str:
    """The one-line message of the HoneError that parse_args raises (nothing printed, no exit)."""
    with pytest.raises(HoneError) as exc:
        parse_args(argv, *(types or (TrainingArguments,)), prog="hone test")
    assert capsys.readouterr().err == ""
    assert "\n" not in str(exc.value)
    return str(exc.value)


# ----------------------------------------------------------------------------- seeds

def test_seed_000_run_qa_command_line(caplog):
    argv = seed_command("000", "run_qa.py")
    caplog.set_level(logging.INFO, logger="hone")
    args, qa = parse_args(argv, TrainingArguments, QAArgs, prog="hone qa")
    assert (qa.model_name_or_path, qa.dataset_name, qa.version_2_with_negative) == ("roberta-base", "squad_v2", True)
    assert (qa.max_seq_length, qa.doc_stride) == (384, 128)
    assert args.do_train and args.do_eval and args.overwrite_output_dir
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (3.0, 4, 2)
    assert (args.learning_rate, args.seed, args.weight_decay, args.warmup_ratio) == (7e-5, 1984, 0.01, 0.2)
    assert (args.logging_steps, args.save_steps, args.dataloader_num_workers) == (1, -1, 64)
    assert args.output_dir == "roberta-base-squad2" and args.lr_scheduler_type == "linear"
    lines = notices(caplog)
    assert len(lines) == 4  # one per IPU flag
    for flag in ("--ipu_config_name Graphcore/roberta-base-ipu", "--pod_type pod16", "--push_to_hub",
                 "--loss_scaling 64"):
        assert any(line.startswith(f"notice: {flag}") for line in lines), flag
    assert any("use --hardware" in line for line in lines)
    if resolve_profile(args.hardware).precision != "fp16":
        assert any("needs no loss scaling" in line for line in lines)


def test_seed_001_run_glue_command_line(caplog):
    argv = seed_command("001", "run_glue.py")
    caplog.set_level(logging.INFO, logger="hone")
    args, glue = parse_args(argv, TrainingArguments, GlueArgs, prog="hone glue")
    assert (glue.model_name_or_path, glue.task_name, glue.max_seq_length) == ("bert-base-uncased", "sst2", 128)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size, args.gradient_accumulation_steps) \
        == (1, 4, 32)
    assert (args.learning_rate, args.warmup_ratio, args.num_train_epochs, args.seed) == (2e-5, 0.25, 3.0, 1984)
    assert args.dataloader_drop_last and args.output_dir == "/tmp/sst2"
    lines = notices(caplog)
    assert [line.split(":")[1].split()[0] for line in lines] == ["--ipu_config_name", "--pod_type"]


def test_seed_001_run_pretraining_command_line(caplog):
    argv = seed_command("001", "run_pretraining.py")  # phase 1
    caplog.set_level(logging.INFO, logger="hone")
    args, lm = parse_args(argv, TrainingArguments, LMArgs, prog="hone pretrain")
    assert args.lamb and args.lamb_no_bias_correction and args.optimizer_name == "lamb"
    assert (args.max_steps, args.gradient_accumulation_steps, args.learning_rate) == (10500, 512, 0.006)
    assert lm.config_overrides == "layer_norm_eps=0.001" and lm.max_seq_length == 128
    text = "\n".join(notices(caplog))
    for flag in ("--is_already_preprocessed", "--dataloader_mode async_rebatched", "device_iterations=1: ignored",
                 "--loss_scaling 16384"):
        assert flag in text


def test_seed_004_run_clm_command_line(caplog):
    argv = seed_command("004", "run_clm.py", end="Training hyperparameters")
    caplog.set_level(logging.INFO, logger="hone")
    args, lm = parse_args(argv, TrainingArguments, LMArgs, prog="hone clm")
    assert lm.dataset_config_name == "wikitext-103-raw-v1" and args.gradient_accumulation_steps == 128
    lines = notices(caplog)
    overrides = [line for line in lines if "--ipu_config_overrides" in line]
    assert len(overrides) == 3  # embedding_serialization_factor, optimizer_state_offchip, inference_device_iterations
    assert all("ignored" in line for line in overrides)


def test_ipu_flag_table_covers_the_seeds():
    for name in ("ipu_config_name", "ipu_config_overrides", "pod_type", "loss_scaling", "dataloader_mode",
                 "compile_only", "push_to_hub", "hub_model_id", "is_already_preprocessed",
                 "executable_cache_dir", "n_ipu"):
        takes_value, notice = IPU_FLAGS[name]
        assert isinstance(takes_value, bool) and notice and "\n" not in notice


def test_ipu_config_overrides_become_hardware_overrides(caplog):
    caplog.set_level(logging.INFO, logger="hone")
    (args,) = parse_args(["--hardware", "cpu", "--ipu_config_overrides",
                          "replication_factor=2,recompute_checkpoint_every_layer=true,matmul_proportion=0.2",
                          "--hardware_overrides", "replicas=1"], TrainingArguments, prog="t")
    profile = resolve_profile(args.hardware, args.hardware_overrides)
    assert profile.activation_checkpointing is True
    assert profile.replicas == 1  # the explicit --hardware_overrides wins
    assert len(notices(caplog)) == 3


def test_loss_scaling_maps_to_fp16_profile(caplog):
    caplog.set_level(logging.INFO, logger="hone")
    (args,) = parse_args(["--hardware", "cpu", "--hardware_overrides", "precision=fp16", "--loss_scaling", "64"],
                         TrainingArguments, prog="t")
    assert resolve_profile(args.hardware, args.hardware_overrides).static_loss_scale == 64.0
    assert "static fp16 loss scale" in notices(caplog)[0]


def test_bad_loss_scaling(capsys):
    assert "--loss_scaling must be a positive number" in parse_error(capsys, ["--loss_scaling", "lots"])


# ----------------------------------------------------------------------------- flags

@pytest.mark.parametrize("argv, expected", [
    (["--do_train"], True),
    (["--do_train", "true"], True),
    (["--do_train", "False"], False),
    (["--do_train", "0"], False),
    (["--do_train=yes"], True),
    ([], False),
])
def test_bool_flag_forms(argv, expected):
    (args,) = parse_args(argv + ["--do_eval"], TrainingArguments, prog="t")
    assert args.do_train is expected and args.do_eval is True


def test_bool_flag_bad_value(capsys):
    assert "expected true or false, got 'maybe'" in parse_error(capsys, ["--do_train", "maybe"])


def test_default_true_bool_has_no_flag_and_lists():
    args, extra = parse_args(["--no_use_cache", "--labels", "neg", "pos", "--sizes", "1", "2"],
                             TrainingArguments, Extra, prog="t")
    assert extra.use_cache is False and extra.labels == ["neg", "pos"] and extra.sizes == [1, 2]
    _, extra = parse_args([], TrainingArguments, Extra, prog="t")
    assert extra.use_cache is True and extra.labels == [] and extra.sizes is None


def test_optional_types_dashes_and_none():
    (args,) = parse_args(["--save-total-limit", "2", "--max_train_samples", "100", "--eval_steps", "none"],
                         TrainingArguments, prog="t")
    assert (args.save_total_limit, args.max_train_samples, args.eval_steps) == (2, 100, None)
    assert args.resume_from_checkpoint is None


def test_unknown_flag_suggests_close_match(capsys):
    err = parse_error(capsys, ["--learnin_rate", "3e-5"])
    assert "unrecognized argument --learnin_rate; did you mean '--learning_rate'?" in err
    err = parse_error(capsys, ["--per_device_train_batchsize=4"])
    assert "did you mean '--per_device_train_batch_size'?" in err
    assert "unrecognized argument --zzz (see --help)" in parse_error(capsys, ["--zzz"])


def test_no_prefix_abbreviations(capsys):
    assert "did you mean '--learning_rate'" in parse_error(capsys, ["--learning", "1e-4"])


def test_bad_value_and_choice(capsys):
    assert "argument --per_device_train_batch_size: expected an integer" in parse_error(
        capsys, ["--per_device_train_batch_size", "four"])
    assert "invalid choice: 'cosine_annealing'" in parse_error(capsys, ["--lr_scheduler_type", "cosine_annealing"])


def test_required_field(capsys):
    assert "the following arguments are required: --model_name_or_path" in parse_error(
        capsys, [], TrainingArguments, QAArgs)


@dataclass
class Checked:
    doc_stride: int = 128
    max_seq_length: int = 384

    def __post_init__(self):
        if self.doc_stride >= self.max_seq_length:
            raise ValueError(f"--doc_stride {self.doc_stride} must be < --max_seq_length {self.max_seq_length}")


def test_recipe_post_init_errors_exit_cleanly(capsys):
    assert "--doc_stride 400 must be < --max_seq_length 384" in parse_error(
        capsys, ["--doc_stride", "400"], TrainingArguments, Checked)


def test_help_lists_fields_and_seed_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"], TrainingArguments, QAArgs, prog="hone qa", description="QA.")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--learning_rate FLOAT" in out and "Peak learning rate. (default: 5e-05)" in out
    assert "--ipu_config_name VALUE" in out and "--doc_stride INT" in out and "QAArgs" in out


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("argv, message", [
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be > 0"),
    (["--per_device_eval_batch_size", "-1"], "--per_device_eval_batch_size must be > 0"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be > 0"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio must be between 0 and 1"),
    (["--warmup_ratio", "-0.1"], "--warmup_ratio must be between 0 and 1"),
    (["--learning_rate", "0"], "--learning_rate must be > 0"),
    (["--do_train", "--num_train_epochs", "0"], "--do_train needs --max_steps > 0 or --num_train_epochs > 0"),
    (["--save_total_limit", "0"], "--save_total_limit must be >= 1"),
    (["--layerwise_lr_decay", "0"], "--layerwise_lr_decay must be in (0, 1]"),
    (["--layerwise_lr_decay", "1.2"], "--layerwise_lr_decay must be in (0, 1]"),
    (["--weight_decay", "-1"], "--weight_decay must be >= 0"),
    (["--adam_beta1", "1.5"], "--adam_beta1 must be in [0, 1)"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--lr_power", "-1"], "--lr_power must be > 0"),
    (["--max_train_samples", "-2"], "--max_train_samples must be >= 1"),
    (["--max_predict_samples", "0"], "--max_predict_samples must be >= 1"),
    (["--fp16", "--bf16"], "--fp16 and --bf16 are both set"),
    (["--lr_scheduler_kwargs", "{num_cycles: 2}"], "--lr_scheduler_kwargs is not JSON"),
    (["--load_best_model_at_end"], "needs evaluations during training"),
    (["--load_best_model_at_end", "--eval_strategy", "steps", "--eval_steps", "30", "--save_steps", "50"],
     "--save_steps (50) to be a multiple of --eval_steps (30)"),
    (["--load_best_model_at_end", "--eval_strategy", "epoch"], "--save_strategy steps differs"),
    (["--use_cpu", "--hardware", "h100"], "--use_cpu conflicts with --hardware h100"),
])
def test_invalid_values(capsys, argv, message):
    assert message in parse_error(capsys, argv)


def test_zero_epochs_with_max_steps_is_fine():
    (args,) = parse_args(["--do_train", "--num_train_epochs", "0", "--max_steps", "10"], TrainingArguments, prog="t")
    assert args.max_steps == 10


# ----------------------------------------------------------------------------- --config files

def test_yaml_file_and_command_line_merge(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-4\nper_device_train_batch_size: 16\ndo_train: true\n"
                    "model_name_or_path: roberta-base\nlr_scheduler_type: cosine\nwarmup_ratio: 0.1\n")
    args, qa = parse_args(["--config", str(path), "--learning_rate", "3e-5", "--warmup_ratio=0.2"],
                          TrainingArguments, QAArgs, prog="t")
    assert args.learning_rate == 3e-5 and args.warmup_ratio == 0.2  # command line wins
    assert args.per_device_train_batch_size == 16 and args.do_train is True  # from the file
    assert args.lr_scheduler_type == "cosine" and qa.model_name_or_path == "roberta-base"  # required, from the file
    assert args.seed == 42  # untouched default


def test_json_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"seed": 7, "do_eval": True, "save_total_limit": None}))
    (args,) = parse_args([f"--config={path}", "--seed", "8"], TrainingArguments, prog="t")
    assert (args.seed, args.do_eval, args.save_total_limit) == (8, True, None)


@pytest.mark.parametrize("text, message", [
    ("learning_rat: 1e-4\n", "run.yaml: unknown key 'learning_rat'; did you mean 'learning_rate'?"),
    ("per_device_train_batch_size: four\n", "run.yaml: key 'per_device_train_batch_size': expected an integer"),
    ("lr_scheduler_type: cosine_annealing\n", "run.yaml: key 'lr_scheduler_type': 'cosine_annealing' is not one of"),
    ("warmup_ratio: 2\n", "--warmup_ratio must be between 0 and 1"),
    ("- a\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_config_file_errors(tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert message in parse_error(capsys, ["--config", str(path)])


def test_config_file_missing_or_wrong_type(tmp_path, capsys):
    assert "file not found" in parse_error(capsys, ["--config", str(tmp_path / "none.yaml")])
    (tmp_path / "run.toml").write_text("")
    assert "expected a .yaml, .yml or .json file" in parse_error(capsys, ["--config", str(tmp_path / "run.toml")])


def test_config_file_may_hold_seed_flags(tmp_path, caplog):
    path = tmp_path / "run.yaml"
    path.write_text("ipu_config_name: Graphcore/bert-base-ipu\n")
    caplog.set_level(logging.INFO, logger="hone")
    parse_args(["--config", str(path)], TrainingArguments, prog="t")
    assert notices(caplog)[0].startswith("notice: --ipu_config_name Graphcore/bert-base-ipu: ignored")


# ----------------------------------------------------------------------------- effective config

def test_effective_config_total_batch():
    (args,) = parse_args(["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "4",
                          "--layerwise_lr_decay", "0.75", "--lamb"], TrainingArguments, prog="t")
    text = format_effective_config(args, HardwareProfile(), world_size=2)
    assert text.splitlines()[0] == "***** effective configuration *****"
    assert "total train batch size      = 64 (micro batch 8 x accumulation 4 x replicas 2)" in text
    assert "layerwise lr decay" in text and "lamb (lr 5e-05" in text
    # The profile's micro batch and accumulation win over the arguments.
    text = format_effective_config(args, HardwareProfile(micro_batch_size=32, gradient_accumulation_steps=2), 1)
    assert "= 64 (micro batch 32 x accumulation 2 x replicas 1)" in text
