"""The training loop against a plain PyTorch loop, and its precision / divergence handling.

The helpers at the top (tiny BERT QA model, dataset, collate, args) are shared with
test_checkpointing.py and test_distributed.py.
"""

from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hone.config import TrainingArguments
from hone.engine.output_dir import OutputDirError
from hone.engine.trainer import (
    StepBatchSampler,
    Trainer,
    TrainerCallback,
    TrainingDivergedError,
    data_workers,
    predict,
    quiet_hand_over_errors,
)
from hone.errors import HoneError
from hone.hardware import HardwareProfile

CPU = HardwareProfile(name="cpu", device="cpu", precision="fp32")


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models gain nothing from threads, and on a shared, busy CPU they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- shared helpers

def tiny_bert_qa(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    """transformers' BertForQuestionAnswering, 2 layers of width 16."""
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    return BertForQuestionAnswering(config)


class QADataset(torch.utils.data.Dataset):
    """Random QA features: (input_ids, attention_mask, token_type_ids, start, end) rows."""

    def __init__(self, n: int = 40, seq: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, 50, (n, seq), generator=g)
        lengths = torch.randint(seq // 2, seq + 1, (n,), generator=g)
        self.attention_mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        self.token_type_ids = (torch.arange(seq)[None, :] >= seq // 3).long() * self.attention_mask
        self.start_positions = torch.randint(0, seq // 2, (n,), generator=g)
        self.end_positions = self.start_positions + torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        return {k: getattr(self, k)[i] for k in
                ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")}


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def make_args(output_dir, **overrides) -> TrainingArguments:
    # Some of tiny BERT's gradients are zero up to rounding (key biases, the QA head's bias:
    # softmax ignores a shift; the last LayerNorm bias feeds only that head); adam_epsilon 1e-4
    # keeps Adam from turning that noise into lr-sized steps, so runs that differ only in
    # rounding stay comparable.
    defaults = dict(adam_epsilon=1e-4, output_dir=str(output_dir), learning_rate=1e-3, weight_decay=0.01, max_steps=6,
                    per_device_train_batch_size=4, gradient_accumulation_steps=2, warmup_steps=2,
                    logging_steps=1, save_steps=0, seed=7, disable_tqdm=True)
    return TrainingArguments(**{**defaults, **overrides})


def read_log(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


def train_losses(output_dir) -> list[float]:
    return [r["loss"] for r in read_log(output_dir) if "loss" in r]


def assert_same_weights(a: nn.Module, b: nn.Module, atol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=k)


# ----------------------------------------------------------------------------- parity

def reference_training(model: nn.Module, dataset: QADataset, *, steps: int, micro: int, accumulation: int,
                       lr: float, weight_decay: float, eps: float, warmup: int, max_grad_norm: float,
                       seed: int) -> list[float]:
    """transformers-style loop written out: AdamW, linear warmup/decay, clipping, accumulation.

    Batches follow hone's documented order: the permutation of epoch e comes from a generator
    seeded with seed + e, and each optimizer step takes the next micro x accumulation indices.
    """
    from transformers import get_linear_schedule_with_warmup

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=eps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    per_step = micro * accumulation
    steps_per_epoch = math.ceil(len(dataset) / per_step)
    losses = []
    model.train()
    for step in range(steps):
        epoch, k = divmod(step, steps_per_epoch)
        perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch))
        indices = perm[k * per_step:(k + 1) * per_step].tolist()
        micro_batches = [indices[i:i + micro] for i in range(0, len(indices), micro)]
        step_loss = 0.0
        for mb in micro_batches:
            loss = model(**collate([dataset[i] for i in mb])).loss
            (loss / len(micro_batches)).backward()
            step_loss += loss.item() / len(micro_batches)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(step_loss)
    return losses


def test_parity_with_plain_pytorch_loop(tmp_path):
    model, dataset = tiny_bert_qa(), QADataset(n=40)
    reference = copy.deepcopy(model)
    args = make_args(tmp_path, max_steps=6, max_grad_norm=0.5)  # 5 steps per epoch: crosses an epoch
    Trainer(model, args, CPU, dataset, collate).train()

    expected = reference_training(reference, dataset, steps=6, micro=4, accumulation=2, lr=1e-3,
                                  weight_decay=0.01, eps=1e-4, warmup=2, max_grad_norm=0.5, seed=7)
    np.testing.assert_allclose(train_losses(tmp_path), expected, atol=1e-5, rtol=0)
    assert_same_weights(model, reference, atol=1e-5)
    # the schedule: step 1 at lr 0 (warmup), step 2 at lr/2, then linear decay
    lrs = [r["learning_rate"] for r in read_log(tmp_path)]
    np.testing.assert_allclose(lrs, [0.0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4], atol=1e-12)


def test_accumulation_matches_a_bigger_batch(tmp_path):
    model_a, dataset = tiny_bert_qa(), QADataset(n=40)
    model_b = copy.deepcopy(model_a)
    Trainer(model_a, make_args(tmp_path / "a", per_device_train_batch_size=8, gradient_accumulation_steps=1,
                               max_steps=4), CPU, dataset, collate).train()
    Trainer(model_b, make_args(tmp_path / "b", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                               max_steps=4), CPU, dataset, collate).train()
    np.testing.assert_allclose(train_losses(tmp_path / "a"), train_losses(tmp_path / "b"), atol=1e-6)
    assert_same_weights(model_a, model_b, atol=1e-6)


def test_step_sampler_order_and_short_last_step():
    sampler = StepBatchSampler(10, micro_batch_size=2, accumulation_steps=2, seed=3)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3 + 1)).tolist()
    plan = sampler.set_position(epoch=1, start=0)
    assert [s.micro_batches for s in plan] == [[perm[0:2], perm[2:4]], [perm[4:6], perm[6:8]], [perm[8:10]]]
    assert [s.samples for s in plan] == [4, 4, 2]
    assert list(sampler) == [perm[i:i + 2] for i in range(0, 10, 2)]
    assert [s.micro_batches for s in sampler.set_position(epoch=1, start=8)] == [[perm[8:10]]]
    dropping = StepBatchSampler(10, micro_batch_size=2, accumulation_steps=2, seed=3, drop_last=True)
    assert dropping.steps_per_epoch == 2 and dropping.epoch_length == 8


# ----------------------------------------------------------------------------- precision

class Regressor(nn.Module):
    """y = w.x + b with a 0.01 x MSE loss (small enough for fp16's default scale of 65536);
    forward call number `poison_call` gets infinite gradients (its loss stays finite),
    call `nan_call` a NaN loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)
        self.calls = 0
        self.poison_call = self.nan_call = None

    def forward(self, x, y):
        self.calls += 1
        pred = self.linear(x).squeeze(-1)
        if self.calls == self.poison_call:
            pred.register_hook(lambda g: g * float("inf"))
        loss = 0.01 * ((pred.float() - y) ** 2).mean()
        return {"loss": loss * float("nan") if self.calls == self.nan_call else loss}


class RegressionData(torch.utils.data.Dataset):
    def __init__(self, n: int = 32):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Recorder(TrainerCallback):
    """Weights, loss scale and scheduler position after every step."""

    def __init__(self):
        self.weights, self.scales, self.scheduler_steps = [], [], []

    def on_step_end(self, trainer, step):
        self.weights.append(trainer.model.linear.weight.detach().clone())
        self.scales.append(trainer.scaler.get_scale())
        self.scheduler_steps.append(trainer.scheduler.last_epoch)


@pytest.mark.parametrize("loss_scaling", ["dynamic", "128"])
def test_fp16_overflow_skips_the_step_and_recovers(tmp_path, loss_scaling):
    model, recorder = Regressor(), Recorder()
    model.poison_call = 3  # third optimizer step (accumulation 1)
    profile = HardwareProfile(name="cpu-fp16", device="cpu", precision="fp16", loss_scaling=loss_scaling)
    args = make_args(tmp_path, max_steps=6, gradient_accumulation_steps=1, warmup_steps=0, logging_steps=2)
    metrics = Trainer(model, args, profile, RegressionData(), collate, callbacks=[recorder]).train()

    assert torch.equal(recorder.weights[2], recorder.weights[1])        # step 3 changed nothing
    assert not torch.equal(recorder.weights[3], recorder.weights[2])    # step 4 trained again
    assert recorder.scheduler_steps == [1, 2, 2, 3, 4, 5]               # no schedule step for 3
    if loss_scaling == "dynamic":
        assert recorder.scales[:4] == [65536.0, 65536.0, 32768.0, 32768.0]
    else:
        assert set(recorder.scales) == {128.0}
    assert metrics["train_skipped_steps"] == 1
    assert [r["skipped_steps"] for r in read_log(tmp_path)] == [0, 1, 1]
    assert all(torch.isfinite(w).all() for w in recorder.weights)


def test_nan_loss_stops_with_the_step_and_last_good_checkpoint(tmp_path):
    model = Regressor()
    model.nan_call = 3
    args = make_args(tmp_path, max_steps=8, gradient_accumulation_steps=1, logging_steps=5, save_steps=2)
    with pytest.raises(TrainingDivergedError, match=r"at step 3 .*checkpoint-2"):
        Trainer(model, args, CPU, RegressionData(), collate).train()
    # detected at the save of step 4, which therefore never happened
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


def test_nan_loss_without_checkpoint_says_so(tmp_path):
    model = Regressor()
    model.nan_call = 1
    with pytest.raises(TrainingDivergedError, match="at step 1 .*No checkpoint"):
        Trainer(model, make_args(tmp_path, gradient_accumulation_steps=1), CPU, RegressionData(), collate).train()


# ----------------------------------------------------------------------------- outputs

def test_train_metrics_and_files(tmp_path):
    evaluations = []

    def eval_fn(model):
        evaluations.append(model.training)
        return {"eval_score": 1.5}

    args = make_args(tmp_path, max_steps=-1, num_train_epochs=2, gradient_accumulation_steps=1,
                     logging_steps=3, eval_steps=4, report_to="tensorboard")
    trainer = Trainer(Regressor(), args, CPU, RegressionData(n=30), collate, eval_fn=eval_fn)
    metrics = trainer.train()

    assert set(metrics) == {"epoch", "train_loss", "train_runtime", "train_samples",
                            "train_samples_per_second", "train_steps_per_second"}
    assert metrics["epoch"] == 2.0 and metrics["train_samples"] == 30
    assert trainer.state.global_step == 16  # ceil(30 / 4) = 8 steps per epoch
    assert metrics["train_runtime"] > 0 and metrics["train_samples_per_second"] > 0
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "checkpoint-16" / "optimizer.pt").is_file()
    assert any((tmp_path / "runs").rglob("events.out.tfevents.*"))

    log = read_log(tmp_path)
    train_records = [r for r in log if "loss" in r]
    assert [r["step"] for r in train_records] == [3, 6, 9, 12, 15, 16]
    assert set(train_records[0]) == {"step", "epoch", "loss", "learning_rate", "grad_norm",
                                     "samples_per_second", "skipped_steps", "peak_memory_mb"}
    assert train_records[0]["epoch"] == pytest.approx(12 / 30, abs=1e-4)
    # train_loss is the mean step loss: the window means weighted by window length
    windows = [3, 3, 3, 3, 3, 1]
    assert metrics["train_loss"] == pytest.approx(
        sum(r["loss"] * w for r, w in zip(train_records, windows)) / 16, rel=1e-5)
    assert [r["step"] for r in log if "eval_score" in r] == [4, 8, 12, 16]
    assert evaluations == [True] * 4  # the task gets the model as it is (predict switches to eval)
    # the task's metrics, timed as the Trainer times them (no samples reported: no rate)
    evaluated = trainer.evaluate()
    assert set(evaluated) == {"eval_score", "eval_runtime"} and evaluated["eval_score"] == 1.5
    assert all("eval_runtime" in r for r in log if "eval_score" in r)


def test_refuses_to_replace_an_earlier_run(tmp_path):
    (tmp_path / "notes.txt").write_text("the user's")  # not something a run writes: no conflict
    Trainer(Regressor(), make_args(tmp_path), CPU, RegressionData(), collate).train()
    with pytest.raises(OutputDirError, match="overwrite_output_dir"):
        Trainer(Regressor(), make_args(tmp_path), CPU, RegressionData(), collate)
    Trainer(Regressor(), make_args(tmp_path, overwrite_output_dir=True), CPU, RegressionData(), collate)
    assert (tmp_path / "notes.txt").read_text() == "the user's"
    assert not any(tmp_path.glob("checkpoint-*"))  # the earlier run's are gone


def test_predict_yields_host_float32_per_batch():
    model, dataset = tiny_bert_qa(), QADataset(n=10)
    model.train()
    outputs = list(predict(model, dataset, collate, batch_size=4, profile=CPU))
    assert [o["start_logits"].shape for o in outputs] == [(4, 12), (4, 12), (2, 12)]
    assert all(isinstance(o["end_logits"], np.ndarray) and o["end_logits"].dtype == np.float32 for o in outputs)
    with torch.no_grad():
        model.eval()
        expected = model(**collate([dataset[i] for i in range(4)])).start_logits
    np.testing.assert_allclose(outputs[0]["start_logits"], expected.numpy(), atol=1e-6)
    model.eval()
    list(predict(model, dataset, collate, batch_size=4, profile=CPU))
    assert not model.training  # mode restored


def test_profile_sets_cpu_threads(tmp_path):
    """The single_thread fixture leaves 1 thread; the profile's cpu_threads wins for train and predict."""
    two = HardwareProfile(name="cpu", device="cpu", cpu_threads=2)
    Trainer(tiny_bert_qa(), make_args(tmp_path, max_steps=1), two, QADataset(n=8), collate)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    next(predict(tiny_bert_qa(), QADataset(n=4), collate, batch_size=4, profile=two))
    assert torch.get_num_threads() == 2
    next(predict(tiny_bert_qa(), QADataset(n=4), collate, batch_size=4, profile=CPU))
    assert torch.get_num_threads() == 2  # no cpu_threads: torch's setting is left alone


def test_bf16_autocast_trains_on_cpu(tmp_path):
    profile = HardwareProfile(name="cpu-bf16", device="cpu", precision="bf16")
    model = tiny_bert_qa()
    metrics = Trainer(model, make_args(tmp_path, max_steps=3), profile, QADataset(n=24), collate).train()
    assert math.isfinite(metrics["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_worker_processes_keep_the_data_order(tmp_path):
    model_a, model_b = Regressor(), Regressor()
    Trainer(model_a, make_args(tmp_path / "a", gradient_accumulation_steps=1), CPU, RegressionData(), collate).train()
    Trainer(model_b, make_args(tmp_path / "b", gradient_accumulation_steps=1, dataloader_num_workers=2),
            CPU, RegressionData(), collate).train()
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")
    assert torch.equal(model_a.linear.weight, model_b.linear.weight)


def test_activation_checkpointing_switch(tmp_path):
    profile = HardwareProfile(name="cpu-ckpt", device="cpu", activation_checkpointing=True)
    bert = tiny_bert_qa()
    Trainer(bert, make_args(tmp_path / "a"), profile, QADataset(), collate)
    assert any(getattr(m, "gradient_checkpointing", False) for m in bert.modules())  # transformers' switch
    with pytest.warns(UserWarning, match="no enable_activation_checkpointing"):
        Trainer(Regressor(), make_args(tmp_path / "b"), profile, RegressionData(), collate)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(tmp_path):
    compiled = HardwareProfile(name="cpu-compile", device="cpu", compile=True)
    model_a, model_b = Regressor(), Regressor()
    Trainer(model_a, make_args(tmp_path / "a"), compiled, RegressionData(), collate).train()
    Trainer(model_b, make_args(tmp_path / "b"), CPU, RegressionData(), collate).train()
    np.testing.assert_allclose(train_losses(tmp_path / "a"), train_losses(tmp_path / "b"), atol=1e-6)
    assert set(load_file(tmp_path / "a" / "model.safetensors")) == {"linear.weight", "linear.bias"}  # no _orig_mod.


# ----------------------------------------------------------------------------- strategies

def test_epoch_strategies_and_no_checkpoints(tmp_path):
    """Logging, evaluation and saving by epoch; save_strategy no writes no checkpoint and the
    train loss is still the mean step loss."""
    evaluations = []

    def eval_fn(model):
        evaluations.append(True)
        return {"eval_score": 1.0}

    args = make_args(tmp_path / "epoch", max_steps=-1, num_train_epochs=3, gradient_accumulation_steps=1,
                     logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch")
    Trainer(Regressor(), args, CPU, RegressionData(n=30), collate, eval_fn=eval_fn).train()
    log = read_log(tmp_path / "epoch")
    assert [r["step"] for r in log if "loss" in r] == [8, 16, 24]  # ceil(30 / 4) = 8 steps an epoch
    assert [r["step"] for r in log if "eval_score" in r] == [8, 16, 24] and len(evaluations) == 3
    assert sorted(p.name for p in (tmp_path / "epoch").glob("checkpoint-*")) == [
        "checkpoint-16", "checkpoint-24", "checkpoint-8"]

    args = make_args(tmp_path / "none", max_steps=6, gradient_accumulation_steps=1, save_strategy="no",
                     logging_steps=1)
    metrics = Trainer(Regressor(), args, CPU, RegressionData(), collate).train()
    assert not list((tmp_path / "none").glob("checkpoint-*")) and (tmp_path / "none" / "model.safetensors").is_file()
    losses = [r["loss"] for r in read_log(tmp_path / "none") if "loss" in r]
    assert metrics["train_loss"] == pytest.approx(sum(losses) / 6, rel=1e-6) and metrics["train_loss"] > 0


@pytest.mark.parametrize("greater_is_better", [True, False])
def test_load_best_model_at_end_keeps_the_best_checkpoint(tmp_path, greater_is_better):
    """The metric peaks at step 4: that checkpoint survives save_total_limit 1 and becomes the model."""
    scores = iter([0.2, 0.9, 0.5])

    def eval_fn(model):
        score = next(scores)
        return {"eval_score": score if greater_is_better else -score}

    args = make_args(tmp_path, max_steps=6, gradient_accumulation_steps=1, eval_steps=2, save_steps=2,
                     save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="score",
                     greater_is_better=greater_is_better)
    model = Regressor()
    trainer = Trainer(model, args, CPU, RegressionData(), collate, eval_fn=eval_fn)
    trainer.train()
    assert trainer.state.best_model_checkpoint == "checkpoint-4"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    best = load_file(tmp_path / "checkpoint-4" / "model.safetensors")
    final = load_file(tmp_path / "model.safetensors")
    assert torch.equal(final["linear.weight"], best["linear.weight"])
    assert torch.equal(model.linear.weight.detach(), best["linear.weight"])
    assert not torch.equal(best["linear.weight"], load_file(tmp_path / "checkpoint-6" / "model.safetensors")["linear.weight"])


def test_metric_for_best_model_must_exist(tmp_path):
    args = make_args(tmp_path, max_steps=2, gradient_accumulation_steps=1, eval_steps=2, save_steps=2,
                     load_best_model_at_end=True, metric_for_best_model="f1")
    trainer = Trainer(Regressor(), args, CPU, RegressionData(), collate, eval_fn=lambda m: {"eval_exact": 1.0})
    with pytest.raises(HoneError, match="'eval_f1' is not among this task's evaluation metrics .*eval_exact"):
        trainer.train()


def test_log_records_report_peak_resident_memory(tmp_path):
    """Every training record carries the process's peak resident memory (VmHWM on Linux),
    which the kernel also reports: the figure is the process's own, not an estimate."""
    from hone.engine.host_memory import resident_bytes

    Trainer(tiny_bert_qa(), make_args(tmp_path, max_steps=2), CPU, QADataset(), collate).train()
    records = [r for r in read_log(tmp_path) if "loss" in r]
    peak_now = resident_bytes("VmHWM") / 2**20
    assert records and all(0 < r["peak_memory_mb"] <= peak_now + 0.1 for r in records)
    assert records[-1]["peak_memory_mb"] >= records[0]["peak_memory_mb"]


def _raised_in(filename: str, error: BaseException) -> tuple:
    """exc_info of `error` raised by a function whose code lives in `filename`."""
    scope: dict = {}
    exec(compile("def serve(error):\n    raise error\n", filename, "exec"), scope)
    try:
        scope["serve"](error)
    except BaseException:  # noqa: BLE001 - handing exc_info on is the point
        return sys.exc_info()
    raise AssertionError("serve did not raise")


def test_workers_keep_a_stopped_hand_over_off_stderr(monkeypatch, capsys):
    """Ctrl-C during a worker's hand-over of a batch's shared memory breaks the connection in the
    worker's resource_sharer thread: that traceback is dropped, every other error still prints."""
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    quiet_hand_over_errors(0)
    sharer = "/usr/lib/python3/multiprocessing/resource_sharer.py"
    sys.excepthook(*_raised_in(sharer, BrokenPipeError(32, "Broken pipe")))
    sys.excepthook(*_raised_in(sharer, ConnectionResetError(104, "Connection reset by peer")))
    assert capsys.readouterr().err == ""
    sys.excepthook(*_raised_in(sharer, ValueError("a real bug")))
    sys.excepthook(*_raised_in("collate.py", BrokenPipeError(32, "Broken pipe")))
    err = capsys.readouterr().err
    assert "ValueError: a real bug" in err and "BrokenPipeError" in err and err.count("Traceback") == 2


def test_data_workers_take_the_cpus_that_compute_leaves_free(monkeypatch):
    """By default a CPU run gets a worker per core its torch threads leave free, a GPU run all
    but one core, at most 4, split among the processes; an explicit count is capped at the
    process's CPUs with a warning."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert data_workers(None, cpu) == 2
    assert data_workers(None, cuda) == 4 and data_workers(None, cuda, world_size=4) == 1
    assert data_workers(None, cpu, world_size=2) == 0  # 4 CPUs each, 6 threads busy
    assert data_workers(0, cuda) == 0 and data_workers(3, cpu) == 3
    with pytest.warns(UserWarning, match="has 4 CPU"):
        assert data_workers(6, cpu, world_size=2) == 4
