"""`hone bench infer`: inference throughput, latency and accuracy of every backend x precision x
batch size on one data file, as a ByteMLPerf-style report (JSON + Markdown).

For each configuration: `--warmup` untimed batches (torch.compile compiles there), then every
batch of the data timed (`--repeats` times): QPS (sequences per second), mean / p50 / p99
latency per batch, and the accuracy of the outputs of the timed pass (SQuAD: EM / F1 with the
official metric after hone's post-processing; classification: accuracy when labels exist).

Backends (hone.export.runtime, plus the baseline):
- torch:          hone's model, padded to each batch's longest row (the ONNX layout);
- torch-unpadded: hone's model on real tokens only (set_unpadded), what ONNX runtimes cannot do;
- torch-compile:  hone's padded model under torch.compile (CUDA graphs on CUDA);
- onnxruntime:    files `hone export` writes (exported here from the same weights when --model
                  is a checkpoint folder): fp32 (optimized graph), fp16, int8;
- transformers:   transformers' model on the same weights, padded to --max_seq_length as run_qa's
                  evaluation pads (pad_to_max_length).
Combinations that cannot run are listed with the reason instead of numbers.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hone.bench import load_transformers_model
from hone.data.squad import has_unanswerable, prepare_eval_features, read_squad
from hone.data.tokenizer import load_tokenizer
from hone.errors import HoneError
from hone.export import inputs
from hone.export.onnx import export_onnx
from hone.export.runtime import (
    BACKENDS,
    PRECISIONS,
    TASK_OUTPUTS,
    Backend,
    OnnxBackend,
    RuntimeConfigError,
    TorchBackend,
    is_onnx,
    make_batches,
    model_input_names,
    onnx_file,
    onnx_precision,
    read_export_report,
    run_batches,
    stack_rows,
)
from hone.hardware import cpu_has, cpu_supports_bf16
from hone.metrics.squad import postprocess_qa_predictions, squad_evaluate
from hone.models.checkpoint import load_config, load_model
from hone.reporting import machine_info, versions

log = logging.getLogger("hone")

ALL_BACKENDS = (*BACKENDS, "transformers")
LABELS = {"torch": "hone torch (padded)", "torch-unpadded": "hone torch (unpadded: real tokens only)",
          "torch-compile": "hone torch.compile (padded)", "onnxruntime": "onnxruntime",
          "transformers": "transformers (padded to max_seq_length)"}
AUTO_CLASSES = {"qa": "AutoModelForQuestionAnswering", "classification": "AutoModelForSequenceClassification"}


class BenchInferError(HoneError, ValueError):
    """A benchmark that cannot run as asked; names the flag and the fix."""


class TransformersBackend(Backend):
    """The baseline: transformers' model on the same weights, fp32 or under autocast."""

    name = "transformers"

    def __init__(self, folder: Path, task: str, model_type: str, precision: str, device: str):
        if precision not in ("fp32", "bf16", "fp16"):
            raise RuntimeConfigError(f"the transformers baseline runs fp32, bf16 or fp16, not {precision}")
        self.model = load_transformers_model(folder, AUTO_CLASSES[task]).to(device).eval()
        self.device, self.precision = torch.device(device), precision
        self.input_names = model_input_names(model_type)
        self.output_names = TASK_OUTPUTS[task]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: torch.from_numpy(batch[k]).to(self.device) for k in self.input_names}
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            out = self.model(**feed)
        return {k: out[k].float().cpu().numpy() for k in self.output_names}

    def describe(self) -> dict:
        return {**super().describe(), "mode": "padded", "device": str(self.device)}


# ----------------------------------------------------------------------------- data

