"""One inference interface over every way hone runs a model: batches of tokenized features in,
the task's logits out as float32 numpy arrays.

Backends:
- `TorchBackend`: hone's own model, padded (the layout ONNX files have) or unpadded
  (`set_unpadded(True)`: every layer on real tokens only, which no ONNX runtime can do),
  optionally under torch.compile (CUDA graphs for the small batches on CUDA), in fp32 or under
  autocast to bf16 / fp16.
- `OnnxBackend`: an onnxruntime session over a file `hone export` wrote (model.onnx,
  model_optimized.onnx, model_fp16.onnx, model_int8.onnx), on the CPU provider, or the CUDA
  provider where the installed onnxruntime has it.

`load_backend` picks and builds one from a model folder, an export folder or an .onnx file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from hone.data.collate import pad_collate
from hone.errors import HoneError
from hone.models.base import PreTrainedModule

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
BACKENDS = ("torch", "torch-unpadded", "torch-compile", "onnxruntime")
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "qa": ("start_logits", "end_logits"),
    "classification": ("logits",),
    "mlm": ("logits",),
    "clm": ("logits",),
}
# what `hone export` writes into its output folder
ONNX_FILES = {"fp32": "model.onnx", "optimized": "model_optimized.onnx", "fp16": "model_fp16.onnx",
              "int8": "model_int8.onnx"}
EXPORT_REPORT = "export_report.json"
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_SUFFIX_TASK = {"ForQuestionAnswering": "qa", "ForSequenceClassification": "classification",
                "ForMaskedLM": "mlm", "LMHeadModel": "clm"}


class RuntimeConfigError(HoneError, ValueError):
    """A backend, precision or model path that cannot run as asked; says which and the fix."""


def model_input_names(model_type: str) -> tuple[str, ...]:
    """The inputs a model takes from its tokenizer, as transformers' tokenizers name them:
    BERT uses segment ids; RoBERTa has one segment and GPT-2 would embed them with its word
    embeddings, so they take none."""
    base = ("input_ids", "attention_mask")
    return (*base, "token_type_ids") if model_type == "bert" else base


def task_of_model(model: PreTrainedModule) -> str:
    """"qa", "classification", "mlm" or "clm" from the model's head."""
    task = _SUFFIX_TASK.get(model.hf_suffix)
    if task is None:
        raise RuntimeConfigError(f"{type(model).__name__} has no task head to serve; load it with "
                                 f"hone.load_model(path, task) for one of {list(TASK_OUTPUTS)}")
    return task


