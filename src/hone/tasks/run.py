"""The run: what every recipe does around its own part, written once.

A recipe (tasks/qa.py, ...) reads top to bottom:

    with Run.start(RECIPE, argv, QAArguments) as run:   # flags, checks, profile, output folder
        model = run.load_model()                         # checkpoint or config; positions checked
        ...  its own data, features, collate, evaluation and prediction files  ...
        return run.execute(model, train_dataset=..., collate_fn=..., evaluate=..., predict=...)

`Run.start` does, before any slow work: parse the flags (TrainingArguments + the recipe's
dataclass), check that the files each phase needs exist and that max_seq_length fits the
model, resolve the hardware profile (once), decide whether training resumes, open the
output folder under its rules (engine/output_dir.py), seed, print the effective
configuration and write run.json. `execute` trains (the engine), evaluates and predicts
through the recipe's callbacks, prints the metric blocks, writes the results, the model card
and run.json, and returns every metric (the keys of all_results.json).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml
from torch.utils.data import Subset

from hone import reporting
from hone.config import TrainingArguments, arg, effective_batch_sizes, format_effective_config, parse_args
from hone.data.collate import make_collator
from hone.data.files import digest_path
from hone.data.tokenizer import HoneTokenizer, load_tokenizer
from hone.engine import checkpointing, distributed
from hone.engine.host_memory import relaunch_with_allocator
from hone.engine.output_dir import RECORD, TRAINING_OUTPUTS, OutputDir
from hone.engine.trainer import Trainer, TrainerCallback, predict, set_seed
from hone.errors import HoneError, RunInterrupted
from hone.hardware import parse_overrides, precision_warning, resolve_profile
from hone.models.base import ModelConfig, PreTrainedModule
from hone.models.checkpoint import build_model, load_config, load_model

log = logging.getLogger("hone")

T = TypeVar("T")


class RunSetupError(HoneError, ValueError):
    """Flags and files that do not make a run; the message names the flag and the fix."""


@dataclass(frozen=True)
class Recipe:
    """What the skeleton needs to know about a task."""
    name: str                  # the subcommand: `hone qa`
    description: str           # first line of --help
    model_task: str            # what hone.load_model builds: qa, classification, clm, ...
    task_title: str            # model card: "Question Answering"
    task_type: str             # model card and hub: "question-answering"
    data_help: str             # what --train_file etc. hold, for error messages
    index_metrics: Mapping[str, str] = dataclasses.field(default_factory=dict)  # card: name -> eval key
    eval_files: tuple[str, ...] = ()     # files evaluation writes besides eval_results.json
    predict_files: tuple[str, ...] = ()  # files prediction writes besides predict_results.json
    no_predict: str | None = None        # a task without a prediction phase: what to use instead


@dataclass
class ModelArguments:
    """Model and data flags every recipe shares (run_qa's / run_glue's names)."""
    model_name_or_path: str | None = arg(None, "Hugging Face checkpoint folder to start from.", trains=True)
    config_name: str | None = arg(None, "config.json, its folder or a preset name (bert-base-uncased, "
                                        "roberta-base, gpt2, ...) to build a model from scratch.", trains=True)
    tokenizer_name: str | None = arg(None, "Tokenizer folder (default: the model folder).", trains=True)
    config_overrides: str | None = arg(None, "Model config edits 'k=v,k=v'.", trains=True)
    train_file: str | None = arg(None, "Training data file.", trains=True)
    validation_file: str | None = arg(None, "Evaluation data file.")
    test_file: str | None = arg(None, "Prediction data file (labels optional).")
    dataset_name: str | None = arg(None, "Accepted for familiar command lines: hone reads local files.")
    max_seq_length: int = arg(384, "Tokens per sequence (capped at the model's positions).", trains=True)
    cache_dir: str | None = arg(None, "Where tokenized features are cached.")
    overwrite_cache: bool = arg(False, "Rebuild cached features instead of reading them.")


class _EvaluationHook(TrainerCallback):
    """Calls `on_evaluate(step, metrics)` after each evaluation during training (sweeps prune here)."""

    def __init__(self, on_evaluate: Callable[[int, dict], None]):
        self.on_evaluate_fn = on_evaluate

    def on_evaluate(self, trainer: Trainer, metrics: dict) -> None:
        self.on_evaluate_fn(trainer.state.global_step, metrics)


class Run:
    """One invocation of a recipe: its settings, profile, tokenizer, output folder and record."""

    def __init__(self, recipe: Recipe, argv: Sequence[str], args: TrainingArguments, task_args: Any,
                 on_evaluate: Callable[[int, dict], None] | None = None):
        self.recipe, self.args, self.task_args = recipe, args, task_args
        self.command = shlex.join(["hone", recipe.name, *argv])
        self.callbacks = [_EvaluationHook(on_evaluate)] if on_evaluate else []
        self.started = time.time()
        self.output: OutputDir | None = None
        self.trainer: Trainer | None = None
        self._check_phases()
        self.profile = resolve_profile(args.hardware, args.hardware_overrides)
        relaunch_with_allocator(self.profile.allocator, recipe.name, self.profile.host_allocator_purge_ms)  # before any work: it may replace the process
        self.dist = distributed.init_distributed(self.profile)
        self.model_config = self._model_config()
        self._fit_max_seq_length()
        self.tokenizer: HoneTokenizer = load_tokenizer(
            task_args.tokenizer_name or task_args.model_name_or_path or task_args.config_name)
        self.run_config = self._run_config()
        continuing = self._decide_resume()
        self.output = OutputDir.open(args.output_dir, planned=self._planned_outputs(),
                                     overwrite=args.overwrite_output_dir, continuing=continuing,
                                     training=args.do_train, inputs=self._inputs(), writes=self.dist.is_main)
        distributed.barrier()  # rank 0 has cleared the folder before anyone writes
        set_seed(args.seed)
        if self.dist.is_main:
            log.info(format_effective_config(args, self.profile, self.dist.world_size))
            if warning := precision_warning(self.profile):
                log.warning("notice: %s", warning)
        self.output.write_record(
            task=recipe.name, command=self.command, run_name=args.run_name, status="running", error=None,
            settings={**dataclasses.asdict(args), **dataclasses.asdict(task_args)},
            hardware=dataclasses.asdict(self.profile), world_size=self.dist.world_size,
            machine=reporting.machine_info(), versions=reporting.versions(), git_commit=reporting.git_commit(),
            started=reporting.utc_now(),
            finished=None, wall_time_s=None, metrics={})

    @classmethod
    def start(cls, recipe: Recipe, argv: Sequence[str], arguments: type,
              *, on_evaluate: Callable[[int, dict], None] | None = None) -> Self:
        """Parse `argv` (TrainingArguments + the recipe's `arguments` dataclass) and set the run up."""
        args, task_args = parse_args(list(argv), TrainingArguments, arguments, prog=f"hone {recipe.name}",
                                     description=recipe.description)
        return cls(recipe, argv, args, task_args, on_evaluate)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None and self.output is not None:
            interrupted = isinstance(error, (KeyboardInterrupt, RunInterrupted))
            # an error may name the status it means (a sweep's PruneRun: "pruned")
            status = "interrupted" if interrupted else getattr(error, "run_status", "failed")
            self.output.write_record(status=status, error=str(error) or type(error).__name__,
                                     global_step=self.global_step, **self._times())
        return False

    # ------------------------------------------------------------------ checks before any work

    def _check_phases(self) -> None:
        a, t, r = self.args, self.task_args, self.recipe
        if not (a.do_train or a.do_eval or a.do_predict):
            raise RunSetupError(f"nothing to do: pass --do_train, --do_eval and/or --do_predict (hone {r.name} --help)")
        if a.do_predict and r.no_predict:
            raise RunSetupError(f"hone {r.name} has no prediction phase: drop --do_predict ({r.no_predict})")
        if not (t.model_name_or_path or t.config_name):
            raise RunSetupError("give --model_name_or_path (a checkpoint folder) or --config_name "
                                "(a config.json, its folder or a preset name, to start from fresh weights)")
        if t.dataset_name:
            log.warning("notice: --dataset_name %s: ignored; hone reads local files (--train_file, "
                        "--validation_file, --test_file: %s)", t.dataset_name, r.data_help)
        for phase, flag in (("do_train", "train_file"), ("do_eval", "validation_file"), ("do_predict", "test_file")):
            path = getattr(t, flag, None)
            if getattr(a, phase) and hasattr(t, flag):
                if not path:
                    raise RunSetupError(f"--{phase} needs --{flag} ({r.data_help}); no dataset hub is reached")
                if not Path(path).exists():
                    raise RunSetupError(f"--{flag} {path}: no such file or folder ({r.data_help})")

    def _model_config(self) -> ModelConfig:
        t = self.task_args
        config = load_config(t.model_name_or_path or t.config_name)
        return config.replace(**self.config_overrides())

    def config_overrides(self) -> dict[str, Any]:
        """--config_overrides 'k=v,k=v' with YAML scalars (ints, floats, bools) typed."""
        items = parse_overrides(self.task_args.config_overrides, flag="--config_overrides")
        return {key: yaml.safe_load(value) for key, value in items.items()}

    def _fit_max_seq_length(self) -> None:
        """A max_seq_length beyond the model's positions would fail at the first step: cap it, as
        run_qa and run_glue do, and say so."""
        t, limit = self.task_args, self.model_config.max_positions
        if t.max_seq_length > limit:
            log.warning("WARNING: --max_seq_length %d is longer than the model's %d positions; using "
                        "max_seq_length=%d.", t.max_seq_length, limit, limit)
            t.max_seq_length = limit
        if t.max_seq_length < 1:
            raise RunSetupError(f"--max_seq_length must be >= 1, got {t.max_seq_length}")
        self.profile.token_bucket(t.max_seq_length)  # a bad bucket_tokens fails now, not at the first batch

    def _run_config(self) -> dict[str, Any]:
        """The settings that shape training (fields marked `trains`), the training data's content
        and the total batch: a checkpoint trained otherwise is not silently resumed."""
        config = {f.name: getattr(obj, f.name) for obj in (self.args, self.task_args)
                  for f in dataclasses.fields(obj) if f.metadata.get("trains")}
        train_file = getattr(self.task_args, "train_file", None)
        if self.args.do_train and train_file:
            config["train_file"] = Path(train_file).name
            config["train_file_sha256"] = digest_path(train_file)
        config["total_train_batch_size"] = effective_batch_sizes(self.args, self.profile, self.dist.world_size)[2]
        return config

    def _decide_resume(self) -> bool:
        """Whether this training run continues the one in output_dir. Re-running a command into a
        folder with its checkpoints resumes, as run_qa does; another configuration's are refused."""
        a = self.args
        if not a.do_train:
            return False
        if a.resume_from_checkpoint:
            return True
        found = checkpointing.list_checkpoints(a.output_dir)
        if a.overwrite_output_dir or not found:
            return False
        latest = found[-1]
        saved = checkpointing.read_trainer_state(latest).get("run_config")
        differences = checkpointing.run_config_differences(saved, self.run_config)
        if saved is None or differences:
            why = f" ({'; '.join(differences)})" if differences else " (trained by another tool or hone version)"
            raise RunSetupError(
                f"output_dir '{a.output_dir}' holds {latest.name} of a run with other settings{why}. Pass "
                "--overwrite_output_dir to start over, --resume_from_checkpoint latest --ignore_checkpoint_mismatch "
                "to continue it anyway, or choose another --output_dir.")
        log.warning("notice: %s holds %s of this same run: resuming from it (pass --overwrite_output_dir to start "
                    "over).", a.output_dir, latest.name)
        a.resume_from_checkpoint = str(latest)
        return True

    def _planned_outputs(self) -> list[str]:
        a, r = self.args, self.recipe
        planned = [RECORD, "all_results.json"]
        if a.do_train:
            planned += TRAINING_OUTPUTS
        if a.do_eval:
            planned += ["eval_results.json", *r.eval_files]
        if a.do_predict:
            planned += ["predict_results.json", *r.predict_files]
        return planned

    def _inputs(self) -> list[str]:
        t = self.task_args
        names = ("model_name_or_path", "config_name", "tokenizer_name", "train_file", "validation_file",
                 "test_file", "cache_dir")
        return [getattr(t, n) for n in names if getattr(t, n, None) and Path(getattr(t, n)).exists()]

    # ------------------------------------------------------------------ the recipe's helpers

    def load_model(self, *, ignore_mismatched_sizes: bool = False, **config_overrides: Any) -> PreTrainedModule:
        """The recipe's model: a checkpoint's weights, or fresh ones from --config_name."""
        t = self.task_args
        overrides = {**self.config_overrides(), **config_overrides}
        if t.model_name_or_path:
            return load_model(t.model_name_or_path, task=self.recipe.model_task,
                              ignore_mismatched_sizes=ignore_mismatched_sizes, **overrides)
        return build_model(t.config_name, task=self.recipe.model_task, **overrides)

    def limit(self, items: Sequence[T], split: str) -> Sequence[T]:
        """The first --max_{split}_samples items (split: train, eval or predict); a dataset that
        cannot be sliced comes back as a Subset."""
        count = getattr(self.args, f"max_{split}_samples")
        if count is None or count >= len(items):
            return items
        return items[:count] if isinstance(items, (list, tuple)) else Subset(items, range(count))

    def collator(self, *, training: bool, pad_to_max_length: bool = False):
        """The collate function for the profile's execution mode (data.collate.make_collator);
        pad_to_max_length pads every row to max_seq_length (run_qa's and run_glue's option),
        except in packed training batches."""
        max_seq_len = self.task_args.max_seq_length
        return make_collator(self.profile.execution_mode, pad_token_id=self.pad_token_id,
                             position_offset=self.model_config.position_offset, max_seq_len=max_seq_len,
                             training=training, pad_to_max_length=pad_to_max_length,
                             bucket_tokens=self.profile.token_bucket(max_seq_len))

    @property
    def pad_token_id(self) -> int:
        """The id batches are padded with: the tokenizer's pad token, else its end of text (GPT-2)."""
        tokenizer = self.tokenizer
        return next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)

    def predict_batches(self, model, dataset, collate_fn: Callable):
        """The model's outputs on `dataset`, batch by batch on the host (engine.trainer.predict)."""
        return predict(model, dataset, collate_fn, self.args.per_device_eval_batch_size, self.profile)

    # ------------------------------------------------------------------ train, evaluate, predict

    def execute(self, model: PreTrainedModule, *, train_dataset=None, collate_fn: Callable | None = None,
                evaluate: Callable[[PreTrainedModule], dict] | None = None,
                predict: Callable[[PreTrainedModule], dict] | None = None,
                dataset_names: Sequence[str] = ()) -> dict:
        """Train, evaluate and predict as the --do_* flags say; write results, card and run.json.

        evaluate(model) / predict(model) return metrics keyed eval_* / predict_* and write
        their own files through `self.output`. Returns every metric of the run.
        """
        a, results = self.args, {}
        if a.do_train:
            self.trainer = Trainer(model, a, self.profile, train_dataset, collate_fn,
                                   eval_fn=evaluate if a.do_eval else None, callbacks=self.callbacks,
                                   output=self.output, save_extras=self.tokenizer.save, run_config=self.run_config)
            results["train"] = self.trainer.train()
            model = self.trainer.model
        if a.do_eval:
            results["eval"] = reporting.timed("eval", evaluate, model)
        if a.do_predict:
            results["predict"] = reporting.timed("predict", predict, model)
        for split, metrics in results.items():
            reporting.log_metrics(split, metrics)
        reporting.save_results(self.output, results)
        if a.do_train:
            self._write_model_card(results, dataset_names)
        metrics = {k: v for split in results.values() for k, v in split.items()}
        self.output.write_record(status="finished", metrics=metrics, global_step=self.global_step,
                                 total_train_batch_size=self.run_config["total_train_batch_size"], **self._times())
        return metrics

    @property
    def global_step(self) -> int | None:
        """Optimizer steps trained so far (None when the run does not train)."""
        return None if self.trainer is None else self.trainer.state.global_step

    def _write_model_card(self, results: dict[str, dict], dataset_names: Sequence[str]) -> None:
        r, t, eval_metrics = self.recipe, self.task_args, results.get("eval")
        index = [{"name": name, "type": name, "value": round(float(eval_metrics[key]), 4)}
                 for name, key in r.index_metrics.items() if eval_metrics and key in eval_metrics]
        reporting.write_model_card(
            self.output, model_name=self.args.run_name or Path(self.args.output_dir).name,
            base_model=t.model_name_or_path, task_name=r.task_title, task_type=r.task_type,
            dataset_names=[Path(d).name for d in dataset_names], command_line=self.command,
            hyperparameters=reporting.hyperparameters_for_card(self.args, self.profile, self.dist.world_size),
            train_metrics=results.get("train"), eval_metrics=eval_metrics, index_results=index)

    def _times(self) -> dict[str, Any]:
        return {"finished": reporting.utc_now(), "wall_time_s": round(time.time() - self.started, 3)}
