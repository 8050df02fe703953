"""Optimisers (AdamW, LAMB), parameter groups with layer-wise LR decay, and LR schedules.

Parameter groups
    Weight decay goes to every parameter except biases and normalisation weights (the
    rule of transformers' Trainer; embeddings are decayed). With layer-wise LR decay
    (ELECTRA's definition) a parameter at depth k gets

        lr_k = learning_rate * layerwise_lr_decay ** (L + 2 - k)

    where depth 0 = embeddings, encoder layer i (0-based) = i + 1, pooler = L + 1 and the
    task head = L + 2: the head gets `learning_rate`, the top encoder layer
    `learning_rate * decay**2`, the embeddings `learning_rate * decay**(L + 2)`.
    Each group also carries "param_names" (torch's own key, kept by state_dict) and
    "trust_ratio" (read by LAMB, ignored by AdamW).

Schedules
    Every schedule is a multiplier on each group's initial lr, as transformers' schedules
    are: with per-group lrs every group is scaled by the same factor, so layer-wise ratios
    hold all through training. The polynomial schedule ends the head group at `lr_end`
    (its factor is computed from `learning_rate`) and a group at depth k at
    `lr_end * decay**(L + 2 - k)`.

Gradient clipping by global norm is the trainer's job: it clips before `optimizer.step()`,
for AdamW and LAMB alike (LAMB's reference recipe clips too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from hone.config import TrainingArguments, schedule_options
from hone.errors import HoneError
from hone.hardware import HardwareProfile


class OptimizerConfigError(HoneError, ValueError):
    """An optimiser or schedule setting that cannot work; the message names the field."""


# ----------------------------------------------------------------------------- groups

# transformers' Trainer patterns on the lower-cased parameter name, plus any module whose
# class is a LayerNorm/RMSNorm (T5LayerNorm, LlamaRMSNorm, our own norms).
_NO_DECAY_NAME = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def _is_norm(module: nn.Module) -> bool:
    cls = type(module).__name__
    return isinstance(module, nn.LayerNorm) or "LayerNorm" in cls or "RMSNorm" in cls


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get weight decay: all but biases and norm weights.

    Tied parameters are listed under every name, as transformers does.
    """
    norm_params: set[str] = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        if _is_norm(module):
            norm_params.update(f"{prefix}.{n}" if prefix else n
                               for n, _ in module.named_parameters(remove_duplicate=False))
    return {name for name, _ in model.named_parameters(remove_duplicate=False)
            if name not in norm_params and not _NO_DECAY_NAME.search(name.lower())}


def _num_layers(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for field in ("num_hidden_layers", "n_layer"):
        if isinstance(getattr(config, field, None), int):
            return getattr(config, field)
    raise OptimizerConfigError(
        f"layerwise_lr_decay needs the number of layers, but {type(model).__name__}.config has no "
        "'num_hidden_layers' or 'n_layer'; set layerwise_lr_decay to 1.0 for this model.")


_EMBEDDINGS = {"embeddings", "wte", "wpe"}
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|h)\.(\d+)\.")


def param_depth(model: nn.Module, name: str) -> int:
    """Depth of a parameter for layer-wise LR decay (0 = embeddings ... L + 2 = task head).

    Uses `model.param_depth(name)` when the model defines it (hone's models do); otherwise
    reads transformers-style names (`bert.encoder.layer.3.`, `transformer.h.3.`).
    """
    if callable(getattr(model, "param_depth", None)):
        return model.param_depth(name)
    parts = name.split(".")
    if _EMBEDDINGS.intersection(parts):
        return 0
    if m := _LAYER_INDEX.search(name):
        return int(m.group(1)) + 1
    if "pooler" in parts:
        return _num_layers(model) + 1
    return _num_layers(model) + 2


def param_groups(model: nn.Module, *, learning_rate: float, weight_decay: float,
                 layerwise_lr_decay: float = 1.0) -> list[dict]:
    """Optimizer param groups keyed by (depth, decays); frozen parameters are left out.

    With layerwise_lr_decay == 1 there are two groups: decay, then no-decay.
    No-decay groups (biases, norm weights) get weight_decay 0 and trust_ratio False.
    """
    if not 0.0 < layerwise_lr_decay <= 1.0:
        raise OptimizerConfigError(
            f"layerwise_lr_decay must be in (0, 1], got {layerwise_lr_decay} (1.0 turns it off; "
            "ELECTRA uses 0.8, seed 002 uses 0.75).")
    layerwise = layerwise_lr_decay != 1.0
    head_depth = _num_layers(model) + 2 if layerwise else 0
    decayed = decay_parameter_names(model)

    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = name in decayed
        depth = param_depth(model, name) if layerwise else head_depth
        if not 0 <= depth <= head_depth:
            raise OptimizerConfigError(
                f"param_depth of '{name}' is {depth}, outside 0..{head_depth} (L + 2) for "
                f"{type(model).__name__}; fix its param_depth method.")
        group = groups.setdefault((depth, decays), {
            "params": [], "param_names": [],
            "lr": learning_rate * layerwise_lr_decay ** (head_depth - depth),
            "weight_decay": weight_decay if decays else 0.0,
            "trust_ratio": decays,
        })
        group["params"].append(p)
        group["param_names"].append(name)
    # embeddings first, head last; decay before no-decay at each depth
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], not k[1]))]