class BenchData:
    """Rows to run and how to score their outputs."""

    def __init__(self, task: str, path: Path, tokenizer, *, max_seq_length: int, doc_stride: int,
                 max_samples: int | None, pad_token_id: int):
        self.task, self.pad_token_id = task, pad_token_id
        if task == "qa":
            self.examples = read_squad(path)[:max_samples]
            self.features = prepare_eval_features(self.examples, tokenizer, max_seq_length=max_seq_length,
                                                  doc_stride=doc_stride)
            self.rows = [self.features[i] for i in range(len(self.features))]
            self.labelled = any(ex["answers"]["text"] for ex in self.examples)
            self.version_2 = has_unanswerable(self.examples)
        else:
            texts, pairs, labels = inputs.read_texts(path)
            texts = texts[:max_samples]
            pairs = pairs[:max_samples] if pairs else None
            self.labels = labels[:max_samples] if labels else None
            self.labelled = self.labels is not None
            self.rows = inputs.encode_rows(tokenizer, texts, pairs, max_seq_length)
        self.max_seq_length = max_seq_length

    def describe(self) -> dict:
        lengths = np.array([len(r["input_ids"]) for r in self.rows])
        out = {"sequences": len(self.rows), "real_tokens_mean": float(lengths.mean()),
               "padding_share_at_max_seq_length": float(1 - lengths.sum() / (len(lengths) * self.max_seq_length))}
        if self.task == "qa":
            out.update(examples=len(self.examples), version_2_with_negative=self.version_2)
        return out

    def accuracy(self, outputs: list[dict[str, np.ndarray]], id2label: dict[int, str]) -> dict:
        if not self.labelled:
            return {}
        if self.task == "qa":
            width = self.features.max_seq_length
            start, end = stack_rows(outputs, "start_logits", width), stack_rows(outputs, "end_logits", width)
            result = postprocess_qa_predictions(self.examples, self.features.example_index, self.features.offsets,
                                                start, end, version_2_with_negative=self.version_2)
            scores = squad_evaluate(self.examples, result.predictions,
                                    na_probs=result.null_odds if self.version_2 else None)
            return {"exact": scores["exact"], "f1": scores["f1"]}
        predicted = stack_rows(outputs, "logits").argmax(-1)
        names = [id2label[int(i)] for i in predicted]
        hits = [gold in (name, str(int(i))) for gold, name, i in zip(self.labels, names, predicted)]
        return {"accuracy": 100.0 * sum(hits) / len(hits)}


# ----------------------------------------------------------------------------- configurations

def skip_reason(backend: str, precision: str, device: str, has_weights: bool, has_onnx: bool) -> str | None:
    """Why a backend x precision cannot (or should not) run here; None when it can."""
    torch_side = backend != "onnxruntime"
    if torch_side and not has_weights:
        return "no PyTorch weights: --model is an ONNX export; pass the checkpoint folder to time PyTorch"
    if backend == "onnxruntime" and not (has_onnx or has_weights):
        return "no ONNX file"
    if torch_side and precision == "int8":
        return "int8 is an onnxruntime file (quantize_dynamic); PyTorch rows run fp32, bf16 and fp16"
    if backend == "onnxruntime" and precision == "bf16":
        return "onnxruntime's CPU provider has no bf16 kernels for these graphs; its reduced precisions are fp16, int8"
    if device == "cpu" and precision == "bf16" and not cpu_supports_bf16():
        return "this CPU has no bf16 units (avx512_bf16 / AMX): bf16 would be emulated"
    if device == "cpu" and torch_side and precision == "fp16" and not cpu_has("avx512_fp16", "amx_fp16"):
        return "this CPU has no fp16 matmul units (avx512_fp16 / AMX-FP16): PyTorch fp16 is a GPU precision here"
    return None


def latency_stats(times: list[float]) -> dict:
    ms = np.asarray(times) * 1e3
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def time_config(backend: Backend, batches: list[dict], *, warmup: int, repeats: int, desc: str
                ) -> tuple[list[float], list[dict]]:
    """Warm-up batches (untimed), then `repeats` timed passes over all batches; the outputs of the last pass."""
    for batch in batches[:warmup] or batches[:1]:
        backend(batch)
    times: list[float] = []
    outputs: list[dict] = []
    for _ in range(repeats):
        outputs = list(run_batches(backend, tqdm(batches, desc=desc, unit="batch", leave=False), times))
    return times, outputs


# ----------------------------------------------------------------------------- the benchmark

def _csv(text: str, allowed: tuple[str, ...] | None, flag: str, cast=str) -> list:
    values = [cast(v.strip()) for v in text.split(",") if v.strip()]
    if not values or (allowed and any(v not in allowed for v in values)):
        raise BenchInferError(f"{flag} {text}: give a comma-separated list of {', '.join(allowed or ('numbers',))}")
    return values


