"""`hone glue`: text classification and regression (GLUE or a user's files), run_glue.py's command line.

Top to bottom: the run (flags, checks, profile, output folder) -> the data (a GLUE release
folder or the user's CSV / TSV / JSON Lines files) and its label names -> the model, its head
sized from those labels -> rows -> train / evaluate (MNLI: matched and mismatched) / predict
(GLUE submission files) -> GLUE's metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hone.config import arg
from hone.data.glue import GLUE_TASKS, EncodedRows, GlueData, Split, encode_split, load_glue, load_user_files
from hone.errors import HoneError
from hone.metrics.glue import METRICS, compute_metrics, metric_names, predictions_from_logits, submission_text
from hone.models.base import ModelConfig
from hone.tasks.run import ModelArguments, Recipe, Run

log = logging.getLogger("hone")

USER_PREDICTIONS = "predictions.tsv"  # the submission-style file of a user's test file
RECIPE = Recipe(
    name="glue", description="Fine-tune and evaluate text classification or regression (GLUE or your own files).",
    model_task="classification", task_title="Text Classification", task_type="text-classification",
    data_help="a GLUE release folder (--task_name with --data_dir) or CSV, TSV or JSON Lines files with a "
              "'sentence' (or 'sentence1'/'sentence2') and a 'label' column",
    index_metrics={name: f"eval_{name}" for name in METRICS},
    predict_files=(*sorted({f for t in GLUE_TASKS.values() for f in t.submissions.values()}), USER_PREDICTIONS))
PHASE_FILES = {"train": "train_file", "validation": "validation_file", "test": "test_file"}


class GlueTaskError(HoneError, ValueError):
    """A model and data whose labels do not fit together."""


@dataclass
class GlueArguments(ModelArguments):
    task_name: str | None = arg(None, "GLUE task: its release files in --data_dir, its labels and metrics.",
                                choices=list(GLUE_TASKS), trains=True)
    data_dir: str | None = arg(None, "GLUE release folder (holding SST-2/, MNLI/, ...) or the task's own folder; "
                                     "$GLUE_DIR when not given.")
    max_seq_length: int = arg(128, "Tokens per example; longer ones are truncated (longest_first).", trains=True)
    pad_to_max_length: bool = arg(False, "Pad every row to max_seq_length (run_glue's default): slower, same "
                                         "results; hone pads each batch to its longest row.", trains=True)
    text_column_names: str | None = arg(None, "Your files' text columns, comma-separated: one, or two for pairs "
                                              "(default: sentence1,sentence2 when both exist, else sentence).",
                                        trains=True)
    label_column_name: str = arg("label", "Your files' label column.", trains=True)
    index_column_name: str | None = arg(None, "Your test file's column naming each prediction (default: index, "
                                              "idx or id when present, else the row number).")
    is_regression: bool | None = arg(None, "Your labels are float targets (MSE loss, one output). Default: the "
                                           "data decides (numbers, not all integers).", trains=True)
    bad_rows: str = arg("error", "Rows with a missing column, unknown label, empty text or wrong field count: "
                                 "stop at the first (error) or leave them out and count them (skip).",
                        choices=["error", "skip"])

    def __post_init__(self) -> None:
        """A GLUE task's release files become the phases' files, which the run checks and records
        (a changed train file is not resumed) as it does a user's."""
        given = [f"--{name}" for name in PHASE_FILES.values() if getattr(self, name)]
        if self.data_dir and self.task_name is None:
            raise ValueError(f"--data_dir {self.data_dir} needs --task_name (one of {', '.join(GLUE_TASKS)})")
        if self.task_name is None or (given and not self.data_dir):
            return  # a user's files (with --task_name: scored with that task's labels and metrics)
        if given:
            raise ValueError(f"give --data_dir (a GLUE release folder) or {', '.join(given)}, not both")
        data_dir = self.data_dir or os.environ.get("GLUE_DIR")
        if not data_dir:
            raise ValueError(f"--task_name {self.task_name} reads the GLUE release's files: pass --data_dir (the "
                             "folder holding them, or the one above it) or set GLUE_DIR; no dataset hub is reached")
        task, folder = GLUE_TASKS[self.task_name], Path(data_dir)
        if not (folder / task.files["train"]).is_file() and (folder / task.folder).is_dir():
            folder = folder / task.folder
        self.data_dir = str(folder)
        for split, file_name in reversed(task.files.items()):  # MNLI: the matched files
            setattr(self, PHASE_FILES[split.split("_")[0]], str(folder / file_name))


