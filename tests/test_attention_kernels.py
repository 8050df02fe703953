"""Attention kernels and the collate-side varlen metadata (issue 23).

- Every kernel choice (auto, flash, sdpa, math) gives the padded, transformers-exact path's
  outputs, losses and gradients on CPU: fp32 to 1e-5; bf16 autocast within stated bounds of
  the fp32 reference (flash has no CPU kernel: it falls back to sdpa, and says so).
- The metadata the collate function computes on the host equals what the model computed
  from the mask before (indices, cu_seqlens, max_seqlen), independently recomputed here.
- With the metadata, the forward reads nothing back from the device (counted by patching
  torch's host-read methods), on the kernels that CUDA runs (sdpa and math on one grid).
- Bucketed token streams keep torch.compile to one graph per bucket (dynamo's counters).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hone.data.collate import Collator, make_collator
from hone.data.packing import pack_collate
from hone.hardware import ATTENTIONS, effective_attention, resolve_profile
from hone.models import padding
from hone.models.padding import (
    KERNELS,
    AttentionLayout,
    LayoutError,
    VarlenMetadata,
    attention,
    attention_kernel,
    dense_attention,
    group_lengths,
)
from test_unpadded import assert_close, make_batch, make_model

TOL = 1e-5
# bf16 autocast against the fp32 reference, relative to the reference's largest value: outputs
# and the loss within 3e-2; each parameter's gradient within 6e-2 of its largest entry (or of 1%
# of the model's largest gradient, for near-zero ones). bf16 keeps 8 bits of mantissa.
BF16_OUT, BF16_GRAD = 3e-2, 6e-2

CASES = [("bert", "qa", ""), ("roberta", "classification", "single"), ("gpt2", "clm", ""), ("bert", "mlm", "")]


def rows_of(inputs: dict, labels: dict) -> list[dict]:
    """The batch's rows, unpadded, as a dataset would hold them."""
    lengths = inputs["attention_mask"].sum(1).tolist()
    rows = []
    for i, n in enumerate(lengths):
        row = {k: v[i, :n].numpy() for k, v in inputs.items()}
        for k, v in labels.items():
            row[k] = v[i, :n].numpy() if v.dim() == 2 else v[i].numpy()
        rows.append(row)
    return rows


