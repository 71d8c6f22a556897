"""The answering loop every question-file runner shares: chunk, skip what is answered, batch, append, time.

Torch-free: the models come in as callables, so a process that only launches chunks and merges them
(`eval.run --gpus`) never imports the model stack, and every runner (RoiLLaVA's System-1 and ROI
answerers, SwiLLaVA's switch answerer, V*Bench by likelihood, the composed agent) resumes, locks,
fingerprints and reports the same way. Files are read and written by `eval.qa_files`.

    run_questions(question_file, image_folder, answers_file, solve)   # LLaVA question JSONL
    run_batches(rows, answers_file, expected, answer_batch)            # any rows with their fingerprints
    run_items(items, answers_file, settings, answer_batch, model_id=...)   # (row, image, options) items
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .images import open_image
from .logs import quiet_third_party
from .qa_files import AnswersFile, fingerprints, model_signature, question_fingerprint, read_questions
from .vstar_bench import VSTAR_DEFAULT_IMAGE_VIEW, VSTAR_IMAGE_VIEWS, vstar_items, vstar_scores

# What a composed runner (the agent's `fast.run`, `fast.cli`) takes from eval: this module's loop and
# checks, and the few names it re-exports from the modules that own them.
__all__ = [
    "VSTAR_DEFAULT_IMAGE_VIEW",
    "VSTAR_IMAGE_VIEWS",
    "append_lines",
    "check_run_inputs",
    "chunk",
    "open_image",
    "quiet_third_party",
    "read_questions",
    "run_batches",
    "run_items",
    "run_questions",
    "vstar_items",
    "vstar_scores",
]


def chunk(rows: list, num_chunks: int, chunk_idx: int) -> list:
    """LLaVA's split of a question file over GPUs: contiguous, near-equal chunks."""
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx {chunk_idx} outside 0..{num_chunks - 1}")
    size = -(-len(rows) // num_chunks)
    return rows[chunk_idx * size : (chunk_idx + 1) * size]


def batched(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of `n` items (the last one shorter)."""
    batch = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def append_lines(path: Path, rows: list[dict]) -> None:
    """Rows appended as JSON lines, flushed and synced (a side file such as the agent's traces)."""
    with Path(path).open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def answer_row(question: dict, text: str, model_id: str, metadata: dict, **fields) -> dict:
    """One LLaVA answer row (`question_id`, `prompt`, `text`, `answer_id`, `model_id`, `metadata`)."""
    return {
        "question_id": question["question_id"],
        "prompt": question["text"],
        "text": text,
        **fields,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": metadata,
    }


def run_batches(
    rows: list[dict],
    answers_file: str | Path,
    expected: dict,
    answer_batch: Callable[[list[dict], Any], list[dict]],
    *,
    batch_size: int = 8,
    load: Callable[[list[dict]], Any] | None = None,
    order: Callable[[dict], Any] | None = None,
    on_open: Callable[[set], None] | None = None,
    on_commit: Callable[[list[dict], list[dict]], None] | None = None,
    desc: str = "answering",
    progress: bool = True,
) -> dict:
    """Answer the rows whose stored answer is missing or stale, batch by batch; returns counts and timing.

    `expected` maps question_id → fingerprint (`eval.qa_files`). `load(batch)` does a batch's host work
    (reading, decoding images) one batch ahead in a background thread, as LLaVA's evaluation does with
    DataLoader workers; `answer_batch(batch, loaded)` returns one answer row per question of the batch.
    Each batch's rows are appended (the commit point) before `on_commit(batch, rows)` runs;
    `on_open(done_ids)` runs once the answers file is locked and repaired. `order` sorts the questions
    to answer (similar prompts batched together waste less padding; answers are keyed by id).
    """
    start = time.perf_counter()
    with AnswersFile(answers_file, expected, quiet=not progress) as answers:
        if on_open is not None:
            on_open(set(answers.done))
        todo = [q for q in rows if q["question_id"] not in answers.done]
        batches = list(batched(sorted(todo, key=order) if order else todo, batch_size))
        load = load or (lambda batch: None)
        with ThreadPoolExecutor(max_workers=1) as loader:
            ahead = loader.submit(load, batches[0]) if batches else None
            bar = tqdm(total=len(todo), desc=desc, unit="q", disable=not progress)
            for k, batch in enumerate(batches):
                loaded = ahead.result()
                if k + 1 < len(batches):
                    ahead = loader.submit(load, batches[k + 1])
                answered = answer_batch(batch, loaded)
                answers.append(answered)
                if on_commit is not None:
                    on_commit(batch, answered)
                bar.update(len(batch))
            bar.close()
        redone = answers.redone
    seconds = time.perf_counter() - start
    return {
        "questions": len(rows),
        "answered_now": len(todo),
        "resumed": len(rows) - len(todo),
        "redone": redone,
        "seconds": seconds,
        "sec_per_question": seconds / max(1, len(todo)),
    }


def run_items(
    items: list[tuple[dict, str | Path | None, list[str] | None]],
    answers_file: str | Path,
    settings: dict,
    answer_batch: Callable[[list[dict], Any], list[tuple[str, dict]]],
    *,
    model_id: str,
    checkpoints: tuple = (),
    num_chunks: int = 1,
    chunk_idx: int = 0,
    **run_options,
) -> dict:
    """`run_batches` over chunk `chunk_idx` of (question row, image path, options) items: each
    fingerprinted with its options, image, `settings` and the files of `checkpoints`;
    `answer_batch(batch, loaded)` returns one (text, metadata) per row, made into LLaVA answer rows here.
    `run_options`: `run_batches`' keywords."""
    items = chunk(items, num_chunks, chunk_idx)
    if checkpoints:
        settings = {**settings, "model": model_signature(*checkpoints)}
    expected = {
        row["question_id"]: question_fingerprint({**row, "options": options}, image, settings)
        for row, image, options in items
    }

    def answer_rows(batch: list[dict], loaded) -> list[dict]:
        return [
            answer_row(q, text, model_id, meta) for q, (text, meta) in zip(batch, answer_batch(batch, loaded))
        ]

    return run_batches([row for row, *_ in items], answers_file, expected, answer_rows, **run_options)


def check_run_inputs(
    checkpoints: dict[str, str | None],
    *,
    image: str | None = None,
    question: str | None = None,
    question_file: str | None = None,
    image_folder: str | None = None,
    bench_folder: str | None = None,
    answers_file: str | None = None,
):
    """Every input of a run checked before any model loads; a bad one exits with one line (no traceback)
    naming it (`checkpoints`: flag → path). Returns the single question's image (read here, so an
    unreadable one fails now)."""
    from .checks import InputError, check_checkpoint, check_dir, fail
    from .qa_files import AnswersBusy, QuestionFileError

    try:
        for flag, path in checkpoints.items():
            check_checkpoint(path, flag, check_base=False)
        opened = None
        if image is not None:
            try:
                opened = open_image(Path(image))
            except OSError as e:
                raise InputError(f"--image: {e}") from None
        if question is not None and not question.strip():
            raise InputError("--question is empty")
        if question_file:
            questions = read_questions(question_file)
            if any(q.get("image") for q in questions):
                check_dir(image_folder or ".", "--image-folder")
        if bench_folder is not None:
            check_dir(bench_folder, "--bench-folder")
        if answers_file and (question_file or bench_folder is not None):
            with AnswersFile(answers_file, {}, quiet=True):
                pass
    except (InputError, QuestionFileError, AnswersBusy, FileNotFoundError) as e:
        raise fail(e) from None
    return opened


# A solver answers one batch: the question rows and, per row, its images (empty for text-only
# questions), or what `prepare` made of them; it returns one (text, metadata) per row, in order.
Solver = Callable[[list[dict], Any], list[tuple[str, dict]]]
# Work on a batch's images that needs no model (decoding, preprocessing), done one batch ahead.
Prepare = Callable[[list[dict], list[list]], Any]


def _load_batch(
    batch: list[dict], image_folder: str, prepare: Prepare | None, needs_image: bool, where: dict
):
    """The batch's readable questions, their images (or `prepare`'s result) and the unreadable ones."""
    kept, kept_images, failed = [], [], []
    for q in batch:
        if needs_image and not q.get("image"):
            failed.append((q, f"question has no 'image' ({where.get(q['question_id'], 'question file')})"))
            continue
        try:
            images = [open_image(Path(image_folder) / q["image"])] if q.get("image") else []
        except (FileNotFoundError, OSError) as e:
            failed.append((q, str(e)))
            continue
        kept.append(q)
        kept_images.append(images)
    payload = prepare(kept, kept_images) if prepare is not None and kept else kept_images
    return kept, payload, failed


def run_questions(
    question_file: str,
    image_folder: str,
    answers_file: str,
    solve: Solver,
    *,
    batch_size: int = 8,
    model_id: str = "llava",
    num_chunks: int = 1,
    chunk_idx: int = 0,
    progress: bool = True,
    error_metadata: dict | None = None,
    prepare: Prepare | None = None,
    settings: dict | None = None,
    needs_image: bool = False,
) -> dict:
    """LLaVA question JSONL → LLaVA answer JSONL through `solve`, resumably (`run_batches`).

    Each answer is stored with the fingerprint of its question, image, model and `settings`, so a rerun
    redoes changed questions instead of reusing their old answers. A question whose image cannot be read
    (or that has none when `needs_image`) gets an empty answer with `metadata.error` (plus
    `error_metadata`), so it is counted rather than silently dropped or fatal.
    """
    all_questions = read_questions(question_file)
    questions = chunk(all_questions, num_chunks, chunk_idx)
    settings = {"model_id": model_id, **(settings or {})}
    expected = fingerprints(questions, image_folder, settings)
    n_failed = 0

    def load(batch: list[dict]):
        return _load_batch(batch, image_folder, prepare, needs_image, all_questions.where)

    def answer_batch(batch: list[dict], loaded) -> list[dict]:
        nonlocal n_failed
        kept, payload, failed = loaded
        n_failed += len(failed)
        rows = [answer_row(q, "", model_id, {**(error_metadata or {}), "error": e}) for q, e in failed]
        if kept:
            rows += [answer_row(q, t, model_id, m) for q, (t, m) in zip(kept, solve(kept, payload))]
        return rows

    summary = run_batches(
        questions, answers_file, expected, answer_batch, batch_size=batch_size, load=load,
        order=lambda q: (bool(q.get("image")), len(q.get("text", ""))), progress=progress,
    )  # fmt: skip
    return {
        **summary,
        "text_only": sum(not q.get("image") for q in questions),
        "missing_images": n_failed,
    }
