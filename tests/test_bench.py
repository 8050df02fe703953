"""`hone bench train` on tiny models: the report's fields against hand counts, both systems on
the same samples (identical losses where padding cannot change them), FLOPs against
reference.md's figure, device peaks, peak memory, and errors. No timing thresholds."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hone import cli, perf
from hone.bench import main
from hone.data.squad import prepare_train_features, read_squad
from hone.data.synthetic import make_synthetic_squad
from hone.data.tokenizer import load_tokenizer
from hone.engine.host_memory import find_mimalloc
from hone.models.checkpoint import build_model, config_from_dict
from hone.models.presets import PRESETS
from paths import DATA as SHARED_DATA

pytest.importorskip("transformers")

DATA = SHARED_DATA
WIKITEXT = DATA / "wikitext" / "wikitext-2-raw" / "wiki.valid.raw"
SEQ = 128


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny BERT QA checkpoint with a character-level WordPiece tokenizer in the same folder."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *",.?'-"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    load_tokenizer(folder).save(folder)
    torch.manual_seed(0)
    model = build_model(dict(model_type="bert", vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=SEQ), "qa")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("squad") / "tiny-squad.json"
    path.write_text(json.dumps(make_synthetic_squad(3, seed=1)))
    return path


@pytest.fixture(scope="module")
def sst_file(tmp_path_factory) -> Path:
    """A GLUE-style .tsv: sentences of 2 to 11 words, labels 0/1."""
    rng = np.random.default_rng(0)
    words = "the film was a bright warm quiet dull long story of love and loss".split()
    path = tmp_path_factory.mktemp("glue") / "train.tsv"
    with path.open("w", newline="") as f:
        out = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        out.writerow(["sentence", "label"])
        for i in range(24):
            out.writerow([" ".join(rng.choice(words, rng.integers(2, 12))), i % 2])
    return path


def bench(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "result.json"
    assert main(["train", *argv, "--hardware", "cpu", "--repeats", "1", "--same_process", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def timed_seconds(system: dict) -> float:
    return sum(system["step_times_s"])


# ----------------------------------------------------------------------------- the report

def test_qa_report_against_hand_counts(tmp_path, tiny_dir, squad_file, capsys):
    features = prepare_train_features(read_squad(squad_file), load_tokenizer(tiny_dir), max_seq_length=SEQ,
                                      doc_stride=32, progress=False)
    F = len(features)
    assert features.lengths.min() < SEQ  # some padding
    steps = next(k for k in range(2, F + 1) if F % k == 0)  # the timed steps use every feature once
    r = bench(tmp_path, "--task", "qa", "--model_config", str(tiny_dir), "--data", str(squad_file),
              "--seq_len", str(SEQ), "--doc_stride", "32", "--batch_size", str(F // steps), "--steps", str(steps),
              "--warmup", "0")
    assert json.loads(capsys.readouterr().out) == r  # printed and written alike

    for key in ("platform", "cpu", "cpu_cores", "torch_threads", "gpu", "gpu_count"):
        assert key in r["machine"]
    assert r["machine"]["gpu"] is None and r["device_peak"] is None
    for key in ("hone", "torch", "transformers", "tokenizers", "python", "cuda", "cudnn"):
        assert key in r["versions"]
    assert r["command"].startswith("hone bench train --task qa")
    assert r["settings"]["hardware"]["name"] == "cpu" and r["settings"]["autocast_dtype"] == "fp32 (none)"

    real, padded = int(features.lengths.sum()), F * SEQ
    assert r["data"]["rows"] == F and not r["data"]["repeated"]
    assert r["data"]["baseline_padding_share"] == pytest.approx(1 - real / padded, rel=1e-12)
    hone, base = r["systems"]["hone"], r["systems"]["transformers"]
    assert hone["mode"] == "unpadded" and base["mode"] == "padding=max_length"
    assert not hone["compiled"] and not base["compiled"]
    assert hone["fused_optimizer"] and base["fused_optimizer"]  # the cpu profile fuses AdamW, for both
    for system, tokens in ((hone, real), (base, padded)):
        seconds = timed_seconds(system)
        assert len(system["step_times_s"]) == steps and all(t > 0 for t in system["step_times_s"])
        assert system["samples_per_second"] == pytest.approx(F / seconds, rel=1e-9)
        assert system["real_tokens_per_second"] == pytest.approx(real / seconds, rel=1e-9)
        assert system["padded_tokens_per_second"] == pytest.approx(tokens / seconds, rel=1e-9)
        assert system["padding_share"] == pytest.approx(1 - real / tokens, abs=1e-12)
        assert system["step_time_mean_s"] == pytest.approx(seconds / steps, rel=1e-9)
        # model FLOPs: every sample counted at the baseline's padded length, useful ones at its own
        config = config_from_dict(json.loads((tiny_dir / "config.json").read_text()))
        assert system["model_flops_per_second"] * seconds == pytest.approx(F * perf.train_flops(config, "qa", SEQ))
        useful = sum(perf.train_flops(config, "qa", int(n)) for n in features.lengths)
        assert system["useful_flops_per_second"] * seconds == pytest.approx(useful)
        assert system["mfu"] is None and system["useful_mfu"] is None
        assert isinstance(system["peak_memory_bytes"], int) and system["peak_memory_bytes"] >= 0
        assert len(system["losses"]) == steps and all(math.isfinite(x) for x in system["losses"])
        assert system["sample_order_sha256"] == r["data"]["sample_order_sha256"]
    assert r["hone_vs_transformers"]["samples_per_second_ratio"] == pytest.approx(
        hone["samples_per_second"] / base["samples_per_second"], rel=1e-12)
    # at initialisation a QA loss is about ln(positions in the softmax): transformers keeps the
    # padding there, hone's unpadded loss does not
    assert base["loss_first"] > hone["loss_first"]


@pytest.mark.parametrize("hone_mode", ["unpadded", "packed", "padded"])
def test_glue_same_samples_give_the_same_losses(tmp_path, tiny_dir, sst_file, hone_mode):
    """Same weights, samples and order, dropout off: padding masked on one side and absent on
    the other cannot change a classification loss, so both systems' losses agree step by step."""
    r = bench(tmp_path, "--task", "glue", "--model_config", str(tiny_dir), "--data", str(sst_file),
              "--seq_len", "64", "--batch_size", "4", "--steps", "2", "--warmup", "1", "--dropout", "0",
              "--mode", hone_mode, "--learning_rate", "1e-3")
    hone, base = r["systems"]["hone"], r["systems"]["transformers"]
    assert hone["mode"] == hone_mode and base["mode"] == "padding=max_length"
    assert r["data"]["samples"] == 12 and r["data"]["baseline_padding_share"] > 0.3
    assert hone["padding_share"] < base["padding_share"]
    assert hone["sample_order_sha256"] == base["sample_order_sha256"]
    np.testing.assert_allclose(hone["losses"], base["losses"], rtol=1e-4)
    assert hone["losses"][0] != hone["losses"][-1]  # the weights moved


