"""`hone runs table|plot|compare` from hand-made run folders: seed 002's own experiments rebuild
its table; CSV values, failed and pruned rows, plots and comparisons are checked against the
values written into the folders."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from hone.sweep.cli import runs_main
from hone.sweep.compare import compare_runs
from hone.sweep.plots import curves_figure, metric_figure, write_plots
from hone.sweep.records import RunsError, find_runs, read_run
from hone.sweep.table import build_rows, format_markdown
from paths import SEEDS


def make_run(root: Path, name: str, *, status: str = "finished", settings: dict | None = None,
             metrics: dict | None = None, hardware: dict | None = None, log: list[dict] | None = None,
             error: str | None = None, started: str = "2026-01-01T00:00:00+00:00", **extra) -> Path:
    """A run folder as the run skeleton writes it."""
    folder = root / name
    folder.mkdir(parents=True)
    record = {"task": "qa", "command": f"hone qa --output_dir {folder}", "status": status, "error": error,
              "settings": {"output_dir": str(folder), **(settings or {})}, "hardware": hardware or {"name": "cpu"},
              "versions": {"hone": "0.1.0", "torch": "2.13"}, "git_commit": "abc123", "started": started,
              "finished": None if status == "running" else "2026-01-01T01:00:00+00:00", "wall_time_s": 3600.0,
              "metrics": metrics or {}, **extra}
    (folder / "run.json").write_text(json.dumps(record))
    if log:
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return folder


def parse_markdown(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in lines]
    return [rows[0], *rows[2:]]  # without the alignment rule


# ----------------------------------------------------------------------------- seed 002

def seed_002() -> str:
    files = sorted(SEEDS.glob("002_*.txt"))
    if not files:
        pytest.skip(f"seed 002 not found under {SEEDS}")
    return files[0].read_text(encoding="utf-8")


def seed_experiments(text: str) -> list[dict]:
    """Each experiment's fairseq variables and its official evaluation JSON."""
    experiments = []
    for variables, results in re.findall(r"```c\n(.*?)```\s*```json\n(.*?)```", text, re.S):
        values = dict(re.findall(r"^\s*(\w+)=([\w.\-]+)", variables, re.M))
        experiments.append({"values": values, "results": json.loads(results)})
    return experiments