def collate(rows: Sequence[dict], pad_token_id: int, input_names: Sequence[str],
            pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Pad `rows` (dicts of 1-D token arrays) into one int64 batch of `input_names`, to the
    longest row or, with `pad_to`, to that many tokens (rows are never longer)."""
    picked = []
    for row in rows:
        row = {k: row[k] for k in input_names if k in row}
        row.setdefault("attention_mask", np.ones(len(row["input_ids"]), dtype=np.int64))
        if "token_type_ids" in input_names:
            row.setdefault("token_type_ids", np.zeros(len(row["input_ids"]), dtype=np.int64))
        picked.append(row)
    return {k: v.numpy() for k, v in pad_collate(picked, pad_token_id, pad_to).items()}


def make_batches(rows: Sequence[dict], batch_size: int, pad_token_id: int, input_names: Sequence[str],
                 pad_to: int | None = None) -> list[dict[str, np.ndarray]]:
    """Consecutive batches of `batch_size` rows, collated once (so that timing leaves collation out)."""
    if batch_size < 1:
        raise RuntimeConfigError(f"batch size must be >= 1, got {batch_size}")
    return [collate(rows[i:i + batch_size], pad_token_id, input_names, pad_to)
            for i in range(0, len(rows), batch_size)]


class Backend:
    """Runs batches: `backend(batch) -> {output name: float32 array}`; batch arrays are (B, T) int64."""

    name: str
    precision: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.name, "precision": self.precision}


class TorchBackend(Backend):
    """hone's PyTorch model. `unpadded`: real tokens only (per-token outputs at padding positions
    are 0, QA logits there the lowest float). `compile`: torch.compile with dynamic shapes,
    mode "reduce-overhead" (CUDA graphs) on CUDA. Precisions fp32, bf16, fp16 (autocast)."""

    def __init__(self, model: PreTrainedModule, *, precision: str = "fp32", unpadded: bool = False,
                 compile: bool = False, device: str | torch.device = "cpu"):
        if precision not in _AUTOCAST:
            reason = ("int8 runs as an ONNX file: export with `hone export --int8` and use the onnxruntime "
                      "backend" if precision == "int8" else f"choose one of {list(_AUTOCAST)}")
            raise RuntimeConfigError(f"the torch backend has no precision {precision!r}: {reason}")
        if compile and unpadded:
            raise RuntimeConfigError("torch.compile serves the padded layout; the unpadded path loops over "
                                     "sequences on CPU. Use one of them")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.task = task_of_model(model)
        self.precision, self.unpadded, self.compiled = precision, unpadded, compile
        self.name = "torch-compile" if compile else "torch-unpadded" if unpadded else "torch"
        self.input_names = model_input_names(model.config.model_type)
        self.output_names = TASK_OUTPUTS[self.task]
        mode = "reduce-overhead" if compile and self.device.type == "cuda" else None
        self._forward = torch.compile(self.model, dynamic=True, mode=mode) if compile else self.model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # one model object may serve several backends; a batch without padding is all real tokens
        # already, and the padded layout runs it without the varlen bookkeeping
        self.model.set_unpadded(self.unpadded and not batch["attention_mask"].all())
        inputs = {k: torch.from_numpy(np.ascontiguousarray(batch[k])).to(self.device)
                  for k in self.input_names if k in batch}
        dtype = _AUTOCAST[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            out = self._forward(**inputs)
        return {k: out[k].float().cpu().numpy() for k in self.output_names}

    def describe(self) -> dict:
        return {**super().describe(), "mode": "unpadded" if self.unpadded else "padded",
                "compiled": self.compiled, "device": str(self.device)}


def onnx_precision(path: str | Path) -> str:
    """fp32, fp16 or int8, read from the graph: integer matmuls mean int8, fp16 weights fp16."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QLinearMatMul")
           for n in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def onnx_providers(device: str = "cpu") -> list[str]:
    """The CUDA provider first where asked for and installed; the CPU provider always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise RuntimeConfigError("onnxruntime on CUDA needs the CUDA provider: pip install onnxruntime-gpu "
                                     f"(this onnxruntime has {available})")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxBackend(Backend):
    """An onnxruntime session over one .onnx file; feeds the inputs the graph declares."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, precision: str | None = None, device: str = "cpu",
                 threads: int | None = None):
        import onnxruntime as ort

        from hone.export.onnx import explain_onnxruntime_error

        self.path = Path(path)
        if not self.path.is_file():
            raise RuntimeConfigError(f"{self.path}: no such ONNX file; write one with `hone export`")
        self.precision = precision or onnx_precision(self.path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=onnx_providers(device))
        except Exception as err:  # onnxruntime's errors share no public base class
            raise explain_onnxruntime_error(err, self.path) from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from hone.export.onnx import explain_onnxruntime_error

        feed = {k: batch[k].astype(np.int64, copy=False) for k in self.input_names}
        try:
            outputs = self.session.run(None, feed)
        except Exception as err:
            raise explain_onnxruntime_error(err, self.path) from None
        return {k: np.asarray(v, dtype=np.float32) for k, v in zip(self.output_names, outputs)}

    def describe(self) -> dict:
        return {**super().describe(), "mode": "padded", "file": str(self.path),
                "providers": self.session.get_providers()}


