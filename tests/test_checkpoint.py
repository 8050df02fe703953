"""Checkpoint folders: configs round-trip, formats load, and every bad input is a clear error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hone
from hone.models.bert import BertConfig, RobertaConfig
from hone.models.checkpoint import CheckpointError, build_model, load_config, load_model
from hone.models.gpt2 import GPT2Config
from paths import DATA as SHARED_DATA

TINY_BERT = {
    "model_type": "bert", "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 16,
}
IDS = torch.tensor([[2, 5, 7, 9, 3], [2, 4, 3, 0, 0]])
MASK = (IDS != 0).long()


def save(tmp_path: Path, task: str | None = None, name: str = "ckpt", **overrides) -> Path:
    torch.manual_seed(0)
    model = build_model({**TINY_BERT, **overrides}, task)
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def test_hone_load_model_is_exported():
    assert hone.load_model is load_model


def test_config_round_trips_and_keeps_unknown_keys():
    d = {**TINY_BERT, "architectures": ["BertModel"], "gradient_checkpointing": False,
         "transformers_version": "4.8.2", "my_custom_key": {"a": 1}, "hidden_act": "gelu"}
    config = BertConfig.from_dict(d)
    assert config.extra["my_custom_key"] == {"a": 1}
    out = config.to_dict()
    for key, value in d.items():
        assert out[key] == value, key
    assert BertConfig.from_dict(out) == config


def test_minilm_config_round_trips():
    path = SHARED_DATA / "models" / "all-MiniLM-L6-v2" / "config.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    d = json.loads(path.read_text())
    out = load_config(path).to_dict()
    assert {k: out[k] for k in d} == d


def test_label_names_follow_num_labels():
    config = BertConfig.from_dict({**TINY_BERT, "id2label": {"0": "neg", "1": "pos"}})
    assert config.num_labels == 2 and config.id2label == {0: "neg", 1: "pos"} and config.label2id["pos"] == 1
    assert config.replace(num_labels=2).id2label == {0: "neg", 1: "pos"}
    three = config.replace(num_labels=3)
    assert three.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"} and three.label2id["LABEL_2"] == 2
    named = config.replace(id2label={0: "a", 1: "b", 2: "c"})
    assert named.num_labels == 3 and named.label2id == {"a": 0, "b": 1, "c": 2}


def test_roberta_and_gpt2_defaults_are_transformers():
    roberta = RobertaConfig()
    assert (roberta.pad_token_id, roberta.bos_token_id, roberta.eos_token_id, roberta.vocab_size) == (1, 0, 2, 50265)
    gpt2 = GPT2Config()
    assert (gpt2.hidden_size, gpt2.num_hidden_layers, gpt2.activation_function) == (768, 12, "gelu_new")


def test_saved_folder_has_transformers_config(tmp_path):
    folder = save(tmp_path, "classification", id2label={"0": "neg", "1": "pos"})
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["model_type"] == "bert"
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    keys = load_file(folder / "model.safetensors").keys()
    assert "bert.encoder.layer.1.attention.self.query.weight" in keys and "classifier.weight" in keys
    assert all(k.startswith(("bert.", "classifier.")) for k in keys)


@pytest.mark.parametrize("task", [None, "qa", "classification", "mlm", "pretraining"])
def test_hone_round_trip_is_exact(tmp_path, task):
    folder = save(tmp_path, task)
    torch.manual_seed(0)
    original = build_model(TINY_BERT, task).eval()
    loaded = load_model(folder, task).eval()
    for (n1, p1), (n2, p2) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    with torch.no_grad():
        a, b = original(IDS, MASK), loaded(IDS, MASK)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pytorch_bin_legacy_names_and_shards_load(tmp_path):
    folder = save(tmp_path, "qa")
    reference = load_model(folder, "qa").state_dict()
    state = load_file(folder / "model.safetensors")

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((folder / "config.json").read_text())
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in state.items()}
    torch.save(renamed, legacy / "pytorch_model.bin")
    loaded = load_model(legacy, "qa").state_dict()
    assert all(torch.equal(reference[k], loaded[k]) for k in reference)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((folder / "config.json").read_text())
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, sharded / file)
        weight_map.update(dict.fromkeys(part, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_model(sharded, "qa").state_dict()
    assert all(torch.equal(reference[k], loaded[k]) for k in reference)


def test_config_overrides(tmp_path):
    folder = save(tmp_path)
    model = load_model(folder, "classification", num_labels=5, hidden_dropout_prob=0.0)
    assert model.classifier.out_features == 5 and model.config.hidden_dropout_prob == 0.0
    assert model.backbone.layers[0].dropout.p == 0.0
    with pytest.raises(CheckpointError, match=r"unknown config field\(s\) \['hidden_dropout'\].*hidden_dropout_prob"):
        load_model(folder, hidden_dropout=0.0)


def test_build_model_from_dataclass_dict_and_path(tmp_path):
    folder = save(tmp_path)
    for source in (BertConfig.from_dict(TINY_BERT), TINY_BERT, folder, folder / "config.json"):
        model = build_model(source, "mlm")
        assert model.config.hidden_size == 32 and model.hf_architecture == "BertForMaskedLM"
    model = build_model(folder, "classification", num_labels=4, attention_probs_dropout_prob=0.0)
    assert model.classifier.out_features == 4 and model.backbone.layers[0].attn_dropout == 0.0
    with pytest.raises(CheckpointError, match=r"unknown config field\(s\) \['n_embd'\]"):
        build_model(folder, n_embd=8)


# ---- errors: each names the file (or the bad value) and says what to do ----


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope: no such folder.*config.json"):
        load_model(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="file.txt: is a file, not a folder"):
        load_model(tmp_path / "file.txt")


def test_missing_or_invalid_config(tmp_path):
    folder = save(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"ckpt/config.json: no such file"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"ckpt/config.json: not valid JSON"):
        load_model(folder)


def test_missing_weights(tmp_path):
    folder = save(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"ckpt: no weights file; expected one of .*model.safetensors"):
        load_model(folder)


def test_corrupt_or_truncated_weights(tmp_path):
    folder = save(tmp_path)
    file = folder / "model.safetensors"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors: cannot be read .*truncated or corrupt"):
        load_model(folder)
    file.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: cannot be read .*truncated or corrupt"):
        load_model(folder)


def test_unknown_model_type(tmp_path):
    folder = save(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(CheckpointError, match=r"config.json: model_type 't5' is not supported.*'bert', 'gpt2', 'roberta'"):
        load_model(folder)


def test_unsupported_config_values(tmp_path):
    folder = save(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    with pytest.raises(CheckpointError, match=r"config.json: position_embedding_type 'relative_key' is not supported"):
        load_model(folder)
    with pytest.raises(CheckpointError, match=r"activation 'mish' is not supported"):
        build_model({**TINY_BERT, "hidden_act": "mish"})


def test_unknown_or_unavailable_task(tmp_path):
    folder = save(tmp_path)
    with pytest.raises(CheckpointError, match=r"unknown task 'squad'; choose one of \[None, 'qa'"):
        load_model(folder, "squad")
    with pytest.raises(CheckpointError, match=r"task 'clm' is not available for model_type 'bert'"):
        load_model(folder, "clm")
    with pytest.raises(CheckpointError, match=r"task 'pretraining' is not available for model_type 'roberta'"):
        build_model({**TINY_BERT, "model_type": "roberta"}, "pretraining")


def test_head_shape_mismatch_is_an_error_unless_ignored(tmp_path, caplog):
    folder = save(tmp_path, "classification")  # 2 labels
    with pytest.raises(CheckpointError, match=r"model.safetensors: classifier.weight has shape \(2, 32\) in the "
                       r"checkpoint but BertForSequenceClassification expects \(3, 32\).*ignore_mismatched_sizes=True"):
        load_model(folder, "classification", num_labels=3)
    with caplog.at_level(logging.WARNING, logger="hone"):
        model = load_model(folder, "classification", num_labels=3, ignore_mismatched_sizes=True)
    assert model.classifier.weight.shape == (3, 32)
    assert (model.classifier.bias == 0).all()  # freshly initialised
    messages = [r.getMessage() for r in caplog.records if r.name == "hone"]
    assert len(messages) == 1 and "classifier.weight" in messages[0] and "shapes differ" in messages[0]


def test_backbone_shape_mismatch_is_an_error_even_if_ignored(tmp_path):
    folder = save(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 60}))
    with pytest.raises(CheckpointError, match=r"embeddings.word_embeddings.weight has shape \(50, 32\) in the "
                       r"checkpoint but BertModel expects \(60, 32\); the weights do not match .*config.json"):
        load_model(folder, ignore_mismatched_sizes=True)


def test_missing_backbone_weights(tmp_path):
    folder = save(tmp_path, "qa")
    file = folder / "model.safetensors"
    state = load_file(file)
    del state["bert.encoder.layer.1.output.dense.weight"]
    save_file(state, file)
    with pytest.raises(CheckpointError, match=r"model.safetensors: 1 weights that BertForQuestionAnswering needs "
                       r"are not in the checkpoint, e.g. \['bert.encoder.layer.1.output.dense.weight'\]"):
        load_model(folder, "qa")
    # a config with more layers than the weights
    folder = save(tmp_path, name="deeper")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match=r"encoder.layer.2.*num_hidden_layers"):
        load_model(folder)
