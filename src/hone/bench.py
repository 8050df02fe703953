"""`hone bench train`: hone against a transformers baseline, in one run, on the same real data.

Like for like:
- weights: the hone model (a named config built from scratch, or a checkpoint folder with
  its real weights) is saved with save_pretrained; both systems load that folder
  (transformers through AutoModelFor... with attn_implementation="sdpa").
- samples: one seeded order of the data's rows; both systems train on the same micro
  batches of samples in the same order.
- precision and optimizer: the profile's autocast dtype and AdamW from
  engine.optim.build_optimizer (foreach; fused on CUDA when the profile says so) for both.
- the loop: forward, backward, optimizer step, zero_grad, written once here and run for
  each system (not either Trainer): `warmup` untimed steps, then `steps` timed ones.
What differs is what each system does with a batch:
- transformers gets batches as its example scripts build them: run_qa and run_glue pad
  every row to seq_len (pad_to_max_length), run_mlm (line by line) pads to the batch's
  longest row, run_clm's blocks hold no padding.
- hone gets the same rows collated as its recipes collate them for the profile's execution
  mode (data.collate.make_collator: padded to the batch's longest row, no mask when nothing
  is padding; or packed) and runs them in that mode (--mode overrides the profile's).
- the process: each system runs on the host allocator its users get (hone on the profile's,
  mimalloc for the CPU profiles; transformers on the system's). Where the two differ, every
  measurement runs in a new process of its own (--same_process: both in this one, on the
  profile's); elsewhere (GPU profiles) both run in this one.
Batches are collated before timing (DataLoader workers hide that cost in real training);
a timed step includes the copy to the device. Every measurement is repeated --repeats times
(systems alternating), and ratios are given over all timed steps with their spread across
repeats. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hone import perf
from hone.config import TrainingArguments
from hone.data.collate import make_collator, pad_collate
from hone.data.glue import load_data_file
from hone.data.masking import Masker
from hone.data.shards import PretrainingDataset
from hone.data.squad import prepare_train_features, read_squad
from hone.data.text import lm_blocks, read_texts
from hone.data.tokenizer import HoneTokenizer, load_tokenizer
from hone.engine.host_memory import allocator_environment, allocator_in_use, relaunch_with_allocator, resident_bytes
from hone.engine.optim import build_optimizer
from hone.engine.precision import autocast, autocast_dtype, build_loss_scaler, configure_tf32
from hone.engine.trainer import apply_execution_profile
from hone.errors import HoneError
from hone.hardware import HardwareProfile, effective_attention, precision_warning, resolve_profile
from hone.models.base import ModelConfig
from hone.models.checkpoint import MODEL_CLASSES, build_model, config_from_dict, load_config, load_model
from hone.models.presets import PRESETS, preset
from hone.reporting import machine_info, versions

log = logging.getLogger("hone")


class BenchError(HoneError, ValueError):
    """A benchmark that cannot run as asked; the message names the flag or file and the fix."""


# bench task -> (hone task, transformers Auto class, what --data must be)
TASKS: dict[str, tuple[str, str, str]] = {
    "qa": ("qa", "AutoModelForQuestionAnswering", "a SQuAD .json or .jsonl file"),
    "glue": ("classification", "AutoModelForSequenceClassification",
             "a GLUE release file or a labelled CSV/TSV/JSONL file"),
    "clm": ("clm", "AutoModelForCausalLM", "a raw text file"),
    "mlm": ("mlm", "AutoModelForMaskedLM", "a text file, one sample per line"),
    "pretraining": ("pretraining", "AutoModelForPreTraining", "a folder written by hone prepare-pretraining"),
}
SYSTEMS = ("hone", "transformers")
MODES = ("padded", "unpadded", "packed")  # HardwareProfile.execution_mode
# --mode -> the profile fields that give it
MODE_PROFILE = {"padded": dict(unpad=False, pack=False), "unpadded": dict(unpad=True, pack=False),
                "packed": dict(unpad=True, pack=True)}

_DROPOUT_FIELDS = {"gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
                   "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
                   "roberta": ("hidden_dropout_prob", "attention_probs_dropout_prob")}

# ----------------------------------------------------------------------------- data

@dataclass
class BenchData:
    rows: Sequence[dict]      # one sample each: unpadded 1-D int arrays and its labels
    pad_token_id: int
    baseline_padding: str     # transformers' padding strategy: "max_length" (run_qa, run_glue),
                              # "longest" (run_mlm --line_by_line), "do_not_pad" (run_clm's blocks)
    num_labels: int | None = None


def qa_data(path: Path, tokenizer: HoneTokenizer, seq_len: int, doc_stride: int) -> BenchData:
    """SQuAD training windows as run_qa builds them (hone.data.squad)."""
    features = prepare_train_features(read_squad(path), tokenizer, max_seq_length=seq_len, doc_stride=doc_stride)
    return BenchData(features, features.pad_token_id, "max_length")


def glue_data(path: Path, tokenizer: HoneTokenizer, seq_len: int, pad_token_id: int) -> BenchData:
    """A labelled GLUE release file (or a user's CSV/TSV/JSONL) encoded as run_glue does (data.glue)."""
    data = load_data_file(path)
    data.tokenize(tokenizer, seq_len)
    split = next(iter(data.splits.values()))
    if split.labels is None:
        raise BenchError(f"--data {path}: has no labels; --task glue trains on a labelled file (a train or dev file)")
    return BenchData(split.rows, pad_token_id, "max_length", num_labels=data.num_labels)


def clm_data(path: Path, tokenizer: HoneTokenizer, seq_len: int) -> BenchData:
    """run_clm's blocks of seq_len tokens (data.text: lines with their breaks, tokenized,
    concatenated per 1000 lines, cut into blocks)."""
    blocks = lm_blocks(read_texts([path]), tokenizer, seq_len, source=f"--data {path}")
    if len(blocks) == 0:
        raise BenchError(f"--data {path}: makes no block of --max_seq_length {seq_len} tokens")
    return BenchData(blocks, 0, "do_not_pad")


def mlm_data(path: Path, tokenizer: HoneTokenizer, seq_len: int, pad_token_id: int, seed: int) -> BenchData:
    """run_mlm --line_by_line: each non-empty line one sample, truncated to seq_len, masked once
    as DataCollatorForLanguageModeling masks (data.masking, per_token policy)."""
    lines = [line for line in read_texts([path], keep_linebreaks=False) if line.strip()]  # run_mlm --line_by_line
    masker = Masker.for_tokenizer(tokenizer, policy="per_token")
    encodings = tokenizer.encode_batch(lines, max_length=seq_len, truncation="longest_first")
    ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in ids])])
    inputs, labels = masker.mask(np.concatenate(ids), offsets, np.random.default_rng(seed))
    rows = [{"input_ids": inputs[a:b], "attention_mask": np.ones(b - a, dtype=np.int64),
             "token_type_ids": np.asarray(e.type_ids), "labels": labels[a:b]}
            for e, a, b in zip(encodings, offsets[:-1], offsets[1:])]
    return BenchData(rows, pad_token_id, "longest")


