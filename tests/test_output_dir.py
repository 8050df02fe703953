"""The output folder's rules (engine/output_dir.py), one by one."""

from __future__ import annotations

import json

import pytest

from hone.engine.output_dir import RECORD, TRAINING_OUTPUTS, OutputDir, OutputDirError


def earlier_run(folder, status="finished"):
    """A folder as a finished training run leaves it, plus a file of the user's."""
    out = OutputDir.open(folder, planned=TRAINING_OUTPUTS, overwrite=False, continuing=False, training=True)
    out.write_text("config.json", "{}", kind="model")
    out.write_folder("checkpoint-2", lambda d: (d / "trainer_state.json").write_text("{}"), kind="checkpoint")
    out.write_json("predictions.json", {"q": "a"}, kind="predictions")
    out.write_json("all_results.json", {"eval_f1": 1.0}, kind="results")
    out.write_record(status=status)
    (folder / "notes.txt").write_text("mine")
    return out


def test_a_used_name_stops_the_run_before_any_work(tmp_path):
    earlier_run(tmp_path)
    with pytest.raises(OutputDirError, match=r"already holds .*all_results.json.*--overwrite_output_dir"):
        OutputDir.open(tmp_path, planned=["all_results.json", RECORD], overwrite=False, continuing=False,
                       training=False)
    # names the run will not write are no obstacle
    OutputDir.open(tmp_path, planned=["eval_results.json"], overwrite=False, continuing=False, training=False)


def test_overwrite_removes_what_hone_wrote_and_nothing_else(tmp_path):
    earlier_run(tmp_path)
    (tmp_path / "checkpoint-9").mkdir()  # another tool's checkpoint, also replaced by a training run
    (tmp_path / "checkpoint-9" / "trainer_state.json").write_text("{}")
    OutputDir.open(tmp_path, planned=TRAINING_OUTPUTS, overwrite=True, continuing=False, training=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_evaluation_overwrite_keeps_the_model_and_its_checkpoints(tmp_path):
    earlier_run(tmp_path)
    OutputDir.open(tmp_path, planned=["all_results.json"], overwrite=True, continuing=False, training=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "config.json", "notes.txt"]


def test_overwrite_never_removes_an_input(tmp_path):
    earlier_run(tmp_path)
    OutputDir.open(tmp_path, planned=TRAINING_OUTPUTS, overwrite=True, continuing=False, training=True,
                   inputs=[tmp_path / "predictions.json"])
    assert (tmp_path / "predictions.json").exists() and not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("status", ["failed", "interrupted", "running"])
def test_a_new_attempt_after_an_unfinished_run(tmp_path, status):
    earlier_run(tmp_path, status=status)
    out = OutputDir.open(tmp_path, planned=TRAINING_OUTPUTS, overwrite=False, continuing=False, training=True)
    assert "checkpoint-2" in out.outputs  # the attempt owns what the unfinished run wrote


def test_resume_continues_the_run_and_owns_its_outputs(tmp_path):
    earlier_run(tmp_path)
    out = OutputDir.open(tmp_path, planned=TRAINING_OUTPUTS, overwrite=False, continuing=True, training=True)
    assert out.outputs["checkpoint-2"] == "checkpoint"
    out.remove("checkpoint-2")
    assert not (tmp_path / "checkpoint-2").exists()
    with pytest.raises(ValueError, match="not an output of this run"):
        out.remove("notes.txt")


def test_unusable_folders(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        OutputDir.open(tmp_path / "file", planned=[], overwrite=False, continuing=False, training=True)
    with pytest.raises(OutputDirError, match="cannot be written"):
        OutputDir.open("/proc/hone-test", planned=[], overwrite=False, continuing=False, training=True)


def test_writes_are_whole_and_recorded(tmp_path):
    out = OutputDir(tmp_path)
    out.write_json("a.json", {"x": 1}, kind="results")
    out.write_files(lambda d: (d / "config.json").write_text("{}"), kind="model")
    out.write_record(task="qa")
    assert not list(tmp_path.glob(".tmp-*"))
    record = json.loads((tmp_path / RECORD).read_text())
    assert record["task"] == "qa" and record["outputs"] == {"a.json": "results", "config.json": "model",
                                                            RECORD: "results"}
    rank1 = OutputDir(tmp_path / "other", writes=False)
    rank1.write_json("b.json", {}, kind="results")
    assert not (tmp_path / "other").exists()  # only rank 0 writes
