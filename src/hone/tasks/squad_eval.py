"""`hone squad-eval`: the official SQuAD v1.1/v2.0 evaluation of a predictions file.

Same inputs and output as the official evaluate-v2.0.py (data JSON, predictions JSON,
optional na-prob file; prints the result dict with indent 2). The version is read from the
data: any question without answers makes it SQuAD 2.0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hone.data.squad import read_json_file, read_squad
from hone.errors import HoneError, SquadFormatError
from hone.metrics.squad import qid_to_has_ans, squad_evaluate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hone squad-eval", description=__doc__.splitlines()[0])
    p.add_argument("data_file", metavar="DATA.json", help="SQuAD v1.1 or v2.0 data file (official JSON format).")
    p.add_argument("pred_file", metavar="PREDICTIONS.json", help="JSON object: question id -> answer text ('' = no answer).")
    p.add_argument("--na-prob-file", "-n", help="JSON object: question id -> no-answer probability or null odds "
                   "(null_odds.json); adds best_exact/best_f1 and their thresholds.")
    p.add_argument("--na-prob-thresh", "-t", type=float, default=1.0,
                   help="Predict no answer when the na-prob exceeds this (default 1.0).")
    p.add_argument("--out", "-o", help="Also write the result JSON to this file.")
    return p


def _read_predictions(path: str) -> dict[str, str]:
    preds = read_json_file(path, "predictions")
    if not isinstance(preds, dict):
        raise SquadFormatError(f"predictions file {path} must be a JSON object of question id -> answer text, "
                               f"got a JSON {type(preds).__name__}")
    for qid, text in preds.items():
        if not isinstance(text, str):
            raise SquadFormatError(f"predictions file {path}: the answer for '{qid}' is {json.dumps(text)}, "
                                   "expected a string ('' means no answer)")
    return preds


def _read_na_probs(path: str) -> dict[str, float]:
    probs = read_json_file(path, "na-prob")
    if not isinstance(probs, dict):
        raise SquadFormatError(f"na-prob file {path} must be a JSON object of question id -> number")
    for qid, value in probs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SquadFormatError(f"na-prob file {path}: the value for '{qid}' is {json.dumps(value)}, expected a number")
    return probs


def evaluate_files(data_file: str, pred_file: str, na_prob_file: str | None = None,
                   na_prob_thresh: float = 1.0) -> dict:
    """Read, check and score; then report missing and unknown ids on stderr (after scoring, so
    that bad input gives a single error line)."""
    dataset = read_squad(data_file, locate_answers=False)
    preds = _read_predictions(pred_file)
    na_probs = _read_na_probs(na_prob_file) if na_prob_file else None
    result = squad_evaluate(dataset, preds, na_probs=na_probs, na_prob_thresh=na_prob_thresh)
    has_ans = qid_to_has_ans(dataset)
    version_2 = not all(has_ans.values())
    for qid in has_ans:
        if qid not in preds:  # the official scripts' messages
            print(f"Missing prediction for {qid}" if version_2 else f"Unanswered question {qid} will receive score 0.",
                  file=sys.stderr)
    unknown = [qid for qid in preds if qid not in has_ans]
    if unknown:
        print(f"warning: {len(unknown)} prediction id(s) are not in {data_file} and are ignored, e.g. '{unknown[0]}'",
              file=sys.stderr)
    return result


def main(argv: list[str]) -> int:
    try:
        opts = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    result = evaluate_files(opts.data_file, opts.pred_file, opts.na_prob_file, opts.na_prob_thresh)
    text = json.dumps(result, indent=2)
    print(text)
    if opts.out:
        try:
            Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
            Path(opts.out).write_text(text + "\n", encoding="utf-8")
        except OSError as e:
            raise HoneError(f"cannot write --out {opts.out}: {e.strerror}") from None
    return 0
