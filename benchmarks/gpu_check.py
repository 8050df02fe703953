"""The prepared GPU check: correctness and speed of hone on one GPU, in one JSON file.

On one H100 or H200 it runs in under 8 minutes (--time_limit, default 470 s) with nothing but
this repository: presets with random weights, and data and tokenizers generated here (no
model hub, no ../shared/data, no network). Sections, in this order, each recorded (status,
seconds, numbers, or the error) even when an earlier one failed, each with a time budget:

- parity: unpadded (varlen) against padded forward + backward of BERT, RoBERTa and GPT-2
  heads (qa, mlm, pretraining, classification, clm) on small random models (head_dim 64,
  sequences of 5 to 200 tokens on a GPU), for every attention kernel (auto, flash, sdpa, math;
  flash needs CUDA) with and without a bucketed token stream. The reference is the padded
  layout with the math kernel in fp32 (TF32 off); QA's reference loss leaves padding logits
  out of the softmax, as hone's unpadded loss does. fp32: outputs at real tokens, loss and
  every parameter's gradient within 1e-5 of the reference, relative to max(1, the reference's
  largest magnitude). bf16 autocast, against the fp32 reference: outputs and loss within 3e-2
  of its largest magnitude, gradients within 6e-2 of each parameter's largest entry (or of 5%
  of the model's largest gradient, for near-zero ones such as the QA head's bias, whose true
  gradient is 0); an error above a bound still passes when it is at most twice the padded bf16
  path's own error (bf16 rounding, not the layout).
- bench_qa, bench_clm, bench_mlm: `hone bench train` (--hardware auto: the h100 profile) for
  roberta-base QA at seq 384 against transformers (targets 3,000 samples/s and 2.5x), GPT-2
  124M causal LM at block 1024 (450K tokens/s) and BERT-base MLM at seq 128 (6,000
  sequences/s), each with MFU. Generated data imitates the real data's lengths: SQuAD windows
  of ~177 real tokens at 384 (~54% padding), text lines at 128 with ~17% padding (Wikipedia
  pre-training), full blocks for the causal LM. The bench's report is kept whole.
- torchrun_qa: `torchrun --standalone --nproc_per_node 1 -m hone qa`, a short fine-tune and
  evaluation of bert-base-uncased (fresh weights, compile off: the benches compile) on a
  generated SQuAD 2.0 file with a generated WordPiece vocabulary.

MFU = model FLOPs per second / the device's dense peak. Model FLOPs of one training sequence
of s tokens (hone.perf.train_flops): 6 * N * s + 12 * L * s^2 * d, N the matmul weights every
token passes (layers plus a per-token head; embeddings, norms and biases left out), L layers,
d the width; the second term is attention's QK^T and AV, forward and backward. The bench counts
every sample at the padded baseline's length ("mfu", like for like across systems) and also at
its real tokens only ("useful_mfu"). Peaks (hone.perf.PEAK_BF16_DENSE): H100 SXM and H200
989 TFLOP/s in bf16, half that (494) in TF32 for fp32 runs; an unknown device gives MFU null.

Commands (repository root; hone need not be installed: this checkout's src/ goes on the path):

    PYTHONPATH=src python benchmarks/gpu_check.py --out benchmarks/results/
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --out /tmp/check   # the CPU half

On the device machine (the run tool, repository root; its python3 holds torch), timeout_s 560:

    set -o pipefail; PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu-check.log

`--sections bench_clm,bench_mlm` reruns some sections only; `--hardware_overrides compile=false`
edits the benches' and the torchrun run's hardware profile (e.g. where torch.compile fails). The CPU half (--device cpu, run by
tests/test_gpu_check.py) runs the parity section as above (flash: "skipped: needs CUDA") and
the other sections on tiny models and sizes; its speed numbers mean nothing and its MFU is null.
The JSON is written after every section, so a run stopped from outside keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if (SRC / "hone").is_dir():  # check this checkout's hone (installed or not), as the children do
    sys.path.insert(0, str(SRC))

SECTIONS = ("parity", "bench_qa", "bench_clm", "bench_mlm", "torchrun_qa")  # in run order
TIME_LIMIT = {"cuda": 470.0, "cpu": 300.0}  # the whole check, seconds
MIN_SECTION_S = 20.0  # a section starting with less time than this left is skipped


# ----------------------------------------------------------------------------- generated data

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["an", "el", "in", "or", "us", "ith", "ang"]


def lexicon(rng, size: int = 2000) -> list[str]:
    """`size` distinct invented lower-case words of 1 to 3 syllables."""
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))))
    return sorted(words)


def sentence_words(rng, words: list[str], count: int) -> list[str]:
    """`count` words drawn Zipf-like from the lexicon, a sentence ending every 8 to 20 words."""
    import numpy as np

    weights = 1.0 / np.arange(1.0, len(words) + 1.0)
    picks = rng.choice(len(words), size=count, p=weights / weights.sum())
    out, next_stop = [], rng.integers(8, 21)
    for i, w in enumerate(picks):
        word = words[w]
        if i + 1 == next_stop or i + 1 == count:
            word += "."
            next_stop += rng.integers(8, 21)
        out.append(word)
    return out


def write_tokenizers(folder: Path, words: list[str], corpus: list[str]) -> None:
    """A WordPiece vocabulary (BERT) of every word, and byte-level BPEs trained on `corpus` in
    RoBERTa's and GPT-2's flavours (hone.data.tokenizer recognises them by their special tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out = {"wordpiece": folder / "wordpiece", "roberta": folder / "roberta", "gpt2": folder / "gpt2"}
    out["wordpiece"].mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?"]
    (out["wordpiece"] / "vocab.txt").write_text("\n".join(specials + words) + "\n")
    for flavour, special in (("roberta", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), ("gpt2", ["<|endoftext|>"])):
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=len(words) * 3 + 300, special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        bpe.train_from_iterator(corpus, trainer)
        out[flavour].mkdir(parents=True)
        bpe.model.save(str(out[flavour]))  # vocab.json + merges.txt


def squad_json(rng, words: list[str], paragraphs: int, context_words: float) -> dict:
    """SQuAD 2.0 JSON: contexts of lognormal length (median `context_words` words, as SQuAD's
    spread), 3 questions each; one in three unanswerable, the others a 1-3 word span."""
    data = []
    for p in range(paragraphs):
        n = int(min(max(rng.lognormal(math.log(context_words), 0.45), 8), 6 * context_words))
        ctx_words = sentence_words(rng, words, n)
        context = " ".join(ctx_words)
        starts = [0]
        for w in ctx_words[:-1]:
            starts.append(starts[-1] + len(w) + 1)
        qas = []
        for q in range(3):
            question = " ".join(sentence_words(rng, words, int(rng.integers(6, 15))))[:-1] + "?"
            qa = {"id": f"gen-{p}-{q}", "question": question, "answers": [], "is_impossible": q == 2}
            if q < 2:
                i = int(rng.integers(0, n))
                text = " ".join(ctx_words[i:i + int(rng.integers(1, 4))]).rstrip(".")
                qa["answers"] = [{"text": text, "answer_start": starts[i]}]
            qas.append(qa)
        data.append({"context": context, "qas": qas})
    return {"version": "v2.0", "data": [{"title": "generated", "paragraphs": data}]}


def text_lines(rng, words: list[str], lines: int, seq_len: int, full_share: float) -> list[str]:
    """Lines for run_mlm --line_by_line: `full_share` of them longer than seq_len tokens (cut
    there), the rest uniformly shorter."""
    lengths = [int(rng.integers(seq_len, 2 * seq_len)) if rng.random() < full_share
               else int(rng.integers(4, seq_len - 2)) for _ in range(lines)]
    return [" ".join(sentence_words(rng, words, n)) for n in lengths]


# ----------------------------------------------------------------------------- the report

@dataclass
class Check:
    """The check's settings and its report, written to `path` after every section."""
    device: str
    path: Path
    deadline: float
    work: Path
    hardware_overrides: str = ""  # --hardware_overrides for the benches and the torchrun run
    report: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".partial")
        tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        tmp.replace(self.path)


