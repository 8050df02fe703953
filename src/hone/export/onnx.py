"""`hone export`: a hone model folder -> ONNX files that onnxruntime serves, each validated.

The graph is hone's padded execution mode (the layout every ONNX runtime takes): inputs
`input_ids`, `attention_mask` and, for BERT, `token_type_ids`, all (batch, sequence) int64
with both axes dynamic; outputs the task's logits (`start_logits`/`end_logits` for QA,
`logits` otherwise). torch 2.13's exporter is torch.export based (`dynamo=True`, which needs
onnxscript); it writes opset 18 or later.

Variants, each beside model.onnx in the output folder:
- model_optimized.onnx (--optimize): onnxruntime's transformer optimizer fuses LayerNorm,
  residual adds and GELU into its contrib ops (onnxruntime-specific);
- model_fp16.onnx (--fp16): weights and compute in float16, inputs and outputs unchanged;
- model_int8.onnx (--int8): dynamic int8 quantisation of the weight matmuls, per-channel
  scales (onnxruntime.quantization.quantize_dynamic).
fp16 and int8 start from the optimized graph when there is one. Every file is run with
onnxruntime on real inputs (a few batches of --validation_data, or generated text of varied
lengths) and compared with the PyTorch model: fp32 files must agree within --atol (1e-4);
fp16 and int8 report their difference and how often the argmax agrees. The folder also
gets config.json, the tokenizer files and export_report.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hone.data.squad import prepare_eval_features, read_squad
from hone.data.tokenizer import HoneTokenizer, TokenizerError, load_tokenizer
from hone.errors import HoneError
from hone.export import inputs
from hone.export.runtime import (
    EXPORT_REPORT,
    ONNX_FILES,
    TASK_OUTPUTS,
    OnnxBackend,
    TorchBackend,
    make_batches,
    model_input_names,
    task_of_model,
)
from hone.models.base import PreTrainedModule
from hone.models.checkpoint import load_model

log = logging.getLogger("hone")

DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch.export-based exporter: its translations start at opset 18
FP32_TOLERANCE = 1e-4
VALIDATION_ROWS = 12
VALIDATION_BATCH = 4
# model_type -> the onnxruntime transformer optimizer's model type
ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "gpt2": "gpt2"}


class ExportError(HoneError, ValueError):
    """An export that failed or does not match the PyTorch model: names the op, opset or setting and the fix."""


class ExportWrapper(nn.Module):
    """The model with positional tensor inputs and a tuple of the task's logits, as ONNX wants it."""

    def __init__(self, model: PreTrainedModule, output_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.output_names = output_names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(out[name] for name in self.output_names)


# ----------------------------------------------------------------------------- errors

_OP_PATTERNS = (
    r"OpOverload\(op='([\w.:]+)'",           # torch exporter: no ONNX function for an op
    r"target=torch\.ops\.([\w.]+)",           # torch exporter: node that failed to translate
    r"aten::(\w+)",
    r"running (\w+) node",                    # onnxruntime: a kernel failed at run time
    r"implementation for (\w+\(\d+\))",       # onnxruntime: no kernel for op(version)
    r"node_type: (\w+)",
    r"op_type[=:] ?'?(\w+)",
)


def _op_name(message: str) -> str | None:
    for pattern in _OP_PATTERNS:
        match = re.search(pattern, message)
        if match:
            return match.group(1)
    return None


def _summary(err: BaseException) -> str:
    """The exporter's own one-line reason (its messages are pages long)."""
    text = str(err)
    match = re.search(r"<class '[\w.]+'>: (.+)", text)
    line = match.group(1) if match else next((s for s in text.splitlines() if s.strip()), type(err).__name__)
    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()[:300]


def explain_export_error(err: BaseException, opset: int) -> ExportError:
    """torch.onnx's failure as one line: which op, at which opset, and what to do."""
    text = "\n".join(str(e) for e in (err, err.__cause__) if e is not None)
    op = _op_name(text)
    reason = _summary(err)
    if "GuardOnDataDependent" in text or "data-dependent" in text or "Could not guard" in text:
        fix = ("the model branches on tensor values in Python; keep the padded path free of data-dependent "
               "control flow")
    elif op:
        fix = (f"op {op} has no ONNX translation at opset {opset}: try another --opset (18 or later), or rewrite "
               "that part of the model with ops that export")
    else:
        fix = "rerun with HONE_DEBUG=1 for the exporter's full trace"
    where = f" at op {op}" if op else ""
    return ExportError(f"torch.onnx export (opset {opset}) failed{where}: {reason}; {fix}")


def explain_onnxruntime_error(err: BaseException, path: Path) -> ExportError:
    """onnxruntime's failure to load or run a file as one line naming the op."""
    text = str(err)
    op = _op_name(text)
    reason = re.sub(r"\s+", " ", text.split("Status Message:")[-1]).strip()[:300]
    try:
        import onnx

        opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                      if o.domain in ("", "ai.onnx")), None)
    except Exception:  # the file itself may be what is broken
        opset = None
    version = importlib.metadata.version("onnxruntime")
    at = f" op {op}" if op else " the graph"
    fix = (f"onnxruntime {version} cannot run{at} as opset {opset} writes it: export again with --opset "
           f"{DEFAULT_OPSET}" if opset and opset != DEFAULT_OPSET else
           "upgrade onnxruntime, or export without the setting that introduced this op (--optimize, --fp16, --int8)")
    return ExportError(f"{path.name}: onnxruntime failed at{at} ({reason}); {fix}")


