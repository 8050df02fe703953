"""`hone squad-eval` through hone.cli.main: official numbers, messages and input errors."""

import json

import pytest

from hone.cli import main
from paths import DATA as SHARED_DATA

DATA = SHARED_DATA / "squad"


def small_dataset(v2: bool) -> dict:
    qas = [{"id": "q1", "question": "Who?", "answers": [{"text": "Rollo", "answer_start": 0}]},
           {"id": "q2", "question": "When?", "answers": [{"text": "in 911", "answer_start": 10},
                                                         {"text": "911", "answer_start": 13}]}]
    if v2:
        qas.append({"id": "q3", "question": "Why?", "answers": [], "is_impossible": True})
    return {"version": "v2.0" if v2 else "1.1",
            "data": [{"title": "Normans", "paragraphs": [{"context": "Rollo came in 911.", "qas": qas}]}]}


def write(tmp_path, name, obj) -> str:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def run(capsys, *args):
    rc = main(["squad-eval", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


@pytest.mark.data
def test_official_numbers_and_out_file(capsys, tmp_path):
    if not (DATA / "dev-v2.0.json").exists():
        pytest.skip("../shared/data/squad is absent")
    out_file = tmp_path / "sub" / "eval.json"
    rc, out, err = run(capsys, DATA / "dev-v2.0.json", DATA / "predictions-v2.0-bert-single.json", "--out", out_file)
    assert rc == 0 and err == ""
    result = json.loads(out)
    expected = {"exact": 78.74168280973637, "f1": 81.77528052374723, "total": 11873,
                "HasAns_exact": 74.10593792172739, "HasAns_f1": 80.18183293833508, "HasAns_total": 5928,
                "NoAns_exact": 83.36417157275021, "NoAns_f1": 83.36417157275021, "NoAns_total": 5945}
    assert list(result) == list(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9)
    assert out == json.dumps(result, indent=2) + "\n"  # the official script's printing
    assert json.loads(out_file.read_text()) == result


def test_small_v2_with_na_probs(capsys, tmp_path):
    data = write(tmp_path, "d.json", small_dataset(v2=True))
    preds = write(tmp_path, "p.json", {"q1": "Rollo", "q2": "911 AD", "q3": "Rollo"})
    # best threshold walk, starting from 1 (q3 counted as "no answer"): q1 +1 at -3.0, q2 +0 (exact)
    # or +2/3 (F1) at 0.5, q3 -1 at 2.0 (it answered "Rollo")
    na = write(tmp_path, "na.json", {"q1": -3.0, "q2": 0.5, "q3": 2.0})
    rc, out, err = run(capsys, data, preds, "--na-prob-file", na, "--na-prob-thresh", "1.5")
    assert rc == 0 and err == ""
    result = json.loads(out)
    # q3's na-prob 2.0 > 1.5: counted as "no answer" = correct; q2: exact 0, F1 2/3 ("911 ad" vs "911")
    assert result["exact"] == pytest.approx(100 * 2 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert result["NoAns_exact"] == 100.0 and result["HasAns_total"] == 2
    assert result["best_exact"] == pytest.approx(100 * 2 / 3) and result["best_exact_thresh"] == -3.0
    assert result["best_f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3) and result["best_f1_thresh"] == 0.5


def test_missing_and_unknown_predictions(capsys, tmp_path):
    preds = write(tmp_path, "p.json", {"q1": "Rollo", "zzz": "x"})
    rc, out, err = run(capsys, write(tmp_path, "v2.json", small_dataset(v2=True)), preds)
    assert rc == 0
    assert "Missing prediction for q2" in err and "Missing prediction for q3" in err
    assert "'zzz'" in err and "ignored" in err
    result = json.loads(out)
    assert result["total"] == 3 and result["exact"] == pytest.approx(100 / 3)

    rc, out, err = run(capsys, write(tmp_path, "v1.json", small_dataset(v2=False)), preds)
    assert rc == 0 and "Unanswered question q2 will receive score 0." in err
    result = json.loads(out)
    assert result["total"] == 2 and result["exact"] == 50.0
    assert not any(key.startswith("NoAns") for key in result)  # v1.1 data: no NoAns block


@pytest.mark.parametrize("v2", [False, True])
def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path, v2):
    data = write(tmp_path, "d.json", small_dataset(v2))
    good = write(tmp_path, "p.json", {"q1": "Rollo", "q2": "911", "q3": ""})
    cases = [
        ([tmp_path / "absent.json", good], "absent.json"),
        ([write(tmp_path, "broken.json", '{"version": "1.1", "data": ['), good], "not valid JSON"),
        ([write(tmp_path, "nodata.json", {"version": "1.1"}), good], "'data'"),
        ([write(tmp_path, "noqid.json", {"data": [{"paragraphs": [{"context": "c", "qas": [{"answers": []}]}]}]}), good], "'id'"),
        ([data, write(tmp_path, "list.json", ["Rollo"])], "JSON object"),
        ([data, write(tmp_path, "num.json", {"q1": "Rollo", "q2": 911})], "'q2'"),
        ([data, good, "--na-prob-file", write(tmp_path, "na.json", {"q1": 0.1})], "'q2'"),
        ([data, good, "--na-prob-file", write(tmp_path, "nastr.json", {"q1": "high"})], "'q1'"),
        ([data, good, "--na-prob-file", tmp_path / "no_na.json"], "no_na.json"),
    ]
    for args, needle in cases:
        rc, out, err = run(capsys, *args)
        assert rc == 2, args
        assert out == ""
        assert len(err.strip().splitlines()) == 1 and needle in err, (args, err)


def test_usage(capsys, tmp_path):
    assert main(["squad-eval", "--help"]) == 0
    assert "--na-prob-file" in capsys.readouterr().out
    assert main(["squad-eval", str(tmp_path / "only_one.json")]) == 2
    assert "required" in capsys.readouterr().err
