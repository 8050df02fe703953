"""hone.engine.optim against hand-computed LAMB, torch's AdamW and transformers' rules."""

from __future__ import annotations

import copy
import json
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from hone.config import SCHEDULE_NAMES, TrainingArguments
from hone.engine.optim import (
    SCHEDULES,
    Lamb,
    OptimizerConfigError,
    build_optimizer,
    build_scheduler,
    decay_parameter_names,
    param_depth,
    param_groups,
    warmup_steps_for,
)
from hone.hardware import HardwareProfile

transformers = pytest.importorskip("transformers")
from transformers.optimization import get_scheduler  # noqa: E402


def tiny_bert(cls_name: str = "BertForQuestionAnswering") -> nn.Module:
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config)


def tiny_gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def group_of(groups: list[dict]) -> dict[str, dict]:
    return {name: g for g in groups for name in g["param_names"]}


# ----------------------------------------------------------------------------- LAMB by hand

def lamb_reference(w, grads, *, lr, betas, eps, wd, trust_ratio, bias_correction):
    """LAMB as written in the paper / NVIDIA's recipe, in float64 numpy, one tensor."""
    b1, b2 = betas
    w = w.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t) if bias_correction else m
        v_hat = v / (1 - b2 ** t) if bias_correction else v
        r = m_hat / (np.sqrt(v_hat) + eps) + wd * w
        trust = 1.0
        if trust_ratio:
            w_norm = np.sqrt((w * w).sum())
            r_norm = np.sqrt((r * r).sum())
            if w_norm > 0 and r_norm > 0:
                trust = w_norm / r_norm
        w = w - lr * trust * r
    return w


@pytest.mark.parametrize("bias_correction", [True, False])
def test_lamb_matches_hand_computation(bias_correction):
    rng = np.random.RandomState(0)
    # (initial value, grads per step, group settings); the zeros cover ||w|| = 0 and ||r|| = 0
    specs = [
        dict(w=rng.randn(2, 3), lr=0.1, wd=0.01, trust_ratio=True),               # matrix, decayed
        dict(w=np.zeros(4), lr=0.1, wd=0.01, trust_ratio=True),                   # ||w|| = 0 at step 1
        dict(w=rng.randn(3), lr=0.05, wd=0.0, trust_ratio=False),                 # bias: Adam-like
        dict(w=rng.randn(5), lr=0.1, wd=0.0, trust_ratio=True, zero_grad=True),   # ||r|| = 0
    ]
    for s in specs:
        s["grads"] = [np.zeros_like(s["w"]) if s.get("zero_grad") else rng.randn(*s["w"].shape)
                      for _ in range(3)]
    params = [nn.Parameter(torch.tensor(s["w"], dtype=torch.float64)) for s in specs]
    groups = [{"params": [p], "lr": s["lr"], "weight_decay": s["wd"], "trust_ratio": s["trust_ratio"]}
              for p, s in zip(params, specs)]
    # the first two specs share a group, as param_groups would put them
    groups = [{**groups[0], "params": params[:2]}] + groups[2:]
    opt = Lamb(groups, lr=1.0, betas=(0.9, 0.999), eps=1e-6, bias_correction=bias_correction)
    for t in range(3):
        for p, s in zip(params, specs):
            p.grad = torch.tensor(s["grads"][t], dtype=torch.float64)
        opt.step()
    for p, s in zip(params, specs):
        expected = lamb_reference(s["w"], s["grads"], lr=s["lr"], betas=(0.9, 0.999), eps=1e-6, wd=s["wd"],
                                  trust_ratio=s["trust_ratio"], bias_correction=bias_correction)
        assert torch.isfinite(p).all()
        np.testing.assert_allclose(p.detach().numpy(), expected, rtol=0, atol=1e-12)
    # the zero-gradient, undecayed tensor does not move (no 0/0)
    np.testing.assert_array_equal(params[3].detach().numpy(), specs[3]["w"])


def test_lamb_state_dict_round_trip_continues_identically():
    model = tiny_bert()
    args = TrainingArguments(lamb=True, learning_rate=1e-3, weight_decay=0.01, layerwise_lr_decay=0.8)
    opt = build_optimizer(model, args, HardwareProfile())
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen) for p in model.parameters()] for _ in range(4)]

    def step(m, o, g):
        for p, gp in zip(m.parameters(), g):
            p.grad = gp.clone()
        o.step()

    for g in grads[:2]:
        step(model, opt, g)
    state = copy.deepcopy(opt.state_dict())
    resumed_model = copy.deepcopy(model)
    resumed = build_optimizer(resumed_model, args, HardwareProfile())
    resumed.load_state_dict(state)
    assert [g["trust_ratio"] for g in resumed.param_groups] == [g["trust_ratio"] for g in opt.param_groups]
    for g in grads[2:]:
        step(model, opt, g)
        step(resumed_model, resumed, g)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- build_optimizer

