"""`hone sweep`: grid expansion, search spaces, resume, failures, --parallel and an optuna search with
pruning, all on sweep_fake_task (a recipe with run()'s contract whose F1 is a known formula)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hone.sweep import SweepError
from hone.sweep.cli import sweep_main
from hone.sweep.execute import worker_environments
from hone.sweep.records import read_run
from hone.sweep.space import expand_grid, parse_grid, parse_space, run_name, run_names
from paths import REPO
from sweep_fake_task import quality

FAKE = "sweep_fake_task"
GRID = "learning_rate=1e-4,3e-4 per_device_train_batch_size=16,32"


@pytest.fixture
def child_path(monkeypatch):
    """Child processes (--parallel) import this copy of hone and the fake recipe; no GPU to look for."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def sweep(out: Path, *args: str) -> int:
    return sweep_main(["--task", FAKE, "--output_dir", str(out), "--metric", "eval_f1", *args])


def run_json(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


# ----------------------------------------------------------------------------- spaces

def test_grid_values_are_typed_and_expanded_in_nested_loop_order():
    grid = parse_grid("learning_rate=1.5e-5,2e-5,3e-5 per_device_train_batch_size=32,48 "
                      "layerwise_lr_decay=1.0,0.75  lr_scheduler_type=linear,'cosine' fp16=true")
    assert grid == {"learning_rate": [1.5e-5, 2e-5, 3e-5], "per_device_train_batch_size": [32, 48],
                    "layerwise_lr_decay": [1.0, 0.75], "lr_scheduler_type": ["linear", "cosine"], "fp16": [True]}
    assert [type(v) for v in grid["per_device_train_batch_size"]] == [int, int]
    assert [type(v) for v in grid["layerwise_lr_decay"]] == [float, float]
    combos = expand_grid(grid)
    expected = [{"learning_rate": lr, "per_device_train_batch_size": bs, "layerwise_lr_decay": d,
                 "lr_scheduler_type": s, "fp16": True}
                for lr in (1.5e-5, 2e-5, 3e-5) for bs in (32, 48) for d in (1.0, 0.75) for s in ("linear", "cosine")]
    assert combos == expected
    assert run_name({"learning_rate": 1.5e-5, "per_device_train_batch_size": 32, "layerwise_lr_decay": 1.0}) \
        == "lr1.5e-05_bs32_lrd1.0"
    assert run_name({"lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "model": "a/b c"}) == \
        "schedcosine_wr0.1_modela-b-c"


def test_run_names_fall_back_to_indices_when_readable_names_collide():
    combos = [{"model": "a/b"}, {"model": "a:b"}]  # both sanitise to modela-b
    assert run_names(combos) == ["run-000", "run-001"]
    assert run_names([{"seed": 1}, {"seed": 2}]) == ["seed1", "seed2"]


@pytest.mark.parametrize("text, message", [
    ("learning_rate", "is not NAME=VALUES"),
    ("learning_rate=1e-5 learning_rate=2e-5", "given twice"),
    ("learning_rate=1e-5,,2e-5", "empty value"),
    ("learning_rate=1e-5,1e-5", "repeats a value"),
    ("output_dir=a,b", "output_dir cannot be swept"),
])
def test_grid_mistakes_name_the_fix(text, message):
    with pytest.raises(SweepError, match=message):
        parse_grid(text)


def test_space_ranges_become_optuna_distributions():
    optuna = pytest.importorskip("optuna")
    space = parse_space("learning_rate=loguniform(1e-5,1e-3) per_device_train_batch_size=choice(16, 32) "
                        "warmup_ratio=uniform(0,0.2,0.05) num_train_epochs=int(1,4) seed=1,2,3")
    d = {name: r.distribution() for name, r in space.items()}
    assert d["learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert d["per_device_train_batch_size"] == optuna.distributions.CategoricalDistribution((16, 32))
    assert d["warmup_ratio"] == optuna.distributions.FloatDistribution(0.0, 0.2, step=0.05)
    assert d["num_train_epochs"] == optuna.distributions.IntDistribution(1, 4)
    assert d["seed"] == optuna.distributions.CategoricalDistribution((1, 2, 3))


@pytest.mark.parametrize("text, message", [
    ("learning_rate=loguniform(0,1e-3)", "LOW > 0"),
    ("learning_rate=uniform(1e-3,1e-5)", "LOW must be below HIGH"),
    ("learning_rate=normal(0,1)", "unknown range 'normal'"),
    ("epochs=int(1.5,3)", "takes integers"),
    ("learning_rate=loguniform(1e-5,1e-3", "unclosed"),
])
def test_space_mistakes_name_the_fix(text, message):
    with pytest.raises(SweepError, match=message):
        parse_space(text)


def test_parallel_workers_split_the_cores_and_take_one_gpu_each():
    envs = worker_environments(4, cpu_count=2)
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["1"] * 4
    assert "CUDA_VISIBLE_DEVICES" not in envs[0]
    envs = worker_environments(2, cpu_count=16, gpus=["0", "3"])
    assert [(e["OMP_NUM_THREADS"], e["CUDA_VISIBLE_DEVICES"]) for e in envs] == [("8", "0"), ("8", "3")]


# ----------------------------------------------------------------------------- grid sweeps

def test_grid_sweep_runs_every_combination_with_the_base_config(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"max_steps": 3, "learning_rate": 0.5, "layerwise_lr_decay": 0.9}))
    out = tmp_path / "sweep"
    assert sweep(out, "--config", str(base), "--grid", GRID) == 0
    names = ["lr0.0001_bs16", "lr0.0001_bs32", "lr0.0003_bs16", "lr0.0003_bs32"]
    assert sorted(p.name for p in out.iterdir() if (p / "run.json").exists()) == names
    for name in names:
        run = read_run(out / name)
        lr, bs = run.sweep["params"]["learning_rate"], run.sweep["params"]["per_device_train_batch_size"]
        assert run.status == "finished"
        assert (run.settings["learning_rate"], run.settings["per_device_train_batch_size"]) == (lr, bs)  # swept wins
        assert run.settings["max_steps"] == 3 and run.settings["layerwise_lr_decay"] == 0.9  # from the config
        assert run.metrics["eval_f1"] == pytest.approx(quality(lr, bs))
    definition = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in definition["runs"]] == names
    table = (out / "runs.md").read_text()
    best_line = next(line for line in table.splitlines() if "best" in line and "lr0" in line)
    assert "lr0.0003_bs32" in best_line and f"***{quality(3e-4, 32):.3f}***" in best_line


def test_resume_skips_finished_runs_and_reruns_the_cut_one(tmp_path):
    out = tmp_path / "sweep"
    assert sweep(out, "--grid", GRID) == 0
    started = {p.name: run_json(p)["started"] for p in out.iterdir() if p.is_dir()}
    cut = out / "lr0.0003_bs16"
    record = run_json(cut)  # as a process killed mid-run leaves it
    record.update(status="running", finished=None, metrics={})
    (cut / "run.json").write_text(json.dumps(record))
    assert sweep(out, "--grid", GRID) == 0
    after = {p.name: run_json(p) for p in out.iterdir() if p.is_dir()}
    assert {n: r["started"] for n, r in after.items() if n != cut.name} == \
        {n: s for n, s in started.items() if n != cut.name}
    assert after[cut.name]["started"] != started[cut.name]
    assert after[cut.name]["status"] == "finished"
    assert "--overwrite_output_dir" in after[cut.name]["command"]  # the cut run's folder was not empty


def test_interrupted_sweep_stops_and_resumes(tmp_path):
    out, flag = tmp_path / "sweep", tmp_path / "interrupt"
    flag.touch()  # the fake raises KeyboardInterrupt once, in the first run
    assert sweep(out, "--grid", GRID, "--interrupt_once_file", str(flag)) == 130
    runs = sorted(p.name for p in out.iterdir() if (p / "run.json").exists())
    assert runs == ["lr0.0001_bs16"] and run_json(out / runs[0])["status"] == "interrupted"
    assert sweep(out, "--grid", GRID, "--interrupt_once_file", str(flag)) == 0
    assert all(run_json(p)["status"] == "finished" for p in out.iterdir() if p.is_dir())


def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    assert sweep(out, "--grid", "learning_rate=1e-4,3e-4 fail=false,true") == 0
    failed = read_run(out / "lr0.0001_failtrue")
    assert failed.status == "failed"
    assert failed.error == "FakeError: --fail was given: this run fails on purpose"
    assert read_run(out / "lr0.0003_failfalse").status == "finished"
    table = (out / "runs.md").read_text()
    assert sum("| failed |" in " ".join(line.split()) for line in table.splitlines()) == 2
    started = run_json(out / "lr0.0001_failtrue")["started"]
    assert sweep(out, "--grid", "learning_rate=1e-4,3e-4 fail=false,true") == 0  # a failure is a result: kept
    assert run_json(out / "lr0.0001_failtrue")["started"] == started


def test_all_runs_failing_returns_1(tmp_path):
    assert sweep(tmp_path / "s", "--grid", "learning_rate=1e-4", "--fail", "true") == 1


def test_parallel_two_processes_one_core_each_and_a_crash_is_a_failed_row(tmp_path, child_path):
    out = tmp_path / "sweep"
    assert sweep(out, "--parallel", "2", "--grid", "learning_rate=1e-4,3e-4 crash=false,true") == 0
    for lr in ("0.0001", "0.0003"):
        ok, crashed = read_run(out / f"lr{lr}_crashfalse"), read_run(out / f"lr{lr}_crashtrue")
        assert ok.status == "finished" and ok.metrics["eval_f1"] == pytest.approx(quality(float(lr), 8))
        assert ok.hardware["threads"] == str(max(1, len(os.sched_getaffinity(0)) // 2))
        assert crashed.status == "failed" and "exited with status 3" in crashed.error
        assert crashed.settings["learning_rate"] == float(lr)  # the row still shows what it ran
    assert (out / "logs" / "lr0.0001_crashtrue.log").exists()


def test_sigterm_cuts_the_parallel_runs_cleanly_and_resume_finishes_them(tmp_path, child_path):
    out, hold = tmp_path / "sweep", tmp_path / "hold"
    hold.touch()  # the runs wait in their first step while it exists
    command = [sys.executable, "-c", "import sys; from hone.sweep.cli import sweep_main; "
               "sys.exit(sweep_main(sys.argv[1:]))", "--task", FAKE, "--output_dir", str(out), "--metric", "eval_f1",
               "--parallel", "2", "--grid", GRID, "--hold_file", str(hold)]
    sweep_process = subprocess.Popen(command, env=os.environ)
    deadline = time.time() + 60
    while len(list(out.glob("*/log.jsonl"))) < 2 and time.time() < deadline:  # both workers are in a run
        time.sleep(0.05)
    sweep_process.send_signal(signal.SIGTERM)
    assert sweep_process.wait(timeout=60) == 130
    cut = sorted(p.parent.name for p in out.glob("*/run.json"))
    assert cut == ["lr0.0001_bs16", "lr0.0001_bs32"]
    assert all(run_json(out / name)["status"] == "interrupted" for name in cut)
    hold.unlink()
    assert subprocess.run(command, env=os.environ).returncode == 0
    assert sorted(run_json(p.parent)["status"] for p in out.glob("*/run.json")) == ["finished"] * 4


def test_sweep_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(SweepError, match="no recipe hone.tasks.nosuchtask"):
        sweep_main(["--task", "nosuchtask", "--output_dir", str(tmp_path / "a"), "--metric", "m", "--grid", "seed=1"])
    with pytest.raises(SweepError, match="both swept and given to every run"):
        sweep(tmp_path / "b", "--grid", GRID, "--learning_rate", "1e-3")
    with pytest.raises(SweepError, match="choose one of: .*eval_best_f1"):
        sweep_main(["--task", FAKE, "--output_dir", str(tmp_path / "c"), "--metric", "eval_acc", "--grid", GRID])
    sweep(tmp_path / "d", "--grid", GRID)
    with pytest.raises(SweepError, match="holds another sweep"):
        sweep(tmp_path / "d", "--grid", "learning_rate=1e-3")
    with pytest.raises(SweepError, match="needs --n_trials"):
        sweep(tmp_path / "e", "--search", "optuna", "--space", "learning_rate=loguniform(1e-5,1e-3)")


# ----------------------------------------------------------------------------- optuna

SPACE = "learning_rate=loguniform(1e-5,1e-2) per_device_train_batch_size=choice(16,32)"


def optuna_sweep(out: Path, n_trials: int, *args: str) -> int:
    return sweep(out, "--search", "optuna", "--space", SPACE, "--n_trials", str(n_trials), "--sampler_seed", "0",
                 "--pruner_startup_trials", "2", "--max_steps", "6", *args)


def load_study(out: Path):
    optuna = pytest.importorskip("optuna")
    return optuna, optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'optuna.db'}")


@pytest.mark.parametrize("parallel", [1, 2])
def test_optuna_search_prunes_hopeless_runs(tmp_path, child_path, parallel):
    pytest.importorskip("optuna")
    out = tmp_path / "tpe"
    assert optuna_sweep(out, 8, "--parallel", str(parallel)) == 0
    optuna, study = load_study(out)
    states = optuna.trial.TrialState
    trials = study.get_trials()
    assert len(trials) == 8 and {t.state for t in trials} <= {states.COMPLETE, states.PRUNED}
    assert any(t.state == states.PRUNED for t in trials), "the median pruner should stop some runs"
    for t in trials:
        run = read_run(out / t.user_attrs["run_dir"])
        assert run.settings["learning_rate"] == t.params["learning_rate"]
        train_steps = [r["step"] for r in run.log if "loss" in r]
        if t.state == states.COMPLETE:
            assert run.status == "finished" and train_steps[-1] == 6
            assert t.value == pytest.approx(quality(t.params["learning_rate"], t.params["per_device_train_batch_size"]))
            assert run.metrics["eval_f1"] == t.value
        else:  # stopped right after the evaluation where the pruner said so
            assert run.status == "pruned" and train_steps[-1] == run.sweep["pruned_at_step"] == t.last_step < 6
    assert study.best_value == max(t.value for t in trials if t.state == states.COMPLETE)
    if parallel == 1:  # one at a time, each trial saw exactly the ones numbered before it: redo every decision
        for t in trials:
            done = [o for o in trials if o.number < t.number and o.state == states.COMPLETE]
            for step, value in sorted(t.intermediate_values.items()):
                median = np.percentile([o.intermediate_values[step] for o in done], 50) if len(done) >= 2 else None
                should_prune = median is not None and value < median
                assert should_prune == (t.state == states.PRUNED and step == t.last_step), (t.number, step)
                if should_prune:
                    break


@pytest.mark.slow
def test_two_processes_share_one_study_through_the_storage(tmp_path, child_path):
    """As two machines would with a PostgreSQL URL: one study, each process its own run folders."""
    optuna = pytest.importorskip("optuna")
    storage, hold = f"sqlite:///{tmp_path / 'shared.db'}", tmp_path / "hold"
    hold.touch()  # both processes are inside a trial before any finishes
    processes = [subprocess.Popen(
        [sys.executable, "-c", "import sys; from hone.sweep.cli import sweep_main; sys.exit(sweep_main(sys.argv[1:]))",
         "--task", FAKE, "--output_dir", str(tmp_path / machine), "--metric", "eval_f1", "--search", "optuna",
         "--space", SPACE, "--n_trials", "6", "--storage", storage, "--study_name", "shared", "--pruner", "none",
         "--hold_file", str(hold)], env=os.environ) for machine in ("a", "b")]
    deadline = time.time() + 60
    while len(list(tmp_path.glob("[ab]/*/log.jsonl"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    hold.unlink()
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert len(trials) in (6, 7)  # both may ask for the 6th trial at the same moment
    folders = {m: {p.parent.name for p in (tmp_path / m).glob("*/run.json")} for m in ("a", "b")}
    assert folders["a"] and folders["b"] and not folders["a"] & folders["b"]
    assert folders["a"] | folders["b"] == {t.user_attrs["run_dir"] for t in trials}


def test_optuna_resume_requeues_a_trial_whose_process_died(tmp_path):
    optuna = pytest.importorskip("optuna")
    import socket
    import subprocess
    import sys

    out = tmp_path / "study"
    assert optuna_sweep(out, 2, "--pruner", "none") == 0
    _, study = load_study(out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
                       "per_device_train_batch_size": optuna.distributions.CategoricalDistribution((16, 32))})
    trial.set_user_attr("run_dir", "trial-002")
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": int(dead.stdout)})
    (out / "trial-002").mkdir()
    (out / "trial-002" / "run.json").write_text(json.dumps({"status": "running", "settings": {}}))
    assert optuna_sweep(out, 3, "--pruner", "none") == 0
    states = optuna.trial.TrialState
    trials = study.get_trials()
    assert [t.state for t in trials] == [states.COMPLETE, states.COMPLETE, states.FAIL, states.COMPLETE]
    assert trials[3].params == trials[2].params and trials[3].user_attrs["run_dir"] == "trial-002"
    assert read_run(out / "trial-002").status == "finished"


def test_optuna_interrupted_trial_runs_again_on_resume(tmp_path):
    optuna = pytest.importorskip("optuna")
    out, flag = tmp_path / "study", tmp_path / "interrupt"
    flag.touch()
    assert optuna_sweep(out, 3, "--pruner", "none", "--interrupt_once_file", str(flag)) == 130
    assert read_run(out / "trial-000").status == "interrupted"
    assert optuna_sweep(out, 3, "--pruner", "none", "--interrupt_once_file", str(flag)) == 0
    _, study = load_study(out)
    trials = study.get_trials()
    states = optuna.trial.TrialState
    assert [t.state for t in trials] == [states.FAIL, states.COMPLETE, states.COMPLETE, states.COMPLETE]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["run_dir"] == "trial-000"
    assert read_run(out / "trial-000").status == "finished"
    assert trials[2].params != trials[0].params  # the seeded sampler did not draw its first sample again