# ----------------------------------------------------------------------------- steps

@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hide the exporter's, onnxscript's and onnxruntime's progress chatter (hundreds of INFO lines
    on the root logger, warnings about absent torchvision); their errors still raise."""
    root, exporter = logging.getLogger(), logging.getLogger("torch.onnx")
    levels = root.level, exporter.level
    root.setLevel(max(root.level, logging.ERROR))
    exporter.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(levels[0])
        exporter.setLevel(levels[1])


def export_graph(model: PreTrainedModule, path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """torch.onnx.export (torch.export based) of the padded model with dynamic batch and sequence axes."""
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: torch {torch.__version__.split('+')[0]}'s exporter writes opset "
                          f"{MIN_OPSET} and later (LayerNormalization and its translations need it); use --opset "
                          f"{DEFAULT_OPSET}")
    task = task_of_model(model)
    names = model_input_names(model.config.model_type)
    limit = model.config.max_positions
    length = min(8, limit)  # example sizes above 1: torch.export specialises dimensions of size 1
    example = torch.randint(3, model.config.vocab_size, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    args = (example, mask, torch.zeros(2, length, dtype=torch.long))[:len(names)]
    batch, sequence = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1, max=limit)
    wrapper = ExportWrapper(model, TASK_OUTPUTS[task]).eval()
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8 * 2**30  # protobuf's 2 GiB limit
    try:
        with torch.no_grad(), quiet_libraries():
            program = torch.onnx.export(
                wrapper, args, dynamo=True, opset_version=opset, input_names=list(names),
                output_names=list(TASK_OUTPUTS[task]), dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
                verbose=False, optimize=True)
    except Exception as err:  # the exporter raises many unrelated types
        raise explain_export_error(err, opset) from err
    with quiet_libraries():
        program.save(str(path), external_data=big)
    written = _opset_of(path)
    if written != opset:
        raise ExportError(f"--opset {opset}: the exporter could not convert the graph and wrote opset {written}; "
                          f"use --opset {written}")


def _opset_of(path: Path) -> int:
    import onnx

    return next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx"))


def optimize_graph(src: Path, dst: Path, model: PreTrainedModule) -> dict[str, int]:
    """Fused ops for onnxruntime; returns the count of each fused op in the result.

    onnxscript's ORT fusions go first: they turn the exporter's scaled-dot-product attention into
    onnxruntime's MultiHeadAttention op, which onnxruntime's own transformer optimizer (run next,
    for LayerNorm, GELU and the rest) does not recognise in torch.export graphs. On MiniLM QA at
    batch 1 that makes fp32 and int8 about 1.2x faster (benchmarks/results/infer-qa-*)."""
    from onnxruntime.transformers.optimizer import optimize_model
    from onnxscript import ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    config = model.config
    try:
        with quiet_libraries():
            graph, _ = optimize_for_ort(ir.load(str(src)))
            ir.save(graph, str(dst))
            optimized = optimize_model(str(dst), model_type=ORT_MODEL_TYPES[config.model_type],
                                       num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
    except Exception as err:
        raise ExportError(f"--optimize: the transformer fusions (onnxscript's, then onnxruntime's) failed on "
                          f"{src.name} ({_summary(err)}); export without --optimize") from err
    with quiet_libraries():
        optimized.save_model_to_file(str(dst))
        return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def convert_fp16(src: Path, dst: Path) -> None:
    """Weights and compute in float16; inputs (token ids) and outputs (float32 logits) unchanged."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    try:
        with quiet_libraries():
            model.convert_float_to_float16(keep_io_types=True)
    except Exception as err:
        raise ExportError(f"--fp16: float16 conversion of {src.name} failed ({_summary(err)}); export without "
                          "--fp16") from err
    with quiet_libraries():
        model.save_model_to_file(str(dst))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the matmuls with constant weights (activations quantised per
    batch). Per-channel weight scales: on all-MiniLM-L6-v2 they lift the correlation of the QA
    logits with fp32 from 0.945 to 0.986 at the same speed (measured here). Weights use 7 bits
    (reduce_range): on CPUs without VNNI (AVX2 only) onnxruntime's u8 x s8 products saturate with
    8-bit weights, and a test model's logits then missed PyTorch's by up to 0.39 (0.1 with 7 bits);
    the file may run on such a CPU whatever CPU exported it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet_libraries():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             extra_options={"MatMulConstBOnly": True})
    except Exception as err:
        raise ExportError(f"--int8: onnxruntime's quantize_dynamic failed on {src.name} ({_summary(err)}); export "
                          "without --int8") from err


