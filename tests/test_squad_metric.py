"""hone.metrics.squad.squad_evaluate against the official SQuAD 2.0 algorithm.

`official_v2` below is a plain transcription of the official evaluate-v2.0.py main(), loops
and all, kept independent of hone's code.
"""

import collections
import json
import random
import re
import string

import pytest

from hone.metrics.squad import (
    SquadFormatError,
    compute_exact,
    compute_f1,
    normalize_answer,
    squad_evaluate,
)
from paths import DATA as SHARED_DATA

DATA = SHARED_DATA / "squad"


# ------------------------------------------------------------------ official evaluate-v2.0.py, transcribed

def _norm(s):
    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _get_tokens(s):
    if not s:
        return []
    return _norm(s).split()


def _exact(a_gold, a_pred):
    return int(_norm(a_gold) == _norm(a_pred))


def _f1(a_gold, a_pred):
    gold_toks = _get_tokens(a_gold)
    pred_toks = _get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def official_v2(dataset, preds, na_probs=None, na_prob_thresh=1.0):
    has_na_file = na_probs is not None
    if na_probs is None:
        na_probs = {k: 0.0 for k in preds}
    qid_to_has_ans = {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid_to_has_ans[qa["id"]] = bool(qa["answers"])
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]

    exact_raw, f1_raw = {}, {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                gold_answers = [a["text"] for a in qa["answers"] if _norm(a["text"])]
                if not gold_answers:
                    gold_answers = [""]
                if qid not in preds:
                    continue
                a_pred = preds[qid]
                exact_raw[qid] = max(_exact(a, a_pred) for a in gold_answers)
                f1_raw[qid] = max(_f1(a, a_pred) for a in gold_answers)

    def apply_no_ans_threshold(scores):
        new_scores = {}
        for qid, s in scores.items():
            if na_probs[qid] > na_prob_thresh:
                new_scores[qid] = float(not qid_to_has_ans[qid])
            else:
                new_scores[qid] = s
        return new_scores

    def make_eval_dict(exact_scores, f1_scores, qid_list=None):
        if not qid_list:
            total = len(exact_scores)
            return collections.OrderedDict([
                ("exact", 100.0 * sum(exact_scores.values()) / total),
                ("f1", 100.0 * sum(f1_scores.values()) / total),
                ("total", total)])
        total = len(qid_list)
        return collections.OrderedDict([
            ("exact", 100.0 * sum(exact_scores[k] for k in qid_list) / total),
            ("f1", 100.0 * sum(f1_scores[k] for k in qid_list) / total),
            ("total", total)])

    def find_best_thresh(scores):
        num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
        cur_score = num_no_ans
        best_score = cur_score
        best_thresh = 0.0
        qid_list = sorted(na_probs, key=lambda k: na_probs[k])
        for qid in qid_list:
            if qid not in scores:
                continue
            if qid_to_has_ans[qid]:
                diff = scores[qid]
            else:
                diff = -1 if preds[qid] else 0
            cur_score += diff
            if cur_score > best_score:
                best_score = cur_score
                best_thresh = na_probs[qid]
        return 100.0 * best_score / len(scores), best_thresh

    exact_thresh = apply_no_ans_threshold(exact_raw)
    f1_thresh = apply_no_ans_threshold(f1_raw)
    out_eval = make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids).items():
            out_eval["HasAns_" + k] = v
    if no_ans_qids:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids).items():
            out_eval["NoAns_" + k] = v
    if has_na_file:
        out_eval["best_exact"], out_eval["best_exact_thresh"] = find_best_thresh(exact_raw)
        out_eval["best_f1"], out_eval["best_f1_thresh"] = find_best_thresh(f1_raw)
    return out_eval


# ------------------------------------------------------------------ helpers

WORDS = "the a an river Norman France king castle 1066 red blue of in at, army. (war) duke's".split()


def synthetic_dataset(rng: random.Random, n_articles=3, v2=True):
    data, n = [], 0
    for a in range(n_articles):
        paragraphs = []
        for _ in range(rng.randint(1, 4)):
            qas = []
            for _ in range(rng.randint(1, 8)):
                n += 1
                if v2 and rng.random() < 0.4:
                    answers = []
                else:
                    answers = [{"text": " ".join(rng.choices(WORDS, k=rng.randint(1, 5))), "answer_start": 0}
                               for _ in range(rng.randint(1, 3))]
                    if rng.random() < 0.1:
                        answers.append({"text": "The ", "answer_start": 0})  # normalizes to nothing
                qas.append({"id": f"q{n}", "question": "?", "answers": answers})
            paragraphs.append({"context": "ctx", "qas": qas})
        data.append({"title": f"t{a}", "paragraphs": paragraphs})
    return data


def perturb(rng: random.Random, answers: list[str]) -> str:
    """A prediction near a gold answer: exact, edited, partial, empty or unrelated."""
    r = rng.random()
    if not answers or r < 0.15:
        return "" if rng.random() < 0.5 else " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))
    toks = rng.choice(answers).split()
    if r < 0.4:
        return " ".join(toks)
    if r < 0.55:
        return "The " + " ".join(toks).upper() + "."
    if r < 0.8 and len(toks) > 1:
        return " ".join(toks[rng.randint(0, len(toks) - 1):])
    return " ".join(toks + rng.choices(WORDS, k=2))


def predictions_for(rng, dataset):
    return {qa["id"]: perturb(rng, [a["text"] for a in qa["answers"]])
            for art in dataset for p in art["paragraphs"] for qa in p["qas"]}