def test_short_data_repeats_in_a_new_order(tmp_path, tiny_dir, sst_file):
    r = bench(tmp_path, "--task", "glue", "--model_config", str(tiny_dir), "--data", str(sst_file),
              "--seq_len", "64", "--batch_size", "10", "--steps", "2", "--warmup", "1", "--systems", "hone")
    assert r["data"]["rows"] == 24 and r["data"]["samples"] == 30 and r["data"]["repeated"]
    assert list(r["systems"]) == ["hone"] and "hone_vs_transformers" not in r


@pytest.mark.parametrize("flags", [["--threads", "1"], ["--hardware_overrides", "cpu_threads=1"]])
def test_threads_come_from_the_flag_or_the_profile(tmp_path, tiny_dir, sst_file, flags):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = bench(tmp_path, "--task", "glue", "--model_config", str(tiny_dir), "--data", str(sst_file),
                  "--seq_len", "32", "--batch_size", "2", "--steps", "1", "--warmup", "0", "--systems", "hone", *flags)
    finally:
        torch.set_num_threads(threads)
    assert r["machine"]["torch_threads"] == 1
    assert r["settings"]["threads"] == r["settings"]["hardware"]["cpu_threads"] == 1


def test_cli_table_runs_bench(tmp_path, tiny_dir, sst_file):
    out = tmp_path / "cli.json"
    assert cli.main(["bench", "train", "--task", "glue", "--model_config", str(tiny_dir), "--data", str(sst_file),
                     "--seq_len", "32", "--batch_size", "2", "--steps", "1", "--warmup", "0", "--hardware",
                     "cpu-bf16", "--systems", "transformers,hone", "--repeats", "1", "--same_process",
                     "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert list(r["systems"]) == ["transformers", "hone"] and r["settings"]["autocast_dtype"] == "bfloat16"


def test_each_system_runs_in_a_new_process_on_its_users_allocator(tmp_path, tiny_dir, sst_file):
    """By default each system runs on its users' allocator: hone on the profile's (mimalloc where
    the library is installed), transformers on the system's, each measurement in a new process
    when the two differ. The samples, weights and so the losses are those of a run with both
    systems in one process."""
    flags = ["--task", "glue", "--model_config", str(tiny_dir), "--data", str(sst_file), "--seq_len", "32",
             "--batch_size", "4", "--steps", "2", "--warmup", "1", "--dropout", "0", "--threads", "1"]
    out = tmp_path / "processes.json"
    assert main(["train", *flags, "--hardware", "cpu", "--repeats", "1", "--out", str(out)]) == 0
    r, together = json.loads(out.read_text()), bench(tmp_path, *flags)
    assert r["settings"]["processes"] == "a new one per system and repeat"
    out = tmp_path / "system.json"  # one allocator for both (as on GPUs; its purge delay is moot): no new processes
    assert main(["train", *flags, "--hardware", "cpu", "--hardware_overrides",
                 "host_allocator=system,host_allocator_purge_ms=5000", "--repeats", "1", "--out", str(out)]) == 0
    one = json.loads(out.read_text())
    assert one["settings"]["processes"] == "this one for every system"
    assert {s["host_allocator"] for s in one["systems"].values()} == {"system"}
    assert together["settings"]["processes"] == "this one for every system"
    mimalloc = "mimalloc" if find_mimalloc() is not None else "system"
    assert r["systems"]["hone"]["host_allocator"] == mimalloc and r["systems"]["transformers"]["host_allocator"] == "system"
    for name in ("hone", "transformers"):
        np.testing.assert_allclose(r["systems"][name]["losses"], together["systems"][name]["losses"], rtol=1e-5)
    np.testing.assert_allclose(r["systems"]["hone"]["losses"], r["systems"]["transformers"]["losses"], rtol=1e-4)


@pytest.mark.data
@pytest.mark.skipif(not WIKITEXT.is_file(), reason="needs ../shared/data")
@pytest.mark.parametrize("task", ["clm", "mlm"])
def test_language_modelling_on_real_text(tmp_path, task):
    """Tiny GPT-2 / RoBERTa with the real BPE tokenizers on WikiText-2: clm blocks carry no
    padding; mlm lines are padded per batch by the baseline and masked alike for both."""
    text = tmp_path / "wiki.raw"
    text.write_text(WIKITEXT.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    folder = tmp_path / "model"
    torch.manual_seed(0)
    if task == "clm":
        config = dict(model_type="gpt2", n_embd=16, n_layer=1, n_head=2, n_positions=64)
        tokenizer = DATA / "tokenizers" / "gpt2"
    else:
        config = dict(PRESETS["roberta-base"], hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=66)
        tokenizer = DATA / "tokenizers" / "roberta-base"
    build_model(config, task).save_pretrained(folder)
    r = bench(tmp_path, "--task", task, "--model_config", str(folder), "--tokenizer", str(tokenizer),
              "--data", str(text), "--seq_len", "32", "--batch_size", "3", "--steps", "2", "--warmup", "1",
              "--dropout", "0")
    hone, base = r["systems"]["hone"], r["systems"]["transformers"]
    if task == "clm":
        assert r["data"]["baseline_padding_share"] == 0 and hone["padding_share"] == 0
        assert r["data"]["real_tokens_per_sample_mean"] == 32
    else:
        assert r["data"]["baseline_padding"] == "longest" and r["data"]["baseline_padding_share"] > 0
        assert hone["padding_share"] == 0
    np.testing.assert_allclose(hone["losses"], base["losses"], rtol=1e-4)


# ----------------------------------------------------------------------------- pieces

def test_train_flops_match_reference_figures():
    bert = config_from_dict(PRESETS["bert-base-uncased"])
    L, d, s = 12, 768, 384
    N = L * (4 * d * d + 2 * d * 4 * d)
    assert N == pytest.approx(84.9e6, rel=1e-3)  # reference.md: 84.9M non-embedding matmul parameters
    assert perf.train_flops(bert, "qa", s) == 6 * (N + 2 * d) * s + 12 * L * s**2 * d
    assert perf.train_flops(bert, "qa", s) == pytest.approx(212e9, rel=2e-3)  # reference.md: 212 GFLOP
    roberta = config_from_dict(PRESETS["roberta-base"])
    assert perf.train_flops(roberta, "qa", s) == perf.train_flops(bert, "qa", s)
    assert perf.train_flops(bert, "classification", s) == 6 * N * s + 6 * (d * d + 2 * d) + 12 * L * s**2 * d
    gpt2 = config_from_dict(PRESETS["gpt2"])
    assert perf.train_flops(gpt2, "clm", 1024) == 6 * (N + d * 50257) * 1024 + 12 * L * 1024**2 * d
    assert sum(p.numel() for p in build_model(PRESETS["gpt2"], "clm").parameters()) == 124_439_808


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12), ("Tesla T4", None)])
def test_device_peak_table(name, peak):
    got = perf.device_peak(name)
    assert (got[1] if got else None) == peak


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_cpu_peak_memory_sees_a_freed_allocation():
    meter = perf.PeakMemory(torch.device("cpu"))
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del big
    meter.start()  # the earlier peak is forgotten
    assert meter.peak_bytes() < 32 * 2**20
    block = torch.ones(64 * 2**20 // 4)
    del block
    assert meter.peak_bytes() >= 60 * 2**20 and meter.exact


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_cpu_peak_rss_forgets_the_process_before_an_exec():
    """hone relaunches itself (os.execve) onto its allocator; getrusage's ru_maxrss then still
    holds the first process's peak, the process's VmHWM does not."""
    after_exec = ("import resource; from hone import perf; "
                  "print(perf._max_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    before_exec = (f"import os, sys; block = b'x' * 2**30; "
                   f"os.execv(sys.executable, [sys.executable, '-c', {after_exec!r}])")
    out = subprocess.run([sys.executable, "-c", before_exec], capture_output=True, text=True, check=True)
    ours, rusage = map(int, out.stdout.split())
    assert rusage >= 2**30 > ours


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("change, message", [
    ({"--data": "missing.json"}, r"--data .*missing\.json: no such file; --task qa reads a SQuAD"),
    ({"--task": "clm"}, r"--task clm is not available for bert models .* supports --task qa, glue, mlm"),
    ({"--model_config": "roberta-base"}, r"built from scratch: pass --tokenizer"),
    ({"--model_config": "no-such-dir"}, r"neither a named config .* nor a checkpoint folder"),
    ({"--systems": "hone,tf"}, r"--systems hone,tf: give each of hone, transformers"),
    ({"--seq_len": "600"}, r"--max_seq_length 600 is longer than the model's 128 positions"),
    ({"--repeats": "0"}, r"--repeats must be >= 1"),
    ({"--steps": "0"}, r"--steps must be >= 1"),
    ({"--threads": "0"}, r"--threads must be >= 1"),
    ({"--model_config": "broken"}, r"broken/config\.json: not valid JSON"),
    pytest.param({"--hardware": "h100"}, r"needs a CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_bad_input_is_one_clear_line(tmp_path, tiny_dir, squad_file, capsys, change, message):
    argv = {"--task": "qa", "--model_config": str(tiny_dir), "--data": str(squad_file), "--seq_len": str(SEQ),
            "--doc_stride": "32", "--batch_size": "2", "--steps": "1", "--warmup": "0", "--hardware": "cpu"}
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{model_type: bert")
    argv.update({k: str(tmp_path / v) if v in ("missing.json", "broken") else v for k, v in change.items()})
    assert cli.main(["bench", "train", *[x for kv in argv.items() for x in kv]]) == 2
    line = capsys.readouterr().err
    assert line.startswith("hone bench: error: ") and line.count("\n") == 1
    assert re.search(message, line)


def test_unknown_task_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--task", "ner", "--model_config", "bert-base", "--data", "x"])
    assert exit_.value.code == 2 and "invalid choice: 'ner'" in capsys.readouterr().err


def test_repeats_alternate_and_ratios_cover_every_timed_step(tmp_path, tiny_dir, sst_file):
    """Old flag names still work; each system is measured --repeats times; the headline rate is
    samples over the time of every timed step of every repeat, with the per-repeat spread."""
    r = bench(tmp_path, "--task", "glue", "--model_config", str(tiny_dir), "--data", str(sst_file),
              "--seq_len", "64", "--batch_size", "4", "--steps", "3", "--warmup", "1", "--dropout", "0",
              "--repeats", "1")  # bench() passes --repeats 1 first; the last one given wins below
    assert r["settings"]["repeats"] == 1
    out = tmp_path / "three.json"
    assert main(["train", "--task", "glue", "--model_config", str(tiny_dir), "--data", str(sst_file),
                 "--max_seq_length", "64", "--per_device_train_batch_size", "4", "--steps", "3", "--warmup", "1",
                 "--dropout", "0", "--repeats", "2", "--hardware", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["settings"]["repeats"] == 2 and r["settings"]["max_seq_length"] == 64
    ratio = r["hone_vs_transformers"]
    for name in ("hone", "transformers"):
        system = r["systems"][name]
        assert len(system["step_times_s"]) == 6 and len(system["samples_per_second_per_repeat"]) == 2
        assert system["samples_per_second"] == pytest.approx(2 * 3 * 4 / timed_seconds(system), rel=1e-9)
        assert len(system["losses"]) == 4  # one repeat's steps: every repeat trains the same
    assert ratio["samples_per_second_ratio"] == pytest.approx(
        r["systems"]["hone"]["samples_per_second"] / r["systems"]["transformers"]["samples_per_second"])
    per_repeat = [h / b for h, b in zip(r["systems"]["hone"]["samples_per_second_per_repeat"],
                                        r["systems"]["transformers"]["samples_per_second_per_repeat"])]
    assert ratio["samples_per_second_ratio_per_repeat"] == pytest.approx(per_repeat)
    assert ratio["samples_per_second_ratio_spread"]["min"] == pytest.approx(min(per_repeat))
    assert ratio["samples_per_second_ratio_spread"]["max"] == pytest.approx(max(per_repeat))


def test_pretraining_on_prepared_shards_same_losses(tmp_path, tiny_dir):
    """BERT pre-training (MLM + NSP) on instances prepared by hone prepare-pretraining: the same
    static masks for both systems, so with dropout off the losses agree step by step, although
    hone predicts only the masked positions and the baseline every position."""
    from hone.data.pretraining import prepare_pretraining

    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()
    documents = ["\n".join(" ".join(rng.choice(words, rng.integers(4, 9))) + "." for _ in range(rng.integers(2, 6)))
                 for _ in range(30)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(documents) + "\n")
    prepare_pretraining(["--input", str(corpus), "--tokenizer", str(tiny_dir), "--output", str(tmp_path / "shards"),
                         "--max_seq_length", "64", "--max_predictions_per_seq", "10", "--dupe_factor", "2",
                         "--seed", "1"])
    folder = tmp_path / "model"
    config = json.loads((tiny_dir / "config.json").read_text())
    build_model({k: v for k, v in config.items() if k not in ("architectures", "id2label")}, "pretraining") \
        .save_pretrained(folder)
    r = bench(tmp_path, "--task", "pretraining", "--model_config", str(folder), "--tokenizer", str(tiny_dir),
              "--data", str(tmp_path / "shards"), "--seq_len", "64", "--batch_size", "4", "--steps", "2",
              "--warmup", "1", "--dropout", "0", "--learning_rate", "1e-3")
    hone, base = r["systems"]["hone"], r["systems"]["transformers"]
    assert r["data"]["baseline_padding"] == "longest" and hone["padding_share"] == 0
    np.testing.assert_allclose(hone["losses"], base["losses"], rtol=1e-4)
    assert hone["losses"][0] != hone["losses"][-1]


def test_baseline_padding_to_the_longest_row(tmp_path, tiny_dir, sst_file):
    """run_glue without --pad_to_max_length pads each batch to its longest row: the baseline's
    padding share falls, and the losses still agree."""
    padded = bench(tmp_path, "--task", "glue", "--model_config", str(tiny_dir), "--data", str(sst_file),
                   "--seq_len", "64", "--batch_size", "4", "--steps", "2", "--warmup", "1", "--dropout", "0")
    longest = bench(tmp_path, "--task", "glue", "--model_config", str(tiny_dir), "--data", str(sst_file),
                    "--seq_len", "64", "--batch_size", "4", "--steps", "2", "--warmup", "1", "--dropout", "0",
                    "--baseline_padding", "longest")
    assert longest["systems"]["transformers"]["mode"] == "padding=longest"
    assert longest["data"]["baseline_padding_share"] < padded["data"]["baseline_padding_share"]
    np.testing.assert_allclose(longest["systems"]["transformers"]["losses"],
                               longest["systems"]["hone"]["losses"], rtol=1e-4)