def run(argv: list[str], *, on_evaluate=None) -> dict:
    """`hone glue` from Python: returns the run's metrics; raises HoneError on user errors."""
    with Run.start(RECIPE, argv, GlueArguments, on_evaluate=on_evaluate) as job:
        glue, a = job.task_args, job.args
        kinds = [kind for kind, phase in zip(PHASE_FILES, (a.do_train, a.do_eval, a.do_predict)) if phase]
        data = _read_data(glue, kinds, job.model_config, training=a.do_train)
        # GPT-2 finds each row's last token by the pad id, which its checkpoints lack
        pad = {} if job.model_config.pad_token_id is not None else {"pad_token_id": job.pad_token_id}
        model = job.load_model(ignore_mismatched_sizes=True, num_labels=data.num_labels, id2label=data.id2label,
                               label2id=data.label2id,
                               problem_type="regression" if data.is_regression else "single_label_classification",
                               **pad) if a.do_train else job.load_model(**pad)
        names = metric_names(glue.task_name, data.is_regression)

        def rows(split: Split, phase: str) -> tuple[Split, EncodedRows]:
            """The split's first --max_{phase}_samples examples, and their rows."""
            count = len(job.limit(split.texts, phase))
            if count < len(split):
                split = dataclasses.replace(split, texts=split.texts[:count], pairs=split.pairs and split.pairs[:count],
                                            labels=None if split.labels is None else split.labels[:count],
                                            indices=split.indices[:count], line_numbers=split.line_numbers[:count])
            return split, encode_split(split, job.tokenizer, glue.max_seq_length)

        def score(model, split: Split, encoded: EncodedRows, prefix: str) -> tuple[dict, np.ndarray]:
            """Predictions of a split; loss and GLUE's metrics where it has labels (run_glue's keys)."""
            outputs = list(job.predict_batches(model, encoded, eval_collate))
            predictions = predictions_from_logits(np.concatenate([o["logits"] for o in outputs]), data.is_regression)
            metrics = {}
            if encoded.labels is not None:
                sizes = [len(o["logits"]) for o in outputs]
                metrics["loss"] = float(np.average([o["loss"] for o in outputs], weights=sizes))
                metrics.update(compute_metrics(names, predictions, encoded.labels))
            metrics["samples"] = len(encoded)
            return {f"{prefix}_{k}{split.metric_suffix}": v for k, v in metrics.items()}, predictions

        def evaluate(model) -> dict:
            return {k: v for split, encoded in eval_sets for k, v in score(model, split, encoded, "eval")[0].items()}

        def predict(model) -> dict:
            metrics = {}
            for split, encoded in test_sets:
                split_metrics, predictions = score(model, split, encoded, "predict")
                job.output.write_text(split.submission_file or USER_PREDICTIONS,
                                      submission_text(predictions, split.indices, data.label_names), kind="predictions")
                metrics.update(split_metrics)
            return metrics

        if glue.pad_to_max_length and a.do_train and job.profile.execution_mode == "packed":
            log.warning("notice: --pad_to_max_length: training batches are packed (the profile's pack)")
        eval_collate = job.collator(training=False, pad_to_max_length=glue.pad_to_max_length)
        train = rows(data.splits["train"], "train")[1] if a.do_train else None
        eval_sets = [rows(split, "eval") for split in data.of_kind("validation")]
        test_sets = [rows(split, "predict") for split in data.of_kind("test")]
        train_collate = job.collator(training=True, pad_to_max_length=glue.pad_to_max_length)
        return job.execute(model, train_dataset=train, collate_fn=train_collate,
                           evaluate=evaluate,
                           predict=predict, dataset_names=[glue.data_dir] if glue.data_dir else
                           [p for p in (glue.train_file, glue.validation_file) if p])


def main(argv: list[str]) -> int:
    run(argv)
    return 0


def _read_data(glue: GlueArguments, kinds: list[str], config: ModelConfig, *, training: bool) -> GlueData:
    """The splits of the phases run, their labels in the model's order where it names them."""
    model_labels = _model_labels(config)
    task = GLUE_TASKS.get(glue.task_name)
    if glue.data_dir:
        data = load_glue(glue.task_name, glue.data_dir, kinds, bad_rows=glue.bad_rows)
    else:
        regression = glue.is_regression
        if task is not None:
            regression = task.is_regression
        elif regression is None and not training:  # an evaluated model knows what it predicts
            regression = config.problem_type == "regression" or config.num_labels == 1
        label_names = task and task.label_names
        if label_names is None and not training and not regression:
            label_names = model_labels or (None if "validation" in kinds else list(config.id2label.values()))
        data = load_user_files(**{PHASE_FILES[k]: getattr(glue, PHASE_FILES[k]) for k in kinds},
                               text_column_names=glue.text_column_names and glue.text_column_names.split(","),
                               label_column_name=glue.label_column_name, index_column_name=glue.index_column_name,
                               is_regression=regression, label_names=label_names, bad_rows=glue.bad_rows)
    for split in data.splits.values():
        if split.skipped:
            log.warning("WARNING: %s: %d bad rows skipped (--bad_rows skip), the first: %s", split.path,
                        len(split.skipped), split.skipped[0])
    _to_model_order(data, model_labels, training)
    if not training and data.num_labels != config.num_labels:
        raise GlueTaskError(f"the model has {config.num_labels} outputs but the data {data.num_labels} labels "
                            f"{data.label_names or '(regression)'}; evaluate a model fine-tuned on these labels")
    return data


def _model_labels(config: ModelConfig) -> list[str] | None:
    """The model's label names, unless they are transformers' placeholders (LABEL_0, ...)."""
    names = [config.id2label[i] for i in range(config.num_labels)]
    return None if names == [f"LABEL_{i}" for i in range(config.num_labels)] else names


def _to_model_order(data: GlueData, model_labels: list[str] | None, training: bool) -> None:
    """run_glue's rule: a model that already names the data's labels keeps its label ids."""
    if data.is_regression or model_labels is None or model_labels == data.label_names:
        return
    if sorted(model_labels) != sorted(data.label_names):
        if not training:
            raise GlueTaskError(f"the model's labels {model_labels} are not the data's {data.label_names}; "
                                "evaluate a model fine-tuned on these labels")
        log.warning("WARNING: the model's labels %s are not the data's %s: ignoring the model's (its head is "
                    "trained anew)", model_labels, data.label_names)
        return
    new_id = np.array([model_labels.index(name) for name in data.label_names])
    for split in data.splits.values():
        if split.labels is not None:
            split.labels = new_id[split.labels]
    data.label_names = model_labels


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
