"""`hone glue` end to end: small hand-made GLUE-layout and user files with a tiny random BERT that
must learn, every output checked against transformers (the saved folder loaded with its Auto
classes), scikit-learn and scipy; the seed 001 command line; the real SST-2 files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error

import hone as hone_pkg
import tiny
from hone.cli import main as hone
from paths import DATA, REPO
from test_config import seed_command
from test_glue_data import LAYOUTS, MNLI_DEV_HEADER, write_tsv

transformers = pytest.importorskip("transformers")

POSITIVE = ["good", "great", "wonderful", "lovely", "superb", "charming"]
NEGATIVE = ["bad", "awful", "terrible", "dull", "boring", "poor"]
FILLER = ["the", "movie", "film", "plot", "acting", "was", "is", "really", "quite", "a", "story", "and", "very"]
WORDS = ['"', ".", *POSITIVE, *NEGATIVE, *FILLER]


def sentence(rng, kind: str | None) -> str:
    """Filler words with one sentiment word (kind "pos" / "neg"; None: none); some with quotes."""
    words = list(rng.choice(FILLER, size=int(rng.integers(3, 8))))
    if kind is not None:
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if kind == "pos" else NEGATIVE)))
    text = " ".join(words) + " ."
    return f'"{text}' if rng.random() < 0.2 else text  # a lone quote: GLUE files are read without quoting


def sentiment_examples(n: int, seed: int, positive_share: float = 0.5) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    labels = [int(k < round(n * positive_share)) for k in range(n)]
    rng.shuffle(labels)
    return [sentence(rng, "pos" if y else "neg") for y in labels], labels


def write_split(folder, task: str, name: str, texts, labels, pairs=None, first_index: int = 0):
    """One file of `task`'s GLUE release layout (test_glue_data.LAYOUTS); labels None: a test file."""
    head, row, test_head, test_row = LAYOUTS[task]
    pairs = pairs or texts
    indices = [str(first_index + k) for k in range(len(texts))]
    if labels is None:
        return write_tsv(folder / name, test_head, [test_row(i, a, b) for i, a, b in zip(indices, texts, pairs)])
    rows = [row(i, a, b, str(y)) for i, a, b, y in zip(indices, texts, pairs, labels)]
    if name.startswith("dev_") and task == "mnli":  # dev files have label1..label5
        rows = [r[:-1] + [r[-1]] * 4 + [r[-1]] for r in rows]
    return write_tsv(folder / name, MNLI_DEV_HEADER if name.startswith("dev_") else head, rows)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT checkpoint folder with a vocab.txt of the data's words."""
    return tiny.tiny_bert(tmp_path_factory.mktemp("tiny-bert"), [" ".join(WORDS)])


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    """An SST-2-like release folder: learnable sentiment, dev 55% positive; and its examples."""
    root = tmp_path_factory.mktemp("glue")
    folder = root / "SST-2"
    train, dev, test = sentiment_examples(96, 1), sentiment_examples(40, 2, 0.55), sentiment_examples(10, 3)
    write_split(folder, "sst2", "train.tsv", *train)
    write_split(folder, "sst2", "dev.tsv", *dev)
    write_split(folder, "sst2", "test.tsv", test[0], None)
    return root, {"train": train, "dev": dev, "test": test}


def glue_args(model, out, *extra) -> list[str]:
    return ["glue", "--model_name_or_path", str(model), "--do_train", "--do_eval", "--per_device_train_batch_size",
            "16", "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3", "--lr_scheduler_type", "constant",
            "--num_train_epochs", "8",
            "--logging_steps", "10", "--save_steps", "-1", "--seed", "0", "--hardware", "cpu", "--disable_tqdm",
            "--output_dir", str(out), *extra]


def results(out) -> dict:
    return json.loads((out / "all_results.json").read_text())