def run_benchmark(args: argparse.Namespace, command: str = "") -> dict:
    backends = _csv(args.backends, ALL_BACKENDS, "--backends")
    precisions = _csv(args.precisions, PRECISIONS, "--precisions")
    try:
        batch_sizes = _csv(args.batch_sizes, None, "--batch_sizes", int)
    except ValueError:
        raise BenchInferError(f"--batch_sizes {args.batch_sizes}: give whole numbers, e.g. 1,8,32") from None
    if min(batch_sizes) < 1 or args.repeats < 1 or args.warmup < 0:
        raise BenchInferError("--batch_sizes and --repeats must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = Path(args.model)
    folder = model_path.parent if model_path.suffix == ".onnx" else model_path
    if not (folder / "config.json").is_file():
        raise BenchInferError(f"--model {args.model}: expected a checkpoint folder, an export folder or an .onnx "
                              "file with config.json beside it")
    onnx_given = is_onnx(model_path)
    report_of_export = read_export_report(folder) if onnx_given else None
    if report_of_export and report_of_export["task"] != args.task:
        raise BenchInferError(f"--model {args.model} was exported for --task {report_of_export['task']}")
    config = load_config(folder)
    tokenizer = load_tokenizer(folder)
    pad_id = next((i for i in (config.pad_token_id, tokenizer.pad_token_id) if i is not None), 0)
    data = BenchData(args.task, Path(args.data), tokenizer, max_seq_length=args.max_seq_length,
                     doc_stride=args.doc_stride, max_samples=args.max_samples, pad_token_id=pad_id)
    model = None if onnx_given else load_model(folder, args.task)  # one set of weights for every backend
    if model is not None:
        config = model.config

    results = []
    with tempfile.TemporaryDirectory(prefix="hone-bench-infer-") as tmp:
        tmp = Path(tmp)
        onnx_dir = folder if onnx_given else tmp / "onnx"
        hf_dir = None
        if model is not None and "onnxruntime" in backends:
            wanted = {p for p in precisions if p in ("fp16", "int8")}
            log.info("hone bench infer: exporting the model to ONNX (optimized%s) in %s",
                     "".join(f", {p}" for p in sorted(wanted)), onnx_dir)
            export_onnx(model, args.task, onnx_dir, optimize=True, fp16="fp16" in wanted, int8="int8" in wanted,
                        tokenizer=tokenizer)
        if model is not None and "transformers" in backends:
            hf_dir = tmp / "hf"
            model.save_pretrained(hf_dir)
        for name in backends:
            for precision in precisions:
                reason = skip_reason(name, precision, args.device, model is not None, onnx_given)
                runner = None
                if reason is None:
                    try:
                        runner = _backend(name, precision, model, model_path if onnx_given else onnx_dir, hf_dir,
                                          args)
                    except HoneError as err:
                        reason = str(err)
                for batch_size in batch_sizes:
                    row = {"backend": name, "label": LABELS[name], "precision": precision, "batch_size": batch_size}
                    if runner is None:
                        results.append({**row, "status": "skipped", "reason": reason})
                        continue
                    results.append({**row, **_measure(runner, data, batch_size, config, args)})
                    log.info("%s", format_row(results[-1]))
    _compare(results)
    return {
        "benchmark": "hone bench infer",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "versions": {**versions(), **{p: _version(p) for p in ("onnx", "onnxruntime", "onnxscript")}},
        "settings": {"task": args.task, "model": args.model, "data": args.data, "backends": backends,
                     "precisions": precisions, "batch_sizes": batch_sizes, "max_seq_length": args.max_seq_length,
                     "doc_stride": args.doc_stride if args.task == "qa" else None, "max_samples": args.max_samples,
                     "warmup_batches": args.warmup, "repeats": args.repeats, "threads": torch.get_num_threads(),
                     "device": args.device, "padding": "each batch to its longest row (transformers: to "
                                                       "max_seq_length); unpadded: none"},
        "model": {"model_type": config.model_type, "task": args.task, "layers": config.num_hidden_layers,
                  "hidden_size": config.hidden_size,
                  "parameters": None if model is None else sum(p.numel() for p in model.parameters())},
        "data": data.describe(),
        "results": results,
    }


def _backend(name: str, precision: str, model, onnx_path: Path, hf_dir: Path | None, args) -> Backend:
    if name == "onnxruntime":
        file = onnx_path if onnx_path.suffix == ".onnx" else onnx_file(onnx_path, precision)
        if onnx_path.suffix == ".onnx" and onnx_precision(file) != precision:
            raise RuntimeConfigError(f"{file.name} is an {onnx_precision(file)} file; pass the export folder to time "
                                     "other precisions")
        return OnnxBackend(file, precision=precision, device=args.device, threads=args.threads)
    if name == "transformers":
        return TransformersBackend(hf_dir, args.task, model.config.model_type, precision, args.device)
    return TorchBackend(model, precision=precision, unpadded=name == "torch-unpadded",
                        compile=name == "torch-compile", device=args.device)


def _measure(runner: Backend, data: BenchData, batch_size: int, config, args) -> dict:
    pad_to = data.max_seq_length if runner.name == "transformers" else None
    batches = make_batches(data.rows, batch_size, data.pad_token_id, runner.input_names, pad_to)
    desc = f"{runner.name} {runner.precision} batch {batch_size}"
    try:
        times, outputs = time_config(runner, batches, warmup=args.warmup, repeats=args.repeats, desc=desc)
    except Exception as err:  # a backend failing at run time (compiler missing, kernel absent)
        if isinstance(err, KeyboardInterrupt):
            raise
        return {"status": "failed", "reason": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    sequences = len(data.rows) * args.repeats
    real = sum(len(r["input_ids"]) for r in data.rows) * args.repeats
    return {"status": "ok", **runner.describe(), "file": getattr(runner, "path", None) and runner.path.name,
            "batches": len(times), "sequences": sequences, "seconds": sum(times),
            "qps": sequences / sum(times), "real_tokens_per_second": real / sum(times),
            "latency_ms": latency_stats(times), **data.accuracy(outputs, config.id2label)}


def _compare(results: list[dict]) -> None:
    """Add each row's speed-up and accuracy change against hone torch fp32 (padded) at its batch size."""
    base = {r["batch_size"]: r for r in results
            if r["status"] == "ok" and r["backend"] == "torch" and r["precision"] == "fp32"}
    for r in results:
        ref = base.get(r["batch_size"])
        if r["status"] != "ok" or ref is None:
            continue
        r["speedup_vs_torch_fp32"] = r["qps"] / ref["qps"]
        for metric in ("f1", "exact", "accuracy"):
            if metric in r and metric in ref:
                r[f"{metric}_delta_vs_torch_fp32"] = r[metric] - ref[metric]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- output

COLUMNS = ("backend", "precision", "batch", "QPS", "mean ms", "p50 ms", "p99 ms", "EM", "F1", "vs torch fp32")


def _cells(r: dict) -> list[str]:
    name = r["label"]
    if r["status"] != "ok":
        return [name, r["precision"], str(r["batch_size"]), f"{r['status']}: {r['reason']}", "", "", "", "", "", ""]
    lat = r["latency_ms"]
    em = r.get("exact", r.get("accuracy"))
    speed = r.get("speedup_vs_torch_fp32")
    return [name, r["precision"], str(r["batch_size"]), f"{r['qps']:.2f}", f"{lat['mean']:.1f}", f"{lat['p50']:.1f}",
            f"{lat['p99']:.1f}", "" if em is None else f"{em:.2f}", f"{r['f1']:.2f}" if "f1" in r else "",
            "" if speed is None else f"{speed:.2f}x"]


def format_row(r: dict) -> str:
    return " | ".join(c for c in _cells(r) if c)


def markdown(report: dict) -> str:
    m, v, s = report["machine"], report["versions"], report["settings"]
    lines = [f"# hone bench infer: {s['task']} on {Path(s['data']).name}", "",
             f"- date: {report['date']}", f"- command: `{report['command']}`",
             f"- machine: {m['cpu']} ({m['cpus_available']} CPUs available, torch threads {s['threads']})"
             + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
             f"- model: {s['model']} ({report['model']['model_type']}, {report['model']['layers']} layers, "
             f"hidden {report['model']['hidden_size']})",
             f"- data: {report['data']['sequences']} sequences, {report['data']['real_tokens_mean']:.1f} real tokens "
             f"on average ({report['data']['padding_share_at_max_seq_length']:.1%} padding at max_seq_length "
             f"{s['max_seq_length']})",
             f"- timing: {s['warmup_batches']} warm-up batches, then {s['repeats']} pass(es) over the data; "
             f"padding: {s['padding']}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in report["results"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hone bench infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Checkpoint folder, export folder or .onnx file.")
    p.add_argument("--task", default="qa", choices=list(AUTO_CLASSES))
    p.add_argument("--data", required=True, help="qa: SQuAD .json/.jsonl; classification: .tsv with a header.")
    p.add_argument("--backends", default="torch,torch-unpadded,torch-compile,onnxruntime",
                   help=f"Comma-separated, from {', '.join(ALL_BACKENDS)}.")
    p.add_argument("--precisions", default="fp32,bf16,fp16,int8", help=f"Comma-separated, from {', '.join(PRECISIONS)}.")
    p.add_argument("--batch_sizes", default="1,8,32", help="Comma-separated batch sizes.")
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--max_samples", type=int, help="Use the first N examples of --data.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed batches before timing each configuration.")
    p.add_argument("--repeats", type=int, default=1, help="Timed passes over the data.")
    p.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime (default: the libraries').")
    p.add_argument("--device", default="cpu", help="cpu or cuda.")
    p.add_argument("--out", help="Report JSON (a .md beside it); default benchmarks/results/infer-<task>-<model>-"
                                 "<date>-<time>.json.")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report = run_benchmark(args, command=shlex.join(["hone", "bench", "infer", *argv]))
    if args.out:
        out = Path(args.out)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("benchmarks") / "results" / f"infer-{args.task}-{Path(args.model).resolve().name}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    log.info("hone bench infer: wrote %s and %s", out, out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