# ----------------------------------------------------------------------------- validation

def validation_rows(model: PreTrainedModule, tokenizer: HoneTokenizer | None, data: str | Path | None,
                    count: int = VALIDATION_ROWS) -> tuple[list[dict], str]:
    """Rows to compare the ONNX files with PyTorch on, and where they came from: the first
    features of `data` (SQuAD for QA, texts otherwise), else generated text of varied lengths,
    else (no tokenizer) random token ids."""
    task = task_of_model(model)
    length = min(384, model.config.max_positions)
    if tokenizer is None:
        if data is not None:
            raise ExportError("--validation_data needs the tokenizer files in the model folder")
        return inputs.random_rows(count, model.config.vocab_size, length), "random token ids (no tokenizer)"
    if task == "qa":
        examples = read_squad(data)[:count] if data else inputs.synthetic_examples(count)
        features = prepare_eval_features(examples, tokenizer, max_seq_length=length,
                                         doc_stride=min(128, length // 4), max_query_length=length // 2,
                                         progress=False)
        rows = [features[i] for i in range(min(count, len(features)))]
    elif data is not None:
        texts, pairs, _ = inputs.read_texts(data)
        rows = inputs.encode_rows(tokenizer, texts[:count], pairs[:count] if pairs else None, length)
    elif task == "classification":
        examples = inputs.synthetic_examples(count)
        rows = inputs.encode_rows(tokenizer, [e["question"] for e in examples], [e["context"] for e in examples],
                                  length)
    else:
        rows = inputs.encode_rows(tokenizer, inputs.generated_texts(count), max_length=length)
    return rows, str(data) if data else "generated text"


def compare(task: str, reference: list[dict[str, np.ndarray]], outputs: list[dict[str, np.ndarray]],
            batches: list[dict[str, np.ndarray]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per output: max |difference| over every position, and how often the argmax agrees: QA,
    each row's best start / end token among its real tokens; MLM / CLM, the top token at every
    real position; classification, each row's top label."""
    diff, agree = {}, {}
    for name in reference[0]:
        worst, same, total = 0.0, 0, 0
        for ref, out, batch in zip(reference, outputs, batches):
            a, b = ref[name], out[name]
            worst = max(worst, float(np.abs(a - b).max()))
            real = batch["attention_mask"].astype(bool)
            if task == "qa":
                hits = np.where(real, a, -np.inf).argmax(1) == np.where(real, b, -np.inf).argmax(1)
            elif task == "classification":
                hits = a.argmax(-1) == b.argmax(-1)
            else:
                hits = (a.argmax(-1) == b.argmax(-1))[real]
            same, total = same + int(hits.sum()), total + hits.size
        diff[name], agree[name] = worst, same / total
    return diff, agree


# ----------------------------------------------------------------------------- the export

def export_onnx(model: str | Path | PreTrainedModule, task: str, output_dir: str | Path, *,
                opset: int = DEFAULT_OPSET, optimize: bool = False, fp16: bool = False, int8: bool = False,
                validation_data: str | Path | None = None, tokenizer: HoneTokenizer | None = None,
                atol: float = FP32_TOLERANCE) -> dict:
    """Export `model` (a checkpoint folder, or a loaded hone model) and its variants into
    `output_dir`, validate each against PyTorch, and write export_report.json; returns the report.

    Raises ExportError when a step fails or an fp32 file differs from PyTorch by more than `atol`.
    """
    if task not in TASK_OUTPUTS:
        raise ExportError(f"--task {task!r} cannot be exported; choose one of {list(TASK_OUTPUTS)}")
    started = time.perf_counter()
    source = None
    if not isinstance(model, PreTrainedModule):
        source = Path(model)
        model = load_model(source, task)
        if tokenizer is None:
            try:
                tokenizer = load_tokenizer(source)
            except TokenizerError:
                log.warning("hone export: %s has no tokenizer files; validating on random token ids", source)
    if task_of_model(model) != task:
        raise ExportError(f"the model has a {task_of_model(model)} head but --task is {task}")
    if model.config.model_type == "gpt2" and task == "classification" and model.config.pad_token_id is None:
        raise ExportError("GPT-2 classification finds each row's last token by pad_token_id, which config.json "
                          "lacks: set pad_token_id (e.g. 50256) in config.json, then export")
    was_unpadded, was_training = model.unpadded, model.training
    model.set_unpadded(False).eval()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        files = {"fp32": out / ONNX_FILES["fp32"]}
        export_graph(model, files["fp32"], opset=opset)
        fused = None
        if optimize:
            files["optimized"] = out / ONNX_FILES["optimized"]
            fused = optimize_graph(files["fp32"], files["optimized"], model)
        base = files.get("optimized", files["fp32"])
        if fp16:
            files["fp16"] = out / ONNX_FILES["fp16"]
            convert_fp16(base, files["fp16"])
        if int8:
            files["int8"] = out / ONNX_FILES["int8"]
            quantize_int8(base, files["int8"])

        rows, origin = validation_rows(model, tokenizer, validation_data)
        pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        names = model_input_names(model.config.model_type)
        batches = make_batches(rows[:1], 1, pad_id, names) + make_batches(rows[1:], VALIDATION_BATCH, pad_id, names)
        torch_backend = TorchBackend(model)
        reference = [torch_backend(b) for b in batches]
        variants = {}
        for kind, file in files.items():
            backend = OnnxBackend(file, precision="fp32" if kind == "optimized" else kind)
            diff, agree = compare(task, reference, [backend(b) for b in batches], batches)
            exact = kind in ("fp32", "optimized")
            passed = all(d <= atol for d in diff.values()) if exact else None
            variants[kind] = {"file": file.name, "size_bytes": file.stat().st_size, "max_abs_diff": diff,
                              "argmax_agreement": agree, "tolerance": atol if exact else None, "passed": passed}
            log.info("hone export: %-22s %s, max |diff| vs PyTorch %s, argmax agreement %s%s", file.name,
                     _size(file), ", ".join(f"{k} {v:.2e}" for k, v in diff.items()),
                     ", ".join(f"{v:.1%}" for v in agree.values()),
                     "" if passed is None else f" (tolerance {atol:g}: {'OK' if passed else 'FAILED'})")
    finally:
        model.set_unpadded(was_unpadded).train(was_training)

    if source is not None and (source / "config.json").is_file():
        shutil.copyfile(source / "config.json", out / "config.json")
    else:
        config = {**model.config.to_dict(), "architectures": [model.hf_architecture]}
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save(out)
    import onnxruntime as ort

    report = {
        "model": str(source) if source else None, "task": task, "model_type": model.config.model_type,
        "format": "onnx", "opset": opset, "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "inputs": list(model_input_names(model.config.model_type)), "outputs": list(TASK_OUTPUTS[task]),
        "dynamic_axes": {"0": "batch", "1": "sequence"}, "max_sequence_length": model.config.max_positions,
        "settings": {"optimize": optimize, "fp16": fp16, "int8": int8, "atol": atol},
        "optimizer_fused_ops": fused,
        "validation": {"data": origin, "rows": len(rows), "batches": len(batches),
                       "tokens": int(sum(b["attention_mask"].sum() for b in batches))},
        "variants": variants,
        "providers": ort.get_available_providers(),
        "versions": {p: _version(p) for p in ("torch", "onnx", "onnxruntime", "onnxscript")},
        "export_seconds": time.perf_counter() - started,
    }
    (out / EXPORT_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    failed = {k: v for k, v in variants.items() if v["passed"] is False}
    if failed:
        kind, v = next(iter(failed.items()))
        name, worst = max(v["max_abs_diff"].items(), key=lambda kv: kv[1])
        setting = "--optimize (onnxruntime's fused ops)" if kind == "optimized" else f"opset {opset}"
        raise ExportError(f"{v['file']}: {name} differs from PyTorch by {worst:.2e} > --atol {atol:g} on {origin}; "
                          f"the setting at fault is {setting}: export without it or with --opset {DEFAULT_OPSET} "
                          f"(report: {out / EXPORT_REPORT})")
    return report


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- command line

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hone export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Checkpoint folder (config.json + model.safetensors).")
    p.add_argument("--task", required=True, choices=list(TASK_OUTPUTS), help="Which head to export.")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="Export format.")
    p.add_argument("--output", required=True, help="Folder to write model.onnx, its variants and the report to.")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET}).")
    p.add_argument("--optimize", action="store_true", help="Also write model_optimized.onnx (onnxruntime fusions).")
    p.add_argument("--fp16", action="store_true", help="Also write model_fp16.onnx.")
    p.add_argument("--int8", action="store_true", help="Also write model_int8.onnx (dynamic quantisation).")
    p.add_argument("--validation_data", help="Inputs to validate on: SQuAD .json/.jsonl (qa), a text file or .tsv "
                                             "(other tasks). Default: generated text of varied lengths.")
    p.add_argument("--atol", type=float, default=FP32_TOLERANCE,
                   help="Largest |difference| from PyTorch an fp32 file may show.")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report = export_onnx(args.model, args.task, args.output, opset=args.opset, optimize=args.optimize,
                         fp16=args.fp16, int8=args.int8, validation_data=args.validation_data, atol=args.atol)
    log.info("hone export: wrote %s (%s) in %.1f s", args.output, ", ".join(v["file"] for v in
                                                                          report["variants"].values()),
             report["export_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