def pretraining_data(path: Path, pad_token_id: int) -> BenchData:
    """Instances prepared by `hone prepare-pretraining` (static masks, NSP labels), padded by the
    baseline to each batch's longest, as run_pretraining-style scripts collate them."""
    dataset = PretrainingDataset.open(path)
    return BenchData([dataset[i] for i in range(len(dataset))], pad_token_id, "longest")


def load_data(task: str, path: Path, tokenizer: HoneTokenizer, args: argparse.Namespace) -> BenchData:
    if not (path.is_dir() if task == "pretraining" else path.is_file()):
        raise BenchError(f"--data {path}: no such {'folder' if task == 'pretraining' else 'file'}; --task {task} "
                         f"reads {TASKS[task][2]}")
    pad = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    if task == "qa":
        data = qa_data(path, tokenizer, args.max_seq_length, args.doc_stride)
    elif task == "glue":
        data = glue_data(path, tokenizer, args.max_seq_length, pad)
    elif task == "clm":
        data = clm_data(path, tokenizer, args.max_seq_length)
    elif task == "mlm":
        data = mlm_data(path, tokenizer, args.max_seq_length, pad, args.seed)
    else:
        data = pretraining_data(path, pad)
    if len(data.rows) == 0:
        raise BenchError(f"--data {path}: holds no samples")
    return data


# ----------------------------------------------------------------------------- batches

