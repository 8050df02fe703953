"""Official SQuAD v1.1/v2.0 evaluation and vectorised QA post-processing.

`squad_evaluate` is the algorithm of the official evaluate-v2.0.py (which also scores v1.1
data); `postprocess_qa_predictions` turns per-window start/end logits into answer texts with
the semantics of transformers' examples/pytorch/question-answering/utils_qa.py, but builds and
ranks the candidates with numpy instead of a Python loop over 20 x 20 pairs per window.
"""

from __future__ import annotations

import collections
import math
import re
import string
from dataclasses import dataclass, field

import numpy as np

from hone.errors import SquadFormatError

__all__ = [
    "SquadFormatError", "QAPredictions", "normalize_answer", "compute_exact", "compute_f1",
    "qid_to_has_ans", "gold_answers", "squad_evaluate", "postprocess_qa_predictions",
]


# ----------------------------------------------------------------------------- official metric

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop articles, collapse whitespace (official order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Token-bag F1; when either side has no tokens, 1 if both are empty else 0."""
    gold_toks, pred_toks = _tokens(a_gold), _tokens(a_pred)
    if not gold_toks or not pred_toks:
        return int(gold_toks == pred_toks)
    num_same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if num_same == 0:
        return 0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _questions(dataset) -> list[tuple[str, list[str]]]:
    """(id, raw answer texts) per question, in dataset order, from either accepted layout:
    the official JSON's "data" list (articles -> paragraphs -> qas) or example dicts
    {"id", ..., "answers": {"text": [...], "answer_start": [...]}}."""
    if isinstance(dataset, dict) and "data" in dataset:
        dataset = dataset["data"]
    if not isinstance(dataset, list) or not dataset:
        raise SquadFormatError("SQuAD dataset must be a non-empty list of articles (the JSON 'data' "
                               "list) or of example dicts with 'id' and 'answers'")
    out = []
    try:
        if "paragraphs" in dataset[0]:
            for article in dataset:
                for paragraph in article["paragraphs"]:
                    for qa in paragraph["qas"]:
                        out.append((qa["id"], [a["text"] for a in qa["answers"]]))
        else:
            for ex in dataset:
                out.append((ex["id"], list(ex["answers"]["text"])))
    except (KeyError, TypeError) as e:
        raise SquadFormatError(f"SQuAD dataset is malformed near question {len(out)} (missing or wrong field "
                               f"{e}); expected articles -> paragraphs -> qas with 'id' and 'answers', "
                               "or example dicts with 'id' and 'answers': {'text': [...]}") from None
    return out


def qid_to_has_ans(dataset) -> dict[str, bool]:
    """Question id -> whether it has any gold answer (False = unanswerable, SQuAD 2.0)."""
    return {qid: bool(texts) for qid, texts in _questions(dataset)}


def gold_answers(texts: list[str]) -> list[str]:
    """Gold answers that survive normalization; [""] for an unanswerable question."""
    return [t for t in texts if normalize_answer(t)] or [""]


def _best_threshold(preds: dict[str, str], scores: dict[str, float], na_probs: dict[str, float],
                    has_ans: dict[str, bool], total: int) -> tuple[float, float]:
    """The official find_best_thresh: predict "no answer" for every question whose na_prob is
    <= t and keep the prediction otherwise; walk t up through the na_probs (stable sort, so
    ties keep the na_probs order) and keep the first t with the highest total score.
    Missing predictions contribute 0 at every threshold."""
    qids = [q for q in sorted(na_probs, key=lambda k: na_probs[k]) if q in scores]
    diffs = [scores[q] if has_ans[q] else (-1 if preds[q] else 0) for q in qids]
    start = sum(1 for q in scores if not has_ans[q])
    running = np.cumsum(np.array([start, *diffs], dtype=np.float64))  # sequential, like cur += diff
    i = int(np.argmax(running))  # first occurrence of the maximum
    if running[i] > start:
        return 100.0 * float(running[i]) / total, float(na_probs[qids[i - 1]])
    return 100.0 * start / total, 0.0


def squad_evaluate(dataset, predictions: dict[str, str], na_probs: dict[str, float] | None = None,
                   na_prob_thresh: float = 1.0) -> dict:
    """The official SQuAD 2.0 evaluation dict (exact, f1, total, HasAns_*, NoAns_*, and best_*
    when na_probs are given); on v1.1 data it is the same algorithm without NoAns keys.

    Every dataset question counts in the totals; a question without a prediction scores 0
    (the v1.1 script's rule; the v2.0 script would crash). Prediction ids not in the dataset are
    ignored. na_probs must cover every predicted dataset question; a question whose na_prob
    exceeds na_prob_thresh is scored as a "no answer" prediction.
    """
    questions = _questions(dataset)
    has_ans = {qid: bool(texts) for qid, texts in questions}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid, texts in questions:
        if qid not in predictions:
            continue
        pred = predictions[qid]
        if not isinstance(pred, str):
            raise SquadFormatError(f"prediction for question '{qid}' is {type(pred).__name__}, expected a string "
                                   "('' means no answer)")
        golds = gold_answers(texts)
        exact_raw[qid] = max(compute_exact(a, pred) for a in golds)
        f1_raw[qid] = max(compute_f1(a, pred) for a in golds)

    if na_probs is None:
        probs = dict.fromkeys(exact_raw, 0.0)
    else:
        missing = [qid for qid in exact_raw if qid not in na_probs]
        if missing:
            raise SquadFormatError(f"the no-answer probabilities (na_probs, --na-prob-file) lack {len(missing)} "
                                   f"predicted question id(s), e.g. '{missing[0]}': give one (e.g. the null odds) "
                                   "for every prediction")
        probs = na_probs

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        out = {}
        for qid, answerable in has_ans.items():
            if qid not in raw:  # missing prediction
                out[qid] = 0
            elif probs[qid] > na_prob_thresh:  # counts as a "no answer" prediction
                out[qid] = float(not answerable)
            else:
                out[qid] = raw[qid]
        return out

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    result = collections.OrderedDict()

    def merge(prefix: str, qids: list[str]) -> None:
        total = len(qids)
        result[f"{prefix}exact"] = 100.0 * sum(exact[q] for q in qids) / total
        result[f"{prefix}f1"] = 100.0 * sum(f1[q] for q in qids) / total
        result[f"{prefix}total"] = total

    merge("", list(has_ans))
    for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
        qids = [q for q, v in has_ans.items() if v is wanted]
        if qids:
            merge(prefix, qids)
    if na_probs is not None:
        total = len(has_ans)
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(predictions, exact_raw, probs, has_ans, total)
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(predictions, f1_raw, probs, has_ans, total)
    return result


# ----------------------------------------------------------------------------- post-processing

@dataclass
class QAPredictions:
    """Post-processed answers, keyed by example id in example order.

    null_odds: null score minus the best non-null score (SQuAD 2.0 only; the na_prob that
    squad_evaluate takes). nbest entries: {"start_logit", "end_logit", "text", "probability"}.
    spans: the (start, end) character span of each nbest entry in its context, (0, 0) for the
    null answer and the placeholder (kept out of nbest, whose file matches run_qa's).
    """
    predictions: dict[str, str]
    nbest: dict[str, list[dict]]
    null_odds: dict[str, float] = field(default_factory=dict)
    version_2_with_negative: bool = False
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def files(self, prefix: str | None = None) -> dict[str, dict]:
        """The files run_qa writes, name -> content: predictions.json, nbest_predictions.json and
        (SQuAD 2.0) null_odds.json, each name prefixed with `{prefix}_` when given."""
        files = {"predictions.json": self.predictions, "nbest_predictions.json": self.nbest}
        if self.version_2_with_negative:
            files["null_odds.json"] = self.null_odds
        return {name if prefix is None else f"{prefix}_{name}": content for name, content in files.items()}


def _check_inputs(examples, example_index, offsets, start_logits, end_logits):
    example_index = np.asarray(example_index)
    offsets = np.asarray(offsets)
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    F = example_index.shape[0] if example_index.ndim == 1 else -1
    if F < 0 or not np.issubdtype(example_index.dtype, np.integer):
        raise SquadFormatError(f"example_index must be a 1-D int array (F,), got {example_index.dtype} "
                               f"{example_index.shape}")
    if start_logits.ndim != 2 or start_logits.shape[0] != F or end_logits.shape != start_logits.shape:
        raise SquadFormatError(f"start_logits and end_logits must both be (F, T) with F = {F} features, got "
                               f"{start_logits.shape} and {end_logits.shape}")
    if offsets.shape != (*start_logits.shape, 2):
        raise SquadFormatError(f"offsets must be (F, T, 2) = {(*start_logits.shape, 2)}, got {offsets.shape}")
    for name, x in (("start_logits", start_logits), ("end_logits", end_logits)):
        if not np.issubdtype(x.dtype, np.floating) or np.isnan(x).any():
            raise SquadFormatError(f"{name} must be floating point without NaN (dtype {x.dtype})")
    if F and (example_index.min() < 0 or example_index.max() >= len(examples)):
        raise SquadFormatError(f"example_index holds values outside [0, {len(examples)}): each feature must "
                               "point to a row of the example list")
    no_feature = np.flatnonzero(np.bincount(example_index, minlength=len(examples)) == 0)
    if no_feature.size:
        raise SquadFormatError(f"{no_feature.size} example(s) have no feature, e.g. id "
                               f"'{examples[no_feature[0]]['id']}': build eval features for every example")
    return example_index, offsets, start_logits, end_logits


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the k largest values, largest first; equal values by lower index
    (the order of a stable sort). One partition pass instead of a full sort of each row."""
    T = x.shape[1]
    kth = np.partition(x, T - k, axis=1)[:, T - k, None]                  # (F, 1) k-th largest value
    above, tied = x > kth, x == kth                                       # (F, T)
    room = k - above.sum(axis=1, keepdims=True)                           # tied values that still fit
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))           # exactly k per row
    idx = np.nonzero(chosen)[1].reshape(-1, k)                            # (F, k) ascending index
    order = np.argsort(-np.take_along_axis(x, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def postprocess_qa_predictions(examples: list[dict], example_index, offsets, start_logits, end_logits, *,
                               version_2_with_negative: bool, n_best_size: int = 20,
                               max_answer_length: int = 30,
                               null_score_diff_threshold: float = 0.0) -> QAPredictions:
    """Answer texts from start/end logits, with utils_qa.postprocess_qa_predictions' semantics.

    Shapes: example_index (F,) feature -> example row; offsets (F, T, 2) character spans of
    context tokens, -1 elsewhere; start_logits, end_logits (F, T), CLS at token 0.

    Ordering (utils_qa leaves ties to np.argsort; here they are fixed): each window's top
    n_best_size starts (and ends) are ordered by logit, equal logits by lower token index;
    an example's candidates are ordered by score = start + end logit (in the logits' dtype),
    equal scores in insertion order: window, then start rank, then end rank, with the null
    answer after every candidate of equal score. The null answer is the example's window with
    the smallest CLS score (the first such window).

    Unlike utils_qa, SQuAD 2.0 predicts "" (not the placeholder "empty") when no valid span
    exists; probabilities are computed in float64.
    """
    if n_best_size < 1 or max_answer_length < 1:
        raise SquadFormatError(f"n_best_size ({n_best_size}) and max_answer_length ({max_answer_length}) must be >= 1")
    example_index, offsets, start_logits, end_logits = _check_inputs(
        examples, example_index, offsets, start_logits, end_logits)
    F, T = start_logits.shape
    k = min(n_best_size, T)
    is_context = offsets[..., 0] >= 0                                           # (F, T)

    # top-k starts and ends per window, in descending logit order (stable: lower index first)
    top_s, top_e = _top_k(start_logits, k), _top_k(end_logits, k)               # (F, k) each
    s, e = top_s[:, :, None], top_e[:, None, :]                                 # (F, k, 1), (F, 1, k)
    length = e - s + 1                                                          # (F, k, k)
    valid = (np.take_along_axis(is_context, top_s, 1)[:, :, None]
             & np.take_along_axis(is_context, top_e, 1)[:, None, :]
             & (length >= 1) & (length <= max_answer_length))
    f, si, ei = np.nonzero(valid)                                               # C order = utils_qa's loop order
    cand_s, cand_e = top_s[f, si], top_e[f, ei]                                 # token positions (C,)
    cand_start = start_logits[f, cand_s]
    cand_end = end_logits[f, cand_e]
    cand_score = cand_start + cand_end
    cand_char = np.stack([offsets[f, cand_s, 0], offsets[f, cand_e, 1]], axis=1)  # (C, 2)

    # the null answer: per example, the first window with the smallest CLS score
    feat_null = start_logits[:, 0] + end_logits[:, 0]                           # (F,)
    by_null = np.lexsort((feat_null, example_index))                            # stable: first window wins ties
    first = np.r_[True, example_index[by_null][1:] != example_index[by_null][:-1]]
    null_feat = np.empty(len(examples), dtype=np.int64)
    null_feat[example_index[by_null][first]] = by_null[first]
    null_score = feat_null[null_feat]                                           # (E,)

    # one table of entries: candidates, then (v2) one null per example; rank them per example
    ex = example_index[f]
    score, start, end, char = cand_score, cand_start, cand_end, cand_char
    is_null = np.zeros(len(f), dtype=bool)
    if version_2_with_negative:
        E = len(examples)
        ex = np.r_[ex, np.arange(E)]
        score = np.r_[score, null_score]
        start = np.r_[start, start_logits[null_feat, 0]]
        end = np.r_[end, end_logits[null_feat, 0]]
        char = np.r_[char, np.zeros((E, 2), dtype=char.dtype)]
        is_null = np.r_[is_null, np.ones(E, dtype=bool)]
    order = np.lexsort((np.arange(len(ex)), -score, ex))     # example, score desc, insertion order
    ex_sorted = ex[order]
    group_start = np.searchsorted(ex_sorted, np.arange(len(examples)))
    rank = np.arange(len(order)) - group_start[ex_sorted]
    keep = order[(rank < n_best_size) | is_null[order]]       # the null is kept even outside the n-best

    # per example: texts, probabilities, best non-null answer (at most n_best_size + 1 entries each)
    bounds = np.searchsorted(ex[keep], np.arange(len(examples) + 1))
    k_start, k_end = start[keep].tolist(), end[keep].tolist()
    k_score, k_char = score[keep].tolist(), char[keep].tolist()
    predictions, nbest, spans, best_entry, best_text = {}, {}, {}, [], []
    for i, example in enumerate(examples):
        context = example["context"]
        entries = [{"start_logit": k_start[j], "end_logit": k_end[j], "text": context[k_char[j][0]:k_char[j][1]]}
                   for j in range(bounds[i], bounds[i + 1])]
        scores = k_score[bounds[i]:bounds[i + 1]]
        spans[example["id"]] = [tuple(k_char[j]) for j in range(bounds[i], bounds[i + 1])]
        best = next((j for j, entry in enumerate(entries) if entry["text"]), None)
        if best is None:  # no usable span: utils_qa's placeholder
            entries.insert(0, {"start_logit": 0.0, "end_logit": 0.0, "text": "empty"})
            scores.insert(0, 0.0)
            spans[example["id"]].insert(0, (0, 0))
        top = max(scores)
        exp = [math.exp(x - top) for x in scores]
        total = sum(exp)
        for entry, x in zip(entries, exp):
            entry["probability"] = x / total
        nbest[example["id"]] = entries
        predictions[example["id"]] = entries[0]["text"]
        best_entry.append(-1 if best is None else keep[bounds[i] + best])
        best_text.append("" if best is None else entries[best]["text"])

    if not version_2_with_negative:
        return QAPredictions(predictions, nbest, spans=spans)
    best_entry = np.array(best_entry)
    has_best = best_entry >= 0
    # null minus the best non-null answer's logits, in the logits' dtype as utils_qa computes it
    odds = np.where(has_best, null_score - start[best_entry] - end[best_entry], null_score).tolist()
    null_odds = {}
    for i, example in enumerate(examples):
        null_odds[example["id"]] = odds[i]
        predictions[example["id"]] = "" if odds[i] > null_score_diff_threshold else best_text[i]
    return QAPredictions(predictions, nbest, null_odds, version_2_with_negative=True, spans=spans)
