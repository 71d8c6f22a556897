"""Question files in, answers files out: the one reader and the one writer every runner uses.

Torch-free, so a runner can check its whole question file before it loads a model. The policy (also in
eval/README.md, "Question and answers files"):

Questions (`read_questions`): LLaVA question JSONL, or a JSON list. Each record is an object with a
`question_id` and a non-empty string `text`; ids are unique. Undecodable bytes, invalid JSON, a
non-object, a missing key, an empty question or a repeated id is an error that names `file:line` (the
first of each; the count when there are more), raised before any model loads.
A record without `image` is a text-only question: System-1 answerers answer it from the text and count
it (`text_only` in their summary); runners that need an image write the answer row with
`metadata.error` instead. An image that cannot be read gives an answer row with `text: ""` and
`metadata.error`. Nothing is dropped or renamed silently.

Answers (`AnswersFile`): one writer at a time, enforced by an exclusive lock on `<answers>.lock` (a
second run fails at once naming the first one's pid). Each row carries a `fingerprint` of what it
answers: the question record, the image file's bytes, the model and the generation settings. On a
rerun a row counts as done only if its fingerprint matches the question as it is now; rows for changed
questions (and rows without a fingerprint) are removed and answered again, with a notice, and a line
cut off by a kill is removed. So a rerun never duplicates, loses or silently reuses an answer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

# How many bad records an error message quotes.
MAX_QUOTED = 5


class QuestionFileError(ValueError):
    """A question file that cannot be answered as it is; the message names file:line."""


def iter_records(path: str | Path) -> list[tuple[str, dict]]:
    """(location, record) for every record of a JSONL file or JSON list; any malformed one raises.

    Location is `file:line` for JSONL and `file: record i` for a JSON list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise QuestionFileError(
            f"{path}:{line}: not UTF-8 (byte {raw[e.start]:#x} at offset {e.start}); re-save the file as UTF-8"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    rows: list[tuple[str, object]] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise QuestionFileError(f"{path}:{n}: invalid JSON line: {e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise QuestionFileError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(data, list):
            raise QuestionFileError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        rows = [(f"{path}: record {i}", r) for i, r in enumerate(data)]
    for where, row in rows:
        if not isinstance(row, dict):
            raise QuestionFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return rows  # type: ignore[return-value]


class Questions(list):
    """The records of a question file, in order, with `where[question_id]` = their `file:line`."""

    def __init__(self, rows: Iterable[dict] = (), where: dict | None = None):
        super().__init__(rows)
        self.where: dict = where or {}


def read_questions(path: str | Path) -> Questions:
    """Every record of a question file, checked (see the module docstring); raises naming file:line."""
    problems: list[str] = []
    rows, where, first_seen = [], {}, {}
    for loc, row in iter_records(path):
        if "question_id" not in row:
            problems.append(f"{loc}: question has no 'question_id'")
            continue
        qid = row["question_id"]
        text = row.get("text")
        if "text" not in row:
            problems.append(f"{loc}: question has no 'text'")
        elif not isinstance(text, str):
            problems.append(f"{loc}: 'text' must be a string, got {type(text).__name__}")
        elif not text.strip():
            problems.append(f"{loc}: question {qid!r} is empty")
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            problems.append(f"{loc}: 'question_id' must be a string or an integer, got {qid!r}")
            continue
        if qid in first_seen:
            problems.append(f"{loc}: duplicate question_id {qid!r} (first at {first_seen[qid]})")
            continue
        first_seen[qid] = loc
        image = row.get("image")
        if image is not None and not (isinstance(image, str) and image.strip()):
            problems.append(f"{loc}: question {qid!r}: 'image' must be a non-empty file name, got {image!r}")
        rows.append(row)
        where[qid] = loc
    if problems:
        more = f" (and {len(problems) - MAX_QUOTED} more)" if len(problems) > MAX_QUOTED else ""
        raise QuestionFileError(
            f"{len(problems)} bad question record(s): " + "; ".join(problems[:MAX_QUOTED]) + more
        )
    return Questions(rows, where)


# --- fingerprints ----------------------------------------------------------------------------------------
def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha1 of a file's bytes ("missing" when it cannot be read)."""
    try:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return "missing"


def model_signature(*paths: str | Path | None) -> str:
    """What identifies the weights a run answers with: for each local path, its resolved location and
    the size and modification time of each file in it (a retrained checkpoint in the same folder changes
    it); a hub id stands for itself."""
    parts = []
    for p in paths:
        if not p:
            continue
        path = Path(p)
        if path.exists():
            files = sorted(path.iterdir()) if path.is_dir() else [path]
            stats = [
                (
                    str(f.relative_to(path)) if path.is_dir() else f.name,
                    f.stat().st_size,
                    f.stat().st_mtime_ns,
                )
                for f in files
                if f.is_file() and not f.name.startswith(".")
            ]
            parts.append([str(path.resolve()), stats])
        else:
            parts.append(str(p))
    return _sha1(json.dumps(parts, sort_keys=True, default=str).encode())


def question_fingerprint(question: dict, image_path: str | Path | None, settings: dict) -> str:
    """sha1 of the question record, its image's bytes and the run's settings (model, generation)."""
    blob = {
        "question": question,
        "image": file_digest(image_path) if image_path else None,
        "settings": settings,
    }
    return _sha1(json.dumps(blob, sort_keys=True, default=str).encode())


def fingerprints(questions: Iterable[dict], image_folder: str | Path | None, settings: dict) -> dict:
    """question_id → fingerprint for LLaVA questions whose `image` is relative to `image_folder`."""
    folder = Path(image_folder) if image_folder else None
    return {
        q["question_id"]: question_fingerprint(
            q, (folder / q["image"]) if q.get("image") and folder is not None else q.get("image"), settings
        )
        for q in questions
    }


# --- answers ---------------------------------------------------------------------------------------------
class AnswersBusy(RuntimeError):
    """Another process holds the answers file."""


def lock_path_for(answers_file: str | Path) -> Path:
    p = Path(answers_file)
    return p.with_name(p.name + ".lock")


class AnswersFile:
    """An answers JSONL opened for a resumable run: locked, repaired and checked against the questions.

        with AnswersFile(path, expected) as answers:   # expected: question_id -> fingerprint
            todo = [q for q in questions if q["question_id"] not in answers.done]
            answers.append(rows)                        # each row gets its fingerprint

    `done` holds the ids whose stored answer matches the question as it is now; `redone` counts the
    rows removed because their question (image, model, settings) changed or they had no fingerprint.
    """

    def __init__(self, path: str | Path, expected: dict, *, quiet: bool = False):
        self.path = Path(path)
        self.expected = expected
        self.quiet = quiet
        self.done: dict = {}
        self.redone = 0
        self._lock_fd: int | None = None

    # The lock: flock on a sidecar file (never removed, so two runs can never lock different inodes).
    def _lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_path_for(self.path)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AnswersBusy(
                f"{self.path} is being written by another run (pid {holder}); wait for it to finish "
                "or choose another answers file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        keep: list[bytes] = []
        changed = False
        stale_examples = []
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):  # cut off by a kill
                changed = True
                continue
            try:
                row = json.loads(line)
                qid = row["question_id"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                changed = True  # unreadable: whatever it answered is answered again
                continue
            if qid not in self.expected:
                keep.append(line)  # not ours to judge (another chunk's or an unknown id): left as it is
                continue
            if qid in self.done:
                changed = True  # a second answer to the same question: the first one stands
                continue
            if row.get("fingerprint") != self.expected[qid]:
                self.redone += 1
                changed = True
                if len(stale_examples) < 3:
                    stale_examples.append(repr(qid))
                continue
            self.done[qid] = row
            keep.append(line)
        if changed:
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as f:
                f.write(b"".join(keep))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        if self.redone and not self.quiet:
            print(
                f"{self.path}: {self.redone} stored answer(s) no longer match their question, image, model or "
                f"settings (e.g. question_id {', '.join(stale_examples)}); answering them again",
                flush=True,
            )

    def __enter__(self) -> AnswersFile:
        self._lock()
        try:
            self._load()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._unlock()

    def append(self, rows: list[dict]) -> None:
        """Append rows (each stamped with its question's fingerprint), flushed and synced: the commit point."""
        if self._lock_fd is None:
            raise RuntimeError("AnswersFile.append outside its `with` block")
        lines = []
        for r in rows:
            r = {**r, "fingerprint": self.expected.get(r["question_id"])}
            self.done[r["question_id"]] = r
            lines.append(json.dumps(r) + "\n")
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())


def stored_fingerprints(path: str | Path) -> dict:
    """question_id → stored fingerprint of the first parseable row of each id (no lock, read only)."""
    out: dict = {}
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            continue
        try:
            row = json.loads(line)
            out.setdefault(row["question_id"], row.get("fingerprint"))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            continue
    return out
