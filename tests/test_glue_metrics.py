"""hone.metrics.glue against scikit-learn / scipy called directly, hand-checked cases, and the
GLUE submission file format."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef, mean_squared_error

from hone.metrics.glue import compute_metrics, metric_names, predictions_from_logits, submission_text

# evaluate's "glue" metric (what run_glue loads) per task
GLUE_DEFINITION = {"cola": ("matthews_correlation",), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"),
                   "qqp": ("accuracy", "f1"), "stsb": ("pearson", "spearmanr"), "mnli": ("accuracy",),
                   "qnli": ("accuracy",), "rte": ("accuracy",), "wnli": ("accuracy",)}


def test_metric_names_per_task():
    for task, names in GLUE_DEFINITION.items():
        assert metric_names(task) == names
    assert metric_names(None) == ("accuracy",) and metric_names(None, is_regression=True) == ("mse",)
    with pytest.raises(KeyError, match="sst-2"):
        metric_names("sst-2")


@pytest.mark.parametrize("seed", range(3))
def test_classification_metrics_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    refs, preds = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    preds[:200] = refs[:200]  # better than chance
    acc = float(np.mean(preds == refs))
    f1 = f1_score(refs, preds)
    assert compute_metrics(metric_names("mrpc"), preds, refs) == pytest.approx(
        {"accuracy": acc, "f1": f1, "combined_score": (acc + f1) / 2}, abs=1e-12)
    assert compute_metrics(metric_names("cola"), preds, refs) == pytest.approx(
        {"matthews_correlation": matthews_corrcoef(refs, preds)}, abs=1e-12)
    three = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert compute_metrics(metric_names("mnli"), *three) == pytest.approx({"accuracy": np.mean(three[0] == three[1])})


@pytest.mark.parametrize("seed", range(3))
def test_regression_metrics_against_scipy(seed):
    rng = np.random.default_rng(seed)
    refs = rng.uniform(0, 5, 400)
    preds = refs + rng.normal(0, 1.5, 400)
    pearson, spearman = pearsonr(preds, refs)[0], spearmanr(preds, refs)[0]
    got = compute_metrics(metric_names("stsb"), preds.astype(np.float32), refs.astype(np.float32))
    assert got == pytest.approx({"pearson": pearson, "spearmanr": spearman,
                                 "combined_score": (pearson + spearman) / 2}, abs=1e-6)
    assert compute_metrics(("mse",), preds, refs) == pytest.approx({"mse": mean_squared_error(refs, preds)})


def test_hand_checked_values():
    preds, refs = [1, 0, 1, 1], [1, 1, 1, 0]  # tp 2, fn 1, fp 1, tn 0
    got = compute_metrics(("accuracy", "f1", "matthews_correlation"), preds, refs)
    assert got["accuracy"] == 0.5 and got["f1"] == pytest.approx(2 / 3)
    assert got["matthews_correlation"] == pytest.approx((2 * 0 - 1 * 1) / math.sqrt(3 * 3 * 1 * 1))
    got = compute_metrics(("pearson", "spearmanr"), [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert got["pearson"] == pytest.approx(3 / math.sqrt(2 * 14 / 3)) and got["spearmanr"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one length"):
        compute_metrics(("accuracy",), [1, 0], [1])


def test_predictions_from_logits():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    assert predictions_from_logits(logits, is_regression=False).tolist() == [1, 0]
    assert predictions_from_logits(np.array([[0.25], [4.5]]), is_regression=True).tolist() == [0.25, 4.5]


def test_submission_text():
    names = ["contradiction", "entailment", "neutral"]
    assert submission_text([2, 0, 1], ["10", "11", "12"], names) == (
        "index\tprediction\n10\tneutral\n11\tcontradiction\n12\tentailment\n")
    assert submission_text(np.float32([3.14159, 0.0])) == "index\tprediction\n0\t3.142\n1\t0.000\n"
    assert submission_text(np.array([1, 0]), label_names=["0", "1"]) == "index\tprediction\n0\t1\n1\t0\n"
    with pytest.raises(ValueError, match="1 indices for 2 predictions"):
        submission_text([1, 0], ["0"], ["0", "1"])