def forward_backward(model, batch: dict, bf16: bool = False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        dense = {"dense_logits": True} if "labels" in batch and model.config.model_type != "gpt2" \
            and "start_positions" not in batch and batch["labels"].dim() == 2 else {}
        out = model(**batch, **dense)
    out.loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def per_token_outputs(out, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs at real tokens (per-token outputs, cut to the mask's width) or whole (per sequence)."""
    B, T = mask.shape
    picked = {}
    for key, value in out.items():
        if key == "loss" or not isinstance(value, torch.Tensor):
            continue
        per_token = value.dim() >= 2 and value.shape[0] == B and value.shape[1] >= T
        picked[key] = (value[:, :T][mask.bool()] if per_token else value).float()
    return picked


@pytest.mark.parametrize("model_type,task,variant", CASES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_matches_the_padded_path(model_type, task, variant, kernel):
    model = make_model(model_type, task, variant)
    inputs, labels = make_batch(model_type, task, variant, model.config.pad_token_id)
    rows = rows_of(inputs, labels)
    padded_batch = Collator(model.config.pad_token_id)(rows)
    ref, ref_grads = forward_backward(model.set_unpadded(task == "qa"), padded_batch)  # QA: padding-free loss
    model.set_unpadded(True).set_attention(kernel)
    for bucket in (None, 4):
        collate = make_collator("unpadded", pad_token_id=model.config.pad_token_id, max_seq_len=12,
                                bucket_tokens=bucket)
        batch = collate(rows)
        assert isinstance(batch["varlen"], VarlenMetadata)
        got, got_grads = forward_backward(model, batch)
        mask = inputs["attention_mask"]
        want, have = per_token_outputs(ref, mask), per_token_outputs(got, mask)
        for key in want:
            assert_close(want[key], have[key], f"{kernel} bucket={bucket}: {key}")
        assert_close(ref.loss, got.loss, f"{kernel} bucket={bucket}: loss")
        for name, g in ref_grads.items():
            assert_close(g, got_grads[name], f"{kernel} bucket={bucket}: grad {name}",
                         tol=TOL * max(1.0, g.abs().max().item()))


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_in_bf16_is_close_to_fp32(kernel):
    model = make_model("bert", "qa")
    inputs, labels = make_batch("bert", "qa", "", 0)
    batch = make_collator("unpadded", pad_token_id=0)(rows_of(inputs, labels))
    model.set_unpadded(True)
    ref, ref_grads = forward_backward(model, batch)
    got, got_grads = forward_backward(model.set_attention(kernel), batch, bf16=True)
    real = inputs["attention_mask"].bool()
    for key in ("start_logits", "end_logits"):
        scale = ref[key][real].abs().max().item()
        assert_close(ref[key][real], got[key][real], f"bf16 {kernel}: {key}", tol=BF16_OUT * scale)
    assert_close(ref.loss, got.loss, f"bf16 {kernel}: loss", tol=BF16_OUT * ref.loss.abs().item())
    largest = max(g.abs().max().item() for g in ref_grads.values())
    for name, g in ref_grads.items():  # near-zero gradients: against 1% of the largest one
        assert_close(g, got_grads[name], f"bf16 {kernel}: grad {name}",
                     tol=BF16_GRAD * max(g.abs().max().item(), 1e-2 * largest))


def test_kernel_resolution_and_names():
    assert ATTENTIONS == KERNELS
    assert attention_kernel("auto", "cpu", torch.bfloat16) == "sdpa"
    assert attention_kernel("math", "cpu", torch.float32) == "math"
    with pytest.warns(UserWarning, match="flash kernel needs a CUDA GPU"):
        assert attention_kernel("flash", "cpu", torch.float16) == "sdpa"
    with pytest.raises(LayoutError, match="not one of auto, flash, sdpa, math"):
        attention_kernel("varlen", "cpu", torch.float32)
    assert effective_attention(resolve_profile("cpu-bf16")).startswith("sdpa (CPU: sequences grouped by length")
    assert effective_attention(resolve_profile("cpu")) == effective_attention(resolve_profile("cpu-bf16"))
    gpu = resolve_profile("h100", check_device=False)
    if not torch.cuda.is_available():
        assert effective_attention(gpu).startswith("sdpa")  # no flash kernel on this machine
    with pytest.raises(Exception, match="did you mean 'flash'"):
        resolve_profile("cpu", "attention=flashy")
    with pytest.raises(Exception, match="attention kernel 'fast'"):
        make_model("bert", None).set_attention("fast")


# ----------------------------------------------------------------------------- metadata

def test_collate_metadata_equals_what_the_model_computed():
    rng = np.random.default_rng(0)
    lengths = [7, 3, 9, 1, 5]
    rows = [{"input_ids": rng.integers(3, 50, n), "attention_mask": np.ones(n, dtype=np.int64)} for n in lengths]
    meta = Collator(0, varlen=True)(rows)["varlen"]
    mask = np.arange(9)[None, :] < np.array(lengths)[:, None]  # (B, T), written out independently
    assert meta.indices.tolist() == np.flatnonzero(mask.reshape(-1)).tolist()
    assert meta.cu_seqlens.tolist() == [0, *np.cumsum(lengths)] and meta.cu_seqlens.dtype == torch.int32
    assert meta.max_seqlen == 9 and meta.tail == 0
    # the model's own computation from the mask gives the same layout
    layout = AttentionLayout.varlen(torch.from_numpy(mask).long(), mask.shape)
    assert torch.equal(layout.indices, meta.indices) and torch.equal(layout.cu_seqlens, meta.cu_seqlens)

    packed = pack_collate(rows, 10, 0)
    pmeta = packed["varlen"]
    assert torch.equal(pmeta.cu_seqlens, packed["cu_seqlens"])
    assert pmeta.indices.tolist() == packed["attention_mask"].reshape(-1).nonzero().squeeze(1).tolist()
    assert pmeta.max_seqlen == 9


def test_bucketed_metadata_pads_rows_and_the_stream():
    rows = [{"input_ids": np.arange(1, n + 1)} for n in (5, 3)]
    batch = make_collator("unpadded", pad_token_id=0, max_seq_len=8, bucket_tokens=4)(rows)
    meta = batch["varlen"]
    assert batch["input_ids"].shape == (2, 8)  # rows at max_seq_len
    assert len(meta.indices) == 8 and meta.tail == 1  # 8 real tokens: already a multiple of 4
    assert meta.cu_seqlens.tolist() == [0, 5, 8, 8] and meta.max_seqlen == 8
    meta = make_collator("unpadded", pad_token_id=0, max_seq_len=8, bucket_tokens=3)(rows)["varlen"]
    assert meta.cu_seqlens.tolist() == [0, 5, 8, 9] and meta.indices.tolist()[-1] == 16  # B * T: nowhere
    with pytest.raises(LayoutError, match="bucket_tokens must be in"):
        VarlenMetadata.from_mask(torch.ones(2, 4), bucket_tokens=5)


def test_metadata_moves_and_pins_like_a_tensor():
    meta = VarlenMetadata.from_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    moved = meta.to("cpu", non_blocking=True)
    assert torch.equal(moved.indices, meta.indices) and moved.max_seqlen == 2
    from hone.engine.trainer import _to_device

    assert isinstance(_to_device({"varlen": meta}, torch.device("cpu"), False)["varlen"], VarlenMetadata)


# ----------------------------------------------------------------------------- no host reads

HOST_READS = ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__")


class HostReads(dict):
    """Counts of host reads of tensor values, by method, while not `paused`."""

    paused = False


@pytest.fixture
def count_host_reads(monkeypatch):
    counts = HostReads()
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if not counts.paused:
                counts[_name] = counts.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    original_nonzero = torch.nonzero

    def nonzero(*args, **kwargs):
        if not counts.paused:
            counts["torch.nonzero"] = counts.get("torch.nonzero", 0) + 1
        return original_nonzero(*args, **kwargs)

    monkeypatch.setattr(torch, "nonzero", nonzero)
    return counts


def flash_stand_in(counts: HostReads):
    """aten._flash_attention_forward's contract on a CPU (no such kernel here): every segment of
    cu_seq attends to itself, without dropout. Its own host reads are not counted: the real
    kernel reads cu_seqlens on the device."""
    def forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, causal, debug, *, scale=None):
        counts.paused = True
        try:
            cu = cu_q.tolist()
            assert max(b - a for a, b in zip(cu[:-1], cu[1:])) <= max_q and cu[-1] == len(q)
            out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
                *(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=causal, scale=scale).transpose(0, 1)
                for a, b in zip(cu[:-1], cu[1:]) if b > a])
        finally:
            counts.paused = False
        return out, None, None, None, None
    return forward


@pytest.mark.parametrize("model_type,task,variant", [("bert", "qa", ""), ("roberta", "classification", "single"),
                                                      ("gpt2", "qa", ""), ("gpt2", "classification", "single")])
@pytest.mark.parametrize("kernel", ["flash", "math"])
def test_forward_reads_nothing_back_with_collate_metadata(model_type, task, variant, kernel, count_host_reads,
                                                          monkeypatch):
    """The CUDA kernels' paths read no tensor value on the host when the batch carries its
    metadata (flash: the real kernel replaced by a CPU stand-in with its contract; math: the
    same padded grid as CUDA's sdpa); the same forward without the metadata does (the counter
    works). Outputs still match the padded path (bf16 bounds for the bf16 flash path)."""
    if kernel == "flash":
        monkeypatch.setattr(padding, "flash_available", lambda device: True)
        monkeypatch.setattr(padding, "_flash_forward", flash_stand_in(count_host_reads))
    model = make_model(model_type, task, variant)
    inputs, labels = make_batch(model_type, task, variant, model.config.pad_token_id)
    rows = rows_of(inputs, labels)
    count_host_reads.paused = True
    ref, _ = forward_backward(model.set_unpadded(task == "qa"), Collator(model.config.pad_token_id)(rows))
    count_host_reads.paused = False
    batch = make_collator("unpadded", pad_token_id=model.config.pad_token_id, max_seq_len=12,
                          bucket_tokens=4)(rows)
    model.set_unpadded(True).set_attention(kernel)
    count_host_reads.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kernel == "flash"):
        out = model(**batch)
    assert count_host_reads == {}, f"host reads in the forward: {count_host_reads}"
    tol = BF16_OUT * max(1.0, ref.loss.abs().item()) if kernel == "flash" else TOL
    assert_close(ref.loss, out.loss, f"{kernel}: loss", tol=tol)
    del batch["varlen"]
    model(**batch)
    assert count_host_reads, "the counter saw nothing without the metadata either"