@pytest.mark.parametrize("fused", [True, False])
def test_adamw_path_equals_torch_adamw(fused):
    """Fused (one kernel per parameter, on CPUs too) or foreach, the update is torch's reference AdamW."""
    args = TrainingArguments(optim="adamw", learning_rate=1e-3, weight_decay=0.01, layerwise_lr_decay=0.8,
                             adam_beta1=0.85, adam_beta2=0.99, adam_epsilon=1e-7)
    model = tiny_bert()
    reference_model = copy.deepcopy(model)
    opt = build_optimizer(model, args, HardwareProfile(fused_optimizer=fused))
    assert isinstance(opt, torch.optim.AdamW)
    assert bool(opt.defaults["fused"]) is fused and bool(opt.defaults["foreach"]) is not fused
    reference = torch.optim.AdamW(
        param_groups(reference_model, learning_rate=1e-3, weight_decay=0.01, layerwise_lr_decay=0.8),
        lr=1e-3, betas=(0.85, 0.99), eps=1e-7, foreach=False)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        for p, q in zip(model.parameters(), reference_model.parameters()):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.step()
        reference.step()
    for p, q in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_build_lamb_reads_args():
    args = TrainingArguments(lamb=True, lamb_no_bias_correction=True, learning_rate=2e-3, weight_decay=0.01,
                             adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6)
    opt = build_optimizer(tiny_bert(), args, HardwareProfile())
    assert isinstance(opt, Lamb)
    assert opt.defaults["bias_correction"] is False
    assert opt.defaults["betas"] == (0.8, 0.95) and opt.defaults["eps"] == 1e-6
    assert [(g["weight_decay"], g["trust_ratio"]) for g in opt.param_groups] == [(0.01, True), (0.0, False)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_adamw_and_lamb_without_host_sync():
    fused = build_optimizer(tiny_bert().cuda(), TrainingArguments(), HardwareProfile(fused_optimizer=True))
    assert fused.defaults["fused"] is True
    args = TrainingArguments(lamb=True, learning_rate=1e-3, weight_decay=0.01, layerwise_lr_decay=0.8)
    cpu_model = tiny_bert()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    cpu_opt = build_optimizer(cpu_model, args, HardwareProfile())
    gpu_opt = build_optimizer(gpu_model, args, HardwareProfile(device="cuda"))
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.cuda()
        cpu_opt.step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            gpu_opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_errors_clearly():
    args = TrainingArguments()
    args.optim = "rmsprop"  # parse_args refuses it first (choices); the builder names it too
    with pytest.raises(KeyError):
        build_optimizer(tiny_bert(), args, HardwareProfile())


@pytest.mark.parametrize("optim, expected", [("adamw_torch", torch.optim.AdamW), ("adamw_hf", torch.optim.AdamW),
                                             ("adamw_torch_fused", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                                             ("adafactor", torch.optim.Adafactor), ("lamb", Lamb)])
def test_transformers_optim_names(optim, expected):
    optimizer = build_optimizer(tiny_bert(), TrainingArguments(optim=optim, learning_rate=1e-3, weight_decay=0.01),
                                HardwareProfile())
    assert type(optimizer) is expected
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]  # the same decay groups
    assert all(g["lr"] == 1e-3 for g in optimizer.param_groups)


# ----------------------------------------------------------------------------- groups

@pytest.mark.parametrize("make", [tiny_bert, tiny_gpt2])
def test_decay_parameter_names_equal_transformers_trainer(make):
    model = make()
    expected = set(transformers.Trainer.get_decay_parameter_names(None, model))  # uses no Trainer state
    assert decay_parameter_names(model) == expected


def test_norm_modules_found_by_class_name():
    class MyRMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))

    model = nn.Sequential(nn.Linear(4, 4), MyRMSNorm())
    assert decay_parameter_names(model) == {"0.weight"}


@pytest.mark.parametrize("cls_name, names", [
    ("BertForQuestionAnswering", {"qa_outputs.": 0}),
    ("BertForSequenceClassification", {"bert.pooler.": 1, "classifier.": 0}),
])
def test_layerwise_lr_on_transformers_bert(cls_name, names):
    lr, d = 1e-3, 0.75
    model = tiny_bert(cls_name)
    powers = {"bert.embeddings.": 4, "bert.encoder.layer.0.": 3, "bert.encoder.layer.1.": 2, **names}
    groups = param_groups(model, learning_rate=lr, weight_decay=0.01, layerwise_lr_decay=d)
    by_name = group_of(groups)
    decayed = decay_parameter_names(model)
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    for name, group in by_name.items():
        (power,) = [k for prefix, k in powers.items() if name.startswith(prefix)]
        assert group["lr"] == pytest.approx(lr * d ** power, rel=1e-15), name
        assert group["weight_decay"] == (0.01 if name in decayed else 0.0)
        assert group["trust_ratio"] == (name in decayed)
    assert len(groups) == 2 * len(powers)


