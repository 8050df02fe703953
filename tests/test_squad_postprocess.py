"""postprocess_qa_predictions against a plain transcription of transformers' utils_qa loop."""

import collections

import numpy as np
import pytest

from hone.metrics.squad import QAPredictions, SquadFormatError, postprocess_qa_predictions

# ------------------------------------------------------------------ reference: utils_qa's loop

def reference_postprocess(examples, example_index, offsets, all_start, all_end, version_2_with_negative,
                          n_best_size=20, max_answer_length=30, null_score_diff_threshold=0.0):
    """utils_qa.postprocess_qa_predictions, transcribed, with two documented changes:
    top-k by np.argsort(-logits, kind="stable") (equal logits: lower index first) instead of
    the unstable np.argsort(logits)[::-1], and SQuAD 2.0 predicting "" when only the
    placeholder "empty" is left."""
    features_per_example = collections.defaultdict(list)
    for i, ex in enumerate(example_index):
        features_per_example[int(ex)].append(i)
    all_predictions, all_nbest, scores_diff = {}, {}, {}
    for ex_i, example in enumerate(examples):
        min_null_prediction = None
        prelim_predictions = []
        for feature_index in features_per_example[ex_i]:
            start_logits = all_start[feature_index]
            end_logits = all_end[feature_index]
            offset_mapping = [None if o[0] < 0 else (int(o[0]), int(o[1])) for o in offsets[feature_index]]
            feature_null_score = start_logits[0] + end_logits[0]
            if min_null_prediction is None or min_null_prediction["score"] > feature_null_score:
                min_null_prediction = {"offsets": (0, 0), "score": feature_null_score,
                                       "start_logit": start_logits[0], "end_logit": end_logits[0]}
            start_indexes = np.argsort(-start_logits, kind="stable")[:n_best_size].tolist()
            end_indexes = np.argsort(-end_logits, kind="stable")[:n_best_size].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    if (start_index >= len(offset_mapping) or end_index >= len(offset_mapping)
                            or offset_mapping[start_index] is None or offset_mapping[end_index] is None):
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    prelim_predictions.append({
                        "offsets": (offset_mapping[start_index][0], offset_mapping[end_index][1]),
                        "score": start_logits[start_index] + end_logits[end_index],
                        "start_logit": start_logits[start_index], "end_logit": end_logits[end_index]})
        if version_2_with_negative:
            prelim_predictions.append(min_null_prediction)
            null_score = min_null_prediction["score"]
        predictions = sorted(prelim_predictions, key=lambda x: x["score"], reverse=True)[:n_best_size]
        if version_2_with_negative and not any(p["offsets"] == (0, 0) for p in predictions):
            predictions.append(min_null_prediction)
        context = example["context"]
        for pred in predictions:
            offs = pred.pop("offsets")
            pred["text"] = context[offs[0]:offs[1]]
        if len(predictions) == 0 or (len(predictions) == 1 and predictions[0]["text"] == ""):
            predictions.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        scores = np.array([pred.pop("score") for pred in predictions])
        exp_scores = np.exp(scores - np.max(scores))
        probs = exp_scores / exp_scores.sum()
        for prob, pred in zip(probs, predictions):
            pred["probability"] = prob
        if not version_2_with_negative:
            all_predictions[example["id"]] = predictions[0]["text"]
        else:
            i = 0
            while predictions[i]["text"] == "":
                i += 1
            best_non_null_pred = predictions[i]
            score_diff = null_score - best_non_null_pred["start_logit"] - best_non_null_pred["end_logit"]
            scores_diff[example["id"]] = float(score_diff)
            if score_diff > null_score_diff_threshold or best_non_null_pred["text"] == "empty":
                all_predictions[example["id"]] = ""
            else:
                all_predictions[example["id"]] = best_non_null_pred["text"]
        all_nbest[example["id"]] = [{k: (float(v) if isinstance(v, np.floating) else v) for k, v in p.items()}
                                    for p in predictions]
    return all_predictions, all_nbest, scores_diff


# ------------------------------------------------------------------ synthetic features

def make_features(rng, n_examples, T=48, window=24, stride=10, shuffle=False):
    """Examples with word contexts and run_qa-like windows: [CLS] question [SEP] context [SEP] pad.
    Offsets are the words' character spans on context tokens and -1 elsewhere."""
    examples, rows = [], []
    for e in range(n_examples):
        words = [f"w{e}_{i}" + "x" * int(rng.integers(0, 3)) for i in range(int(rng.integers(3, 60)))]
        context = " ".join(words)
        spans, pos = [], 0
        for w in words:
            spans.append((pos, pos + len(w)))
            pos += len(w) + 1
        examples.append({"id": f"id{e}", "title": "t", "context": context, "question": "q?",
                         "answers": {"text": [], "answer_start": []}})
        q_len = int(rng.integers(2, 6))
        span_per_window = min(window, T - q_len - 3)
        start = 0
        while True:
            offs = np.full((T, 2), -1, dtype=np.int64)
            chunk = spans[start:start + span_per_window]
            offs[q_len + 2:q_len + 2 + len(chunk)] = chunk
            rows.append((e, offs))
            if start + span_per_window >= len(spans):
                break
            start += stride
    order = rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
    example_index = np.array([rows[i][0] for i in order])
    offsets = np.stack([rows[i][1] for i in order])
    return examples, example_index, offsets