def as_examples(dataset):
    return [{"id": qa["id"], "title": art["title"], "context": p["context"], "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for art in dataset for p in art["paragraphs"] for qa in p["qas"]]


def assert_same(ours, ref):
    assert list(ours) == list(ref)
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), k


# ------------------------------------------------------------------ tests

def test_normalize_exact_f1_hand_computed():
    assert normalize_answer("The  Quick, brown-fox!  an ") == "quick brownfox"
    assert normalize_answer("Théâtre à Paris") == "théâtre à paris"
    assert compute_exact("Norman army", "the norman ARMY.") == 1
    # gold {norman, army}, pred {norman, duke}: P = R = 1/2
    assert compute_f1("Norman army", "norman duke") == pytest.approx(0.5)
    # gold 3 tokens, pred 1 of them: P = 1, R = 1/3, F1 = 0.5
    assert compute_f1("red blue river", "blue") == pytest.approx(0.5)
    assert compute_f1("", "") == 1 and compute_f1("", "a") == 1  # both normalize to no tokens
    assert compute_f1("", "river") == 0 and compute_f1("river", "") == 0


@pytest.mark.parametrize("seed", range(6))
def test_matches_official_on_random_predictions(seed):
    rng = random.Random(seed)
    v2 = seed % 3 != 0
    dataset = synthetic_dataset(rng, n_articles=rng.randint(1, 4), v2=v2)
    preds = predictions_for(rng, dataset)
    preds["not-in-dataset"] = "ignored"
    qids = [q for q in preds if q != "not-in-dataset"]
    # na-probs with many ties (rounded) to exercise the official tie order, in shuffled file order
    shuffled = qids[:]
    rng.shuffle(shuffled)
    na_probs = {q: round(rng.uniform(-2, 3), 1) for q in shuffled}
    for thresh in (1.0, 0.0, -5.0):
        assert_same(squad_evaluate(dataset, preds, na_probs, thresh), official_v2(dataset, preds, na_probs, thresh))
    assert_same(squad_evaluate(dataset, preds), official_v2(dataset, preds))
    # the example-dict layout the QA task uses gives the same dict
    assert_same(squad_evaluate(as_examples(dataset), preds, na_probs), official_v2(dataset, preds, na_probs))
    if not v2:
        assert not any(k.startswith("NoAns") for k in squad_evaluate(dataset, preds))


def test_missing_prediction_scores_zero_and_counts():
    rng = random.Random(7)
    dataset = synthetic_dataset(rng, n_articles=2, v2=True)
    preds = predictions_for(rng, dataset)
    qids = list(preds)
    dropped = qids[::3]
    # a missing prediction scores like a wrong non-empty answer, and still counts in every total
    wrong = {q: ("zzz" if q in dropped else a) for q, a in preds.items()}
    partial = {q: a for q, a in preds.items() if q not in dropped}
    assert_same(squad_evaluate(dataset, partial), official_v2(dataset, wrong))
    # best thresholds: a missing question contributes 0 at every threshold, so they equal the
    # official ones on the dataset without those questions, rescaled to the full total
    na = {q: round(rng.random(), 1) for q in partial}
    ours = squad_evaluate(dataset, partial, na)
    reduced = [{**art, "paragraphs": [{**p, "qas": [qa for qa in p["qas"] if qa["id"] in partial]}
                                      for p in art["paragraphs"]]} for art in dataset]
    ref = official_v2(reduced, partial, na)
    for key in ("best_exact", "best_f1"):
        assert ours[key] == pytest.approx(ref[key] * len(partial) / len(preds), abs=1e-9)
        assert ours[key + "_thresh"] == ref[key + "_thresh"]
    assert ours["total"] == len(preds)


def test_na_probs_must_cover_predictions():
    dataset = synthetic_dataset(random.Random(1), n_articles=1)
    preds = predictions_for(random.Random(2), dataset)
    first = next(iter(preds))
    with pytest.raises(SquadFormatError, match=first):
        squad_evaluate(dataset, preds, {q: 0.5 for q in list(preds)[1:]})


def test_bad_dataset_and_prediction_types():
    with pytest.raises(SquadFormatError, match="non-empty list"):
        squad_evaluate([], {})
    with pytest.raises(SquadFormatError, match="'answers'"):
        squad_evaluate([{"paragraphs": [{"qas": [{"id": "x"}]}]}], {})
    dataset = synthetic_dataset(random.Random(3), n_articles=1)
    first = dataset[0]["paragraphs"][0]["qas"][0]["id"]
    with pytest.raises(SquadFormatError, match=first):
        squad_evaluate(dataset, {first: 3})


@pytest.mark.data
def test_official_numbers_on_real_dev_set():
    if not (DATA / "dev-v2.0.json").exists():
        pytest.skip("../shared/data/squad is absent")
    dataset = json.loads((DATA / "dev-v2.0.json").read_text())["data"]
    preds = json.loads((DATA / "predictions-v2.0-bert-single.json").read_text())
    ours = squad_evaluate(dataset, preds)
    expected = {"exact": 78.74168280973637, "f1": 81.77528052374723, "total": 11873,
                "HasAns_exact": 74.10593792172739, "HasAns_f1": 80.18183293833508, "HasAns_total": 5928,
                "NoAns_exact": 83.36417157275021, "NoAns_f1": 83.36417157275021, "NoAns_total": 5945}
    assert_same(ours, expected)
    # with na-probs (ties included) and best thresholds, against the transcription
    rng = random.Random(0)
    na_probs = {q: round(rng.gauss(0, 1), 2) - (0.5 if p else -0.5) for q, p in preds.items()}
    assert_same(squad_evaluate(dataset, preds, na_probs, 0.3), official_v2(dataset, preds, na_probs, 0.3))
