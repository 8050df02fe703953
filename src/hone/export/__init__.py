"""Serving a hone model: ONNX export (`onnx`), one inference interface over torch and
onnxruntime (`runtime`), task pipelines (`pipeline`, `predict`) and the inference benchmark
(`bench_infer`)."""