def assert_same(ours: QAPredictions, ref, v2, prob_tol=1e-6):
    ref_preds, ref_nbest, ref_odds = ref
    assert ours.predictions == ref_preds
    assert list(ours.nbest) == list(ref_nbest)
    for qid, ref_list in ref_nbest.items():
        got = ours.nbest[qid]
        assert [p["text"] for p in got] == [p["text"] for p in ref_list], qid
        for key, tol in (("probability", prob_tol), ("start_logit", 1e-6), ("end_logit", 1e-6)):
            assert [p[key] for p in got] == pytest.approx([p[key] for p in ref_list], abs=tol), (qid, key)
    if v2:
        assert list(ours.null_odds) == list(ref_odds)
        assert [ours.null_odds[q] for q in ref_odds] == pytest.approx(list(ref_odds.values()), abs=1e-6)
    else:
        assert ours.null_odds == {}


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("case", ["float32", "ties", "float16-ties", "small-nbest", "shuffled"])
def test_matches_reference_loop(v2, case):
    rng = np.random.default_rng([int(v2), len(case)])
    examples, example_index, offsets = make_features(rng, 80, shuffle=case == "shuffled")
    F, T = offsets.shape[:2]
    assert F > 150 and np.bincount(example_index).max() >= 3
    start = rng.standard_normal((F, T)).astype(np.float32) * 3
    end = rng.standard_normal((F, T)).astype(np.float32) * 3
    start[:, 0] += rng.uniform(0, 8, F).astype(np.float32)  # CLS strong enough that "no answer" sometimes wins
    end[:, 0] += rng.uniform(0, 8, F).astype(np.float32)
    if "ties" in case:  # coarse logits: many equal logits and equal sums
        start, end = np.round(start * 2) / 2, np.round(end * 2) / 2
    if case == "float16-ties":
        start, end = start.astype(np.float16), end.astype(np.float16)
    kwargs = dict(n_best_size=5, max_answer_length=4) if case == "small-nbest" else {}
    ours = postprocess_qa_predictions(examples, example_index, offsets, start, end,
                                      version_2_with_negative=v2, **kwargs)
    ref = reference_postprocess(examples, example_index, offsets, start, end, v2, **kwargs)
    # utils_qa takes the softmax in the logits' dtype, hone in float64: float16 differs by its precision
    assert_same(ours, ref, v2, prob_tol=1e-6 if start.dtype == np.float32 else 2e-3)
    if v2:  # both outcomes occur, so the threshold comparison is exercised
        assert 0 < sum(p == "" for p in ours.predictions.values()) < len(examples)


def _one_example(context_words, windows, T=12, q_len=2):
    """One example whose windows hold the given word ranges: [CLS] q q [SEP] ctx... [SEP] pad."""
    context = " ".join(context_words)
    spans, pos = [], 0
    for w in context_words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    offsets = np.full((len(windows), T, 2), -1, dtype=np.int64)
    for f, (a, b) in enumerate(windows):
        offsets[f, q_len + 2:q_len + 2 + b - a] = spans[a:b]
    example = {"id": "x", "title": "t", "context": context, "question": "q", "answers": {"text": [], "answer_start": []}}
    return [example], np.zeros(len(windows), dtype=np.int64), offsets


def test_answer_across_window_border_comes_from_the_window_holding_it():
    words = [f"w{i}" for i in range(10)]
    examples, example_index, offsets = _one_example(words, [(0, 6), (4, 10)])
    ctx0 = 4  # first context token position
    start, end = np.zeros((2, 12), np.float32), np.zeros((2, 12), np.float32)
    start[0, ctx0 + 4] = 5.0        # window 0: strong start at w4 ...
    end[0, 1] = 9.0                 # ... but its best end is a question token (invalid)
    end[0, ctx0 + 5] = 1.0          # w4..w5 = 6.0
    start[1, ctx0 + 0] = 4.0        # window 1: w4 ..
    end[1, ctx0 + 3] = 4.0          # .. w7 = 8.0
    start[:, 0] = end[:, 0] = -1.0  # null score -2
    for v2 in (False, True):
        out = postprocess_qa_predictions(examples, example_index, offsets, start, end, version_2_with_negative=v2)
        assert out.predictions["x"] == "w4 w5 w6 w7"
        assert [p["text"] for p in out.nbest["x"][:2]] == ["w4 w5 w6 w7", "w4 w5"]
        assert_same(out, reference_postprocess(examples, example_index, offsets, start, end, v2), v2)
    assert out.null_odds["x"] == pytest.approx(-2.0 - 8.0)