# ----------------------------------------------------------------------------- compile

def test_bucketed_batches_compile_once_per_bucket():
    """torch.compile with static shapes (what CUDA graphs need): rows at max_seq_len and the
    token stream bucketed give one graph per bucket; unbucketed, every new length recompiles."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = make_model("bert", "qa").set_unpadded(True).set_attention("math").train()
    rng = np.random.default_rng(0)
    batches_rows = []
    for _ in range(8):
        lengths = rng.integers(4, 13, 4)
        batches_rows.append([{"input_ids": rng.integers(3, 99, n), "attention_mask": np.ones(n, dtype=np.int64),
                              "token_type_ids": np.zeros(n, dtype=np.int64), "start_positions": 1,
                              "end_positions": 2} for n in lengths])
    graphs = {}
    for bucket in (12, None):
        collate = make_collator("unpadded", pad_token_id=0, max_seq_len=12, bucket_tokens=bucket,
                                pad_to_max_length=True)
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(model, backend="eager", dynamic=False, fullgraph=True)
        totals = set()
        for rows in batches_rows:
            batch = collate(rows)
            totals.add((len(batch["varlen"].indices), batch["varlen"].max_seqlen))  # the shapes it sees
            compiled(**batch).loss.backward()
        graphs[bucket] = (counters["stats"]["unique_graphs"], len(totals))
    bucketed, plain = graphs[12], graphs[None]
    assert bucketed[0] == bucketed[1] <= 4  # one graph per bucket total seen (max_seqlen is the row width)
    assert plain[0] == plain[1] > bucketed[0]  # one per distinct (token count, longest sequence)


# ----------------------------------------------------------------------------- the CPU kernel

def test_group_lengths_rule():
    groups = group_lengths([100, 380, 90, 310, 370, 81, 50], ratio=0.8, max_size=3)
    assert groups == [([1, 4, 3], 380), ([0, 2, 5], 100), ([6], 50)]
    assert sorted(i for members, _ in groups for i in members) == list(range(7))


def test_grouped_attention_dropout_keeps_the_expectation():
    """Dropout in the CPU kernel: about p of the weights dropped, the rest scaled by 1/(1-p),
    so the mean over many draws approaches the output without dropout."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4) for _ in range(3))
    mask = (torch.arange(6) < torch.tensor([6, 4])[:, None])[:, None, None, :]
    exact = dense_attention(q, k, v, mask, dropout_p=0.0, scale=None)
    draws = torch.stack([dense_attention(q, k, v, mask, dropout_p=0.3, scale=None) for _ in range(4000)])
    assert (draws.mean(0) - exact).abs().max() < 0.05
    assert not torch.allclose(draws[0], exact)