def run_section(check: Check, name: str, budget: float, body: Callable[[Check, float], dict]) -> None:
    """Run one section within min(budget, time left) and record it, whatever happens."""
    budget = min(budget, check.left())
    record: dict = {"budget_s": round(budget, 1)}
    start = time.monotonic()
    if budget < MIN_SECTION_S:
        record.update(status="skipped", reason=f"out of time: {budget:.0f} s left of --time_limit")
    else:
        print(f"== {name} (budget {budget:.0f} s)", flush=True)
        try:
            record.update(body(check, time.monotonic() + budget))
        except Exception as err:  # recorded; the next section still runs
            record.update(status="error", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc()[-4000:])
    record["seconds"] = round(time.monotonic() - start, 1)
    check.report["sections"][name] = record
    check.report["wall_time_s"] = round(time.monotonic() - check.started, 1)
    check.write()
    print(f"   {name}: {record['status']} in {record['seconds']} s"
          + (f" ({why(record)})" if record["status"] != "passed" else ""), flush=True)


def why(record: dict) -> str:
    """One line on what went wrong in a section."""
    return record.get("reason") or record.get("error") or "; ".join(record.get("failures", [])[:3])


def run_child(cmd: list[str], deadline: float, cwd: Path) -> dict:
    """Run a command in its own process group until `deadline`; stopped (with its children) then."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        timed_out = False
    except subprocess.TimeoutExpired:  # SIGTERM first: torchrun then stops its workers (own sessions)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        timed_out = True
    return {"command": " ".join(cmd), "returncode": proc.returncode, "timed_out": timed_out,
            "seconds": round(time.monotonic() - start, 1), "output": output}


def child_failure(run: dict) -> dict | None:
    """The section record of a child that timed out or failed, else None."""
    tail = run["output"][-3000:]
    if run["timed_out"]:
        return {"status": "timeout", "reason": f"killed after {run['seconds']} s", "command": run["command"],
                "output_tail": tail}
    if run["returncode"] != 0:
        return {"status": "failed", "reason": f"exit code {run['returncode']}", "command": run["command"],
                "output_tail": tail}
    return None


# ----------------------------------------------------------------------------- parity

FP32_TOL = 1e-5
BF16_OUT, BF16_LOSS, BF16_GRAD = 3e-2, 3e-2, 6e-2
# bf16 gradients near zero are measured against this share of the model's largest gradient: a
# zero-sum gradient (QA's span-head bias) is all rounding noise of its terms, not of its value
BF16_GRAD_FLOOR = 5e-2
HEADS = [("bert", "qa"), ("bert", "mlm"), ("bert", "pretraining"), ("bert", "classification"),
         ("roberta", "qa"), ("roberta", "mlm"), ("roberta", "classification"),
         ("gpt2", "clm"), ("gpt2", "classification"), ("gpt2", "qa")]
PARITY_VOCAB = 97


def parity_model(model_type: str, task: str, positions: int, seed: int = 0):
    """A 2-layer model of width 128 with 2 heads (head_dim 64, as in the base models), random
    weights, biases and norms (so that a misplaced one shows), in eval mode (no dropout)."""
    import torch

    from hone.models.checkpoint import build_model

    width = dict(vocab_size=PARITY_VOCAB, pad_token_id=0)
    if model_type == "gpt2":
        config = dict(model_type="gpt2", n_embd=128, n_layer=2, n_head=2, n_positions=positions, bos_token_id=2,
                      eos_token_id=2, **width)
    else:
        config = dict(model_type=model_type, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=256, max_position_embeddings=positions + 2, **width)
        if model_type == "roberta":
            config.update(type_vocab_size=1, pad_token_id=1)
    if task == "classification":
        config["num_labels"] = 3
    torch.manual_seed(seed)
    model = build_model(config, task).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def parity_rows(model_type: str, task: str, lengths: list[int], seed: int = 0) -> list[dict]:
    """Unpadded rows as a dataset holds them, with the head's labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        ids = rng.integers(3, PARITY_VOCAB, n)
        row = {"input_ids": ids, "attention_mask": np.ones(n, dtype=np.int64)}
        if model_type == "bert":
            row["token_type_ids"] = (np.arange(n) >= n // 2).astype(np.int64)
        if task == "qa":
            row["start_positions"] = np.int64(n // 3)
            row["end_positions"] = np.int64(min(n - 1, n // 3 + 2))
        elif task == "classification":
            row["labels"] = np.int64(rng.integers(0, 3))
        elif task == "clm":
            row["labels"] = ids.copy()
        elif task in ("mlm", "pretraining"):
            row["labels"] = np.where(rng.random(n) < 0.5, ids, -100)
            if task == "pretraining":
                row["next_sentence_label"] = np.int64(rng.integers(0, 2))
        rows.append(row)
    return rows


def forward_backward(model, batch: dict, task: str, bf16: bool, reference_mask=None):
    """(outputs, loss, gradients) of one forward + backward. `reference_mask`: the padded QA
    reference, whose loss is recomputed over real tokens only (hone's unpadded QA loss)."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    dense = {"dense_logits": True} if task in ("mlm", "pretraining") else {}
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(**batch, **dense)
        if task == "clm":
            out.logits  # noqa: B018 -- deferred by the fused LM loss: computed when first read
    loss = out.loss
    if reference_mask is not None:
        real = reference_mask.to(device).bool()
        loss = sum(F.cross_entropy(logits.float().masked_fill(~real, float("-inf")), batch[key])
                   for logits, key in ((out.start_logits, "start_positions"), (out.end_logits, "end_positions"))) / 2
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    outputs = {k: v.detach().float() for k, v in out.items() if k != "loss" and isinstance(v, torch.Tensor)}
    return outputs, loss.detach().float(), grads


def real_outputs(outputs: dict, mask) -> dict:
    """Per-token outputs at the real tokens of the (B, T) mask; per-sequence ones whole."""
    B, T = mask.shape
    mask = mask.bool().to(next(iter(outputs.values())).device)
    return {k: v[:, :T][mask] if v.dim() >= 2 and v.shape[0] == B and v.shape[1] >= T else v
            for k, v in outputs.items()}


def errors(ref: tuple, got: tuple, mask, bf16: bool) -> dict[str, float]:
    """Largest normalised differences of outputs, loss and gradients (see the module docstring)."""
    ref_out, ref_loss, ref_grads = ref
    got_out, got_loss, got_grads = got
    want, have = real_outputs(ref_out, mask), real_outputs(got_out, mask)
    floor = 0.0 if bf16 else 1.0
    out_err = 0.0
    for key, value in want.items():
        if key not in have or have[key].shape != value.shape:
            out_err = math.inf
            continue
        scale = max(floor, value.abs().max().item()) or 1.0
        out_err = max(out_err, (value - have[key]).abs().max().item() / scale)
    loss_err = abs(ref_loss.item() - got_loss.item()) / max(floor, abs(ref_loss.item()))
    largest = max(g.abs().max().item() for g in ref_grads.values())
    grad_err = 0.0
    for name, g in ref_grads.items():
        if name not in got_grads:
            grad_err = math.inf
            continue
        scale = max(g.abs().max().item(), BF16_GRAD_FLOOR * largest) if bf16 else max(1.0, g.abs().max().item())
        grad_err = max(grad_err, (g - got_grads[name]).abs().max().item() / scale)
    return {"outputs": out_err, "loss": loss_err, "grads": grad_err}


def parity_section(check: Check, deadline: float) -> dict:
    import torch

    from hone.data.collate import make_collator, pad_collate
    from hone.models.padding import KERNELS, attention_kernel, flash_available

    device = torch.device(check.device)
    if check.gpu:  # fp32 means fp32: no TF32 matmuls in the references
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # GPU: sequences long enough to span several of the flash kernel's tiles
    lengths = [200, 37, 130, 5, 77, 64, 161] if check.gpu else [9, 6, 3, 7, 12]
    width, bucket = (256, 128) if check.gpu else (16, 8)
    kernels = {k: "ran" for k in KERNELS}
    if not flash_available(device):
        kernels["flash"] = "skipped: needs CUDA" if not check.gpu else "skipped: this torch has no flash kernel"
    bounds = {"fp32": {"outputs": FP32_TOL, "loss": FP32_TOL, "grads": FP32_TOL},
              "bf16": {"outputs": BF16_OUT, "loss": BF16_LOSS, "grads": BF16_GRAD}}
    cases, failures, total = [], [], len(HEADS) * 2 * 2 * sum(s == "ran" for s in kernels.values())
    for model_type, task in HEADS:
        model = parity_model(model_type, task, width).to(device)
        pad = model.config.pad_token_id
        rows = parity_rows(model_type, task, lengths)
        padded = pad_collate(rows, pad)
        mask = padded["attention_mask"]
        qa_mask = mask if task == "qa" else None
        model.set_unpadded(False).set_attention("math")
        ref = forward_backward(model, padded, task, False, qa_mask)
        model.set_attention("auto")
        padded_bf16 = errors(ref, forward_backward(model, padded, task, True, qa_mask), mask, True)
        model.set_unpadded(True)
        for kernel in (k for k, s in kernels.items() if s == "ran"):
            model.set_attention(kernel)
            for dtype in ("fp32", "bf16"):
                bf16 = dtype == "bf16"
                for stream_bucket in (None, bucket):
                    if time.monotonic() > deadline:
                        return {"status": "timeout", "reason": f"{len(cases)} of {total} comparisons ran",
                                "cases": cases, "failures": failures}
                    collate = make_collator("unpadded", pad_token_id=pad, position_offset=model.config.position_offset,
                                            max_seq_len=width, bucket_tokens=stream_bucket)
                    with warnings.catch_warnings():  # flash in fp32 falls back to sdpa, with a warning
                        warnings.simplefilter("ignore", UserWarning)
                        got = forward_backward(model, collate(rows), task, bf16)
                    err = errors(ref, got, mask, bf16)
                    over = [k for k, v in err.items() if v > bounds[dtype][k]
                            and not (bf16 and v <= 2 * padded_bf16[k])]
                    ran = attention_kernel(kernel, device, torch.bfloat16 if bf16 else torch.float32)
                    case = {"model": model_type, "head": task, "kernel": kernel, "kernel_run": ran, "dtype": dtype,
                            "bucket_tokens": stream_bucket, "errors": err, "passed": not over}
                    if bf16:
                        case["padded_bf16_errors"] = padded_bf16
                    cases.append(case)
                    if over:
                        failures.append(f"{model_type} {task} {kernel} ({ran}) {dtype} bucket={stream_bucket}: "
                                        + ", ".join(f"{k} error {err[k]:.2e} > {bounds[dtype][k]:.0e}" for k in over))
    worst = {dtype: {k: max(c["errors"][k] for c in cases if c["dtype"] == dtype) for k in bounds[dtype]}
             for dtype in bounds}
    return {"status": "failed" if failures else "passed", "comparisons": len(cases), "kernels": kernels,
            "lengths": lengths, "bounds": bounds, "worst_errors": worst, "failures": failures, "cases": cases}


# ----------------------------------------------------------------------------- data for the children

def prepare_data(check: Check) -> dict[str, Path]:
    """Generated tokenizers and data files in the work folder (once per check)."""
    import numpy as np

    done = check.work / "data"
    if done.is_dir():
        return {p.name: p for p in done.iterdir()}
    rng = np.random.default_rng(0)
    words = lexicon(rng)
    corpus = [" ".join(sentence_words(rng, words, 200)) for _ in range(100)]
    tmp = check.work / "data.partial"
    write_tokenizers(tmp, words, corpus)
    gpu = check.gpu
    # SQuAD-like windows at 384 (~177 real tokens); the CPU half's at 64 tokens
    for name, paragraphs, context in (("squad-bench.json", 1300 if gpu else 12, 134 if gpu else 20),
                                      ("squad-train.json", 400 if gpu else 12, 134 if gpu else 20),
                                      ("squad-dev.json", 60 if gpu else 4, 134 if gpu else 20)):
        (tmp / name).write_text(json.dumps(squad_json(rng, words, paragraphs, context)))
    # 62% of lines past seq_len: ~17% padding when batches pad to their longest
    mlm_len = 128 if gpu else 32
    (tmp / "mlm.txt").write_text("\n".join(text_lines(rng, words, 8000 if gpu else 40, mlm_len, 0.62)) + "\n")
    clm_words = 160_000 if gpu else 3_000
    (tmp / "clm.txt").write_text("\n".join(" ".join(sentence_words(rng, words, 100))
                                           for _ in range(clm_words // 100)) + "\n")
    tmp.replace(done)
    return {p.name: p for p in done.iterdir()}


TINY = {  # the CPU half's models: 2 layers of width 64, the special tokens of the generated tokenizers
    "bert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 max_position_embeddings=130, pad_token_id=0),
    "roberta": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                    max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=2, n_positions=128),
}


def tiny_model(check: Check, model_type: str, task: str | None, tokenizer: Path) -> Path:
    """A small random checkpoint folder (config.json and weights) for the CPU half."""
    from hone.data.tokenizer import load_tokenizer
    from hone.models.checkpoint import build_model

    folder = check.work / f"tiny-{model_type}-{task}"
    if not folder.is_dir():
        config = dict(model_type=model_type, vocab_size=load_tokenizer(tokenizer).vocab_size, **TINY[model_type])
        build_model(config, task).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- torchrun

def torchrun_section(check: Check, deadline: float) -> dict:
    data = prepare_data(check)
    out = check.work / "torchrun-qa"
    if check.gpu:
        model = "bert-base-uncased"
        sizes = ["--max_seq_length", "384", "--doc_stride", "128", "--per_device_train_batch_size", "32",
                 "--max_steps", "30", "--max_eval_samples", "100"]
    else:
        model = str(tiny_model(check, "bert", None, data["wordpiece"]))
        sizes = ["--max_seq_length", "64", "--doc_stride", "16", "--per_device_train_batch_size", "8",
                 "--max_steps", "3", "--max_eval_samples", "8"]
    overrides = ",".join(filter(None, ["compile=false", check.hardware_overrides]))  # the benches compile
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "hone", "qa",
           "--config_name", model, "--tokenizer_name", str(data["wordpiece"]),
           "--train_file", str(data["squad-train.json"]), "--validation_file", str(data["squad-dev.json"]),
           "--version_2_with_negative", "--do_train", "--do_eval", *sizes, "--per_device_eval_batch_size", "32",
           "--learning_rate", "1e-4", "--logging_steps", "5", "--save_steps", "-1", "--disable_tqdm", "--seed", "42",
           "--hardware", "auto", "--hardware_overrides", overrides, "--output_dir", str(out),
           "--overwrite_output_dir"]
    run = run_child(cmd, deadline, ROOT)
    failed = child_failure(run)
    if failed:
        return failed
    results = json.loads((out / "all_results.json").read_text())
    record = json.loads((out / "run.json").read_text())
    numbers = {k: results.get(k) for k in ("train_loss", "train_samples", "train_runtime", "train_samples_per_second",
                                            "eval_exact", "eval_f1", "eval_samples")}
    finite = all(isinstance(numbers[k], (int, float)) and math.isfinite(numbers[k]) for k in ("train_loss", "eval_f1"))
    return {"status": "passed" if finite else "failed", "command": run["command"], **numbers,
            "world_size": record.get("world_size"), "hardware": record.get("hardware"),
            **({} if finite else {"reason": "train_loss or eval_f1 missing or not finite",
                                  "output_tail": run["output"][-3000:]})}


# ----------------------------------------------------------------------------- hone bench train

@dataclass
class Bench:
    task: str
    model: str            # preset (GPU); the CPU half builds a TINY model of its type
    model_type: str
    tokenizer: str        # generated tokenizer: wordpiece, roberta, gpt2
    data: str             # generated file
    seq_len: int
    batch: int
    repeats: int
    systems: str
    targets: dict[str, float]  # hone's report key (or "ratio") -> the target on one H100/H200


GPU_BENCHES = {
    "bench_qa": Bench("qa", "roberta-base", "roberta", "roberta", "squad-bench.json", 384, 64, 2, "hone,transformers",
                      {"samples_per_second": 3000, "ratio": 2.5}),
    "bench_clm": Bench("clm", "gpt2", "gpt2", "gpt2", "clm.txt", 1024, 16, 1, "hone",
                       {"real_tokens_per_second": 450_000}),
    "bench_mlm": Bench("mlm", "bert-base-uncased", "bert", "wordpiece", "mlm.txt", 128, 256, 1, "hone",
                       {"samples_per_second": 6000}),
}
CPU_SIZES = {"qa": 64, "clm": 64, "mlm": 32}
TARGET_DEVICES = ("H100 SXM", "H100 PCIe", "H100 NVL", "H200")  # hone.perf.device_peak keys the targets are stated for


def device_peak_flops(device_name: str | None, precision: str) -> tuple[str, float] | None:
    """(device, dense peak FLOP/s) for a run's precision: bf16/fp16 tensor cores, or TF32
    (half the bf16 rate on Ampere and Hopper) for fp32; None on a CPU or an unknown GPU."""
    from hone import perf

    peak = perf.device_peak(device_name) if device_name else None
    if peak is None:
        return None
    return (peak[0], peak[1]) if precision in ("bf16", "fp16") else (f"{peak[0]} tf32", peak[1] / 2)


def bench_numbers(report: dict, bench: Bench, peak: tuple[str, float] | None) -> dict:
    """What the check keeps of a bench report: rates, MFU, memory, losses, and the targets."""
    systems = {}
    for name, r in report["systems"].items():
        systems[name] = {
            "mode": r["mode"], "compiled": r["compiled"], "samples_per_second": r["samples_per_second"],
            "real_tokens_per_second": r["real_tokens_per_second"], "step_time_mean_s": r["step_time_mean_s"],
            "step_time_std_s": r["step_time_std_s"], "warmup_time_s": r["warmup_time_s"],
            "model_flops_per_second": r["model_flops_per_second"],
            "mfu": r["model_flops_per_second"] / peak[1] if peak else None,
            "useful_mfu": r["useful_flops_per_second"] / peak[1] if peak else None,
            "peak_memory_bytes": r["peak_memory_bytes"], "loss_first": r["loss_first"], "loss_last": r["loss_last"]}
    hone = systems["hone"]
    ratio = report.get("hone_vs_transformers", {})
    measured = {"ratio": ratio.get("samples_per_second_ratio"), **hone}
    applies = peak is not None and peak[0].removesuffix(" tf32") in TARGET_DEVICES
    targets = {k: {"target": v, "measured": measured[k],
                   "met": (measured[k] >= v if measured[k] is not None else None) if applies else None}
               for k, v in bench.targets.items()}
    return {"attention_kernel": report["settings"]["attention_kernel"],
            "autocast_dtype": report["settings"]["autocast_dtype"],
            "peak": None if peak is None else {"device": peak[0], "flops_per_second": peak[1]},
            "systems": systems, "ratio": ratio.get("samples_per_second_ratio"),
            "ratio_spread": ratio.get("samples_per_second_ratio_spread"),
            "data": report["data"], "targets": targets,
            "targets_note": None if applies else "the targets are for one H100 or H200: not judged here"}


def bench_section(name: str) -> Callable[[Check, float], dict]:
    def body(check: Check, deadline: float) -> dict:
        data = prepare_data(check)
        bench = GPU_BENCHES[name]
        tokenizer = data[bench.tokenizer]
        out = check.work / f"{name}.json"
        systems = bench.systems if importlib.util.find_spec("transformers") else "hone"
        if check.gpu:
            model, seq_len, batch, steps, warmup, repeats = (bench.model, bench.seq_len, bench.batch, 50, 10,
                                                             bench.repeats)
        else:
            model = str(tiny_model(check, bench.model_type, bench.task, tokenizer))
            seq_len, batch, steps, warmup, repeats = CPU_SIZES[bench.task], 4, 2, 1, 1
        cmd = [sys.executable, "-m", "hone", "bench", "train", "--task", bench.task, "--model_config", model,
               "--tokenizer", str(tokenizer), "--data", str(data[bench.data]), "--seq_len", str(seq_len),
               "--batch_size", str(batch), "--steps", str(steps), "--warmup", str(warmup), "--repeats", str(repeats),
               "--systems", systems, "--hardware", "auto", "--out", str(out)]
        if bench.task == "qa":
            cmd += ["--doc_stride", str(seq_len // 3)]
        if check.hardware_overrides:
            cmd += ["--hardware_overrides", check.hardware_overrides]
        run = run_child(cmd, deadline, ROOT)
        failed = child_failure(run)
        if failed:
            return failed
        report = json.loads(out.read_text())
        precision = report["settings"]["hardware"]["precision"]
        numbers = bench_numbers(report, bench, device_peak_flops(check.report["device_name"] if check.gpu else None,
                                                                 precision))
        losses = [x for r in report["systems"].values() for x in r["losses"]]
        finite = all(math.isfinite(x) for x in losses)
        if "transformers" in bench.systems and "transformers" not in systems:
            numbers["ratio_note"] = "transformers is not installed: no baseline"
        return {"status": "passed" if finite else "failed", "command": run["command"], **numbers,
                **({} if finite else {"reason": "a training loss is not finite"}), "report": report}
    return body


# ----------------------------------------------------------------------------- main

BUDGETS = {  # seconds per section: (GPU, CPU half); a section also stops at --time_limit
    "parity": (50, 90), "bench_qa": (200, 90), "bench_clm": (90, 60), "bench_mlm": (90, 60), "torchrun_qa": (60, 90),
}
BODIES: dict[str, Callable[[Check, float], dict]] = {
    "parity": parity_section, "torchrun_qa": torchrun_section,
    **{name: bench_section(name) for name in GPU_BENCHES},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the CPU half (tiny sizes).")
    p.add_argument("--cpu", action="store_const", const="cpu", dest="device", help="Same as --device cpu.")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                   help="A folder (gets gpu-check-<device>-<date>.json) or a .json file.")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"Comma-separated subset of {', '.join(SECTIONS)}.")
    p.add_argument("--hardware_overrides", default="",
                   help="Profile edits 'k=v,k=v' for the benches and the torchrun run (e.g. compile=false).")
    p.add_argument("--time_limit", type=float, help="Seconds for the whole check (default 470 on a GPU, 300 on a CPU).")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        p.error(f"--sections: {', '.join(unknown) or 'none given'}; choose from {', '.join(SECTIONS)}")
    return args


def preflight(device: str) -> str | None:
    """The device's name, or exit with a message saying what is missing."""
    missing = [m for m in ("torch", "numpy", "tokenizers", "tqdm", "yaml") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"gpu_check: cannot import {', '.join(missing)}: run with the Python that holds PyTorch and hone's "
                 "dependencies (on the device machine: python3), with PYTHONPATH=src")
    import torch

    if device == "cpu":
        return None
    if not torch.cuda.is_available():
        sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU (torch.version.cuda={torch.version.cuda}); "
                 "run on a GPU machine, or run the CPU half with --device cpu")
    return torch.cuda.get_device_name(0)


def summary(report: dict) -> str:
    def cell(record: dict) -> str:
        if record["status"] != "passed":
            return why(record)
        if "worst_errors" in record:
            worst = record["worst_errors"]
            return (f"{record['comparisons']} comparisons; worst fp32 {max(worst['fp32'].values()):.1e}, "
                    f"bf16 {max(worst['bf16'].values()):.1e}; flash: {record['kernels']['flash']}")
        if "eval_f1" in record:
            return f"world {record['world_size']}, train_loss {record['train_loss']:.3f}, eval_f1 {record['eval_f1']:.1f}"
        hone = record["systems"]["hone"]
        parts = [f"{hone['samples_per_second']:.0f} samples/s", f"{hone['real_tokens_per_second']:.0f} tokens/s"]
        if record["ratio"] is not None:
            parts.append(f"{record['ratio']:.2f}x transformers")
        if hone["mfu"] is not None:
            parts.append(f"MFU {hone['mfu']:.1%} (useful {hone['useful_mfu']:.1%})")
        met = [f"{k} {'met' if t['met'] else 'missed' if t['met'] is False else 'n/a'}"
               for k, t in record["targets"].items()]
        return ", ".join(parts) + "; targets: " + ", ".join(met)

    lines = [f"{'section':<12} {'status':<8} {'s':>6}  result"]
    for name, record in report["sections"].items():
        lines.append(f"{name:<12} {record['status']:<8} {record['seconds']:>6.0f}  {cell(record)}")
    lines.append(f"overall: {'passed' if report['passed'] else 'FAILED'} in {report['wall_time_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device_name = preflight(args.device)
    from hone.reporting import git_commit, machine_info, versions

    started = datetime.datetime.now(datetime.UTC)
    slug = re.sub(r"[^a-z0-9]+", "-", (device_name or "cpu").lower()).strip("-")
    out = Path(args.out)
    if out.suffix != ".json":
        out = out / f"gpu-check-{slug}-{started.strftime('%Y%m%d-%H%M%S')}.json"
    limit = args.time_limit or TIME_LIMIT[args.device]
    with tempfile.TemporaryDirectory(prefix="hone-gpu-check-") as work:
        check = Check(args.device, out, time.monotonic() + limit, Path(work), args.hardware_overrides)
        check.report = {"check": "hone gpu check", "date": started.isoformat(timespec="seconds"),
                        "command": shlex.join(["python", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]), "device": args.device,
                        "device_name": device_name, "time_limit_s": limit,
                        "hardware_overrides": args.hardware_overrides or None, "git_commit": git_commit(),
                        "machine": machine_info(), "versions": versions(), "sections": {}}
        for name in args.sections:
            run_section(check, name, BUDGETS[name][0 if check.gpu else 1], BODIES[name])
        sections = check.report["sections"].values()
        check.report["passed"] = all(r["status"] == "passed" for r in sections)
        check.write()
    print(summary(check.report))
    print(f"written to {out}")
    return 0 if check.report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
