"""`hone predict`: answers and labels from a checkpoint folder or an ONNX export.

  hone predict --task qa --model DIR|model.onnx --data dev.json --output_dir OUT
  hone predict --task qa --model DIR --question "Who?" --context "..."
  hone predict --task classification --model DIR --text "a fine film" [--text_pair ...]
  hone predict --task classification --model DIR --data texts.tsv --output_dir OUT

A SQuAD file gets predictions.json, nbest_predictions.json and (SQuAD 2.0) null_odds.json as
`hone qa` writes them, and the official metrics when the file has answers; single questions
and texts print their result as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from hone.data.squad import has_unanswerable, read_squad
from hone.engine.output_dir import OutputDir
from hone.export import inputs
from hone.export.pipeline import PipelineError, pipeline
from hone.export.runtime import BACKENDS, PRECISIONS
from hone.metrics.squad import squad_evaluate

log = logging.getLogger("hone")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hone predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["qa", "classification"])
    p.add_argument("--model", required=True, help="Checkpoint folder, export folder or .onnx file.")
    p.add_argument("--data", help="qa: SQuAD .json/.jsonl; classification: .tsv with a header, or one text per line.")
    p.add_argument("--output_dir", help="Where prediction files go (needed with --data).")
    p.add_argument("--question", action="append", help="qa: a question (repeat for several).")
    p.add_argument("--context", help="qa: the context the questions are about.")
    p.add_argument("--text", action="append", help="classification: a text (repeat for several).")
    p.add_argument("--text_pair", action="append", help="classification: the second text of each pair.")
    p.add_argument("--top_k", type=int, default=1, help="classification: labels per text (0: all).")
    p.add_argument("--backend", choices=BACKENDS, help="Default: onnxruntime for ONNX, else torch-unpadded.")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--device", default="cpu", help="cpu or cuda.")
    p.add_argument("--threads", type=int, help="CPU threads (default: the libraries').")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--max_query_length", type=int)
    p.add_argument("--passage_first", action="store_true", help="Passage before question, 'Q: ' prefix (seed 002).")
    p.add_argument("--n_best_size", type=int, default=20)
    p.add_argument("--max_answer_length", type=int, default=30)
    p.add_argument("--version_2_with_negative", action="store_true",
                   help="Allow 'no answer' (read from the data when it has unanswerable questions).")
    p.add_argument("--null_score_diff_threshold", type=float, default=0.0)
    return p.parse_args(argv)


def predict_qa(args: argparse.Namespace) -> int:
    if (args.data is None) == (args.question is None):
        raise PipelineError("--task qa takes --data FILE or --question Q --context C")
    if args.question and args.context is None:
        raise PipelineError("--question needs --context")
    if args.data and not args.output_dir:
        raise PipelineError("--data needs --output_dir for the prediction files")
    examples = read_squad(args.data) if args.data else None
    labelled = examples is not None and any(ex["answers"]["text"] for ex in examples)
    v2 = has_unanswerable(examples) if labelled else args.version_2_with_negative
    qa = pipeline("question-answering", args.model, backend=args.backend, precision=args.precision,
                  device=args.device, threads=args.threads, batch_size=args.batch_size,
                  max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                  max_query_length=args.max_query_length, passage_first=args.passage_first,
                  n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
                  version_2_with_negative=v2, null_score_diff_threshold=args.null_score_diff_threshold)
    if examples is None:
        questions = args.question[0] if len(args.question) == 1 else args.question
        print(json.dumps(qa(question=questions, context=args.context), indent=2, ensure_ascii=False))
        return 0
    result = qa.predict(examples)
    output = OutputDir(args.output_dir)
    files = [output.write_json(name, content, kind="predictions") for name, content in result.files().items()]
    log.info("hone predict: %d questions, wrote %s", len(examples), ", ".join(str(f) for f in files))
    if labelled:
        metrics = {f"predict_{k}": v for k, v in
                   squad_evaluate(examples, result.predictions, na_probs=result.null_odds if v2 else None).items()}
        output.write_json("predict_results.json", metrics, kind="results")
        print(json.dumps(metrics, indent=2))
    return 0


def predict_classification(args: argparse.Namespace) -> int:
    if (args.data is None) == (args.text is None):
        raise PipelineError("--task classification takes --data FILE or --text T")
    if args.data and not args.output_dir:
        raise PipelineError("--data needs --output_dir for the prediction file")
    texts, pairs = (args.text, args.text_pair) if args.text else inputs.read_texts(args.data)[:2]
    single = args.text is not None and len(args.text) == 1
    classify = pipeline("text-classification", args.model, backend=args.backend, precision=args.precision,
                        device=args.device, threads=args.threads, batch_size=args.batch_size,
                        max_length=args.max_seq_length)
    results = classify(texts[0] if single else texts, (pairs[0] if pairs else None) if single else pairs,
                       top_k=args.top_k or None)
    if args.data is None:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    lines = [json.dumps({"text": t, **({"text_pair": pairs[i]} if pairs else {}), "prediction": r},
                        ensure_ascii=False) for i, (t, r) in enumerate(zip(texts, results))]
    path = OutputDir(args.output_dir).write_text("predictions.jsonl", "\n".join(lines) + "\n", kind="predictions")
    log.info("hone predict: %d texts, wrote %s", len(texts), path)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return predict_qa(args) if args.task == "qa" else predict_classification(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
