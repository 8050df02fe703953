"""Metric blocks, results JSON and the model card, against the seeds and transformers' Trainer."""

from __future__ import annotations

import json
import re
import shlex
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from transformers import trainer_pt_utils, trainer_utils

from hone.config import TrainingArguments
from hone.hardware import HardwareProfile
from hone.reporting import (
    ModelCardError,
    format_command_line,
    format_duration,
    format_metrics,
    hyperparameters_for_card,
    log_metrics,
    save_results,
    timed,
    write_model_card,
)
from paths import SEEDS

# Seed 000's runs, with raw values that the Trainer printed as the seed's block.
TRAIN = {"epoch": 3.0, "train_loss": 0.99823412, "train_runtime": 284.2187, "train_samples": 131823,
         "train_samples_per_second": 1391.43, "train_steps_per_second": 5.425}
EVAL = {"epoch": 3.0, "eval_HasAns_exact": 78.12078272604589, "eval_HasAns_f1": 84.65693373491,
        "eval_HasAns_total": 5928,
        "eval_NoAns_exact": 82.03532380151387, "eval_NoAns_f1": 82.03532380151387, "eval_NoAns_total": 5945,
        "eval_best_exact": 80.08085572306915, "eval_best_exact_thresh": 0.0, "eval_best_f1": 83.34424911357,
        "eval_best_f1_thresh": 0.0, "eval_exact": 80.08085572306915, "eval_f1": 83.34424911357,
        "eval_samples": 12165, "eval_total": 11873}


def seed_text(prefix: str) -> str:
    files = sorted(SEEDS.glob(f"{prefix}_*.txt"))
    if not files:
        pytest.skip(f"seed {prefix} not found under {SEEDS}")
    return files[0].read_text(encoding="utf-8")


def transformers_block(split: str, metrics: dict, capsys) -> str:
    """What transformers' Trainer.log_metrics prints for `metrics`."""
    capsys.readouterr()
    trainer_pt_utils.log_metrics(SimpleNamespace(is_world_process_zero=lambda: True), split, metrics)
    return capsys.readouterr().out.rstrip("\n")


def test_format_duration():
    assert format_duration(284.2187) == "0:04:44.21"
    assert format_duration(4372.4031) == "1:12:52.40"
    assert format_duration(0) == "0:00:00.00"
    for seconds in (0.0, 0.999, 59.5, 3599.99, 86399.0, 12345.678):
        assert format_duration(seconds) == trainer_pt_utils._secs2timedelta(seconds)
    assert format_duration(90061.5) == "25:01:01.50"  # no "1 day, " as timedelta writes


def test_seed_000_blocks_reproduced():
    text = seed_text("000")
    for split, metrics in (("train", TRAIN), ("eval", EVAL)):
        match = re.search(rf"(\*\*\*\*\* {split} metrics \*\*\*\*\*\n(?:  .*\n)+)", text)
        assert match, split
        assert format_metrics(split, metrics) == match.group(1).rstrip("\n")


def test_blocks_match_transformers(capsys):
    metrics = {"train_mem_cpu_alloc_delta": 1301 * 2**20 + 5, "init_mem_gpu_peaked_delta": 0,
               "total_flos": 7.5 * 2**30, "eval_runtime": 12.3456, "eval_loss": 2.990234375, "eval_samples": 240,
               "perplexity": 19.89034374461794, "name": "x"}
    assert format_metrics("eval", metrics) == transformers_block("eval", metrics, capsys)
    assert format_metrics("eval", {"flag": True}).endswith("flag = True")  # transformers prints 1
    for split, m in (("train", TRAIN), ("eval", EVAL)):
        assert format_metrics(split, m) == transformers_block(split, m, capsys)


def test_numpy_values_format_like_floats():
    block = format_metrics("eval", {"eval_f1": np.float32(0.123456), "eval_total": np.int64(11873)})
    assert block.splitlines()[1:] == ["  eval_f1    = 0.1235", "  eval_total =  11873"]


def test_log_metrics_prints(capsys):
    log_metrics("train", TRAIN)
    assert capsys.readouterr().out == format_metrics("train", TRAIN) + "\n"