def test_grouped_attention_equals_per_sequence_softmax():
    torch.manual_seed(0)
    lengths = torch.tensor([9, 2, 7, 8, 1, 9])
    mask = (torch.arange(9) < lengths[:, None]).long()
    layout = AttentionLayout.varlen(mask, mask.shape)
    assert sum(g.count for g in layout.length_groups) == 6 and len(layout.length_groups) < 6
    q, k, v = (torch.randn(int(lengths.sum()), 3, 4) for _ in range(3))
    cu = layout.cu_seqlens.tolist()
    expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        *(t[a:b].transpose(0, 1) for t in (q, k, v))).transpose(0, 1) for a, b in zip(cu[:-1], cu[1:])])
    assert (attention(q, k, v, layout) - expected).abs().max() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_varlen_attention_runs_in_length_groups(dtype, monkeypatch):
    """On a CPU, non-causal varlen batches attend in length groups in every dtype (faster than
    one sdpa call per sequence since masks are cheap: benchmarks/results/cpu-attention-ab-qa-minilm.json);
    causal ones one sequence at a time."""
    from hone.models import padding

    calls = []
    for name in ("attention_grouped", "attention_per_sequence"):
        monkeypatch.setattr(padding, name, lambda *a, name=name, **kw: calls.append(name))
    mask = (torch.arange(6) < torch.tensor([6, 3])[:, None]).long()
    q = torch.randn(9, 2, 4, dtype=dtype)
    padding.attention(q, q, q, AttentionLayout.varlen(mask, mask.shape))
    padding.attention(q, q, q, AttentionLayout.varlen(mask, mask.shape, causal=True))
    assert calls == ["attention_grouped", "attention_per_sequence"]
