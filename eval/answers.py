"""Reading LLaVA answer files defensively: every irregularity is counted, none is fatal or silent.

A benchmark number is only worth something if one knows what it was computed from. `read_answers`
joins an answer JSONL to the questions it should answer by `question_id` (never by line order) and
returns the usable predictions together with an `AnswerCheck`: how many questions are missing, how
many lines were duplicates, unknown or unreadable, how many predictions are empty or too long and how
many carry an error (a missing image). Missing questions are scored as empty predictions, so they
lower the score visibly instead of shrinking the denominator.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# How many examples of each problem a summary quotes (file:line or question id).
MAX_EXAMPLES = 5


@dataclass
class AnswerCheck:
    """Counts of what was wrong with an answer file, with a few located examples of each."""

    questions: int = 0
    answered: int = 0
    missing: int = 0
    duplicates: int = 0
    unknown_ids: int = 0
    unreadable_lines: int = 0
    empty: int = 0
    too_long: int = 0
    errors: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, where: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        quoted = self.examples.setdefault(kind, [])
        if len(quoted) < MAX_EXAMPLES:
            quoted.append(where)

    @property
    def problems(self) -> dict[str, int]:
        """Only the non-zero problem counts (what a summary should shout about)."""
        keys = ("missing", "duplicates", "unknown_ids", "unreadable_lines", "empty", "too_long", "errors")
        return {k: getattr(self, k) for k in keys if getattr(self, k)}

    def to_dict(self) -> dict:
        return asdict(self)


def read_answer_lines(path: Path, check: AnswerCheck) -> list[tuple[int, dict]]:
    """(line number, row) for every parseable line with a `question_id`; the rest is counted."""
    rows = []
    if not path.exists():
        return rows
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            check.note("unreadable_lines", f"{path}:{n}: not JSON")
            continue
        if not isinstance(row, dict) or "question_id" not in row:
            check.note("unreadable_lines", f"{path}:{n}: no question_id")
            continue
        rows.append((n, row))
    return rows


def word_count(text: str) -> int:
    return len(text.split())


def read_answers(
    path: str | Path, question_ids: list, *, max_answer_words: int | None = None
) -> tuple[dict, AnswerCheck]:
    """Predictions by question id (first occurrence wins) and the checks of `path` against `question_ids`.

    `max_answer_words` flags (does not truncate) predictions longer than a benchmark's answer format
    allows, e.g. a sentence where "a single word or phrase" was asked for.
    """
    path = Path(path)
    check = AnswerCheck(questions=len(question_ids))
    expected = set(question_ids)
    answers: dict = {}
    for n, row in read_answer_lines(path, check):
        qid = row["question_id"]
        where = f"{path}:{n}: question_id {qid!r}"
        if qid not in expected:
            check.note("unknown_ids", where)
            continue
        if qid in answers:
            check.note("duplicates", where)
            continue
        text = row.get("text")
        if not isinstance(text, str):
            text = "" if text is None else str(text)
            row = {**row, "text": text}
        answers[qid] = row
        if (row.get("metadata") or {}).get("error"):
            check.note("errors", f"{where}: {row['metadata']['error']}")
        if not text.strip():
            check.note("empty", where)
        elif max_answer_words is not None and word_count(text) > max_answer_words:
            check.note("too_long", f"{where}: {word_count(text)} words")
    check.answered = len(answers)
    for qid in question_ids:
        if qid not in answers:
            check.note("missing", f"question_id {qid!r}")
    return answers, check


def answered_ids(path: Path) -> set:
    """Question ids with a parseable answer line (what a resumed chunk has already done)."""
    return {row["question_id"] for _, row in read_answer_lines(path, AnswerCheck())}


def merge_files(parts: list[Path], merged: Path) -> int:
    """Concatenate the parseable lines of `parts`, in order, into `merged`; returns the line count.

    Unparseable lines (a chunk killed mid-write) are left out here and show up as missing answers.
    """
    merged.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for part in parts:
        lines += [json.dumps(row) + "\n" for _, row in read_answer_lines(part, AnswerCheck())]
    tmp = merged.with_suffix(merged.suffix + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(merged)
    return len(lines)
