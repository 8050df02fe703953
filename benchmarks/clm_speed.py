"""hone's GPT2LMHeadModel against transformers' on the same weights and batches: training
step time (forward, backward, AdamW step), fp32 or bf16 autocast, on CPU or GPU.

Every step is timed; the systems alternate within each repeat (hone, transformers, then the
other order) so that a shared machine's load hits both alike. `--profile` instead prints
torch.profiler's op table for one step of each system. Wrap runs on a shared machine in
`flock /tmp/hone-bench.lock`, e.g.

    flock /tmp/hone-bench.lock env PYTHONPATH=src python benchmarks/clm_speed.py \
        --n_layer 6 --n_embd 384 --n_head 6 --block_size 1024 --batch_size 2 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from hone.config import TrainingArguments
from hone.engine.optim import build_optimizer
from hone.hardware import resolve_profile
from hone.models.checkpoint import build_model


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--vocab_size", type=int, default=50257)
    p.add_argument("--block_size", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--steps", type=int, default=3, help="timed steps per system per repeat")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per system per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables for one step of each")
    p.add_argument("--loss_only", action="store_true",
                   help="time the LM loss alone (forward + backward of projection and cross-entropy): plain, "
                        "hone's fused chunked loss, and chunks under torch.utils.checkpoint")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args()


def load_systems(args: argparse.Namespace, folder: str) -> dict[str, torch.nn.Module]:
    import transformers

    transformers.logging.set_verbosity_error()
    config = dict(model_type="gpt2", vocab_size=args.vocab_size, n_positions=max(1024, args.block_size),
                  n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
                  resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout)
    torch.manual_seed(0)
    hone_model = build_model(config, "clm")
    hone_model.save_pretrained(folder)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").float()
    return {"hone": hone_model.to(args.device).train(), "transformers": hf_model.to(args.device).train()}


def make_batches(args: argparse.Namespace, count: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size), generator=g)
        batches.append({"input_ids": ids.to(args.device), "labels": ids.to(args.device)})
    return batches


def train_step(model, optimizer, batch, autocast) -> float:
    with autocast():
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def checkpointed_chunk_loss(hidden, weight, labels, chunk: int) -> torch.Tensor:
    """The alternative to hone's fused loss: plain chunks whose logits backward recomputes."""
    from torch.nn import functional as F
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(h, y):
        return F.cross_entropy(F.linear(h, weight).float(), y, ignore_index=-100, reduction="sum")

    total = sum(checkpoint(chunk_loss, hidden[i:i + chunk], labels[i:i + chunk], use_reentrant=False)
                for i in range(0, len(labels), chunk))
    return total / (labels != -100).sum()


def time_losses(args: argparse.Namespace, autocast) -> dict:
    """Median seconds of forward + backward of each LM loss variant on (batch * block, C) states."""
    from torch.nn import functional as F

    from hone.models.losses import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    n = args.batch_size * args.block_size
    hidden = torch.randn(n, args.n_embd, generator=g, device=args.device, requires_grad=True)
    weight = (torch.randn(args.vocab_size, args.n_embd, generator=g) * 0.02).to(args.device).requires_grad_()
    labels = torch.randint(0, args.vocab_size, (n,), generator=g).to(args.device)
    variants = {"plain": lambda: F.cross_entropy(F.linear(hidden, weight).float(), labels)}
    for chunk in (256, 1024, 4096):
        variants[f"fused_chunk{chunk}"] = lambda c=chunk: linear_cross_entropy(hidden, weight, labels, chunk_size=c)
        variants[f"checkpoint_chunk{chunk}"] = lambda c=chunk: checkpointed_chunk_loss(hidden, weight, labels, c)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats * args.steps + args.warmup):
        for name, fn in variants.items():
            start = time.perf_counter()
            with autocast():
                loss = fn()
            loss.backward()
            hidden.grad = weight.grad = None
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = resolve_profile("cpu" if args.device == "cpu" else "h100")
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    device_type = torch.device(args.device).type

    def autocast():
        return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def sync():
        if device_type == "cuda":
            torch.cuda.synchronize()

    if args.loss_only:
        print(json.dumps({"settings": vars(args), "median_seconds": time_losses(args, autocast)}, indent=1))
        return
    with tempfile.TemporaryDirectory() as folder:
        systems = load_systems(args, folder)
    optimizers = {name: build_optimizer(m, TrainingArguments(learning_rate=1e-4), profile)
                  for name, m in systems.items()}
    batches = make_batches(args, args.warmup + args.steps)

    if args.profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        for name, model in systems.items():
            train_step(model, optimizers[name], batches[0], autocast)  # warm-up
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
            with torch_profile(activities=activities) as prof:
                train_step(model, optimizers[name], batches[1 % len(batches)], autocast)
                sync()
            print(f"\n===== {name} ({args.dtype}) =====")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return

    times: dict[str, list[float]] = {name: [] for name in systems}
    cpu_times: dict[str, list[float]] = {name: [] for name in systems}  # process CPU seconds: less
    losses: dict[str, list[float]] = {name: [] for name in systems}    # sensitive to other load
    for r in range(args.repeats):
        order = list(systems) if r % 2 == 0 else list(reversed(systems))
        for name in order:
            model, optimizer = systems[name], optimizers[name]
            for i, batch in enumerate(batches):
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                loss = train_step(model, optimizer, batch, autocast)
                sync()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
                    cpu_times[name].append(time.process_time() - cpu_start)
                    losses[name].append(loss)
    tokens = args.batch_size * args.block_size
    result = {"settings": vars(args), "torch_threads": torch.get_num_threads(), "systems": {}}
    for name, t in times.items():
        result["systems"][name] = {
            "step_times_s": t, "median_step_s": statistics.median(t),
            "tokens_per_second": tokens / statistics.median(t),
            "cpu_times_s": cpu_times[name], "median_cpu_s": statistics.median(cpu_times[name]),
            "losses": losses[name],
        }
    hone, baseline = result["systems"]["hone"], result["systems"]["transformers"]
    result["hone_vs_transformers"] = baseline["median_step_s"] / hone["median_step_s"]
    result["hone_vs_transformers_cpu_time"] = baseline["median_cpu_s"] / hone["median_cpu_s"]
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