def sample_order(num_rows: int, num_samples: int, seed: int) -> np.ndarray:
    """The rows both systems train on, in order: seeded permutations, repeated if the data is short."""
    rng = np.random.default_rng(seed)
    reps = -(-num_samples // num_rows)
    return np.concatenate([rng.permutation(num_rows) for _ in range(reps)])[:num_samples]


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # model inputs with labels
    indices: list[int]               # the rows it holds
    real_tokens: int                 # non-padding tokens
    tokens: int                      # token positions the model computes, padding included


def make_batches(data: BenchData, order: np.ndarray, batch_size: int, *, collate, layout: str,
                 token_types: bool) -> list[Batch]:
    """Micro batches of `batch_size` rows in `order`, collated by `collate`. `layout` says what the
    model computes: "unpadded"/"packed" real tokens only, anything else every position."""
    batches = []
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size].tolist()
        rows = [data.rows[i] for i in indices]
        if not token_types:
            rows = [{k: v for k, v in row.items() if k != "token_type_ids"} for row in rows]
        inputs = collate(rows)
        real = sum(len(row["input_ids"]) for row in rows)
        tokens = real if layout in ("unpadded", "packed") else inputs["input_ids"].numel()
        batches.append(Batch(inputs, indices, real, tokens))
    return batches