def test_timed_phase_reports_the_trainers_speed_keys(monkeypatch):
    """An evaluation's runtime and rate are the ones transformers' speed_metrics gives for the
    same clock and samples; MNLI's two dev sets count together; no samples, no rate."""
    monkeypatch.setattr("hone.reporting.time.perf_counter", iter([100.0, 102.5]).__next__)
    metrics = timed("eval", lambda model: {"eval_accuracy": 0.9, "eval_samples": 10, "eval_samples_mm": 5}, None)
    monkeypatch.setattr(trainer_utils.time, "time", lambda: 102.5)
    reference = trainer_utils.speed_metrics("eval", 100.0, num_samples=15)
    assert metrics == {"eval_accuracy": 0.9, "eval_samples": 10, "eval_samples_mm": 5, **reference}
    assert reference == {"eval_runtime": 2.5, "eval_samples_per_second": 6.0}
    monkeypatch.setattr("hone.reporting.time.perf_counter", iter([0.0, 0.25]).__next__)
    assert timed("predict", lambda model: {"predict_score": 1}, None) == {"predict_score": 1, "predict_runtime": 0.25}


def test_save_metrics_matches_transformers(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    trainer = SimpleNamespace(is_world_process_zero=lambda: True, args=SimpleNamespace(output_dir=str(theirs)))
    save_results(ours, {"train": TRAIN, "eval": EVAL})
    for split, metrics in (("train", TRAIN), ("eval", EVAL)):
        trainer_pt_utils.save_metrics(trainer, split, metrics)
    for name in ("train_results.json", "eval_results.json", "all_results.json"):
        assert (ours / name).read_text() == (theirs / name).read_text(), name
    merged = json.loads((ours / "all_results.json").read_text())
    assert merged["train_loss"] == TRAIN["train_loss"] and merged["eval_f1"] == EVAL["eval_f1"]
    assert "train_loss" not in json.loads((ours / "eval_results.json").read_text())
    assert sorted(p.name for p in ours.iterdir()) == ["all_results.json", "eval_results.json", "train_results.json"]


def test_results_are_this_runs_only_and_numpy_is_written_as_numbers(tmp_path):
    (tmp_path / "all_results.json").write_text('{"eval_f1": 99.0}')  # an earlier run's
    save_results(tmp_path, {"predict": {"predict_loss": np.float32(0.5), "predict_samples": np.int64(3)}})
    assert json.loads((tmp_path / "predict_results.json").read_text()) == {"predict_loss": 0.5, "predict_samples": 3}
    assert json.loads((tmp_path / "all_results.json").read_text()) == {"predict_loss": 0.5, "predict_samples": 3}


def test_command_line_in_the_seeds_layout():
    text = seed_text("000")
    block = re.search(r"Command line:\n\n```\n(.*?)\n```", text, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))
    assert format_command_line(argv) == block
    assert format_command_line(" ".join(argv)) == block


def seed_000_args(**changes) -> TrainingArguments:
    base = dict(learning_rate=7e-5, per_device_train_batch_size=4, per_device_eval_batch_size=2, seed=1984,
                num_train_epochs=3.0, warmup_ratio=0.2, weight_decay=0.01)
    return TrainingArguments(**{**base, **changes})


def test_hyperparameters_single_device():
    hp = hyperparameters_for_card(seed_000_args(), HardwareProfile(precision="bf16"), world_size=1)
    assert list(hp.items()) == [
        ("learning_rate", 7e-5), ("train_batch_size", 4), ("eval_batch_size", 2), ("seed", 1984),
        ("distributed_type", "no"), ("total_train_batch_size", 4), ("total_eval_batch_size", 2),
        ("optimizer", "AdamW with betas=(0.9,0.999) and epsilon=1e-08"), ("weight_decay", 0.01),
        ("lr_scheduler_type", "linear"), ("lr_scheduler_warmup_ratio", 0.2), ("num_epochs", 3.0),
        ("training precision", "Mixed Precision (bf16)")]


