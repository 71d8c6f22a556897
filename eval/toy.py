"""Scoring on the toy world's validation questions: accuracy on easy, hard and all questions."""

from __future__ import annotations

import json
from pathlib import Path


def normalize_short_answer(text: str) -> str:
    """Short answers compare case-insensitively, without surrounding spaces or a final period."""
    return text.strip().rstrip(".").strip().lower()


def read_answers(answers_file: str | Path) -> dict[str, dict]:
    """Answer rows by `question_id`; a duplicate id is an error that names the file and line."""
    rows: dict[str, dict] = {}
    for n, line in enumerate(Path(answers_file).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row["question_id"] in rows:
            raise ValueError(f"{answers_file}:{n}: duplicate question_id {row['question_id']!r}")
        rows[row["question_id"]] = row
    return rows


def toy_accuracy(answers_file: str | Path, annotations_file: str | Path) -> dict:
    """`acc_easy`, `acc_hard`, `acc_all` (0-1) and counts; unanswered questions count as wrong."""
    annotations = json.loads(Path(annotations_file).read_text())
    answers = read_answers(answers_file)
    correct = {"easy": 0, "hard": 0}
    total = {"easy": 0, "hard": 0}
    for qid, ann in annotations.items():
        total[ann["difficulty"]] += 1
        pred = answers.get(qid, {}).get("text", "")
        correct[ann["difficulty"]] += normalize_short_answer(pred) == normalize_short_answer(ann["answer"])
    n = total["easy"] + total["hard"]
    return {
        "acc_easy": correct["easy"] / max(1, total["easy"]),
        "acc_hard": correct["hard"] / max(1, total["hard"]),
        "acc_all": (correct["easy"] + correct["hard"]) / max(1, n),
        "n_easy": total["easy"],
        "n_hard": total["hard"],
        "n_unanswered": sum(qid not in answers for qid in annotations),
    }


def _normalised_xyxy(box_xywh: list[float], image_size: list[int]) -> tuple[float, float, float, float]:
    """Pixel [x, y, w, h] → [x1, y1, x2, y2] on LLaVA's padded square, normalised by its side."""
    width, height = image_size
    side = max(width, height)
    ox, oy = (side - width) // 2, (side - height) // 2
    x, y, w, h = box_xywh
    return (x + ox) / side, (y + oy) / side, (x + w + ox) / side, (y + h + oy) / side


def _intersection(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _area(a) -> float:
    return max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])


def toy_roi_metrics(
    answers_file: str | Path, annotations_file: str | Path, *, cover: float = 0.9, two_stage: bool = True
) -> dict:
    """The ROI adapter's acceptance numbers from its answers (`metadata.roi_box`, `fallback`); with
    `two_stage`, the accuracy of the stage-2 answers too (a region-only adapter answers with its region).

    A ROI covers the target when at least `cover` of the target box lies inside it; a fallback to
    the full image proposes no region and never counts as covering. IoU is taken against the
    labelled ROI; sides are fractions of the padded square's side (a fallback's is 1).
    """
    annotations = json.loads(Path(annotations_file).read_text())
    answers = read_answers(answers_file)
    covered = iou50 = n_hard = fallbacks = 0
    sides = []
    for qid, ann in annotations.items():
        meta = answers[qid]["metadata"] if qid in answers else {}
        roi = meta.get("roi_box") or [0.0, 0.0, 1.0, 1.0]
        fell_back = bool(meta.get("fallback")) or qid not in answers
        fallbacks += fell_back
        sides.append(max(roi[2] - roi[0], roi[3] - roi[1]))
        if ann["difficulty"] != "hard":
            continue
        n_hard += 1
        target = _normalised_xyxy(ann["target"]["bbox"], ann["image_size"])
        covered += not fell_back and _intersection(roi, target) >= cover * _area(target)
        label = ann["roi_box"]
        inter = _intersection(roi, label)
        iou50 += inter / max(1e-9, _area(roi) + _area(label) - inter) >= 0.5
    metrics = {
        "target_covered_rate_hard": covered / max(1, n_hard),
        "mean_roi_side_frac": sum(sides) / max(1, len(sides)),
        "iou50_rate_hard": iou50 / max(1, n_hard),
        "fallback_rate": fallbacks / max(1, len(annotations)),
    }
    if two_stage:
        acc = toy_accuracy(answers_file, annotations_file)
        metrics |= {"acc_hard_two_stage": acc["acc_hard"], "acc_easy_two_stage": acc["acc_easy"]}
    return metrics