# ----------------------------------------------------------------------------- LAMB

class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019) as in NVIDIA's BERT recipe, on torch._foreach_* ops.

    Per parameter: m, v as Adam (bias-corrected unless bias_correction=False);
    r = m_hat / (sqrt(v_hat) + eps) + weight_decay * w; trust = ||w|| / ||r|| (1 when either
    norm is 0); w -= lr * trust * r. Groups with trust_ratio=False skip the trust ratio
    (param_groups gives those, the biases and norm weights, weight_decay 0 too, so their
    update is Adam's). No step syncs with the host. Clip gradients before step().
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, bias_correction: bool = True):
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise OptimizerConfigError(f"Lamb: lr ({lr}), eps ({eps}) and weight_decay ({weight_decay}) "
                                       "must be >= 0.")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise OptimizerConfigError(f"Lamb: betas must be in [0, 1), got {betas}.")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, trust_ratio=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lamb does not support sparse gradients.")
            grads = [p.grad for p in params]
            for p in params:
                if not self.state[p]:
                    self.state[p]["step"] = torch.tensor(0.0)  # on the host, as Adam keeps it
                    self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            steps = [self.state[p]["step"] for p in params]
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            beta1, beta2 = group["betas"]

            torch._foreach_add_(steps, 1.0)
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)           # m = b1 m + (1 - b1) g
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)  # v = b2 v + (1 - b2) g^2

            denom = torch._foreach_sqrt(exp_avg_sqs)
            if group["bias_correction"]:
                # steps live on the host: reading them does not wait for the device
                ts = [s.item() for s in steps]
                torch._foreach_div_(denom, [math.sqrt(1.0 - beta2 ** t) for t in ts])  # sqrt(v_hat)
                torch._foreach_add_(denom, group["eps"])
                update = torch._foreach_div(exp_avgs, denom)
                torch._foreach_div_(update, [1.0 - beta1 ** t for t in ts])           # m_hat / (...)
            else:
                torch._foreach_add_(denom, group["eps"])
                update = torch._foreach_div(exp_avgs, denom)
            if group["weight_decay"] != 0.0:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])

            if group["trust_ratio"]:
                w_norm = torch.stack(torch._foreach_norm(params))  # (n,)
                r_norm = torch.stack(torch._foreach_norm(update))  # (n,)
                trust = torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm))
                torch._foreach_mul_(update, list(trust.unbind()))
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss


# ----------------------------------------------------------------------------- builders

OPTIMIZERS = ("adamw", "lamb", "sgd", "adafactor")


def build_optimizer(model: nn.Module, args: TrainingArguments, profile: HardwareProfile) -> torch.optim.Optimizer:
    """The optimiser `args` (transformers' names) ask for, over `param_groups(model, ...)`:
    AdamW (torch's, fused where the profile says: on CUDA and on CPUs), LAMB, SGD or Adafactor."""
    name = args.optimizer_name
    if name not in OPTIMIZERS:
        raise OptimizerConfigError(
            f"Unknown optimizer '{name}' (field 'optim'); choose one of: {', '.join(OPTIMIZERS)}.")
    groups = param_groups(model, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                          layerwise_lr_decay=args.layerwise_lr_decay)
    if not groups:
        raise OptimizerConfigError(f"{type(model).__name__} has no trainable parameters (all requires_grad=False).")
    betas = (args.adam_beta1, args.adam_beta2)
    if name == "lamb":
        return Lamb(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon,
                    weight_decay=args.weight_decay, bias_correction=not args.lamb_no_bias_correction)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    fused = profile.fused_optimizer and _fused_adamw_supported(groups)
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon,
                             weight_decay=args.weight_decay,
                             fused=True if fused else None, foreach=None if fused else True)


def _fused_adamw_supported(groups: list[dict]) -> bool:
    """torch's fused AdamW: one kernel per parameter for the whole update, on CUDA and on CPUs
    (floating parameters, all on one device type)."""
    params = [p for g in groups for p in g["params"]]
    return (len({p.device.type for p in params}) == 1 and params[0].device.type in ("cuda", "cpu")
            and all(p.is_floating_point() for p in params))