def baseline_collate(padding: str, pad_token_id: int, seq_len: int):
    """Batches as transformers' example scripts build them: "max_length" pads every row to
    seq_len (run_qa, run_glue), "longest" to the batch's longest row (run_mlm --line_by_line),
    "do_not_pad" stacks rows of one length (run_clm's blocks)."""
    def collate(rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        # rows are at most seq_len long: rounding up to a multiple of seq_len pads to seq_len
        return pad_collate(rows, pad_token_id, seq_len if padding == "max_length" else None)
    return collate


def batch_flops(data: BenchData, batches: list[Batch], config: ModelConfig, task: str,
                seq_len: int) -> tuple[list[float], list[float]]:
    """Per batch: (model FLOPs as the padded baseline computes them, FLOPs on real tokens only)."""
    model, useful = [], []
    for b in batches:
        lengths = [len(data.rows[i]["input_ids"]) for i in b.indices]
        width = max(lengths) if data.baseline_padding == "longest" else seq_len
        model.append(len(lengths) * perf.train_flops(config, task, width))
        useful.append(sum(perf.train_flops(config, task, n) for n in lengths))
    return model, useful


def _digest(indices: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()


# ----------------------------------------------------------------------------- systems

def load_transformers_model(folder: Path, auto_class: str) -> torch.nn.Module:
    try:
        import transformers
    except ImportError:
        raise BenchError("the transformers baseline needs transformers: pip install transformers "
                         "(or benchmark hone alone with --systems hone)") from None
    transformers.logging.set_verbosity_error()
    return getattr(transformers, auto_class).from_pretrained(folder, attn_implementation="sdpa").float()


def train_steps(model: torch.nn.Module, batches: list[Batch], profile: HardwareProfile, *, lr: float,
                warmup: int, compile_model: bool, dynamic: bool, desc: str) -> dict:
    """forward, backward, optimizer step, zero_grad per batch; the same loop for every system.

    `dynamic`: shapes change from batch to batch (torch.compile traces them symbolically).
    Returns every step's time in seconds and loss, and the rows consumed.
    """
    device = torch.device(profile.device)
    cuda = device.type == "cuda"
    model.to(device).train()
    optimizer = build_optimizer(model, TrainingArguments(learning_rate=lr), profile)
    scaler = build_loss_scaler(profile)  # a no-op unless fp16
    step_model = torch.compile(model, dynamic=dynamic) if compile_model else model
    losses, seen = [], []
    marks = [torch.cuda.Event(enable_timing=True) if cuda else None for _ in range(len(batches) + 1)]
    times = [0.0] * (len(batches) + 1)

    def mark(i: int) -> None:
        if cuda:
            marks[i].record()  # on the GPU's timeline: no wait for the host
        else:
            times[i] = time.perf_counter()

    if cuda:
        torch.cuda.synchronize(device)
    mark(0)
    for i, batch in enumerate(tqdm(batches, desc=desc, unit="step", dynamic_ncols=True)):
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.inputs.items()}
        with autocast(profile):
            loss = step_model(**inputs).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        seen.extend(batch.indices)
        mark(i + 1)
    if cuda:
        torch.cuda.synchronize(device)
        step_times = [marks[i].elapsed_time(marks[i + 1]) / 1e3 for i in range(len(batches))]
    else:
        step_times = [b - a for a, b in zip(times, times[1:])]
    return {"step_times": step_times, "losses": torch.stack(losses).float().cpu().tolist(),
            "indices": seen, "fused_optimizer": bool(optimizer.defaults.get("fused"))}


def system_report(run: dict, batches: list[Batch], warmup: int, flops: tuple[list[float], list[float]],
                  peak: tuple[str, float] | None) -> dict:
    """Rates over the timed steps of one system."""
    timed, step_times = batches[warmup:], run["step_times"][warmup:]
    seconds = sum(step_times)
    samples = sum(len(b.indices) for b in timed)
    real = sum(b.real_tokens for b in timed)
    tokens = sum(b.tokens for b in timed)
    model_flops, useful_flops = sum(flops[0][warmup:]) / seconds, sum(flops[1][warmup:]) / seconds
    return {
        "samples_per_second": samples / seconds,
        "real_tokens_per_second": real / seconds,
        "padded_tokens_per_second": tokens / seconds,
        "padding_share": 1.0 - real / tokens,
        "step_time_mean_s": seconds / len(step_times),
        "step_time_std_s": statistics.stdev(step_times) if len(step_times) > 1 else 0.0,
        "step_times_s": step_times,
        "warmup_time_s": sum(run["step_times"][:warmup]),
        "loss_first": run["losses"][0],
        "loss_last": run["losses"][-1],
        "losses": run["losses"],
        "model_flops_per_second": model_flops,
        "useful_flops_per_second": useful_flops,
        "mfu": model_flops / peak[1] if peak else None,
        "useful_mfu": useful_flops / peak[1] if peak else None,
        "sample_order_sha256": _digest(run["indices"]),
    }


# ----------------------------------------------------------------------------- setup

def resolve_model_config(name: str, task: str) -> tuple[ModelConfig, Path | None]:
    """(config, checkpoint folder or None) for a --model_config name or folder."""
    folder = None
    named = preset(name)
    if named is not None:
        config = config_from_dict(named, source=f"--model_config {name}")
    else:
        folder = Path(name)
        if not (folder / "config.json").is_file():
            raise BenchError(f"--model_config {name}: neither a named config ({', '.join(PRESETS)}) nor a "
                             "checkpoint folder with config.json")
        config = load_config(folder)
    hone_task = TASKS[task][0]
    if hone_task not in MODEL_CLASSES[config.model_type]:
        usable = [t for t, (ht, _, _) in TASKS.items() if ht in MODEL_CLASSES[config.model_type]]
        raise BenchError(f"--task {task} is not available for {config.model_type} models "
                         f"(--model_config {name}); {config.model_type} supports --task {', '.join(usable)}")
    return config, folder


def check_fit(config: ModelConfig, tokenizer: HoneTokenizer, seq_len: int, tokenizer_path: str) -> None:
    if seq_len > config.max_positions:
        raise BenchError(f"--max_seq_length {seq_len} is longer than the model's {config.max_positions} positions; "
                         "lower --max_seq_length")
    if tokenizer.vocab_size > config.vocab_size:
        raise BenchError(f"--tokenizer {tokenizer_path} has {tokenizer.vocab_size} token ids but the model's "
                         f"vocabulary has {config.vocab_size}: use the model's own tokenizer")


def _systems(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if not names or unknown or len(set(names)) != len(names):
        raise BenchError(f"--systems {text}: give each of {', '.join(SYSTEMS)} at most once, comma-separated")
    return names


# ----------------------------------------------------------------------------- the benchmark

def _measure(name: str, folder: Path, *, data: BenchData, order: np.ndarray, args: argparse.Namespace,
             profile: HardwareProfile, config: ModelConfig, baseline: list[Batch], token_types: bool) -> dict:
    """One system's timed run: load the shared weights, collate as it would, train the steps."""
    device = torch.device(profile.device)
    hone_task, auto_class, _ = TASKS[args.task]
    memory = perf.PeakMemory(device)
    memory.start()
    torch.manual_seed(args.seed)
    if name == "hone":
        model = load_model(folder, hone_task)
        apply_execution_profile(model, profile)
        mode = profile.execution_mode
        collate = make_collator(mode, pad_token_id=data.pad_token_id, position_offset=config.position_offset,
                                max_seq_len=args.max_seq_length, bucket_tokens=bucket_tokens(args, profile))
        batches = make_batches(data, order, args.per_device_train_batch_size, collate=collate, layout=mode,
                               token_types=token_types)
        compiled = profile.compile
    else:
        model = load_transformers_model(folder, auto_class)
        mode, batches, compiled = f"padding={data.baseline_padding}", baseline, args.compile_baseline
    if device.type == "cuda" and profile.pin_memory:
        for b in batches:
            b.inputs = {k: v.pin_memory() for k, v in b.inputs.items()}
    dynamic = mode != "padded" or len({tuple(b.inputs["input_ids"].shape) for b in batches}) > 1
    run = train_steps(model, batches, profile, lr=args.learning_rate, warmup=args.warmup,
                      compile_model=compiled, dynamic=dynamic, desc=f"{name} ({mode})")
    return {"mode": mode, "compiled": compiled, "fused_optimizer": run["fused_optimizer"], "run": run,
            "batches": batches, "peak_memory_bytes": memory.peak_bytes(), "peak_memory_kind": memory.kind,
            "peak_resident_bytes": resident_bytes("VmHWM") if device.type == "cpu" else None,
            "host_allocator": allocator_in_use()}


def system_allocator(name: str, profile: HardwareProfile) -> tuple[str, int]:
    """The host allocator (and mimalloc purge delay) each system's users get: hone the profile's,
    transformers the system's."""
    return (profile.allocator, profile.host_allocator_purge_ms) if name == "hone" else ("system", -1)


def _set_up_process(profile: HardwareProfile) -> None:
    """Process-wide settings both systems train under: CPU threads, TF32."""
    if profile.cpu_threads is not None:
        torch.set_num_threads(profile.cpu_threads)
    if profile.device.startswith("cuda"):
        configure_tf32(profile.tf32)


_CHILD = "import sys; from hone.bench import measure_in_child; measure_in_child(sys.argv[1], sys.argv[2])"


def _measure_in_new_process(name: str, measure: dict, profile: HardwareProfile) -> dict:
    """`_measure` in a fresh Python process on the system's own host allocator
    (system_allocator): neither system runs on the other's allocator, heap or kernel caches,
    and each peak resident memory is its own."""
    with tempfile.TemporaryDirectory(prefix="hone-bench-process-") as work:
        spec, out = Path(work) / "measurement.pt", Path(work) / "result.pt"
        torch.save({"name": name, **measure, "profile": profile}, spec)
        done = subprocess.run([sys.executable, "-c", _CHILD, str(spec), str(out)],
                              env=allocator_environment(*system_allocator(name, profile)), check=False)
        if done.returncode != 0:
            raise BenchError(f"the {name} measurement's process failed (exit status {done.returncode}; its output "
                             "is above); --same_process runs both systems in this one")
        return torch.load(out, weights_only=False)


def measure_in_child(spec_path: str, out_path: str) -> None:
    """The child's side of `_measure_in_new_process`: read the measurement, run it, write its result."""
    spec = torch.load(spec_path, weights_only=False)
    _set_up_process(spec["profile"])
    torch.save(_measure(**spec), out_path)


def bucket_tokens(args: argparse.Namespace, profile: HardwareProfile) -> int | None:
    """hone's token-stream bucket (data.collate.make_collator): --bucket_tokens, else the
    profile's (HardwareProfile.token_bucket)."""
    if args.bucket_tokens is not None:
        return args.bucket_tokens or None
    return profile.token_bucket(args.max_seq_length)


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_benchmark(args: argparse.Namespace, command: str = "") -> dict:
    """Train both systems on the same samples, --repeats times, and return the report
    (see benchmarks/README.md)."""
    for flag in ("max_seq_length", "per_device_train_batch_size", "steps", "repeats"):
        if getattr(args, flag) < 1:
            raise BenchError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise BenchError(f"--threads must be >= 1, got {args.threads}")
    systems = _systems(args.systems)
    profile = resolve_profile(args.hardware, args.hardware_overrides)
    new_processes = len({system_allocator(name, profile)[0] for name in systems}) > 1 and not args.same_process
    if not new_processes:  # every system runs in this process, on one allocator (machine.host_allocator)
        allocator, purge_ms = system_allocator("hone" if args.same_process else systems[0], profile)
        relaunch_with_allocator(allocator, "bench", purge_ms)
    if warning := precision_warning(profile):
        log.warning("notice: %s", warning)
    if args.threads is not None:  # the bench's spelling of the profile's cpu_threads
        profile = replace(profile, cpu_threads=args.threads)
    if args.mode is not None:
        profile = replace(profile, **MODE_PROFILE[args.mode])
    _set_up_process(profile)
    device = torch.device(profile.device)
    hone_task, _, _ = TASKS[args.task]
    config, folder = resolve_model_config(args.model_config, args.task)
    if args.tokenizer is None and folder is None:
        raise BenchError(f"--model_config {args.model_config} is built from scratch: pass --tokenizer DIR "
                         "(a tokenizer folder, e.g. shared/data/tokenizers/roberta-base)")
    tokenizer_path = args.tokenizer or str(folder)
    tokenizer = load_tokenizer(tokenizer_path)
    check_fit(config, tokenizer, args.max_seq_length, tokenizer_path)
    data = load_data(args.task, Path(args.data), tokenizer, args)
    if args.baseline_padding is not None:  # e.g. run_glue with --pad_to_max_length False: "longest"
        if data.baseline_padding == "do_not_pad":
            raise BenchError(f"--baseline_padding: --task {args.task}'s rows are blocks of one length; "
                             "there is no padding to choose")
        data = replace(data, baseline_padding=args.baseline_padding)

    overrides = {}
    if args.dropout is not None:
        overrides.update(dict.fromkeys(_DROPOUT_FIELDS[config.model_type], args.dropout))
    if data.num_labels is not None:
        overrides["num_labels"] = data.num_labels
    if args.task == "glue" and config.model_type == "gpt2":
        overrides["pad_token_id"] = data.pad_token_id  # GPT-2 finds each row's last token by it
    torch.manual_seed(args.seed)
    if folder is None:
        model = build_model(config, hone_task, **overrides)
    else:
        model = load_model(folder, hone_task, ignore_mismatched_sizes=True, **overrides)
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    token_types = config.model_type == "bert"  # as the tokenizers' model_input_names: RoBERTa and GPT-2 take none

    batch_size, seq_len = args.per_device_train_batch_size, args.max_seq_length
    order = sample_order(len(data.rows), (args.warmup + args.steps) * batch_size, args.seed)
    baseline = make_batches(data, order, batch_size, layout=data.baseline_padding, token_types=token_types,
                            collate=baseline_collate(data.baseline_padding, data.pad_token_id, seq_len))
    flops = batch_flops(data, baseline, config, hone_task, seq_len)
    peak = perf.device_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None

    measured: dict[str, list[dict]] = {name: [] for name in systems}
    with tempfile.TemporaryDirectory(prefix="hone-bench-") as tmp:
        model.save_pretrained(tmp)  # both systems load these weights
        del model
        measure = dict(folder=Path(tmp), data=data, order=order, args=args, config=config, baseline=baseline,
                       token_types=token_types)
        for _ in range(args.repeats):  # systems alternate, so slow drifts of the machine hit both
            for name in systems:
                measured[name].append(_measure_in_new_process(name, measure, profile) if new_processes
                                      else _measure(name, profile=profile, **measure))

    reports = {}
    for name, runs in measured.items():
        first = runs[0]
        per_repeat = [system_report(m["run"], m["batches"], args.warmup, flops, peak) for m in runs]
        # rates over every timed step of every repeat; losses and data order of the first (all repeat them)
        report = system_report({"step_times": [t for m in runs for t in m["run"]["step_times"][args.warmup:]],
                                "losses": first["run"]["losses"], "indices": first["run"]["indices"]},
                               [b for m in runs for b in m["batches"][args.warmup:]], 0,
                               tuple([f[args.warmup:] * len(runs) for f in flops]), peak)
        report["warmup_time_s"] = per_repeat[0]["warmup_time_s"]
        reports[name] = {"mode": first["mode"], "compiled": first["compiled"],
                         "fused_optimizer": first["fused_optimizer"], **report,
                         "samples_per_second_per_repeat": [r["samples_per_second"] for r in per_repeat],
                         "peak_memory_bytes": max(m["peak_memory_bytes"] for m in runs),
                         "peak_memory_kind": first["peak_memory_kind"],
                         "peak_resident_bytes": max((m["peak_resident_bytes"] or 0 for m in runs), default=0) or None,
                         "host_allocator": first["host_allocator"]}

    timed = baseline[args.warmup:]
    real, padded = sum(b.real_tokens for b in timed), sum(b.tokens for b in timed)
    dtype = autocast_dtype(profile)
    report = {
        "benchmark": "hone bench train",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "task": args.task, "model_config": args.model_config, "data": args.data, "tokenizer": tokenizer_path,
            "max_seq_length": seq_len, "doc_stride": args.doc_stride if args.task == "qa" else None,
            "per_device_train_batch_size": batch_size, "steps": args.steps, "warmup": args.warmup,
            "repeats": args.repeats, "learning_rate": args.learning_rate, "seed": args.seed, "dropout": args.dropout,
            "systems": systems, "mode": profile.execution_mode, "compile_baseline": args.compile_baseline,
            "processes": "a new one per system and repeat" if new_processes else "this one for every system",
            "attention_kernel": effective_attention(profile), "bucket_tokens": bucket_tokens(args, profile),
            "threads": profile.cpu_threads,
            "autocast_dtype": str(dtype).removeprefix("torch.") if dtype else "fp32 (none)",
            "hardware": asdict(profile),
        },
        "model": {
            "model_type": config.model_type, "task": hone_task, "parameters": n_params,
            "layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "matmul_parameters": dict(zip(("per_token", "per_sequence"), perf.matmul_params(config, hone_task))),
            "train_flops_per_sample_at_seq_len": perf.train_flops(config, hone_task, seq_len),
        },
        "device_peak": None if peak is None else {"device": peak[0], "bf16_dense_flops_per_second": peak[1]},
        "data": {
            "rows": len(data.rows), "samples": len(order), "repeated": len(order) > len(data.rows),
            "sample_order_sha256": _digest(order), "baseline_padding": data.baseline_padding,
            "baseline_padding_share": 1.0 - real / padded,
            "real_tokens_per_sample_mean": real / sum(len(b.indices) for b in timed),
        },
        "systems": reports,
    }
    if {"hone", "transformers"} <= reports.keys():
        hone, base = reports["hone"], reports["transformers"]
        per_repeat = [h / b for h, b in zip(hone["samples_per_second_per_repeat"],
                                            base["samples_per_second_per_repeat"])]
        report["hone_vs_transformers"] = {
            "samples_per_second_ratio": hone["samples_per_second"] / base["samples_per_second"],
            "samples_per_second_ratio_per_repeat": per_repeat,
            "samples_per_second_ratio_spread": _spread(per_repeat),
            "peak_memory_ratio": hone["peak_memory_bytes"] / max(1, base["peak_memory_bytes"]),
        }
    return report


# ----------------------------------------------------------------------------- command line

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hone bench", description="Benchmark hone against a transformers "
                                     "baseline: same weights, samples, precision and training loop.")
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="{train,infer}")
    sub.add_parser("infer", help="Time inference over backends, precisions and batch sizes "
                                 "(hone bench infer --help).", add_help=False)
    p = sub.add_parser("train", help="Time training steps of both systems.", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=list(TASKS), help="Which task head and data.")
    p.add_argument("--model_config", required=True,
                   help=f"A named config built with fresh weights ({', '.join(PRESETS)}) or a checkpoint "
                        "folder (its real weights).")
    p.add_argument("--data", required=True, help="qa: SQuAD json/jsonl; glue: a labelled GLUE/CSV/TSV/JSONL "
                                                 "file; clm: raw text; mlm: text lines.")
    p.add_argument("--tokenizer", help="Tokenizer folder (default: the checkpoint folder).")
    p.add_argument("--max_seq_length", "--seq_len", type=int, default=384, help="Tokens per sample / block size.")
    p.add_argument("--doc_stride", type=int, default=128, help="qa: tokens shared by consecutive windows.")
    p.add_argument("--per_device_train_batch_size", "--batch_size", type=int, default=16,
                   help="Micro batch, in samples, for both systems.")
    p.add_argument("--steps", type=int, default=10, help="Timed steps per repeat.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps first (compilation, caches).")
    p.add_argument("--repeats", type=int, default=3, help="Measure each system this many times (alternating).")
    p.add_argument("--hardware", default="auto", help="Hardware profile: cpu, cpu-bf16, a100, h100, auto or YAML.")
    p.add_argument("--hardware_overrides", help="Edit the profile: 'k=v,k=v'.")
    p.add_argument("--systems", default="hone,transformers", help="Which systems, in run order.")
    p.add_argument("--mode", choices=MODES, help="hone's execution mode (default: the profile's).")
    p.add_argument("--compile_baseline", action="store_true", help="torch.compile the transformers model too.")
    p.add_argument("--same_process", action="store_true",
                   help="Measure both systems in this process, on the profile's host allocator (faster to start). "
                        "Default: hone on the profile's allocator and transformers on the system's, as their users "
                        "run them; where the two differ, each repeat of each system in a new process.")
    p.add_argument("--bucket_tokens", type=int,
                   help="hone: pad each batch's token stream to a multiple of this (few shapes; 0: off; default "
                        "the profile's bucket_tokens: half of --max_seq_length when it compiles, else off).")
    p.add_argument("--baseline_padding", choices=["max_length", "longest"],
                   help="How the baseline pads its batches: to --max_seq_length, or to each batch's longest row "
                        "(default: the task's example script: max_length for qa and glue, longest for mlm).")
    p.add_argument("--learning_rate", "--lr", type=float, default=5e-5, help="AdamW learning rate (both).")
    p.add_argument("--dropout", type=float, help="Set every dropout of the model (default: its config's).")
    p.add_argument("--seed", type=int, default=42, help="Sample order, fresh weights, masking.")
    p.add_argument("--threads", type=int, help="torch CPU threads for both systems: the profile's cpu_threads "
                                               "(default: torch's, one per core).")
    p.add_argument("--out", help="JSON file to write (default benchmarks/results/bench-<task>-<model>-"
                                 "<hardware>-<date>-<time>.json).")
    return parser.parse_args(argv)


