"""`hone qa`: extractive question answering (SQuAD 1.1 / 2.0), run_qa.py's command line.

Top to bottom: the run (flags, checks, profile, output folder) -> model -> windows of each
file -> train / evaluate / predict -> post-processing -> the official metric.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import numpy as np

from hone.config import arg
from hone.data.squad import QAFeatures, has_unanswerable, load_or_build_features, read_squad
from hone.metrics.squad import postprocess_qa_predictions, squad_evaluate
from hone.tasks.run import ModelArguments, Recipe, Run

log = logging.getLogger("hone")

_PREDICTION_FILES = ("predictions.json", "nbest_predictions.json", "null_odds.json")
RECIPE = Recipe(
    name="qa", description="Fine-tune and evaluate extractive question answering (SQuAD 1.1/2.0).",
    model_task="qa", task_title="Question Answering", task_type="question-answering",
    data_help="SQuAD JSON or JSON Lines", index_metrics={"exact": "eval_exact", "f1": "eval_f1"},
    eval_files=_PREDICTION_FILES, predict_files=tuple(f"predict_{name}" for name in _PREDICTION_FILES))


@dataclass
class QAArguments(ModelArguments):
    version_2_with_negative: bool = arg(False, "Data has unanswerable questions (SQuAD 2.0).")
    doc_stride: int = arg(128, "Overlap between context windows, in tokens.", trains=True)
    max_query_length: int | None = arg(None, "Truncate questions to this many tokens.", trains=True)
    n_best_size: int = arg(20, "Start/end candidates per window in post-processing.")
    max_answer_length: int = arg(30, "Longest answer, in tokens.")
    null_score_diff_threshold: float = arg(0.0, "Predict no answer when null - best > this.")
    pad_to_max_length: bool = arg(False, "Pad every window to max_seq_length.", trains=True)
    passage_first: bool = arg(False, "Passage before question, with a 'Q: ' prefix (seed 002).", trains=True)


@dataclass
class QAData:
    """One file's examples, their windows, and whether it is SQuAD 2.0."""
    examples: list[dict]
    features: QAFeatures
    version_2: bool


def run(argv: list[str], *, on_evaluate=None) -> dict:
    """`hone qa` from Python: returns the run's metrics; raises HoneError on user errors."""
    with Run.start(RECIPE, argv, QAArguments, on_evaluate=on_evaluate) as job:
        qa = job.task_args
        model = job.load_model()
        tokenizer = job.tokenizer
        train_collate, eval_collate = job.collator(training=True), job.collator(training=False)

        def load(path: str, split: str) -> QAData:
            examples = list(job.limit(read_squad(path), split))
            features = load_or_build_features(
                path, tokenizer, split="train" if split == "train" else "eval", examples=examples,
                max_seq_length=qa.max_seq_length, doc_stride=qa.doc_stride, max_query_length=qa.max_query_length,
                pad_to_max_length=qa.pad_to_max_length, question_first=not qa.passage_first,
                question_prefix="Q: " if qa.passage_first else "", cache_dir=qa.cache_dir,
                rebuild=qa.overwrite_cache)
            return QAData(examples, features, _version_2(examples, qa.version_2_with_negative, path, split))

        def score(model, data: QAData, split: str) -> dict:
            """Predict, post-process, write the prediction files; the official metric where answers exist."""
            start, end = _span_logits(job.predict_batches(model, data.features, eval_collate), data.features)
            result = postprocess_qa_predictions(
                data.examples, data.features.example_index, data.features.offsets, start, end,
                version_2_with_negative=data.version_2, n_best_size=qa.n_best_size,
                max_answer_length=qa.max_answer_length, null_score_diff_threshold=qa.null_score_diff_threshold)
            for name, content in result.files(prefix=None if split == "eval" else split).items():
                job.output.write_json(name, content, kind="predictions")
            metrics = {f"{split}_samples": len(data.features)}
            if split == "eval" or _has_answers(data.examples):  # test files may come without answers
                scores = squad_evaluate(data.examples, result.predictions,
                                        na_probs=result.null_odds if data.version_2 else None)
                metrics.update({f"{split}_{k}": v for k, v in scores.items()})
            return metrics

        train = load(qa.train_file, "train").features if job.args.do_train else None
        eval_data = load(qa.validation_file, "eval") if job.args.do_eval else None
        test_data = load(qa.test_file, "predict") if job.args.do_predict else None
        return job.execute(model, train_dataset=train, collate_fn=train_collate,
                           evaluate=lambda m: score(m, eval_data, "eval"),
                           predict=lambda m: score(m, test_data, "predict"),
                           dataset_names=[p for p in (qa.train_file, qa.validation_file) if p])


def main(argv: list[str]) -> int:
    run(argv)
    return 0


def _has_answers(examples: list[dict]) -> bool:
    return any(ex["answers"]["text"] for ex in examples)


def _version_2(examples: list[dict], flag: bool, path: str, split: str) -> bool:
    """The most common SQuAD mistake is a v2 flag that disagrees with the data: follow the data.
    (A test file without answers cannot tell: the flag decides.)"""
    if split == "predict" and not _has_answers(examples):
        return flag
    data_v2 = has_unanswerable(examples)
    if data_v2 and not flag:
        log.warning("WARNING: %s holds unanswerable questions but --version_2_with_negative is missing: "
                    "evaluating as SQuAD 2.0 anyway (without it every NoAns question would score 0).", path)
    elif flag and not data_v2:
        log.warning("WARNING: --version_2_with_negative is set but %s has no unanswerable question: "
                    "evaluating as SQuAD 1.1.", path)
    return data_v2


def _span_logits(batches, features: QAFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Start/end logits of every window as (F, T) float32 arrays, padded with -inf."""
    width = features.offsets.shape[1]
    start = np.full((len(features), width), -np.inf, dtype=np.float32)
    end = np.full_like(start, -np.inf)
    row = 0
    for out in batches:
        s, e = out["start_logits"], out["end_logits"]
        start[row: row + len(s), : s.shape[1]] = s
        end[row: row + len(e), : e.shape[1]] = e
        row += len(s)
    return start, end


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