def onnx_file(folder: str | Path, precision: str) -> Path:
    """The file of an export folder for `precision`: fp32 prefers the optimized graph."""
    folder = Path(folder)
    names = {"fp32": [ONNX_FILES["optimized"], ONNX_FILES["fp32"]], "fp16": [ONNX_FILES["fp16"]],
             "int8": [ONNX_FILES["int8"]]}.get(precision)
    if names is None:
        raise RuntimeConfigError(f"onnxruntime has no {precision} models here: the CPU provider has no bf16 "
                                 "kernels for these graphs; use fp32, fp16 or int8")
    for name in names:
        if (folder / name).is_file():
            return folder / name
    flag = {"fp16": " --fp16", "int8": " --int8"}.get(precision, "")
    raise RuntimeConfigError(f"{folder} has no {' or '.join(names)}; write it with `hone export --model DIR "
                             f"--format onnx --output {folder}{flag}`")


def read_export_report(folder: str | Path) -> dict | None:
    file = Path(folder) / EXPORT_REPORT
    return json.loads(file.read_text()) if file.is_file() else None


def is_onnx(model: str | Path) -> bool:
    """An .onnx file, or a folder `hone export` wrote (it holds model.onnx)."""
    path = Path(model)
    return path.suffix == ".onnx" or (path / ONNX_FILES["fp32"]).is_file()


def load_backend(model: str | Path | PreTrainedModule, backend: str = "torch", precision: str = "fp32", *,
                 task: str | None = None, device: str = "cpu", threads: int | None = None) -> Backend:
    """A backend for `model`: a loaded hone model, a checkpoint folder (torch backends; `task`
    picks the head), an export folder or an .onnx file (onnxruntime)."""
    if backend not in BACKENDS:
        raise RuntimeConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if precision not in PRECISIONS:
        raise RuntimeConfigError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if backend == "onnxruntime":
        if isinstance(model, PreTrainedModule) or not is_onnx(model):
            raise RuntimeConfigError(f"the onnxruntime backend runs ONNX files; export {model} first with "
                                     "`hone export --model DIR --format onnx --output OUT` and pass OUT")
        path = Path(model)
        return OnnxBackend(path if path.suffix == ".onnx" else onnx_file(path, precision), device=device,
                           threads=threads)
    if not isinstance(model, PreTrainedModule):
        if is_onnx(model):
            raise RuntimeConfigError(f"{model} is an ONNX export; the {backend} backend needs the checkpoint "
                                     "folder (config.json + model.safetensors), or use --backend onnxruntime")
        from hone.models.checkpoint import load_model

        if task is None:
            raise RuntimeConfigError("loading a checkpoint folder for the torch backend needs the task")
        model = load_model(model, task)
    if threads:
        torch.set_num_threads(threads)
    return TorchBackend(model, precision=precision, unpadded=backend == "torch-unpadded",
                        compile=backend == "torch-compile", device=device)


def run_batches(backend: Backend, batches: Iterable[dict[str, np.ndarray]],
                times: list[float] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Each batch's outputs in order; with `times`, append each batch's wall time in seconds."""
    for batch in batches:
        start = time.perf_counter()
        out = backend(batch)
        if times is not None:
            times.append(time.perf_counter() - start)
        yield out


def stack_rows(outputs: Iterable[dict[str, np.ndarray]], name: str, width: int | None = None,
               fill: float = -np.inf) -> np.ndarray:
    """One output of every batch as one array: per-row outputs (B, C) stacked; per-token
    outputs (B, T) right-padded with `fill` to `width` (default: the widest batch)."""
    parts = [out[name] for out in outputs]
    if parts[0].ndim == 2 and width is None and len({p.shape[1] for p in parts}) == 1:
        return np.concatenate(parts)
    if parts[0].ndim != 2:
        raise RuntimeConfigError(f"stack_rows takes (B, C) or (B, T) outputs; {name} is {parts[0].shape}")
    width = width or max(p.shape[1] for p in parts)
    out = np.full((sum(len(p) for p in parts), width), fill, dtype=np.float32)
    row = 0
    for p in parts:
        out[row:row + len(p), :p.shape[1]] = p
        row += len(p)
    return out
