"""Toy-world scoring: accuracy by difficulty and the ROI acceptance numbers, on hand-made files."""

import json

import pytest

from eval.toy import read_answers, toy_accuracy, toy_roi_metrics


def ann(difficulty, answer, bbox=(0, 0, 10, 10), size=(100, 100), roi_box=(0.0, 0.0, 0.5, 0.5)):
    return {
        "difficulty": difficulty,
        "answer": answer,
        "image_size": list(size),
        "target": {"bbox": list(bbox)},
        "roi_box": list(roi_box),
    }


def write(tmp_path, annotations, answers):
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    return tmp_path / "a.jsonl", tmp_path / "ann.json"


def test_accuracy_by_difficulty(tmp_path):
    annotations = {
        "e1": ann("easy", "red"),
        "e2": ann("easy", "plain"),
        "h1": ann("hard", "checkered"),
        "h2": ann("hard", "plain"),
    }
    answers = [
        {"question_id": "e1", "text": " Red."},  # case, space and final period are ignored
        {"question_id": "e2", "text": "striped"},
        {"question_id": "h1", "text": "checkered"},
    ]  # h2 unanswered: counted wrong
    acc = toy_accuracy(*write(tmp_path, annotations, answers))
    assert acc == {
        "acc_easy": 0.5,
        "acc_hard": 0.5,
        "acc_all": 0.5,
        "n_easy": 2,
        "n_hard": 2,
        "n_unanswered": 1,
    }


def test_roi_metrics(tmp_path):
    # 100x50 image: padded side 100, oy = 25. Target [10, 10, 10, 10] px -> normalised [0.1, 0.35, 0.2, 0.45].
    annotations = {
        "h1": ann("hard", "plain", bbox=(10, 10, 10, 10), size=(100, 50), roi_box=(0.0, 0.25, 0.5, 0.75)),
        "h2": ann("hard", "plain", bbox=(10, 10, 10, 10), size=(100, 50), roi_box=(0.0, 0.25, 0.5, 0.75)),
        "h3": ann("hard", "plain", bbox=(10, 10, 10, 10), size=(100, 50), roi_box=(0.0, 0.25, 0.5, 0.75)),
        "e1": ann("easy", "red"),
    }
    answers = [
        {
            "question_id": "h1",
            "text": "plain",
            "metadata": {"roi_box": [0.0, 0.25, 0.5, 0.75], "fallback": None},
        },
        # covers x 0.1..0.15 of the target (half of it) and lies inside the label: IoU 0.03 / 0.25
        {"question_id": "h2", "text": "x", "metadata": {"roi_box": [0.0, 0.3, 0.15, 0.5], "fallback": None}},
        # the full image after a fallback holds the target, but no region was proposed
        {
            "question_id": "h3",
            "text": "x",
            "metadata": {"roi_box": [0.0, 0.0, 1.0, 1.0], "fallback": "inverted box"},
        },
        {
            "question_id": "e1",
            "text": "red",
            "metadata": {"roi_box": [0.0, 0.0, 1.0, 1.0], "fallback": "unparsable"},
        },
    ]
    m = toy_roi_metrics(*write(tmp_path, annotations, answers))
    assert m["target_covered_rate_hard"] == pytest.approx(1 / 3)
    assert m["iou50_rate_hard"] == pytest.approx(1 / 3)
    assert m["mean_roi_side_frac"] == pytest.approx((0.5 + 0.2 + 1.0 + 1.0) / 4)
    assert m["fallback_rate"] == pytest.approx(2 / 4)
    assert m["acc_hard_two_stage"] == pytest.approx(1 / 3) and m["acc_easy_two_stage"] == 1.0
    # a region-only adapter answers with its region: the same region figures, no answer accuracy
    region = toy_roi_metrics(*write(tmp_path, annotations, answers), two_stage=False)
    assert region == {k: v for k, v in m.items() if not k.endswith("_two_stage")}


def test_duplicate_answers_are_an_error(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question_id": "q"}\n{"question_id": "q"}\n')
    with pytest.raises(ValueError, match="a.jsonl:2: duplicate question_id 'q'"):
        read_answers(tmp_path / "a.jsonl")