def warmup_steps_for(args: TrainingArguments, num_training_steps: int) -> int:
    """Warmup steps: `warmup_steps` when > 0, else ceil(warmup_ratio * steps), as transformers."""
    if args.warmup_steps < 0 or not 0.0 <= args.warmup_ratio <= 1.0:
        raise OptimizerConfigError(
            f"warmup_steps ({args.warmup_steps}) must be >= 0 and warmup_ratio ({args.warmup_ratio}) "
            "in [0, 1].")
    if args.warmup_steps > 0:
        return args.warmup_steps
    return math.ceil(num_training_steps * args.warmup_ratio)


def _warmup_factor(step: int, warmup: int) -> float:
    return step / max(1, warmup)


def _constant(step: int) -> float:
    return 1.0


def _constant_with_warmup(step: int, *, warmup: int, total: int) -> float:
    return _warmup_factor(step, warmup) if step < warmup else 1.0


def _linear(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return _warmup_factor(step, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _cosine(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return _warmup_factor(step, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))  # half a cosine wave


def _cosine_with_restarts(step: int, *, warmup: int, total: int, num_cycles: int = 1) -> float:
    if step < warmup:
        return _warmup_factor(step, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))


def _cosine_with_min_lr(step: int, *, warmup: int, total: int, min_lr_rate: float,
                        num_cycles: float = 0.5) -> float:
    if step < warmup:
        return _warmup_factor(step, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
    return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)


def _inverse_sqrt(step: int, *, warmup: int, total: int, timescale: int | None = None) -> float:
    if step < warmup:
        return _warmup_factor(step, warmup)
    timescale = timescale or warmup or 10_000
    return 1.0 / math.sqrt((step + timescale - warmup) / timescale)


def _polynomial(step: int, *, warmup: int, total: int, lr_init: float, lr_end: float, power: float) -> float:
    if step < warmup:
        return _warmup_factor(step, warmup)
    if step > total:
        return lr_end / lr_init
    remaining = 1 - (step - warmup) / max(1, total - warmup)
    return ((lr_init - lr_end) * remaining ** power + lr_end) / lr_init


SCHEDULES = {"linear": _linear, "cosine": _cosine, "cosine_with_restarts": _cosine_with_restarts,
             "cosine_with_min_lr": _cosine_with_min_lr, "inverse_sqrt": _inverse_sqrt, "polynomial": _polynomial,
             "constant": _constant, "constant_with_warmup": _constant_with_warmup}
# --lr_scheduler_kwargs each schedule takes (transformers' names)
SCHEDULE_OPTIONS = {"cosine_with_restarts": {"num_cycles"}, "cosine_with_min_lr": {"num_cycles", "min_lr", "min_lr_rate"},
                    "inverse_sqrt": {"timescale"}, "polynomial": {"lr_end", "power"}}


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments,
                    num_training_steps: int) -> LambdaLR:
    """transformers' schedule `args.lr_scheduler_type` as a multiplier on every group's lr, with
    its options from --lr_scheduler_kwargs.

    "constant" ignores warmup, as in transformers; use "constant_with_warmup" for warmup.
    """
    kind = args.lr_scheduler_type
    if kind not in SCHEDULES:
        raise OptimizerConfigError(
            f"Unknown lr_scheduler_type '{kind}'; choose one of: {', '.join(SCHEDULES)}.")
    options = schedule_options(args)
    unknown = set(options) - SCHEDULE_OPTIONS.get(kind, set())
    if unknown:
        allowed = ", ".join(sorted(SCHEDULE_OPTIONS.get(kind, ()))) or "none"
        raise OptimizerConfigError(f"--lr_scheduler_kwargs: {', '.join(sorted(unknown))} not used by the {kind} "
                                   f"schedule (it takes: {allowed}).")
    if kind == "constant":
        return LambdaLR(optimizer, _constant)
    kwargs = dict(warmup=warmup_steps_for(args, num_training_steps), total=num_training_steps)
    if kind == "polynomial":
        lr_end, power = options.get("lr_end", args.lr_end), options.get("power", args.lr_power)
        if not lr_end < args.learning_rate:
            raise OptimizerConfigError(
                f"lr_end ({lr_end}) must be smaller than learning_rate ({args.learning_rate}) "
                "for the polynomial schedule.")
        kwargs.update(lr_init=args.learning_rate, lr_end=lr_end, power=power)
    elif kind == "cosine_with_min_lr":
        if ("min_lr" in options) == ("min_lr_rate" in options):
            raise OptimizerConfigError("the cosine_with_min_lr schedule needs exactly one of min_lr and min_lr_rate "
                                       "in --lr_scheduler_kwargs, e.g. '{\"min_lr_rate\": 0.1}'.")
        rate = options["min_lr_rate"] if "min_lr_rate" in options else options["min_lr"] / args.learning_rate
        kwargs.update(min_lr_rate=rate, num_cycles=options.get("num_cycles", 0.5))
    else:
        kwargs.update(options)
    return LambdaLR(optimizer, partial(SCHEDULES[kind], **kwargs))
