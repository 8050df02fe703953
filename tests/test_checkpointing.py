"""Checkpoints: a run killed with SIGKILL and resumed ends bit for bit where an
uninterrupted run ends; atomic writes, rotation, tied weights, clear errors.

Run as a script (`python tests/test_checkpointing.py OUT KILL_AT`) it trains the tiny
model and SIGKILLs itself right after writing checkpoint KILL_AT.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hone.engine import checkpointing  # noqa: E402
from hone.engine.checkpointing import CheckpointError  # noqa: E402
from hone.engine.output_dir import OutputDir  # noqa: E402
from hone.engine.trainer import Trainer, TrainerCallback  # noqa: E402
from test_trainer import CPU, QADataset, collate, make_args, single_thread, tiny_bert_qa  # noqa: E402,F401

STEPS, SAVE_EVERY, KEEP = 8, 2, 2


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, trainer, checkpoint):
        if trainer.state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def run(output_dir: Path, *, resume: bool = False, kill_at: int | None = None) -> tuple[torch.nn.Module, dict]:
    """Tiny BERT QA with dropout 0.1 (so the RNG restore matters), 8 steps, 2 epochs' worth of data order."""
    model = tiny_bert_qa(dropout=0.1)
    args = make_args(output_dir, max_steps=STEPS, save_steps=SAVE_EVERY, save_total_limit=KEEP, logging_steps=3,
                     resume_from_checkpoint="latest" if resume else None)
    callbacks = [KillAfterSave(kill_at)] if kill_at else []
    trainer = Trainer(model, args, CPU, QADataset(n=28), collate, callbacks=callbacks)  # 4 steps per epoch
    return model, trainer.train()


def test_killed_run_resumes_to_identical_weights(tmp_path):
    reference, reference_metrics = run(tmp_path / "straight")  # one thread (fixture), as the subprocess
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, __file__, str(out), "6"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [p.name for p in checkpointing.list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]

    # what a crash in the middle of a save leaves behind must not be taken for a checkpoint
    (out / ".tmp-checkpoint-8-x1y2").mkdir()
    (out / ".tmp-checkpoint-8-x1y2" / "optimizer.pt").write_bytes(b"half")
    (out / "checkpoint-99").mkdir()  # no trainer_state.json: incomplete
    assert checkpointing.resolve_checkpoint("latest", out).name == "checkpoint-6"

    resumed, metrics = run(out, resume=True)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert metrics["train_loss"] == reference_metrics["train_loss"]
    assert metrics["epoch"] == reference_metrics["epoch"] == 2.0
    # rotation kept the newest KEEP complete checkpoints; the stale temp folder is gone
    assert [p.name for p in checkpointing.list_checkpoints(out)] == ["checkpoint-6", "checkpoint-8"]
    assert not list(out.glob(".tmp-checkpoint-*"))
    # the log is the uninterrupted run's log (records after checkpoint-6 are rewritten, not duplicated)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 8]
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["samples_seen"] == 2 * 28 and state["world_size"] == 1


def test_latest_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        checkpointing.resolve_checkpoint("latest", tmp_path)
    with pytest.raises(CheckpointError, match="not a complete checkpoint folder"):
        checkpointing.resolve_checkpoint(str(tmp_path / "checkpoint-3"), tmp_path)


def test_failed_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    real_save = torch.save

    def failing_save(obj, path, *a, **k):
        if Path(path).name == "scheduler.pt":
            raise OSError("disk full")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        checkpointing.save_checkpoint(OutputDir(tmp_path), 5, model=model, optimizer=optimizer, scheduler=scheduler,
                                      scaler=scaler, state={"global_step": 5}, rng_states=[])
    assert list(tmp_path.iterdir()) == []


def test_rotation_keeps_the_newest_and_the_best_and_never_another_runs(tmp_path):
    output = OutputDir(tmp_path)
    (tmp_path / "checkpoint-1").mkdir()  # not written by this run: never deleted by its rotation
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text("{}")
    for step in (5, 10, 15, 20):
        output.write_folder(f"checkpoint-{step}", lambda d: (d / "trainer_state.json").write_text("{}"),
                            kind="checkpoint")
    keep = {tmp_path / "checkpoint-5", tmp_path / "checkpoint-20"}
    deleted = checkpointing.rotate_checkpoints(output, 2, keep=keep)
    assert sorted(p.name for p in deleted) == ["checkpoint-10", "checkpoint-15"]
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-5",
                                                                          "checkpoint-20"]
    assert "checkpoint-10" not in output.outputs


class TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_model_weights_round_trip_with_tied_parameters(tmp_path):
    saved, loaded = TiedLM(), TiedLM()
    checkpointing.save_model(saved, tmp_path)
    checkpointing.load_model_weights(loaded, tmp_path)
    assert torch.equal(loaded.head.weight, saved.embed.weight)
    assert loaded.head.weight is loaded.embed.weight
    with pytest.raises(CheckpointError, match="do not match"):
        checkpointing.load_model_weights(torch.nn.Linear(4, 4), tmp_path)


def test_transformers_model_resumes_from_its_save_pretrained_folder(tmp_path):
    model, fresh = tiny_bert_qa(seed=0), tiny_bert_qa(seed=1)
    checkpointing.save_model(model, tmp_path)
    assert (tmp_path / "config.json").is_file()
    checkpointing.load_model_weights(fresh, tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name


def tiny_hone_model(model_type: str, task: str, seed: int):
    from hone.models.checkpoint import build_model

    torch.manual_seed(seed)
    if model_type == "gpt2":
        return build_model(dict(model_type="gpt2", vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32), task)
    return build_model(dict(model_type=model_type, vocab_size=50, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=32, max_position_embeddings=40), task)


@pytest.mark.parametrize("model_type,task", [("bert", "qa"), ("gpt2", "clm"), ("bert", "pretraining")])
def test_hone_models_round_trip_through_their_hf_folder(tmp_path, model_type, task):
    # save_pretrained writes transformers' names and layouts (split q/k/v, tied weights once)
    saved, loaded = tiny_hone_model(model_type, task, 0), tiny_hone_model(model_type, task, 1)
    checkpointing.save_model(saved, tmp_path)
    checkpointing.load_model_weights(loaded, tmp_path)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        self.ids = torch.randint(1, 50, (n, 10), generator=torch.Generator().manual_seed(3))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_hone_gpt2_resumes_exactly(tmp_path):
    def train(out, **kw):
        model = tiny_hone_model("gpt2", "clm", 0)  # dropout 0.1 by default
        Trainer(model, make_args(out, max_steps=5, save_steps=2, logging_steps=5, **kw), CPU, TokenData(), collate).train()
        return model

    straight = train(tmp_path / "a")
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    resumed = train(tmp_path / "b", resume_from_checkpoint="latest")
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_rng_state_round_trip():
    def draw():
        return torch.rand(3), np.random.rand(2), random.random()

    state = checkpointing.capture_rng_state()
    expected = draw()
    checkpointing.restore_rng_state(state)
    again = draw()
    assert torch.equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == expected[2]


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same kernels as the pytest process
    run(Path(sys.argv[1]), kill_at=int(sys.argv[2]))