def transformers_logits(folder, texts, pairs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(transformers' logits, hone's logits) of the saved folder, on AutoTokenizer's encoding."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    ours = hone_pkg.load_model(folder, task="classification").eval()
    batch = tokenizer(texts, pairs, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return theirs(**batch).logits, ours(**batch).logits


def submission(path) -> tuple[list[str], list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction"
    indices, values = zip(*(line.split("\t") for line in lines[1:]))
    return list(indices), list(values)


@pytest.fixture(scope="module")
def sst2_run(tiny_bert, sst2, tmp_path_factory):
    """`python -m hone glue` as a process: train, evaluate and predict on the SST-2-like folder."""
    root, _ = sst2
    out = tmp_path_factory.mktemp("sst2-run")
    proc = subprocess.run([sys.executable, "-m", "hone", *glue_args(tiny_bert, out, "--task_name", "sst2",
                                                                   "--data_dir", str(root), "--do_predict")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_sst2_like_run_through_the_cli_learns(sst2, sst2_run):
    _, data = sst2
    out, printed = sst2_run
    assert "***** eval metrics *****" in printed and "***** predict metrics *****" in printed
    res = results(out)
    for key in ("eval_accuracy", "eval_loss", "eval_samples", "predict_samples", "train_loss", "train_samples"):
        assert key in res, key
    dev_texts, dev_labels = data["dev"]
    majority = max(np.mean(dev_labels), 1 - np.mean(dev_labels))
    assert res["eval_accuracy"] > majority + 0.2 and res["eval_samples"] == 40
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and config["problem_type"] == "single_label_classification"
    card = (out / "README.md").read_text()
    assert "eval_accuracy" in card and "SST-2" in card

    # The output folder is a transformers checkpoint: same logits, and its predictions score as reported.
    theirs, ours = transformers_logits(out, dev_texts)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert accuracy_score(dev_labels, theirs.argmax(-1)) == pytest.approx(res["eval_accuracy"])
    eval_loss = torch.nn.functional.cross_entropy(theirs, torch.tensor(dev_labels)).item()
    assert eval_loss == pytest.approx(res["eval_loss"], rel=1e-4)

    # The GLUE submission file: the test file's index column, label names, transformers' predictions.
    indices, values = submission(out / "SST-2.tsv")
    test_texts = data["test"][0]
    assert indices == [str(k) for k in range(len(test_texts))]
    assert values == [str(int(y)) for y in transformers_logits(out, test_texts)[0].argmax(-1)]
    assert res["predict_samples"] == len(test_texts)


@pytest.mark.slow
def test_eval_only_follows_the_model_label_order(sst2, sst2_run, tmp_path):
    """A model naming the labels in another order (head rows swapped with id2label) scores the same."""
    root, _ = sst2
    out, _ = sst2_run
    swapped = tmp_path / "swapped"
    model = hone_pkg.load_model(out, task="classification")
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight.flip(0))
        model.classifier.bias.copy_(model.classifier.bias.flip(0))
    model.config = model.config.replace(id2label={0: "1", 1: "0"})
    model.save_pretrained(swapped)
    hone_pkg.load_tokenizer(out).save(swapped)
    args = ["glue", "--model_name_or_path", str(swapped), "--task_name", "sst2", "--data_dir", str(root),
            "--do_eval", "--do_predict", "--hardware", "cpu", "--output_dir", str(tmp_path / "eval")]
    assert hone(args) == 0
    assert results(tmp_path / "eval")["eval_accuracy"] == pytest.approx(results(out)["eval_accuracy"])
    assert submission(tmp_path / "eval" / "SST-2.tsv") == submission(out / "SST-2.tsv")


def pair_examples(n: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    """MRPC-like: label 1 when the SECOND sentence is positive; the first has no sentiment word."""
    rng = np.random.default_rng(seed)
    labels = [int(k < round(n * 0.4)) for k in range(n)]
    rng.shuffle(labels)
    firsts = [sentence(rng, None) for _ in labels]
    seconds = [sentence(rng, "pos" if y else "neg") for y in labels]
    return firsts, seconds, labels


@pytest.mark.slow
def test_mrpc_like_pairs_learn_with_accuracy_and_f1(tiny_bert, tmp_path):
    folder = tmp_path / "MRPC"
    train, dev = pair_examples(96, 4), pair_examples(40, 5)
    write_split(folder, "mrpc", "train.tsv", train[0], train[2], train[1])
    write_split(folder, "mrpc", "dev.tsv", dev[0], dev[2], dev[1])
    out = tmp_path / "run"
    assert hone(glue_args(tiny_bert, out, "--task_name", "mrpc", "--data_dir", str(folder))) == 0
    res = results(out)
    assert res["eval_accuracy"] > 0.6 + 0.2  # majority share 0.6
    theirs, _ = transformers_logits(out, dev[0], dev[1])
    predictions = theirs.argmax(-1)
    assert res["eval_f1"] == pytest.approx(f1_score(dev[2], predictions))
    assert res["eval_accuracy"] == pytest.approx(accuracy_score(dev[2], predictions))
    assert res["eval_combined_score"] == pytest.approx((res["eval_f1"] + res["eval_accuracy"]) / 2)


@pytest.mark.slow
def test_stsb_like_regression_learns_and_reports_pearson_and_mse_loss(tiny_bert, tmp_path):
    folder = tmp_path / "STS-B"
    rng = np.random.default_rng(6)
    kinds = ["pos" if k % 2 else "neg" for k in range(48)]
    targets = [f"{(3.5 if kind == 'pos' else 1.5) + rng.uniform(-1, 1):.2f}" for kind in kinds]
    pairs, texts = [sentence(rng, kind) for kind in kinds], [sentence(rng, None) for _ in kinds]
    write_split(folder, "stsb", "train.tsv", texts, targets, pairs)
    write_split(folder, "stsb", "dev.tsv", texts[:12], targets[:12], pairs[:12])
    out = tmp_path / "run"
    assert hone(glue_args(tiny_bert, out, "--task_name", "stsb", "--data_dir", str(folder), "--num_train_epochs",
                          "16")) == 0
    res = results(out)
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    theirs, _ = transformers_logits(out, texts[:12], pairs[:12])
    assert theirs.shape == (12, 1)
    scores, gold = theirs[:, 0].numpy(), np.float32(targets[:12])
    assert res["eval_pearson"] > 0.5
    # predictions spread by ~0.01 this early: 1e-6 differences in outputs move Pearson by ~1e-4
    assert res["eval_pearson"] == pytest.approx(pearsonr(scores, gold)[0], abs=1e-3)
    assert res["eval_spearmanr"] == pytest.approx(spearmanr(scores, gold)[0], abs=1e-3)
    assert res["eval_combined_score"] == pytest.approx((res["eval_pearson"] + res["eval_spearmanr"]) / 2)
    assert res["eval_loss"] == pytest.approx(mean_squared_error(gold, scores), rel=1e-4)  # transformers' MSE head


def test_mnli_evaluates_matched_and_mismatched_and_predicts_both(tiny_bert, tmp_path):
    folder = tmp_path / "MNLI"
    rng = np.random.default_rng(7)
    kinds = {"entailment": "pos", "contradiction": "neg", "neutral": None}

    def examples(n):
        labels = [str(rng.choice(list(kinds))) for _ in range(n)]
        return [sentence(rng, None) for _ in labels], [sentence(rng, kinds[y]) for y in labels], labels

    for name, n in (("train.tsv", 24), ("dev_matched.tsv", 9), ("dev_mismatched.tsv", 7)):
        first, second, labels = examples(n)
        write_split(folder, "mnli", name, first, labels, second)
    for name, n, start in (("test_matched.tsv", 5, 0), ("test_mismatched.tsv", 4, 9000)):
        first, second, _ = examples(n)
        write_split(folder, "mnli", name, first, None, second, first_index=start)
    out = tmp_path / "run"
    assert hone(glue_args(tiny_bert, out, "--task_name", "mnli", "--data_dir", str(tmp_path), "--max_steps", "2",
                          "--do_predict")) == 0
    res = results(out)
    assert (res["eval_samples"], res["eval_samples_mm"]) == (9, 7)
    for key in ("eval_accuracy", "eval_accuracy_mm", "eval_loss", "eval_loss_mm"):
        assert key in res, key
    assert (res["predict_samples"], res["predict_samples_mm"]) == (5, 4)
    matched, mismatched = submission(out / "MNLI-m.tsv"), submission(out / "MNLI-mm.tsv")
    assert matched[0] == [str(k) for k in range(5)] and mismatched[0] == [str(9000 + k) for k in range(4)]
    assert set(matched[1] + mismatched[1]) <= set(kinds)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}


def write_csv(path, header, rows):
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_user_csv_string_labels_become_id2label_and_serve_eval_and_predict(tiny_bert, tmp_path):
    names = {"pos": "positive", "neg": "negative", None: "mixed"}
    rng = np.random.default_rng(8)

    def rows(n):
        kinds = [list(names)[k % 3] for k in range(n)]
        return [[sentence(rng, kind), names[kind]] for kind in kinds]

    train = write_csv(tmp_path / "train.csv", ["sentence", "label"], rows(30))
    dev = write_csv(tmp_path / "dev.csv", ["sentence", "label"], [r for r in rows(9) if r[1] != "mixed"])
    out = tmp_path / "run"
    assert hone(glue_args(tiny_bert, out, "--train_file", str(train), "--validation_file", str(train),
                          "--max_steps", "2")) == 0
    config = transformers.AutoConfig.from_pretrained(out)
    assert config.id2label == {0: "mixed", 1: "negative", 2: "positive"}  # sorted: a stable order
    assert config.label2id == {"mixed": 0, "negative": 1, "positive": 2}

    # Evaluation and prediction only: the label names come from the model (the dev file lacks "mixed").
    test = write_csv(tmp_path / "test.csv", ["id", "sentence"], [[f"q{k}", r[0]] for k, r in enumerate(rows(4))])
    args = ["glue", "--model_name_or_path", str(out), "--validation_file", str(dev), "--test_file", str(test),
            "--do_eval", "--do_predict", "--hardware", "cpu", "--output_dir", str(tmp_path / "eval")]
    assert hone(args) == 0
    dev_rows = list(csv.reader(dev.open()))[1:]
    theirs, _ = transformers_logits(out, [r[0] for r in dev_rows])
    gold = [config.label2id[r[1]] for r in dev_rows]
    assert results(tmp_path / "eval")["eval_accuracy"] == pytest.approx(accuracy_score(gold, theirs.argmax(-1)))
    indices, values = submission(tmp_path / "eval" / "predictions.tsv")
    assert indices == ["q0", "q1", "q2", "q3"] and set(values) <= set(names.values())


def test_user_files_scored_as_a_glue_task(tiny_bert, tmp_path):
    """--task_name with your own files (no --data_dir): the task's labels and metrics (MRPC: accuracy and F1)."""
    firsts, seconds, labels = pair_examples(12, 9)
    rows = [[a, b, str(y)] for a, b, y in zip(firsts, seconds, labels)]
    train = write_csv(tmp_path / "pairs.csv", ["sentence1", "sentence2", "label"], rows)
    out = tmp_path / "run"
    assert hone(glue_args(tiny_bert, out, "--task_name", "mrpc", "--train_file", str(train), "--validation_file",
                          str(train), "--max_steps", "1")) == 0
    res = results(out)
    assert {"eval_accuracy", "eval_f1", "eval_combined_score"} <= set(res) and res["eval_samples"] == 12
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}


def test_bad_rows_error_names_file_and_line_and_skip_counts(tiny_bert, tmp_path, capsys, caplog):
    good = [[f"the film is {w} .", str(int(w in POSITIVE))] for w in POSITIVE + NEGATIVE]
    train = tmp_path / "train.tsv"
    lines = ["sentence\tlabel", *("\t".join(r) for r in good[:2]), "no label field here", "\t1",
             *("\t".join(r) for r in good[2:])]
    train.write_text("\n".join(lines) + "\n")
    args = glue_args(tiny_bert, tmp_path / "run", "--train_file", str(train), "--validation_file", str(train),
                     "--max_steps", "1")
    assert hone(args) == 2
    err = capsys.readouterr().err
    assert f"{train}, line 4: 1 tab-separated fields" in err and "2 bad rows" in err and "--bad_rows skip" in err
    assert "Traceback" not in err
    with caplog.at_level("WARNING", logger="hone"):
        assert hone([*args, "--bad_rows", "skip", "--output_dir", str(tmp_path / "skip")]) == 0
    assert f"{train}: 2 bad rows skipped" in caplog.text
    assert results(tmp_path / "skip")["eval_samples"] == len(good)


def test_packed_training_gives_the_unpadded_first_step_loss(tiny_bert, sst2, tmp_path):
    root, _ = sst2
    losses = {}
    for mode, overrides in (("padded", "unpad=false"), ("unpadded", "unpad=true"), ("packed", "pack=true")):
        out = tmp_path / mode
        assert hone(glue_args(tiny_bert, out, "--task_name", "sst2", "--data_dir", str(root), "--max_steps", "1",
                              "--logging_steps", "1", "--hardware_overrides", overrides, "--config_overrides",
                              "hidden_dropout_prob=0,attention_probs_dropout_prob=0")) == 0
        record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
        losses[mode] = record["loss"]
        assert json.loads((out / "run.json").read_text())["hardware"]["pack"] == (mode == "packed")
    assert losses["packed"] == pytest.approx(losses["unpadded"], abs=1e-5)
    assert losses["unpadded"] == pytest.approx(losses["padded"], abs=1e-5)


@pytest.mark.slow
def test_seed_001_run_glue_command_line_runs(tiny_bert, sst2, tmp_path):
    """run_glue.py's seed line as written but for the model's path, the data from $GLUE_DIR. A process:
    its 64 persistent DataLoader workers are not left in the test process."""
    root, _ = sst2
    argv = seed_command("001", "run_glue.py")
    argv = [str(tiny_bert) if a == "bert-base-uncased" else str(tmp_path / "sst2") if a == "/tmp/sst2" else a
            for a in argv]
    proc = subprocess.run([sys.executable, "-m", "hone", "glue", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src"), "GLUE_DIR": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "notice: --ipu_config_name Graphcore/bert-base-ipu: ignored" in proc.stderr
    assert "notice: --pod_type pod4: ignored" in proc.stderr
    res = results(tmp_path / "sst2")
    assert res["train_samples"] == 96 and res["eval_samples"] == 40 and res["epoch"] == pytest.approx(3.0)
    record = json.loads((tmp_path / "sst2" / "run.json").read_text())
    assert record["total_train_batch_size"] == 32 and record["global_step"] == 9  # 96 // 32 steps x 3 epochs


def test_user_mistakes_are_one_line(tiny_bert, sst2, tmp_path, capsys, monkeypatch):
    root, _ = sst2
    monkeypatch.delenv("GLUE_DIR", raising=False)
    base = glue_args(tiny_bert, tmp_path / "run")
    for extra, message in ((("--task_name", "sst2"), "--data_dir"), (("--data_dir", str(root)), "needs --task_name"),
                           (("--task_name", "sst2", "--data_dir", str(root), "--train_file", "x.csv"), "not both"),
                           (("--task_name", "sst2", "--data_dir", str(tmp_path)), "train.tsv: no such file"),
                           (("--task_name", "cola2",), "invalid choice")):
        assert hone([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


@pytest.mark.data
@pytest.mark.slow
def test_real_sst2_with_minilm_for_a_few_steps(tmp_path):
    model = DATA / "models" / "all-MiniLM-L6-v2"
    out = tmp_path / "run"
    assert hone(["glue", "--model_name_or_path", str(model), "--task_name", "sst2", "--data_dir", str(DATA / "glue"),
                 "--do_train", "--do_eval", "--max_train_samples", "32", "--max_eval_samples", "48", "--max_steps",
                 "2", "--per_device_train_batch_size", "16", "--learning_rate", "5e-5", "--save_steps", "-1",
                 "--hardware", "cpu", "--disable_tqdm", "--output_dir", str(out)]) == 0
    res = results(out)
    assert res["train_samples"] == 32 and res["eval_samples"] == 48
    dev = [line.split("\t") for line in (DATA / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:49]]
    theirs, ours = transformers_logits(out, [s for s, _ in dev])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert res["eval_accuracy"] == pytest.approx(accuracy_score([int(y) for _, y in dev], theirs.argmax(-1)))