def test_no_valid_candidate():
    examples, example_index, offsets = _one_example(["a", "b", "c"], [(0, 3)])
    start, end = np.zeros((1, 12), np.float32), np.zeros((1, 12), np.float32)
    start[0, [1, 2]] = end[0, [8, 9]] = 5.0  # top-2 starts on the question, top-2 ends on padding
    start[0, 0], end[0, 0] = 0.5, 0.25
    v1 = postprocess_qa_predictions(examples, example_index, offsets, start, end,
                                    version_2_with_negative=False, n_best_size=2)
    assert v1.predictions == {"x": "empty"}
    assert v1.nbest["x"] == [{"start_logit": 0.0, "end_logit": 0.0, "text": "empty", "probability": 1.0}]
    v2 = postprocess_qa_predictions(examples, example_index, offsets, start, end,
                                    version_2_with_negative=True, n_best_size=2)
    assert v2.predictions == {"x": ""}
    assert [p["text"] for p in v2.nbest["x"]] == ["empty", ""]
    assert v2.null_odds == {"x": 0.75}  # null score minus the placeholder's 0 + 0
    p = np.exp([0.0, 0.75]) / np.exp([0.0, 0.75]).sum()
    assert [e["probability"] for e in v2.nbest["x"]] == pytest.approx(p.tolist())


def test_null_tie_keeps_the_span_and_length_limit():
    examples, example_index, offsets = _one_example(["a", "b", "c", "d"], [(0, 4)])
    start, end = np.zeros((1, 12), np.float32), np.zeros((1, 12), np.float32)
    start[0, 0], end[0, 0] = 2.0, 1.0     # null = 3
    start[0, 4], end[0, 7] = 2.5, 2.5     # "a b c d" = 5, but 4 tokens long
    end[0, 5] = 0.5                       # "a b" = 3: ties with the null
    out = postprocess_qa_predictions(examples, example_index, offsets, start, end,
                                     version_2_with_negative=True, max_answer_length=3)
    assert [p["text"] for p in out.nbest["x"][:2]] == ["a b", ""]  # span before the null on a tie
    assert out.null_odds["x"] == 0.0 and out.predictions["x"] == "a b"  # 0 is not > threshold 0
    out = postprocess_qa_predictions(examples, example_index, offsets, start, end, version_2_with_negative=True,
                                     max_answer_length=3, null_score_diff_threshold=-0.1)
    assert out.predictions["x"] == ""
    out = postprocess_qa_predictions(examples, example_index, offsets, start, end,
                                     version_2_with_negative=True, max_answer_length=4)
    assert out.predictions["x"] == "a b c d" and out.null_odds["x"] == -2.0


def test_bad_inputs():
    examples, example_index, offsets = _one_example(["a", "b"], [(0, 2)])
    logits = np.zeros((1, 12), np.float32)
    with pytest.raises(SquadFormatError, match="offsets"):
        postprocess_qa_predictions(examples, example_index, offsets[:, :6], logits, logits, version_2_with_negative=True)
    with pytest.raises(SquadFormatError, match="NaN"):
        postprocess_qa_predictions(examples, example_index, offsets, logits * np.nan, logits,
                                   version_2_with_negative=True)
    two = examples + [{**examples[0], "id": "y"}]
    with pytest.raises(SquadFormatError, match="'y'"):
        postprocess_qa_predictions(two, example_index, offsets, logits, logits, version_2_with_negative=False)
    with pytest.raises(SquadFormatError, match="example_index"):
        postprocess_qa_predictions(examples, example_index + 1, offsets, logits, logits, version_2_with_negative=False)


@pytest.mark.parametrize("v2", [False, True])
def test_prediction_files(v2):
    rng = np.random.default_rng(0)
    examples, example_index, offsets = make_features(rng, 5)
    logits = rng.standard_normal((2, *offsets.shape[:2])).astype(np.float32)
    out = postprocess_qa_predictions(examples, example_index, offsets, *logits, version_2_with_negative=v2)
    files = out.files(prefix="eval")
    names = ["eval_predictions.json", "eval_nbest_predictions.json"] + (["eval_null_odds.json"] if v2 else [])
    assert list(files) == names
    assert files["eval_predictions.json"] is out.predictions and files["eval_nbest_predictions.json"] is out.nbest
    if v2:
        assert files["eval_null_odds.json"] is out.null_odds
    assert list(out.files())[0] == "predictions.json"
