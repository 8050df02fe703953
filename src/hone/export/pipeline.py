"""`hone.pipeline(...)`: question answering and text classification from a checkpoint folder,
an export folder or an .onnx file, on any backend of hone.export.runtime.

Question answering does exactly what `hone qa` does at evaluation: the same features
(hone.data.squad.prepare_eval_features: left-stripped questions, long contexts cut into windows
sharing `doc_stride` tokens) and the same post-processing
(hone.metrics.squad.postprocess_qa_predictions: n-best spans over every window of an example,
the SQuAD 2.0 null answer when `null - best > null_score_diff_threshold`). A QA answer's score
is its probability among the example's n-best answers (as nbest_predictions.json holds it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hone.data.squad import QAFeatures, prepare_eval_features
from hone.data.tokenizer import HoneTokenizer, load_tokenizer
from hone.errors import HoneError
from hone.export import inputs
from hone.export.runtime import (
    Backend,
    is_onnx,
    load_backend,
    make_batches,
    read_export_report,
    run_batches,
    stack_rows,
)
from hone.metrics.squad import QAPredictions, postprocess_qa_predictions
from hone.models.base import ModelConfig, PreTrainedModule
from hone.models.checkpoint import load_config

TASKS = {"question-answering": "qa", "qa": "qa", "text-classification": "classification",
         "sentiment-analysis": "classification", "classification": "classification"}


class PipelineError(HoneError, ValueError):
    """A pipeline asked for something it cannot do; says which argument and the fix."""


def _folder_of(model: str | Path) -> Path:
    path = Path(model)
    return path.parent if path.suffix == ".onnx" else path


class QuestionAnsweringPipeline:
    """Answers questions about contexts; settings as `hone qa` names them."""

    def __init__(self, backend: Backend, tokenizer: HoneTokenizer, config: ModelConfig, *,
                 max_seq_length: int = 384, doc_stride: int = 128, max_query_length: int | None = None,
                 passage_first: bool = False, n_best_size: int = 20, max_answer_length: int = 30,
                 version_2_with_negative: bool = False, null_score_diff_threshold: float = 0.0,
                 batch_size: int = 32):
        limit = config.max_positions
        if max_seq_length > limit:
            raise PipelineError(f"max_seq_length {max_seq_length} is longer than the model's {limit} positions; "
                                f"pass max_seq_length <= {limit}")
        self.backend, self.tokenizer, self.config = backend, tokenizer, config
        self.feature_settings = dict(max_seq_length=max_seq_length, doc_stride=doc_stride,
                                     max_query_length=max_query_length, question_first=not passage_first,
                                     question_prefix="Q: " if passage_first else "")
        self.n_best_size, self.max_answer_length = n_best_size, max_answer_length
        self.version_2_with_negative = version_2_with_negative
        self.null_score_diff_threshold = null_score_diff_threshold
        self.batch_size = batch_size

    def features(self, examples: Sequence[dict]) -> QAFeatures:
        return prepare_eval_features(examples, self.tokenizer, progress=False, **self.feature_settings)

    def logits(self, features: QAFeatures) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits of every window, (F, max_seq_length), -inf past each window's end."""
        rows = [features[i] for i in range(len(features))]
        batches = make_batches(rows, self.batch_size, features.pad_token_id, self.backend.input_names)
        outputs = list(run_batches(self.backend, batches))
        width = features.max_seq_length
        return stack_rows(outputs, "start_logits", width), stack_rows(outputs, "end_logits", width)

    def postprocess(self, examples: Sequence[dict], features: QAFeatures, start: np.ndarray, end: np.ndarray,
                    version_2_with_negative: bool | None = None) -> QAPredictions:
        v2 = self.version_2_with_negative if version_2_with_negative is None else version_2_with_negative
        return postprocess_qa_predictions(
            list(examples), features.example_index, features.offsets, start, end, version_2_with_negative=v2,
            n_best_size=self.n_best_size, max_answer_length=self.max_answer_length,
            null_score_diff_threshold=self.null_score_diff_threshold)

    def predict(self, examples: Sequence[dict], version_2_with_negative: bool | None = None) -> QAPredictions:
        """Predictions for SQuAD example dicts, as `hone qa` makes them (write them with
        hone.metrics.squad.write_predictions)."""
        features = self.features(examples)
        return self.postprocess(examples, features, *self.logits(features), version_2_with_negative)

    def __call__(self, question: str | Sequence[str] | None = None, context: str | Sequence[str] | None = None,
                 *, examples: Sequence[dict] | None = None) -> dict | list[dict]:
        """The answer to `question` in `context` (or to each pair of two lists, or to each example
        dict): {"id", "answer", "score", "start", "end"} with character offsets into the context,
        and "null_odds" when SQuAD 2.0 answers are on ("" means no answer)."""
        single = isinstance(question, str)
        if examples is None:
            if question is None or context is None:
                raise PipelineError("give question= and context= (strings or lists of equal length), or examples=")
            questions = [question] if single else list(question)
            contexts = [context] * len(questions) if isinstance(context, str) else list(context)
            if len(contexts) != len(questions):
                raise PipelineError(f"{len(questions)} questions but {len(contexts)} contexts; pass one context "
                                    "per question, or one for all")
            examples = [{"id": str(i), "question": q, "context": c, "answers": {"text": [], "answer_start": []}}
                        for i, (q, c) in enumerate(zip(questions, contexts))]
        result = self.predict(examples)
        answers = []
        for example in examples:
            qid = example["id"]
            text = result.predictions[qid]
            k = next(j for j, entry in enumerate(result.nbest[qid]) if entry["text"] == text)  # "" is the null
            start, end = result.spans[qid][k]
            answer = {"id": qid, "answer": text, "score": result.nbest[qid][k]["probability"],
                      "start": start, "end": end}
            if result.version_2_with_negative:
                answer["null_odds"] = result.null_odds[qid]
            answers.append(answer)
        return answers[0] if single and len(answers) == 1 else answers


