"""hone.pipeline and `hone predict`: answers equal what hone's post-processing makes of hone's
own torch logits on the same features (the path `hone qa` evaluates with), on every backend;
classification scores equal the softmax of the model's logits; files as `hone qa` writes them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hone
from hone.data.collate import pad_collate
from hone.data.squad import prepare_eval_features
from hone.data.tokenizer import load_tokenizer
from hone.export.pipeline import PipelineError, pipeline
from hone.export.predict import main as predict
from hone.metrics.squad import postprocess_qa_predictions, squad_evaluate
from hone.models.checkpoint import build_model, load_model

ort = pytest.importorskip("onnxruntime")

LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *(f"##{c}" for c in LETTERS), *",.?'-"]
CONFIG = dict(model_type="bert", vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=128)
SETTINGS = dict(max_seq_length=64, doc_stride=16, max_query_length=20)
LONG = ("Velkadra was founded by Ingrid Novak in 1312. Its main industry is glassblowing. The river Oster "
        "flows through the old quarter. About 12,400 people live there today. Locals are proud of their "
        "rowing club, which won the valley cup in 1902.")
EXAMPLES = [  # hand-made: a short context, a long one cut into several windows, an unanswerable question
    {"id": "a", "question": "Who founded Kalo?", "context": "Kalo was founded by Amelia Brandt.",
     "answers": {"text": ["Amelia Brandt"], "answer_start": [20]}},
    {"id": "b", "question": "Which river flows through Velkadra?", "context": LONG,
     "answers": {"text": ["Oster"], "answer_start": [LONG.index("Oster")]}},
    {"id": "c", "question": "What club won the cup?", "context": LONG,
     "answers": {"text": ["rowing club"], "answer_start": [LONG.index("rowing club")]}},
    {"id": "d", "question": "How tall is the tower?", "context": LONG, "answers": {"text": [], "answer_start": []}},
]


@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory):
    """A tiny BERT QA checkpoint with strongly perturbed random weights: logits spread wide enough
    that no two candidate answers tie."""
    folder = tmp_path_factory.mktemp("pipeline") / "qa"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = load_tokenizer(folder)
    tokenizer.save(folder)
    torch.manual_seed(0)
    model = build_model(CONFIG, "qa")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    return folder


def reference_predictions(folder, version_2: bool, threshold: float = 0.0):
    """hone qa's evaluation path by hand: eval features, hone's padded torch logits, post-processing."""
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, "qa").eval()
    features = prepare_eval_features(EXAMPLES, tokenizer, progress=False, **SETTINGS)
    rows = [features[i] for i in range(len(features))]
    with torch.no_grad():
        out = model(**pad_collate(rows, features.pad_token_id, SETTINGS["max_seq_length"]))
    assert len(set(features.example_index.tolist())) == len(EXAMPLES) and len(features) > len(EXAMPLES)
    return postprocess_qa_predictions(EXAMPLES, features.example_index, features.offsets,
                                      out.start_logits.numpy(), out.end_logits.numpy(),
                                      version_2_with_negative=version_2, null_score_diff_threshold=threshold)


@pytest.fixture(scope="module")
def qa_onnx(qa_folder, tmp_path_factory):
    from hone.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("pipeline-onnx")
    export_onnx(qa_folder, "qa", out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("version_2", [False, True])
@pytest.mark.parametrize("backend", ["torch", "torch-unpadded", "onnxruntime"])
def test_qa_answers_equal_postprocessed_torch_logits(qa_folder, qa_onnx, backend, version_2):
    # SQuAD 2.0: a no-answer threshold at the median null odds, so that some answers are ""
    threshold = float(np.median(list(reference_predictions(qa_folder, True).null_odds.values()))) if version_2 else 0.0
    expected = reference_predictions(qa_folder, version_2, threshold)
    if version_2:
        assert "" in expected.predictions.values() and set(expected.predictions.values()) != {""}
    model = qa_onnx if backend == "onnxruntime" else qa_folder
    qa = pipeline("question-answering", model, backend=backend, version_2_with_negative=version_2, batch_size=3,
                  null_score_diff_threshold=threshold, **SETTINGS)
    got = qa.predict(EXAMPLES)
    assert got.predictions == expected.predictions
    if version_2:
        assert got.null_odds.keys() == expected.null_odds.keys()
        np.testing.assert_allclose(list(got.null_odds.values()), list(expected.null_odds.values()), atol=1e-4)
    answers = qa(examples=EXAMPLES)
    for example, answer in zip(EXAMPLES, answers):
        assert answer["answer"] == expected.predictions[example["id"]]
        assert example["context"][answer["start"]:answer["end"]] == answer["answer"]
        assert 0.0 < answer["score"] <= 1.0


def test_single_question_returns_one_answer(qa_folder):
    qa = hone.pipeline("question-answering", qa_folder, **SETTINGS)  # the lazy attribute of the package
    answer = qa(question=EXAMPLES[0]["question"], context=EXAMPLES[0]["context"])
    expected = reference_predictions(qa_folder, False).predictions["a"]
    assert answer["answer"] == expected and EXAMPLES[0]["context"][answer["start"]:answer["end"]] == expected
    two = qa(question=[EXAMPLES[0]["question"], "Who?"], context=EXAMPLES[0]["context"])
    assert [a["id"] for a in two] == ["0", "1"]


def test_predict_writes_the_files_hone_qa_writes(qa_folder, tmp_path):
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(ex) + "\n" for ex in EXAMPLES))
    out = tmp_path / "out"
    assert predict(["--task", "qa", "--model", str(qa_folder), "--data", str(data), "--output_dir", str(out),
                    "--backend", "torch", "--max_seq_length", "64", "--doc_stride", "16",
                    "--max_query_length", "20"]) == 0
    expected = reference_predictions(qa_folder, True)  # the data has an unanswerable question: SQuAD 2.0
    assert json.loads((out / "predictions.json").read_text()) == expected.predictions
    assert json.loads((out / "nbest_predictions.json").read_text()).keys() == expected.nbest.keys()
    assert json.loads((out / "null_odds.json").read_text()).keys() == expected.null_odds.keys()
    results = json.loads((out / "predict_results.json").read_text())
    official = squad_evaluate(EXAMPLES, expected.predictions, na_probs=expected.null_odds)
    assert results["predict_f1"] == pytest.approx(official["f1"])
    assert results["predict_NoAns_total"] == 1


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline") / "cls"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    load_tokenizer(folder).save(folder)
    torch.manual_seed(1)
    model = build_model(CONFIG, "classification", id2label={0: "negative", 1: "neutral", 2: "positive"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    return folder


def test_classification_scores_are_the_softmax_of_the_logits(classifier):
    texts = ["a fine film", "dull and long, very long", "ok"]
    tokenizer = load_tokenizer(classifier)
    model = load_model(classifier, "classification").eval()
    rows = [{"input_ids": e.ids, "attention_mask": [1] * len(e.ids), "token_type_ids": e.type_ids}
            for e in tokenizer.encode_batch(texts)]
    with torch.no_grad():
        probs = torch.softmax(model(**pad_collate(rows, 0)).logits, -1).numpy()
    classify = pipeline("text-classification", classifier, backend="torch", batch_size=2)
    best = classify(texts)
    names = ["negative", "neutral", "positive"]
    assert [b["label"] for b in best] == [names[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([b["score"] for b in best], probs.max(1), atol=1e-5)
    ranked = classify(texts[0], top_k=None)
    assert [r["label"] for r in ranked] == [names[i] for i in np.argsort(-probs[0])]
    np.testing.assert_allclose(sum(r["score"] for r in ranked), 1.0, atol=1e-6)


def test_predict_classification_prints_labels(classifier, capsys):
    assert predict(["--task", "classification", "--model", str(classifier), "--text", "a fine film",
                    "--backend", "torch"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["label"] in {"negative", "neutral", "positive"} and 0 < result["score"] < 1


def test_unknown_task_and_bad_arguments_are_explained(qa_folder):
    with pytest.raises(PipelineError, match="unknown pipeline task 'summarization'"):
        pipeline("summarization", qa_folder)
    with pytest.raises(PipelineError, match="max_seq_length 512 is longer than the model's 128 positions"):
        pipeline("question-answering", qa_folder, max_seq_length=512)
    qa = pipeline("question-answering", qa_folder, **SETTINGS)
    with pytest.raises(PipelineError, match="2 questions but 3 contexts"):
        qa(question=["a", "b"], context=["x", "y", "z"])
    with pytest.raises(PipelineError, match="--data FILE or --question"):
        predict(["--task", "qa", "--model", str(qa_folder)])
