"""`hone qa`: extractive question answering (SQuAD 1.1 / 2.0), run_qa.py's command line.

Top to bottom: arguments -> tokenizer + model -> features -> engine -> post-processing ->
official metrics -> results, model card.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np

from hone.config import TrainingArguments, parse_args
from hone.data.collate import Collator
from hone.data.squad import has_unanswerable, load_or_build_features, read_squad
from hone.data.tokenizer import load_tokenizer
from hone.engine.distributed import is_main_process
from hone.engine.trainer import Trainer, check_output_dir, predict
from hone.hardware import resolve_profile
from hone.metrics.squad import postprocess_qa_predictions, squad_evaluate, write_predictions
from hone.tasks.common import finish_run, load_task_model, start_run

log = logging.getLogger("hone")


@dataclass
class QAArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Hugging Face checkpoint folder to start from."})
    config_name: str | None = field(default=None, metadata={"help": "config.json (or folder) to build a model from scratch."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder (default: the model folder)."})
    config_overrides: str | None = field(default=None, metadata={"help": "Model config edits 'k=v,k=v'."})
    train_file: str | None = field(default=None, metadata={"help": "SQuAD JSON or JSON Lines for training."})
    validation_file: str | None = field(default=None, metadata={"help": "SQuAD JSON or JSON Lines for evaluation."})
    test_file: str | None = field(default=None, metadata={"help": "SQuAD JSON or JSON Lines for prediction."})
    dataset_name: str | None = field(default=None, metadata={"help": "Accepted for seed command lines; hone reads files."})
    version_2_with_negative: bool = field(default=False, metadata={"help": "Data has unanswerable questions (SQuAD 2.0)."})
    max_seq_length: int = field(default=384, metadata={"help": "Tokens per window (question + context)."})
    doc_stride: int = field(default=128, metadata={"help": "Overlap between context windows, in tokens."})
    max_query_length: int | None = field(default=None, metadata={"help": "Truncate questions to this many tokens."})
    n_best_size: int = field(default=20, metadata={"help": "Start/end candidates per window in post-processing."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in tokens."})
    null_score_diff_threshold: float = field(default=0.0, metadata={"help": "Predict no answer when null - best > this."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every window to max_seq_length."})
    passage_first: bool = field(default=False, metadata={"help": "Passage before question, with a 'Q: ' prefix (seed 002)."})
    question_first: bool = field(default=True, metadata={"help": "Question before passage (run_qa's order)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where tokenized features are cached."})


def _has_answers(examples: list[dict]) -> bool:
    return any(ex["answers"]["text"] for ex in examples)


def _check_version(examples: list[dict], version_2: bool, path: str) -> bool:
    """The most common SQuAD mistake: the v2 flag and the data disagree. Follow the data."""
    data_v2 = has_unanswerable(examples)
    if data_v2 and not version_2:
        log.warning("WARNING: %s holds unanswerable questions but --version_2_with_negative is missing: "
                    "evaluating as SQuAD 2.0 anyway (without it every NoAns question would score 0).", path)
    elif version_2 and not data_v2:
        log.warning("WARNING: --version_2_with_negative is set but %s has no unanswerable question: "
                    "evaluating as SQuAD 1.1.", path)
    return data_v2


def main(argv: list[str]) -> int:
    args, qa = parse_args(argv, TrainingArguments, QAArguments, prog="hone qa",
                          description="Fine-tune and evaluate extractive question answering (SQuAD 1.1/2.0).")
    if not (qa.model_name_or_path or qa.config_name):
        raise SystemExit("hone qa: give --model_name_or_path (a checkpoint folder) or --config_name (from scratch).")
    if args.do_train and not qa.train_file:
        raise SystemExit("hone qa: --do_train needs --train_file (SQuAD JSON or JSON Lines; no dataset hub is reached).")
    if args.do_eval and not qa.validation_file:
        raise SystemExit("hone qa: --do_eval needs --validation_file (SQuAD JSON or JSON Lines).")
    if args.do_predict and not qa.test_file:
        raise SystemExit("hone qa: --do_predict needs --test_file (SQuAD JSON or JSON Lines; answers optional).")
    if args.do_train:
        check_output_dir(args)  # before minutes of loading, not after
    profile = resolve_profile(args.hardware, args.hardware_overrides)
    run = start_run(args, profile, argv, prog="hone qa")

    tokenizer = load_tokenizer(qa.tokenizer_name or qa.model_name_or_path or qa.config_name)
    model = load_task_model(qa, task="qa")
    order = dict(question_first=not qa.passage_first, question_prefix="Q: " if qa.passage_first else "")
    settings = dict(max_seq_length=qa.max_seq_length, doc_stride=qa.doc_stride,
                    max_query_length=qa.max_query_length, pad_to_max_length=qa.pad_to_max_length,
                    cache_dir=qa.cache_dir, **order)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate = Collator(pad_token_id=pad_id)

    def load(path: str, split: str) -> tuple[list[dict], object, bool]:
        """Examples and features of one file, and whether it is SQuAD 2.0."""
        limit = args.max_train_samples if split == "train" else args.max_eval_samples
        examples = read_squad(path)[:limit]
        unlabelled = split == "test" and not _has_answers(examples)
        version_2 = qa.version_2_with_negative if unlabelled else _check_version(
            examples, qa.version_2_with_negative, path)
        features = load_or_build_features(path, tokenizer, split="train" if split == "train" else "eval",
                                          examples=examples, **settings)
        return examples, features, version_2

    def score(model, examples, features, version_2: bool, prefix: str) -> dict:
        """Predict, post-process, write the prediction files; official metrics where answers exist."""
        start, end = _predict_logits(model, features, collate, args, profile)
        result = postprocess_qa_predictions(
            examples, features.example_index, features.offsets, start, end,
            version_2_with_negative=version_2, n_best_size=qa.n_best_size,
            max_answer_length=qa.max_answer_length, null_score_diff_threshold=qa.null_score_diff_threshold)
        if is_main_process():
            write_predictions(args.output_dir, result, prefix=None if prefix == "eval" else prefix)
        metrics = {f"{prefix}_samples": len(features)}
        if _has_answers(examples):  # test files may come without answers
            scores = squad_evaluate(examples, result.predictions, na_probs=result.null_odds if version_2 else None)
            metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
        return metrics

    evaluate = None
    if args.do_eval:
        eval_data = load(qa.validation_file, "eval")

        def evaluate(model) -> dict:
            return score(model, *eval_data, prefix="eval")

    train_metrics = eval_metrics = None
    if args.do_train:
        _, train_features, _ = load(qa.train_file, "train")
        trainer = Trainer(model, args, profile, train_features, collate, eval_fn=evaluate)
        train_metrics = trainer.train()
        model = trainer.model
        tokenizer.save(args.output_dir)
    if args.do_eval:
        eval_metrics = evaluate(model)
    predict_metrics = score(model, *load(qa.test_file, "test"), prefix="predict") if args.do_predict else None
    finish_run(run, args, profile, train_metrics=train_metrics, eval_metrics=eval_metrics,
               predict_metrics=predict_metrics,
               model_name_or_path=qa.model_name_or_path or qa.config_name, task_name="Question Answering",
               task_type="question-answering",
               dataset_names=[p for p in (qa.train_file, qa.validation_file) if p],
               index_metrics={"exact": "eval_exact", "f1": "eval_f1"})
    return 0


def _predict_logits(model, features, collate, args, profile) -> tuple[np.ndarray, np.ndarray]:
    """Start/end logits for every feature as (F, T) float32 arrays, padded with -inf."""
    width = features.offsets.shape[1]
    start = np.full((len(features), width), -np.inf, dtype=np.float32)
    end = np.full_like(start, -np.inf)
    row = 0
    for out in predict(model, features, collate, args.per_device_eval_batch_size, profile):
        s, e = np.asarray(out["start_logits"], dtype=np.float32), np.asarray(out["end_logits"], dtype=np.float32)
        start[row: row + len(s), : s.shape[1]] = s
        end[row: row + len(e), : e.shape[1]] = e
        row += len(s)
    return start, end


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
