"""Batch runners: LLaVA question JSONL → answer JSONL + traces, and V*Bench multiple choice.

Both read questions and write answers through `eval.runner` (the files by `eval.qa_files`), the policy
every runner shares: bad records fail naming file:line before the model loads, the answers file is
locked against a second run, and each answer stores the fingerprint of its question, image,
checkpoints and agent settings, so a rerun skips only questions answered as they are now (changed ones
are answered again) and drops a line cut off by a kill: each question is answered exactly once. The
answers file is the commit point; the traces file is reconciled with it on resume (lines of
uncommitted questions dropped, missing ones restored from the answers' metadata).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from eval.runner import (
    append_lines,
    open_image,
    read_questions,
    run_items,
    vstar_items,
    vstar_scores,
)
from roillava.stage import BaseStage

from .agent import FastAgent, Request
from .trace import Trace, draw_overlay


def traces_path_for(answers_file: str | Path) -> Path:
    p = Path(answers_file)
    return p.with_name(p.stem + ".traces.jsonl")


def config_path_for(answers_file: str | Path) -> Path:
    p = Path(answers_file)
    return p.with_name(p.stem + ".config.json")


def agent_checkpoints(agent: FastAgent) -> tuple:
    """The checkpoints an answer depends on (their files go into each question's fingerprint)."""
    cfg = agent.config
    return (cfg.base, cfg.switch, cfg.roi, cfg.seg, cfg.sam)


def reconcile_traces(traces_file: Path, answers_file: Path, done: set) -> None:
    """Make the traces file hold exactly one trace per committed answer (the answers file decides)."""
    kept: dict = {}
    if traces_file.exists():
        for line in traces_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a kill
            qid = row.get("question_id")
            if qid in done and qid not in kept:
                kept[qid] = row
    if answers_file.exists():
        for line in answers_file.read_text().splitlines():
            row = json.loads(line)
            trace = row.get("metadata", {}).get("trace")
            if row["question_id"] not in kept and trace is not None:
                kept[row["question_id"]] = trace
    traces_file.parent.mkdir(parents=True, exist_ok=True)
    traces_file.write_text("".join(json.dumps(t) + "\n" for t in kept.values()))


@dataclass
class _Item:
    row: dict
    request: Request


def _load_requests(items: list[tuple[dict, Path | None, str, list[str] | None]]) -> list[_Item]:
    """Each question's image read (a missing or unreadable one is the request's error, not fatal)."""
    loaded = []
    for row, image_path, text, options in items:
        # A protocol instruction at the end of the text (ScienceQA's option-letter line) stays out of
        # the ROI adapter's quoted question (`Request.instruction`).
        question, instruction = BaseStage.split_instruction(text, row.get("instruction"))
        image, error = None, None
        if image_path is not None:
            try:
                image = open_image(image_path)
            except (FileNotFoundError, OSError) as e:
                error = str(e)
        else:
            error = "question has no image"
        loaded.append(
            _Item(
                row,
                Request(
                    str(row["question_id"]),
                    question,
                    image,
                    str(image_path) if image_path else None,
                    options,
                    error,
                    instruction,
                ),
            )
        )
    return loaded


def _answer(item: _Item, trace: Trace, extra: dict | None = None) -> tuple[str, dict]:
    """The answer's text and metadata (the trace, the System used, the request's error)."""
    meta = {"system": trace.system, **(extra or {}), "trace": trace.to_dict()}
    if item.request.error:
        meta["error"] = item.request.error
    return trace.answer, meta


def _run(
    agent: FastAgent,
    items: list[tuple[dict, Path | None, str, list[str] | None]],
    answers_file: str | Path,
    *,
    traces_file: str | Path | None,
    batch_size: int,
    model_id: str,
    overlay_dir: str | Path | None,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    extra_metadata=None,
    progress: bool = True,
) -> dict:
    out = Path(answers_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    traces_out = Path(traces_file) if traces_file else traces_path_for(out)
    # What an answer depends on besides its question: the agent's config (and its checkpoints' files).
    settings = {"agent": json.loads(agent.config.to_json()), "model_id": model_id}
    by_id = {row["question_id"]: (row, image, text, options) for row, image, text, options in items}
    traces_by_id: dict = {}
    n_system2 = 0

    def load(batch: list[dict]) -> list[_Item]:
        return _load_requests([by_id[row["question_id"]] for row in batch])

    def answer_batch(batch: list[dict], loaded: list[_Item]) -> list[tuple[str, dict]]:
        traces = agent.answer_batch([it.request for it in loaded])
        for it, tr in zip(loaded, traces):
            traces_by_id[it.row["question_id"]] = (it, tr)
        return [
            _answer(it, tr, extra_metadata(it, tr) if extra_metadata else None)
            for it, tr in zip(loaded, traces)
        ]

    def committed(batch: list[dict], rows: list[dict]) -> None:
        """After the answers (the commit point): their traces, overlays and the System-2 count."""
        nonlocal n_system2
        done = [traces_by_id.pop(row["question_id"]) for row in rows]
        append_lines(traces_out, [tr.to_dict() for _, tr in done])
        n_system2 += sum(tr.system == "system2" for _, tr in done)
        if overlay_dir:
            for it, tr in done:
                if tr.system == "system2" and it.request.image is not None:
                    save_overlay(it.request.image, tr, overlay_dir)

    summary = run_items(
        [(row, image, options) for row, image, _, options in items], out, settings, answer_batch,
        model_id=model_id, checkpoints=agent_checkpoints(agent), num_chunks=num_chunks, chunk_idx=chunk_idx,
        batch_size=batch_size, load=load,
        on_open=lambda done: reconcile_traces(traces_out, out, done), on_commit=committed, desc="fast",
        progress=progress,
    )  # fmt: skip
    return {
        **summary,
        "system2_now": n_system2,
        "answers_file": str(out),
        "traces_file": str(traces_out),
    }


def file_stem(text: str, limit: int = 80) -> str:
    """A file-name-safe stem for a question id or text."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return stem[:limit] or "question"


def save_overlay(image, trace: Trace, overlay_dir: str | Path, name: str | None = None) -> Path:
    """`<overlay_dir>/<name or question id>.png`: the overlay with its legend."""
    d = Path(overlay_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / (file_stem(name or trace.question_id) + ".png")
    draw_overlay(image, trace).save(path)
    return path


def answer_question_file(
    agent: FastAgent,
    question_file: str | Path,
    image_folder: str | Path,
    answers_file: str | Path,
    *,
    traces_file: str | Path | None = None,
    batch_size: int | None = None,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    model_id: str = "fast",
    overlay_dir: str | Path | None = None,
) -> dict:
    """LLaVA question JSONL (`question_id`, `image`, `text`) → LLaVA answer JSONL with the trace in metadata.

    `batch_size`: questions per agent call (default: the agent's `config.batch_size`)."""
    questions = read_questions(question_file)
    items = [
        (q, Path(image_folder) / q["image"] if q.get("image") else None, q["text"], None) for q in questions
    ]
    return _run(
        agent, items, answers_file, traces_file=traces_file, model_id=model_id,
        batch_size=batch_size or agent.config.batch_size, num_chunks=num_chunks, chunk_idx=chunk_idx,
        overlay_dir=overlay_dir,
    )  # fmt: skip


def answer_vstar(
    agent: FastAgent,
    bench_folder: str | Path,
    answers_file: str | Path,
    *,
    traces_file: str | Path | None = None,
    batch_size: int | None = None,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    model_id: str = "fast",
    overlay_dir: str | Path | None = None,
) -> dict:
    """Likelihood multiple choice over a V*Bench folder; the summary adds accuracy (all and per category)."""
    items = vstar_items(bench_folder)

    def extra(item: _Item, trace: Trace) -> dict:
        losses = trace.option_losses
        return {
            "category": item.row["category"],
            # the V*Bench scorer's fields (eval/benchmarks.py): losses in the file's option order, the choice
            "option_losses": losses,
            "choice": None if losses is None else min(range(len(losses)), key=losses.__getitem__),
            "correct": losses is not None and trace.answer == item.request.options[0],
            # the image the options were scored on: System 2 (with evidence) always the padded one
            "image_view": None
            if losses is None
            else ("padded" if trace.system == "system2" else agent.config.option_image_view),
            "bbox": item.row["bbox"],
            "target_object": item.row["target_object"],
        }

    summary = _run(
        agent, items, answers_file, traces_file=traces_file, model_id=model_id,
        batch_size=batch_size or agent.config.batch_size, num_chunks=num_chunks, chunk_idx=chunk_idx,
        overlay_dir=overlay_dir, extra_metadata=extra,
    )  # fmt: skip
    return {**summary, **vstar_summary(answers_file)}


def vstar_summary(answers_file: str | Path) -> dict:
    """Accuracy, per-category accuracy (`eval.vstar_bench.vstar_scores`) and System-2 rate of a V*Bench
    answers file."""
    rows = [json.loads(line) for line in Path(answers_file).read_text().splitlines() if line.strip()]
    scores = vstar_scores((r["metadata"]["category"], bool(r["metadata"]["correct"])) for r in rows)
    system2 = sum(r["metadata"]["system"] == "system2" for r in rows)
    return {
        "accuracy": scores["accuracy"],
        "per_category": scores["per_category"],
        "system2_rate": system2 / max(1, len(rows)),
    }
