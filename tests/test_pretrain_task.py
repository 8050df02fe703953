"""`hone pretrain` on the run skeleton: BERT's two phases from prepared shards, RoBERTa-style MLM
from raw text, parity with transformers' BertForPreTraining, seed 001's command lines, DDP.

The corpus is generated: documents on one of five topics, words drawn with Zipf-like
frequencies inside a topic, so masked tokens and next sentences are both learnable by a tiny
BERT within a few dozen steps. Every sentence has at least 8 words and the cap of 3 targets
binds for every instance (see the DDP test).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hone.data import masking
from hone.data.collate import pad_collate
from hone.data.pretraining import prepare_pretraining
from hone.data.shards import PretrainingDataset, train_eval_split
from hone.data.tokenizer import load_tokenizer
from hone.errors import HoneError
from hone.models.checkpoint import build_model
from hone.tasks import pretrain
from paths import REPO
from test_config import seed_command

transformers = pytest.importorskip("transformers")

TOPICS = [[f"{topic}{letter}" for letter in "abcdefgh"] for topic in ("sun", "rain", "snow", "wind", "fog")]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *(w for topic in TOPICS for w in topic)]
TINY = dict(model_type="bert", vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=128)
NO_DROPOUT = "hidden_dropout_prob=0.0,attention_probs_dropout_prob=0.0"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """vocab/, config/ (a tiny BERT), corpus.txt (60 documents) and its prepared folders p32
    (6 shards, seq 32, 3 targets each) and p64 (seq 64)."""
    root = tmp_path_factory.mktemp("pretrain")
    (root / "vocab").mkdir()
    (root / "vocab" / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (root / "config").mkdir()
    (root / "config" / "config.json").write_text(json.dumps(TINY), encoding="utf-8")
    g = np.random.default_rng(0)
    zipf = 1 / np.arange(1, 9)
    docs = []
    for d in range(60):
        sentences = [" ".join(g.choice(TOPICS[d % 5], g.integers(8, 12), p=zipf / zipf.sum())) + " ."
                     for _ in range(g.integers(3, 8))]
        docs.append("\n".join(sentences))
    (root / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    for length, cap in ((32, 3), (64, 6)):
        prepare_pretraining(["--input", str(root / "corpus.txt"), "--tokenizer", str(root / "vocab"), "--output",
                             str(root / f"p{length}"), "--max_seq_length", str(length), "--max_predictions_per_seq",
                             str(cap), "--dupe_factor", "3", "--documents_per_shard", "10", "--seed", "1"])
    return root


def common(out: Path, *extra: str) -> list[str]:
    return ["--do_train", "--save_steps", "-1", "--hardware", "cpu", "--disable_tqdm", "--hardware_overrides",
            "cpu_threads=1", "--output_dir", str(out), *extra]


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def train_losses(out: Path) -> list[float]:
    return [r["loss"] for r in log_records(out) if "loss" in r]


def cli(*args, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)] if torchrun else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "hone", "pretrain", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def assert_loads_in_transformers(folder: Path, *auto_classes: str) -> None:
    for name in auto_classes:
        getattr(transformers, name).from_pretrained(folder)


# ----------------------------------------------------------------------------- BERT: two phases

@pytest.mark.slow
def test_two_phases_through_the_cli(corpus, tmp_path):
    phase1, phase2 = tmp_path / "phase1", tmp_path / "phase2"
    proc = cli("--config_name", corpus / "config", "--tokenizer_name", corpus / "vocab", "--train_file", corpus / "p32",
               "--max_seq_length", "32", "--max_steps", "30", "--per_device_train_batch_size", "8",
               "--gradient_accumulation_steps", "2", "--lamb", "--lamb_no_bias_correction", "--learning_rate", "0.05",
               "--lr_scheduler_type", "polynomial", "--warmup_ratio", "0.1", "--weight_decay", "0.01",
               "--validation_split_percentage", "20", "--eval_steps", "10", "--logging_steps", "2",
               *common(phase1))
    assert "***** eval metrics *****" in proc.stdout
    losses = train_losses(phase1)
    assert np.mean(losses[-3:]) < losses[0] - 0.3, losses
    evals = [r for r in log_records(phase1) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30] and evals[-1]["eval_mlm_loss"] < evals[0]["eval_mlm_loss"]
    results = json.loads((phase1 / "all_results.json").read_text())
    # the held-out shards: the fewest last shards with 20% of the instances, none of them trained on
    train, held_out = train_eval_split(corpus / "p32", eval_fraction=0.2)
    assert results["eval_samples"] == len(held_out) and results["train_samples"] == len(train)
    assert len(held_out) + len(train) == len(PretrainingDataset.open(corpus / "p32"))
    assert results["eval_loss"] == pytest.approx(results["eval_mlm_loss"] + results["eval_nsp_loss"])
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_mlm_loss"]))
    assert 0 <= results["eval_mlm_accuracy"] <= 1 and 0 <= results["eval_nsp_accuracy"] <= 1
    outputs = json.loads((phase1 / "run.json").read_text())["outputs"]
    assert outputs[pretrain.PLOT] == "log" and (phase1 / pretrain.PLOT).stat().st_size > 0
    assert "mlm_accuracy" in (phase1 / "README.md").read_text()
    assert_loads_in_transformers(phase1, "AutoModelForPreTraining", "AutoModelForMaskedLM", "AutoTokenizer")

    # phase 2: a new run from phase 1's weights, with longer rows, another batch and schedule
    cli("--model_name_or_path", phase1, "--train_file", corpus / "p64", "--max_seq_length", "64",
        "--max_steps", "4", "--per_device_train_batch_size", "4", "--lamb", "--learning_rate", "0.02",
        "--warmup_steps", "2", "--logging_steps", "1", "--validation_split_percentage", "20", *common(phase2))
    first, second = log_records(phase2)[:2]
    assert [first["learning_rate"], second["learning_rate"]] == pytest.approx([0.0, 0.01])  # its own warmup
    assert first["loss"] < losses[0] - 0.3  # phase 1's weights, not fresh ones
    assert json.loads((phase2 / "run.json").read_text())["global_step"] == 4
    assert max(PretrainingDataset.open(corpus / "p64").lengths()) > 32
    assert_loads_in_transformers(phase2, "AutoModelForPreTraining", "AutoModelForSequenceClassification")


# ----------------------------------------------------------------------------- RoBERTa style: raw text

def test_mlm_only_from_raw_text_masks_every_epoch_afresh(corpus, tmp_path, monkeypatch):
    """A checkpoint without an MLM head (a bare encoder, as all-MiniLM-L6-v2) gets a new one;
    raw text becomes full-sentence blocks, masked afresh in every batch."""
    bare = tmp_path / "bare"
    torch.manual_seed(0)
    build_model(TINY).save_pretrained(bare)
    (bare / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    seen: list[tuple[bytes, bytes]] = []  # (unmasked row, its targets) of every training row
    original = masking.MaskingCollator.__call__

    def spy(self, rows):
        batch = original(self, rows)
        if not torch.is_inference_mode_enabled():  # a training batch (evaluation runs in inference mode)
            for row, labels in zip(rows, batch["labels"]):
                seen.append((np.asarray(row["input_ids"]).tobytes(), (labels[:len(row["input_ids"])] != -100).numpy()
                             .tobytes()))
        return batch

    monkeypatch.setattr(masking.MaskingCollator, "__call__", spy)
    out = tmp_path / "mlm"
    metrics = pretrain.run(["--model_name_or_path", str(bare), "--train_file", str(corpus / "corpus.txt"),
                            "--max_seq_length", "48", "--num_train_epochs", "3", "--per_device_train_batch_size", "8",
                            "--learning_rate", "3e-3", "--logging_steps", "2", "--do_eval",
                            "--validation_split_percentage", "10", "--dataloader_num_workers", "0",  # the spy's process
                            *common(out)])
    assert set(metrics) >= {"eval_mlm_loss", "eval_mlm_accuracy", "eval_perplexity", "eval_loss"}
    assert "eval_nsp_loss" not in metrics and metrics["eval_loss"] == metrics["eval_mlm_loss"]
    losses = train_losses(out)
    assert np.mean(losses[-3:]) < losses[0] - 0.3, losses
    targets_of: dict[bytes, set[bytes]] = {}
    for row, targets in seen:
        targets_of.setdefault(row, set()).add(targets)
    assert len(targets_of) > 10 and all(len(t) > 1 for t in targets_of.values())  # new masks each epoch
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert_loads_in_transformers(out, "AutoModelForMaskedLM")


def test_prepared_mlm_blocks_keep_their_recorded_masking_unless_a_flag_says_otherwise(corpus, tmp_path):
    prepare_pretraining(["--input", str(corpus / "corpus.txt"), "--tokenizer", str(corpus / "vocab"), "--output",
                         str(tmp_path / "blocks"), "--objective", "mlm", "--max_seq_length", "32", "--whole_word_mask",
                         "--masked_lm_prob", "0.2", "--documents_per_shard", "20"])
    data = PretrainingDataset.open(tmp_path / "blocks")
    job = SimpleNamespace(tokenizer=load_tokenizer(tmp_path / "blocks" / "tokenizer"),
                          task_args=SimpleNamespace(mlm_probability=None, masking_policy=None, whole_word_mask=None))
    recorded = pretrain.masker_for(job, data)
    assert (recorded.policy, recorded.masked_lm_prob, recorded.whole_word_mask) == ("per_token", 0.2, True)
    job.task_args = SimpleNamespace(mlm_probability=0.3, masking_policy="fixed_count", whole_word_mask=False)
    flagged = pretrain.masker_for(job, data)
    assert (flagged.policy, flagged.masked_lm_prob, flagged.whole_word_mask) == ("fixed_count", 0.3, False)
    assert flagged.max_predictions_per_seq is None
    out = tmp_path / "out"
    metrics = pretrain.run(["--config_name", str(corpus / "config"), "--train_file", str(tmp_path / "blocks"),
                            "--max_seq_length", "32", "--max_steps", "2", "--per_device_train_batch_size", "4",
                            "--do_eval", "--validation_split_percentage", "30", *common(out)])
    held_out = PretrainingDataset.open(tmp_path / "blocks", ["shard-00002"])  # 60 documents, 20 per shard
    assert metrics["eval_samples"] == len(held_out) and "eval_nsp_loss" not in metrics
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]


# ----------------------------------------------------------------------------- parity with transformers

def test_first_step_and_evaluation_equal_transformers(corpus, tmp_path):
    """The logged loss of step 1 (one batch holding every training instance) is transformers'
    BertForPreTraining loss on the same weights and instances; the evaluation of the trained
    model equals transformers' dense MLM and NSP losses and accuracies on the held-out data."""
    start = tmp_path / "start"
    torch.manual_seed(0)
    config = transformers.BertConfig(**{k: v for k, v in TINY.items() if k != "model_type"},
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    transformers.BertForPreTraining(config).save_pretrained(start)
    (start / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    train_rows = list(PretrainingDataset.open(corpus / "p32"))
    eval_rows = list(PretrainingDataset.open(corpus / "p64"))[:100]
    out = tmp_path / "out"
    metrics = pretrain.run(["--model_name_or_path", str(start), "--train_file", str(corpus / "p32"),
                            "--validation_file", str(corpus / "p64"), "--max_seq_length", "64", "--max_steps", "1",
                            "--per_device_train_batch_size", str(len(train_rows)), "--learning_rate", "0.01", "--lamb",
                            "--logging_steps", "1", "--do_eval", "--max_eval_samples", "100",
                            "--per_device_eval_batch_size", "32", *common(out)])

    def reference(folder: Path, rows: list[dict]) -> dict:
        model = transformers.BertForPreTraining.from_pretrained(folder).eval()
        batch = pad_collate(rows, 0)
        with torch.no_grad():
            result = model(**batch)
        mlm_logits, nsp_logits = result.prediction_logits, result.seq_relationship_logits
        targets = batch["labels"] != -100
        return {"loss": result.loss.item(),
                "eval_mlm_loss": torch.nn.functional.cross_entropy(mlm_logits[targets], batch["labels"][targets]).item(),
                "eval_mlm_accuracy": (mlm_logits[targets].argmax(-1) == batch["labels"][targets]).float().mean().item(),
                "eval_nsp_loss": torch.nn.functional.cross_entropy(nsp_logits, batch["next_sentence_label"]).item(),
                "eval_nsp_accuracy": (nsp_logits.argmax(-1) == batch["next_sentence_label"]).float().mean().item()}

    assert train_losses(out)[0] == pytest.approx(reference(start, train_rows)["loss"], abs=1e-5)
    expected = reference(out, eval_rows)
    for key in ("eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_loss", "eval_nsp_accuracy"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-5), key
    assert metrics["eval_samples"] == 100


def test_data_and_settings_that_do_not_fit_fail_in_one_line(corpus, tmp_path):
    base = ["--config_name", str(corpus / "config"), "--tokenizer_name", str(corpus / "vocab"), "--max_steps", "1",
            *common(tmp_path / "out", "--overwrite_output_dir")]
    with pytest.raises(HoneError, match="prepared at max_seq_length 64: pass --max_seq_length 64"):
        pretrain.run([*base, "--train_file", str(corpus / "p64"), "--max_seq_length", "32"])
    with pytest.raises(HoneError, match="different objectives"):
        pretrain.run([*base, "--train_file", str(corpus / "p32"), "--validation_file", str(corpus / "corpus.txt"),
                      "--do_eval"])
    with pytest.raises(HoneError, match="another tokenizer"):
        other = tmp_path / "vocab"
        other.mkdir()
        (other / "vocab.txt").write_text("\n".join([*VOCAB, "extra"]) + "\n", encoding="utf-8")
        pretrain.run([*base, "--train_file", str(corpus / "p32"), "--tokenizer_name", str(other)])
    with pytest.raises(HoneError, match="no prediction phase"):
        pretrain.run([*base, "--train_file", str(corpus / "p32"), "--do_predict", "--test_file",
                      str(corpus / "corpus.txt")])


# ----------------------------------------------------------------------------- seed 001

@pytest.mark.slow
def test_seed_001_phase_1_and_2_command_lines_run(corpus, tmp_path, caplog):
    """Seed 001's run_pretraining.py lines as written, the data paths replaced and tiny sizes
    appended (later flags win); phase 2 continues from phase 1's folder; the seed's run_glue.py
    SST-2 line runs as written from phase 2's output."""
    phase1, phase2 = seed_command("001", "run_pretraining.py"), seed_command("001", "Phase 2: ``` python "
                                                                                    "examples/language-modeling/"
                                                                                    "run_pretraining.py")
    assert phase1 != phase2 and "--model_name_or_path" in phase2
    tiny = ["--config_overrides", "layer_norm_eps=0.001,hidden_size=32,num_hidden_layers=1,num_attention_heads=2,"
            "intermediate_size=64", "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--gradient_accumulation_steps", "2", "--dataloader_num_workers", "2", "--hardware", "cpu", "--disable_tqdm"]

    def local(argv: list[str], replacements: dict[str, str]) -> list[str]:
        return [replacements.get(previous, arg) for previous, arg in zip(["", *argv], argv)] + tiny

    out1, out2 = tmp_path / "output-pretrain-bert-base-phase1", tmp_path / "output-pretrain-bert-base-phase2"
    caplog.set_level("INFO", logger="hone")
    first = pretrain.run(local(phase1, {"--dataset_name": str(corpus / "p32"), "--output_dir": str(out1)}))
    second = pretrain.run(local(phase2, {"--dataset_name": str(corpus / "p64"), "--output_dir": str(out2),
                                         "--model_name_or_path": str(out1)}))
    assert first["train_samples"] == len(PretrainingDataset.open(corpus / "p32"))  # nothing held out: no --do_eval
    assert second["train_samples"] == len(PretrainingDataset.open(corpus / "p64"))
    notices = "\n".join(r.getMessage() for r in caplog.records if r.getMessage().startswith("notice:"))
    for flag in ("--ipu_config_name", "--is_already_preprocessed", "--dataloader_mode", "--loss_scaling",
                 "--tokenizer_name bert-base-uncased is not a folder"):
        assert flag in notices
    record = json.loads((out2 / "run.json").read_text())
    assert record["settings"]["lamb_no_bias_correction"] and record["total_train_batch_size"] == 8
    config = json.loads((out2 / "config.json").read_text())
    assert config["layer_norm_eps"] == 0.001 and config["vocab_size"] == 30522  # bert-base-uncased, shrunk
    assert_loads_in_transformers(out2, "AutoModelForSequenceClassification", "AutoTokenizer")

    # the seed's run_glue.py line as written, from phase 2's folder (SST-2 files of the corpus' words)
    glue_dir = tmp_path / "glue" / "SST-2"
    glue_dir.mkdir(parents=True)
    g = np.random.default_rng(2)
    for split, count in (("train", 64), ("dev", 16)):
        labels = g.integers(0, 2, count)
        lines = [" ".join(g.choice(TOPICS[label], 6)) + f"\t{label}" for label in labels]
        (glue_dir / f"{split}.tsv").write_text("\n".join(["sentence\tlabel", *lines]) + "\n", encoding="utf-8")
    argv = [str(out2) if a == "bert-base-uncased" else str(tmp_path / "sst2") if a == "/tmp/sst2" else a
            for a in seed_command("001", "run_glue.py")]
    proc = subprocess.run([sys.executable, "-m", "hone", "glue", *argv], capture_output=True, text=True,
                          timeout=600, env={**ENV, "GLUE_DIR": str(glue_dir.parent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sst2 = json.loads((tmp_path / "sst2" / "all_results.json").read_text())
    assert sst2["train_samples"] == 64 and 0 <= sst2["eval_accuracy"] <= 1


# ----------------------------------------------------------------------------- data parallel

@pytest.mark.slow
def test_two_processes_give_the_loss_curve_of_one(corpus, tmp_path):
    """torchrun with 2 gloo processes (micro batch 2 each) logs the losses of 1 process (micro
    batch 4) with the same global batch of 8. Exact because every instance has the same number
    of targets (the cap binds): each rank's mean over its own targets, averaged over ranks, is
    then the mean over all targets. (With varying counts it is close, as with transformers.)"""
    args = ["--config_name", corpus / "config", "--tokenizer_name", corpus / "vocab", "--train_file", corpus / "p32",
            "--max_seq_length", "32", "--max_steps", "5", "--gradient_accumulation_steps", "2", "--lamb",
            "--learning_rate", "0.02", "--adam_epsilon", "1e-4", "--logging_steps", "1", "--config_overrides",
            NO_DROPOUT]
    assert {len(np.flatnonzero(row["labels"] != -100)) for row in PretrainingDataset.open(corpus / "p32")} == {3}
    cli(*args, "--per_device_train_batch_size", "4", *common(tmp_path / "one"))
    cli(*args, "--per_device_train_batch_size", "2", *common(tmp_path / "two"), torchrun=2)
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(one) == 5
    np.testing.assert_allclose(two, one, rtol=0, atol=2e-5)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