def test_hyperparameters_distributed_lamb():
    # Seed 001 phase 1 on 4 GPUs: 32 x 512 x 4 = 65536, as the seed's total.
    args = seed_000_args(per_device_train_batch_size=32, gradient_accumulation_steps=512, lamb=True,
                         lamb_no_bias_correction=True, max_steps=10500, layerwise_lr_decay=0.75)
    hp = hyperparameters_for_card(args, HardwareProfile(device="cuda", precision="fp16"), world_size=4)
    assert hp["distributed_type"] == "multi-GPU" and hp["num_devices"] == 4
    assert hp["gradient_accumulation_steps"] == 512 and hp["total_train_batch_size"] == 65536
    assert hp["total_eval_batch_size"] == 8
    assert hp["optimizer"].startswith("LAMB with betas=(0.9,0.999)") and "no bias correction" in hp["optimizer"]
    assert hp["layerwise_lr_decay"] == 0.75 and hp["training_steps"] == 10500 and "num_epochs" not in hp
    assert hp["training precision"] == "Mixed Precision (fp16)"
    hp = hyperparameters_for_card(args, HardwareProfile(), world_size=2)
    assert hp["distributed_type"] == "multi-CPU" and hp["training precision"] == "fp32"


def test_model_card(tmp_path):
    argv = ["hone", "qa", "--model_name_or_path", "roberta-base", "--version_2_with_negative", "--save_steps", "-1"]
    index = [{"name": "exact", "type": "exact", "value": 80.0809},
             {"name": "f1", "type": "f1", "value": np.float64(83.3442)}]
    path = write_model_card(
        tmp_path, model_name="roberta-base-squad2", base_model="roberta-base", task_name="Question Answering",
        dataset_names=["squad_v2"], command_line=shlex.join(argv),
        hyperparameters=hyperparameters_for_card(seed_000_args(), HardwareProfile(), 1),
        train_metrics=TRAIN, eval_metrics=EVAL, index_results=index)
    text = path.read_text()
    assert path == tmp_path / "README.md" and text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "apache-2.0" and front["tags"] == ["generated_from_trainer"]
    assert front["datasets"] == ["squad_v2"] and front["base_model"] == "roberta-base"
    (entry,) = front["model-index"]
    assert entry["name"] == "roberta-base-squad2"
    (result,) = entry["results"]
    assert result["task"] == {"type": "question-answering", "name": "Question Answering"}
    assert result["dataset"] == {"name": "squad_v2", "type": "squad_v2"}
    assert result["metrics"] == [{"name": "exact", "type": "exact", "value": 80.0809},
                                 {"name": "f1", "type": "f1", "value": 83.3442}]
    for heading in ("# roberta-base-squad2", "## Model description", "## Intended uses & limitations",
                    "## Training and evaluation data", "## Training procedure", "### Training hyperparameters",
                    "### Training results", "### Framework versions"):
        assert f"\n{heading}\n" in text, heading
    assert "```\n" + format_metrics("train", TRAIN) + "\n\n" + format_metrics("eval", EVAL) + "\n```" in text
    assert "```\n" + format_command_line(argv) + "\n```" in text
    assert "- learning_rate: 7e-05\n" in text and "- training precision: fp32\n" in text
    assert "[roberta-base](https://huggingface.co/roberta-base)" in text
    assert re.search(r"- hone \d+\.\d+.*\n- PyTorch .*\n- Tokenizers .*\n- Python 3\.", text)


def test_model_card_minimal_and_full_entries(tmp_path):
    entries = [{"task": {"type": "text-generation"}, "dataset": {"name": "wikitext", "type": "wikitext"},
                "metrics": [{"name": "perplexity", "type": "perplexity", "value": 19.89}]}]
    write_model_card(tmp_path, model_name="gpt2-wikitext", base_model=None, task_name="Causal Language Modeling",
                     dataset_names=[], command_line=["hone", "clm"], hyperparameters={}, train_metrics=None,
                     eval_metrics=None, index_results=entries, tags=("hone", "gpt2"))
    text = (tmp_path / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["model-index"][0]["results"] == entries and front["tags"] == ["hone", "gpt2"]
    assert "trained from scratch" in text and "No metrics were recorded." in text


def test_model_card_bad_index_results(tmp_path):
    with pytest.raises(ModelCardError, match=r"index_results\[0\] lacks type, value"):
        write_model_card(tmp_path, model_name="m", base_model="b", task_name="QA", dataset_names=["d"],
                         command_line="hone qa", hyperparameters={}, train_metrics=None, eval_metrics=None,
                         index_results=[{"name": "f1"}])
