"""`hone bench infer` on a tiny model: the report's schema, one row per backend x precision x
batch size, skipped rows with a reason, accuracy from the official metric identical across the
exact backends (same weights, same post-processing), and flag errors. No timing thresholds."""

from __future__ import annotations

import json

import pytest
import torch

from hone.data.synthetic import make_synthetic_squad
from hone.data.tokenizer import load_tokenizer
from hone.export.bench_infer import BenchInferError, latency_stats, main, skip_reason
from hone.models.checkpoint import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *(f"##{c}" for c in LETTERS), *",.?'-"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-infer")
    folder = root / "tiny"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    load_tokenizer(folder).save(folder)
    torch.manual_seed(0)
    model = build_model(dict(model_type="bert", vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=48, max_position_embeddings=128), "qa")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    data = root / "dev.json"
    data.write_text(json.dumps(make_synthetic_squad(3, seed=5)))
    return folder, data, root


@pytest.mark.slow
def test_report_rows_and_accuracy(setup):
    folder, data, root = setup
    out = root / "report.json"
    assert main(["--model", str(folder), "--data", str(data), "--max_seq_length", "128", "--doc_stride", "32",
                 "--backends", "torch,torch-unpadded,onnxruntime,transformers", "--precisions", "fp32,bf16,int8",
                 "--batch_sizes", "1,4", "--warmup", "1", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in ("benchmark", "date", "command", "machine", "versions", "settings", "model", "data", "results"):
        assert key in report, key
    assert {"cpu", "cpu_cores", "torch_threads"} <= report["machine"].keys()
    assert {"torch", "onnxruntime", "onnx", "hone"} <= report["versions"].keys()
    assert report["data"]["examples"] == 9 and report["data"]["version_2_with_negative"] is True
    rows = report["results"]
    assert len(rows) == 4 * 3 * 2  # every backend x precision x batch size has a row
    by = {(r["backend"], r["precision"], r["batch_size"]): r for r in rows}
    assert "int8 is an onnxruntime file" in by["torch", "int8", 1]["reason"]
    assert "no bf16 kernels" in by["onnxruntime", "bf16", 4]["reason"]
    for r in rows:
        assert r["status"] in ("ok", "skipped", "failed")
        if r["status"] != "ok":
            assert r["reason"]
            continue
        assert r["sequences"] == report["data"]["sequences"] and r["qps"] > 0
        assert r["batches"] == -(-r["sequences"] // r["batch_size"])
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert 0 <= r["exact"] <= r["f1"] + 1e-9 <= 100 + 1e-9
    assert by["torch-unpadded", "fp32", 1]["mode"] == "unpadded"
    assert by["onnxruntime", "int8", 1]["file"] == "model_int8.onnx"
    # exact backends on the same weights give the same answers, hence the same official scores
    f1 = {r["f1"] for (b, p, _), r in by.items() if p == "fp32" and r["status"] == "ok"}
    assert len(f1) == 1, f1
    assert by["torch", "fp32", 4]["f1_delta_vs_torch_fp32"] == 0.0
    table = out.with_suffix(".md").read_text()
    assert "| backend | precision | batch |" in table and table.count("\n| ") == len(rows) + 1
    assert "hone torch (unpadded: real tokens only)" in table


def test_skip_reasons():
    assert "int8 is an onnxruntime file" in skip_reason("torch-compile", "int8", "cpu", True, False)
    assert "no PyTorch weights" in skip_reason("torch", "fp32", "cpu", False, True)
    assert "no bf16 kernels" in skip_reason("onnxruntime", "bf16", "cpu", True, False)
    assert skip_reason("onnxruntime", "int8", "cpu", True, False) is None
    assert skip_reason("torch-unpadded", "fp32", "cpu", True, False) is None


def test_latency_stats_by_hand():
    stats = latency_stats([0.001, 0.002, 0.003, 0.010])
    assert stats["mean"] == pytest.approx(4.0)
    assert stats["p50"] == pytest.approx(2.5)  # halfway between 2 and 3 ms
    assert stats["p99"] == pytest.approx(3 + 0.97 * 7)  # linear interpolation at rank 2.97


def test_bad_flags_are_explained(setup):
    folder, data, root = setup
    with pytest.raises(BenchInferError, match="--backends tensorrt"):
        main(["--model", str(folder), "--data", str(data), "--backends", "tensorrt"])
    with pytest.raises(BenchInferError, match="--batch_sizes 1,x"):
        main(["--model", str(folder), "--data", str(data), "--batch_sizes", "1,x"])
    with pytest.raises(BenchInferError, match="expected a checkpoint folder"):
        main(["--model", str(root / "nowhere"), "--data", str(data)])