def test_layerwise_uses_model_param_depth_and_skips_frozen():
    @dataclass
    class Config:
        num_hidden_layers: int = 1

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Config()
            self.a = nn.Linear(2, 2)   # names the fallback would call "task head"
            self.b = nn.Linear(2, 2)
            self.frozen = nn.Linear(2, 2).requires_grad_(False)

        def param_depth(self, name: str) -> int:
            return {"a": 0, "b": 2}[name.split(".")[0]]

    model = Toy()
    assert param_depth(model, "a.weight") == 0
    by_name = group_of(param_groups(model, learning_rate=1.0, weight_decay=0.1, layerwise_lr_decay=0.5))
    assert set(by_name) == {"a.weight", "a.bias", "b.weight", "b.bias"}
    assert by_name["a.weight"]["lr"] == 0.5 ** 3 and by_name["a.bias"]["lr"] == 0.5 ** 3
    assert by_name["b.weight"]["lr"] == 0.5 and by_name["b.bias"]["weight_decay"] == 0.0


def test_param_depth_fallback_gpt2_names():
    model = tiny_gpt2()
    assert param_depth(model, "transformer.wte.weight") == 0
    assert param_depth(model, "transformer.h.1.attn.c_attn.weight") == 2
    assert param_depth(model, "lm_head.weight") == 4


def test_no_layerwise_decay_gives_two_groups():
    groups = param_groups(tiny_bert(), learning_rate=3e-5, weight_decay=0.01)
    assert [(g["lr"], g["weight_decay"], g["trust_ratio"]) for g in groups] == [(3e-5, 0.01, True),
                                                                                  (3e-5, 0.0, False)]


# ----------------------------------------------------------------------------- schedules

# schedule -> (hone's --lr_scheduler_kwargs, what transformers' get_scheduler takes for the same)
SCHEDULE_KWARGS = {
    "polynomial": ({}, {"lr_end": 1e-5, "power": 2.0}),
    "cosine_with_restarts": ({"num_cycles": 3}, {"num_cycles": 3}),
    "cosine_with_min_lr": ({"min_lr_rate": 0.1}, {"min_lr_rate": 0.1}),
    "inverse_sqrt": ({"timescale": 7}, {"timescale": 7}),
}


def test_every_schedule_name_has_a_schedule():
    assert set(SCHEDULES) == set(SCHEDULE_NAMES)


@pytest.mark.parametrize("kind", SCHEDULE_NAMES)
@pytest.mark.parametrize("warmup_steps, warmup_ratio, total", [(0, 0.0, 20), (3, 0.0, 20), (0, 0.07, 100),
                                                                (0, 0.06, 25), (5, 0.0, 5)])
def test_schedules_equal_transformers(kind, warmup_steps, warmup_ratio, total):
    if kind == "polynomial" and warmup_steps == total:
        pytest.skip("transformers divides by zero when warmup == total steps")
    ours_kwargs, hf_kwargs = SCHEDULE_KWARGS.get(kind, ({}, None))
    args = TrainingArguments(learning_rate=1e-3, layerwise_lr_decay=0.8, lr_scheduler_type=kind,
                             warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, lr_end=1e-5, lr_power=2.0,
                             lr_scheduler_kwargs=json.dumps(ours_kwargs) if ours_kwargs else None)
    # transformers >= 5 spells the ratio as a fractional warmup_steps
    hf_warmup = transformers.TrainingArguments.get_warmup_steps(
        types.SimpleNamespace(warmup_steps=warmup_steps or warmup_ratio), total)
    assert warmup_steps_for(args, total) == hf_warmup
    model = tiny_bert()
    ours_opt = build_optimizer(model, args, HardwareProfile())
    hf_opt = build_optimizer(model, args, HardwareProfile())
    ours = build_scheduler(ours_opt, args, total)
    hf = get_scheduler(kind, hf_opt, num_warmup_steps=hf_warmup, num_training_steps=total,
                       scheduler_specific_kwargs=hf_kwargs)
    for _ in range(total + 2):  # and past the end
        np.testing.assert_allclose(ours.get_last_lr(), hf.get_last_lr(), rtol=0, atol=1e-12)
        ours_opt.step(), hf_opt.step()
        ours.step(), hf.step()


def test_warmup_ratio_rounds_up():
    assert warmup_steps_for(TrainingArguments(warmup_ratio=0.07), 100) == 8  # 0.07 * 100 = 7.000000000000001
    assert warmup_steps_for(TrainingArguments(warmup_ratio=0.06), 25) == 2   # 1.5
    assert warmup_steps_for(TrainingArguments(warmup_ratio=0.07, warmup_steps=2), 100) == 2


@pytest.mark.parametrize("field, value, match", [
    ("lr_scheduler_type", "step", "Unknown lr_scheduler_type 'step'"),
    ("lr_end", 1.0, "lr_end"),
    ("lr_scheduler_kwargs", '{"num_cycles": 2}', "num_cycles not used by the polynomial schedule"),
])
def test_bad_schedule_settings_error_clearly(field, value, match):
    args = TrainingArguments(**{"lr_scheduler_type": "polynomial", "learning_rate": 1e-3, field: value})
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(OptimizerConfigError, match=match):
        build_scheduler(opt, args, 10)