class TextClassificationPipeline:
    """Labels texts (or text pairs) with the model's id2label names and scores: softmax for
    single-label models, sigmoid for multi-label ones, the raw value for regression."""

    def __init__(self, backend: Backend, tokenizer: HoneTokenizer, config: ModelConfig, *,
                 max_length: int | None = None, batch_size: int = 32):
        self.backend, self.tokenizer, self.config = backend, tokenizer, config
        self.max_length = min(max_length or config.max_positions, config.max_positions)
        self.batch_size = batch_size
        self.pad_token_id = next((i for i in (config.pad_token_id, tokenizer.pad_token_id) if i is not None), 0)

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """(N, num_labels) logits, in input order."""
        rows = inputs.encode_rows(self.tokenizer, texts, pairs, self.max_length)
        batches = make_batches(rows, self.batch_size, self.pad_token_id, self.backend.input_names)
        return stack_rows(list(run_batches(self.backend, batches)), "logits")

    def scores(self, logits: np.ndarray) -> np.ndarray:
        problem = self.config.problem_type or ("regression" if self.config.num_labels == 1
                                               else "single_label_classification")
        if problem == "regression":
            return logits
        if problem == "multi_label_classification":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return shifted / shifted.sum(-1, keepdims=True)

    def __call__(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, *,
                 top_k: int | None = 1) -> dict | list:
        """{"label", "score"} for a text; a list of them (best first) when top_k > 1 or None (all
        labels); one such result per text for a list of texts."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = None if text_pair is None else [text_pair] if isinstance(text_pair, str) else list(text_pair)
        if pairs is not None and len(pairs) != len(texts):
            raise PipelineError(f"{len(texts)} texts but {len(pairs)} text pairs; pass one pair per text")
        scores = self.scores(self.logits(texts, pairs))
        names = self.config.id2label
        results = []
        for row in scores:
            ranked = [{"label": names[int(i)], "score": float(row[i])} for i in np.argsort(-row, kind="stable")]
            results.append(ranked[0] if top_k == 1 else ranked[:top_k])
        return results[0] if single else results


def pipeline(task: str, model: str | Path | PreTrainedModule, *, tokenizer: HoneTokenizer | str | Path | None = None,
             backend: str | None = None, precision: str = "fp32", device: str = "cpu", threads: int | None = None,
             batch_size: int = 32, **settings) -> QuestionAnsweringPipeline | TextClassificationPipeline:
    """A ready pipeline. `task`: "question-answering" or "text-classification". `model`: a
    checkpoint folder, an export folder / .onnx file (served by onnxruntime), or a loaded hone
    model (then pass `tokenizer`). `backend` (default: onnxruntime for ONNX, else hone's unpadded
    torch path, which computes real tokens only) and `precision` as in hone.export.runtime.
    Other keyword arguments are the task's settings (max_seq_length, doc_stride,
    version_2_with_negative, null_score_diff_threshold, ...; max_length for classification)."""
    if task not in TASKS:
        raise PipelineError(f"unknown pipeline task {task!r}; choose one of {list(TASKS)}")
    kind = TASKS[task]
    if isinstance(model, PreTrainedModule):
        if tokenizer is None:
            raise PipelineError("a loaded model needs tokenizer= (a HoneTokenizer or its folder)")
        config = model.config
        backend = backend or "torch-unpadded"
    else:
        folder = _folder_of(model)
        if not (folder / "config.json").is_file():
            raise PipelineError(f"{model}: expected a checkpoint folder, an export folder or an .onnx file with "
                                "config.json beside it")
        config = load_config(folder)
        backend = backend or ("onnxruntime" if is_onnx(model) else "torch-unpadded")
        report = read_export_report(folder)
        if report is not None and report["task"] != kind:
            raise PipelineError(f"{folder} was exported for --task {report['task']}, not {kind}")
        tokenizer = tokenizer or folder
    if not isinstance(tokenizer, HoneTokenizer):
        tokenizer = load_tokenizer(tokenizer)
    runner = load_backend(model, backend, precision, task=kind, device=device, threads=threads)
    cls = QuestionAnsweringPipeline if kind == "qa" else TextClassificationPipeline
    try:
        return cls(runner, tokenizer, config, batch_size=batch_size, **settings)
    except TypeError as err:
        raise PipelineError(f"{task} pipeline: {err}") from None