def seed_table(text: str) -> list[list[str]]:
    """The seed's table rows that describe a run (steps given), cells without markup."""
    table = text[text.index("Table:"):text.index("## Experiment 1")]
    rows = [[c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
            for line in table.splitlines() if line.startswith("|")]
    return [r for r in rows if r[0].isdigit()]


def test_table_rebuilds_seed_002_from_its_experiments(tmp_path):
    text = seed_002()
    experiments = seed_experiments(text)
    assert len(experiments) == 8
    gpus = 8  # CUDA_VISIBLE_DEVICES=0,...,7 in the seed's command
    for i, exp in enumerate(experiments):
        v = exp["values"]
        make_run(tmp_path, f"exp{i + 1}", settings={
            "max_steps": int(v["TOTAL_NUM_UPDATES"]), "warmup_steps": int(v["WARMUP_UPDATES"]),
            "learning_rate": float(v["LR"]), "per_device_train_batch_size": int(v["MAX_SENTENCES"]),
            "gradient_accumulation_steps": int(v["UPDATE_FREQ"]),
            "layerwise_lr_decay": float(v.get("lr_decay", v.get("lr_rate_decay")))},
            hardware={"replicas": gpus}, metrics={f"eval_{k}": x for k, x in exp["results"].items()},
            started=f"2026-01-01T00:0{i}:00+00:00")
    runs = find_runs(tmp_path)
    headers, rows = build_rows(runs, "eval_best_f1", "maximize")
    table = parse_markdown(format_markdown(headers, rows, "eval_best_f1"))
    assert table[0] == ["run", "steps", "epochs", "batch size", "learning rate", "lr decay", "warmup_steps",
                        "gradient_accumulation_steps", "eval_best_f1", "note"]
    assert [r[0] for r in table[1:]] == [f"exp{i}" for i in range(1, 9)]
    seed_rows = {(int(r[0]), int(r[2]), float(r[3]), float(r[4])): r[5] for r in seed_table(text)}
    for row in table[1:]:
        steps, batch, lr, decay, f1 = int(row[1]), int(row[3]), float(row[4]), float(row[5]), row[8]
        assert seed_rows[(steps, batch, round(lr * 1e5, 1), decay)] == f1.strip("*")
    best = [r for r in table[1:] if r[9] == "best"]
    assert len(best) == 1 and best[0][8] == "***89.615***"  # the seed's bold-italic best run


# ----------------------------------------------------------------------------- tables

def small_sweep(root: Path) -> list[Path]:
    return [
        make_run(root, "lr1e-05", settings={"learning_rate": 1e-5, "per_device_train_batch_size": 16,
                                            "num_train_epochs": 2.0, "weight_decay": 0.0},
                 metrics={"eval_best_f1": 71.25, "eval_loss": 1.5, "epoch": 2.0, "global_step": 120},
                 sweep={"index": 0}),
        make_run(root, "lr3e-05", settings={"learning_rate": 3e-5, "per_device_train_batch_size": 16,
                                            "num_train_epochs": 2.0, "weight_decay": 0.01},
                 metrics={"eval_best_f1": 74.123456, "eval_loss": 1.25, "epoch": 2.0, "global_step": 120},
                 sweep={"index": 1}),
        make_run(root, "lr1e-03", status="failed", error="CUDA out of memory | tried to allocate 2 GiB",
                 settings={"learning_rate": 1e-3, "per_device_train_batch_size": 16, "num_train_epochs": 2.0,
                           "weight_decay": 0.0}, sweep={"index": 2}),
        make_run(root, "lr5e-06", status="pruned", settings={"learning_rate": 5e-6,
                                                             "per_device_train_batch_size": 16,
                                                             "num_train_epochs": 2.0, "weight_decay": 0.0},
                 metrics={"eval_best_f1": 10.0}, log=[{"step": 10, "loss": 3.0}, {"step": 20, "eval_best_f1": 10.0}],
                 sweep={"index": 3, "pruned_at_step": 20}),
    ]


def test_markdown_table_marks_the_best_and_keeps_failed_and_pruned_rows(tmp_path):
    small_sweep(tmp_path)
    assert runs_main(["table", str(tmp_path), "--output", str(tmp_path / "t.md")]) == 0
    table = parse_markdown((tmp_path / "t.md").read_text())
    assert table[0] == ["run", "steps", "epochs", "batch size", "learning rate", "lr decay", "weight_decay",
                        "eval_best_f1", "note"]
    assert table[1] == ["lr1e-05", "120", "2", "16", "1e-05", "", "0.0", "71.250", ""]
    assert table[2] == ["lr3e-05", "120", "2", "16", "3e-05", "", "0.01", "***74.123***", "best"]
    assert table[3][:8] == ["lr1e-03", "", "2", "16", "0.001", "", "0.0", "failed"]
    assert table[3][8] == "CUDA out of memory \\| tried to allocate 2 GiB"  # the pipe escaped
    assert table[4] == ["lr5e-06", "20", "2", "16", "5e-06", "", "0.0", "pruned", "pruned at step 20"]


def test_csv_table_has_raw_values_and_minimize_picks_the_lowest(tmp_path, capsys):
    small_sweep(tmp_path)
    assert runs_main(["table", str(tmp_path), "--format", "csv", "--metric", "eval_loss"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["run"] for r in rows] == ["lr1e-05", "lr3e-05", "lr1e-03", "lr5e-06"]
    assert [r["status"] for r in rows] == ["finished", "finished", "failed", "pruned"]
    assert float(rows[0]["eval_loss"]) == 1.5 and float(rows[1]["learning rate"]) == 3e-5
    assert [r["best"] for r in rows] == ["false", "true", "false", "false"]  # eval_loss: lower is better
    assert rows[2]["error"].startswith("CUDA out of memory") and rows[2]["eval_loss"] == ""


def test_table_default_metric_and_clear_errors(tmp_path, capsys):
    small_sweep(tmp_path / "s")
    assert runs_main(["table", str(tmp_path / "s")]) == 0
    assert "eval_best_f1" in capsys.readouterr().out.splitlines()[0]  # the usual QA metric, found in the runs
    with pytest.raises(RunsError, match="no run folders"):
        runs_main(["table", str(tmp_path)])
    with pytest.raises(RunsError, match="no such folder"):
        runs_main(["table", str(tmp_path / "missing")])
    (tmp_path / "s" / "lr1e-05" / "run.json").write_text("{not json")
    with pytest.raises(RunsError, match="not valid JSON"):
        runs_main(["table", str(tmp_path / "s")])


def test_batch_size_is_micro_batch_times_accumulation_times_replicas(tmp_path):
    run = read_run(make_run(tmp_path, "a", settings={"per_device_train_batch_size": 3,
                                                     "gradient_accumulation_steps": 2}, hardware={"replicas": 8}))
    assert run.train_batch_size() == 48
    run = read_run(make_run(tmp_path, "b", settings={"per_device_train_batch_size": 3},
                            hardware={"micro_batch_size": 4, "gradient_accumulation_steps": 4}))
    assert run.train_batch_size() == 16  # the profile's values win, as in config.effective_batch_sizes


# ----------------------------------------------------------------------------- plots

def logged_runs(root: Path) -> list[Path]:
    folders = []
    for i, lr in enumerate((1e-5, 3e-5, 1e-4)):
        log = [{"step": s, "epoch": s / 30, "loss": 3.0 / (s * (i + 1)), "learning_rate": lr} for s in range(1, 31)]
        log += [{"step": s, "eval_f1": 50 + 10 * i + s / 3} for s in (10, 20, 30)]
        folders.append(make_run(root, f"run{i}", settings={"learning_rate": lr, "per_device_train_batch_size": 16,
                                                           "lr_scheduler_type": ["linear", "cosine", "linear"][i]},
                                metrics={"eval_f1": 60 + 10 * i}, log=log, sweep={"index": i}))
    return folders


def test_plot_figures_hold_the_logged_values(tmp_path):
    logged_runs(tmp_path)
    runs = find_runs(tmp_path)
    figure = curves_figure(runs, "loss", "training loss")
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["run0", "run1", "run2"]
    np.testing.assert_allclose(lines[1].get_xdata(), np.arange(1, 31))
    np.testing.assert_allclose(lines[1].get_ydata(), [3.0 / (s * 2) for s in range(1, 31)])
    figure = metric_figure(runs, "learning_rate", "eval_f1", best=runs[2])
    axes = figure.axes[0]
    assert axes.get_xscale() == "log"  # 1e-5 .. 1e-4 spans 10x
    np.testing.assert_allclose(axes.collections[0].get_offsets(), [[1e-5, 60], [3e-5, 70], [1e-4, 80]])
    figure = metric_figure(runs, "lr_scheduler_type", "eval_f1", best=None)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["cosine", "linear"]
    np.testing.assert_allclose(figure.axes[0].collections[0].get_offsets(), [[1, 60], [0, 70], [1, 80]])


def test_plot_writes_non_trivial_pngs(tmp_path, capsys):
    logged_runs(tmp_path)
    make_run(tmp_path, "broken", status="failed", error="boom", settings={"learning_rate": 1e-3})
    assert runs_main(["plot", str(tmp_path), "--metric", "eval_f1"]) == 0
    written = sorted(Path(p).name for p in capsys.readouterr().out.split())
    assert written == ["eval_f1_during_training.png", "eval_f1_vs_learning_rate.png",
                       "eval_f1_vs_lr_scheduler_type.png", "training_loss.png"]
    for name in written:
        path = tmp_path / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = mpimg.imread(path)[..., :3]
        drawn = (pixels.min(axis=-1) < 0.9).mean()  # share of pixels that are not (near) white
        assert 0.01 < drawn < 0.5, (name, drawn)
    assert write_plots(find_runs(tmp_path / "broken"), "eval_f1", None, tmp_path / "none") == []


# ----------------------------------------------------------------------------- compare

def test_compare_shows_differing_settings_and_metric_deltas(tmp_path, capsys):
    a = make_run(tmp_path, "a", settings={"learning_rate": 2e-5, "seed": 42, "max_steps": 100},
                 metrics={"eval_f1": 80.0, "train_loss": 1.25, "epoch": 2.0})
    b = make_run(tmp_path, "b", settings={"learning_rate": 3e-5, "seed": 42, "warmup_ratio": 0.1},
                 metrics={"eval_f1": 81.5, "train_loss": 1.0, "eval_exact": 70.0},
                 hardware={"name": "h100"}, git_commit="def456")
    assert runs_main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "learning_rate 2e-05 3e-05" in lines
    assert "max_steps 100 (absent)" in lines and "warmup_ratio (absent) 0.1" in lines
    assert not any(line.startswith(("seed ", "output_dir ")) for line in lines)  # equal / a place, not a setting
    assert "eval_f1 80 81.5 +1.5" in lines and "train_loss 1.25 1 -0.25" in lines
    assert "eval_exact (absent) 70" in lines
    assert "git_commit abc123 def456" in lines and "hardware.name cpu h100" in lines
    assert compare_runs(read_run(a), read_run(a)).count("identical") == 1
    with pytest.raises(RunsError, match="no run.json here"):
        runs_main(["compare", str(tmp_path), str(b)])