def default_out(args: argparse.Namespace, report: dict) -> Path:
    model = args.model_config if preset(args.model_config) else Path(args.model_config).resolve().name
    hardware = report["settings"]["hardware"]["name"]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("benchmarks") / "results" / f"bench-{args.task}-{model}-{hardware}-{stamp}.json"


def summary(report: dict) -> str:
    lines = []
    for name, r in report["systems"].items():
        lines.append(f"{name:>12} ({r['mode']}): {r['samples_per_second']:.2f} samples/s, "
                     f"{r['real_tokens_per_second']:.0f} real tokens/s, step {r['step_time_mean_s']:.3f} "
                     f"+- {r['step_time_std_s']:.3f} s, peak memory {r['peak_memory_bytes'] / 2**20:.0f} MiB"
                     + (f" (peak resident {r['peak_resident_bytes'] / 2**20:.0f} MiB)" if r.get("peak_resident_bytes")
                        else "")
                     + f", loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}, {r['host_allocator']} allocator")
    lines.append(f"hone attention: {report['settings']['attention_kernel']}; processes: {report['settings']['processes']}")
    if "hone_vs_transformers" in report:
        ratio = report["hone_vs_transformers"]
        spread = ratio["samples_per_second_ratio_spread"]
        lines.append(f"hone / transformers: {ratio['samples_per_second_ratio']:.2f}x samples/s over "
                     f"{report['settings']['repeats']} repeats (per repeat {spread['min']:.2f}x to {spread['max']:.2f}x; "
                     f"baseline padding share {report['data']['baseline_padding_share']:.1%})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["infer"]:  # inference backends, precisions and batch sizes: hone.export.bench_infer
        from hone.export.bench_infer import main as infer

        return infer(argv[1:])
    args = parse_args(argv)
    report = run_benchmark(args, command=shlex.join(["hone", "bench", *argv]))
    out = Path(args.out) if args.out else default_out(args, report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    log.info("%s\nwritten to %s", summary(report), out)
    return 0
