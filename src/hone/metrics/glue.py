"""GLUE metrics as GLUE defines them, and the lines of a GLUE submission file.

Pure functions of predictions and references (numpy arrays or sequences), computed with
scikit-learn and scipy. Names and groups are those of run_glue (evaluate's "glue" metric):
CoLA matthews_correlation; SST-2, MNLI (matched and mismatched, each a split the caller
scores), QNLI, RTE, WNLI accuracy; MRPC and QQP accuracy and f1 (of the positive class, id
1); STS-B pearson and spearmanr. A user's own data gets run_glue's choice: accuracy, or mse for
regression. Where a task has several metrics, `combined_score` is their mean, as in run_glue.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, mean_squared_error

__all__ = ["METRICS", "TASK_METRICS", "compute_metrics", "metric_names", "predictions_from_logits",
           "submission_text"]

METRICS = {
    "accuracy": lambda preds, refs: accuracy_score(refs, preds),
    "f1": lambda preds, refs: f1_score(refs, preds),
    "matthews_correlation": lambda preds, refs: matthews_corrcoef(refs, preds),
    "pearson": lambda preds, refs: pearsonr(preds, refs)[0],
    "spearmanr": lambda preds, refs: spearmanr(preds, refs)[0],
    "mse": lambda preds, refs: mean_squared_error(refs, preds),
}

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def metric_names(task: str | None, is_regression: bool = False) -> tuple[str, ...]:
    """The metrics of a GLUE task, or of a user's data (task None) as run_glue scores it."""
    if task is None:
        return ("mse",) if is_regression else ("accuracy",)
    if task not in TASK_METRICS:
        raise KeyError(f"unknown GLUE task {task!r}; one of {', '.join(TASK_METRICS)}")
    return TASK_METRICS[task]


def compute_metrics(names: Sequence[str], predictions, references) -> dict[str, float]:
    """{name: value} for each metric named, plus `combined_score` (their mean) when several.
    Predictions are label ids (classification) or floats (regression), one per reference."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape or predictions.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} must be "
                         "1-D and of one length")
    result = {name: float(METRICS[name](predictions, references)) for name in names}
    if len(result) > 1:
        result["combined_score"] = float(np.mean(list(result.values())))
    return result


def predictions_from_logits(logits, is_regression: bool) -> np.ndarray:
    """(N, num_labels) logits -> (N,) label ids, or (N, 1) / (N,) regression outputs -> (N,) floats."""
    logits = np.asarray(logits)
    return logits.reshape(len(logits)) if is_regression else logits.argmax(axis=-1)


def submission_text(predictions, indices: Sequence[str] | None = None,
                    label_names: Sequence[str] | None = None) -> str:
    """A GLUE submission file: "index\\tprediction" then one line per example, the label NAME of
    each predicted id (label_names given) or a regression output with three decimals (STS-B),
    as run_glue writes them. `indices` default to 0, 1, ...; pass the test file's index column."""
    predictions = np.asarray(predictions)
    if indices is None:
        indices = range(len(predictions))
    elif len(indices) != len(predictions):
        raise ValueError(f"{len(indices)} indices for {len(predictions)} predictions")
    if label_names is None:
        values = [f"{float(p):.3f}" for p in predictions]
    else:
        values = [label_names[int(p)] for p in predictions]
    return "".join(f"{i}\t{v}\n" for i, v in zip(["index", *indices], ["prediction", *values]))
