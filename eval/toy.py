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
