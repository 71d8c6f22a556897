"""The benchmark registry: where each benchmark's files live, how its questions are asked, how it is scored.

Every benchmark keeps LLaVA-1.5's data layout under `playground/data/eval/<folder>/` and file names
(those of LLaVA-1.5's `scripts/v1_5/eval/*.sh`). A `Benchmark` says where its question file and images
are, which prompt suffix its protocol asks for, and two functions:

* `prepare(bench, paths)` reads the benchmark's own question file and returns LLaVA question rows
  (`question_id`, `image`, `text`, ...) with the protocol suffix and unique ids. The runner writes them
  to `answers/.../questions.jsonl`, the file every mode answers.
* `score(inp)` joins the merged answers to the ground truth by question id and returns the metrics
  (`eval/metrics.py`), writing the official submission / evaluator files on the way.

The protocol of each benchmark (split, suffix, decoding, parser, metric, reference number) is written
up in `eval/README.md`.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answers import AnswerCheck
from .metrics import (
    evalai_answer_processor,
    gqa_accuracy,
    mme_scores,
    pope_metrics,
    sqa_parse,
    textvqa_accuracy,
    vqa_accuracy,
)
from .vstar_bench import answer_is_correct, read_vstar_bench, vstar_scores

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
OPTION_LETTER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class BenchPaths:
    """Where one run reads and writes; `answers_dir` is `answers/[<split>/]<ckpt>` as in LLaVA's scripts."""

    bench_dir: Path
    question_file: Path
    image_folder: Path
    answers_dir: Path
    ckpt: str
    split: str | None = None
    annotations: Path | None = None  # overrides the benchmark's ground-truth location

    @property
    def prepared(self) -> Path:
        return self.answers_dir / "questions.jsonl"

    def chunk_file(self, num_chunks: int, chunk_idx: int) -> Path:
        return self.answers_dir / f"{num_chunks}_{chunk_idx}.jsonl"

    @property
    def merged(self) -> Path:
        return self.answers_dir / "merge.jsonl"

    @property
    def metrics(self) -> Path:
        return self.answers_dir / "metrics.json"


@dataclass
class Prepared:
    """The rows to answer plus what preparing them had to fix (reported in the summary)."""

    rows: list[dict]
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreInput:
    """Everything a scorer needs: the questions asked, the checked answers and where to write."""

    bench: Benchmark
    paths: BenchPaths
    questions: list[dict]
    answers: dict
    check: AnswerCheck

    def text(self, question: dict) -> str:
        """The prediction for a question; a missing answer is an empty prediction (counted as wrong)."""
        row = self.answers.get(question["question_id"])
        return row["text"] if row is not None else ""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's layout and protocol (see its card in eval/README.md)."""

    name: str
    title: str
    folder: str  # under the data root, LLaVA-1.5's folder name
    question_file: str  # relative to the benchmark folder; "{split}" is filled in
    image_folder: str  # relative to the benchmark folder
    prepare: Callable[[Benchmark, BenchPaths], Prepared]
    score: Callable[[ScoreInput], dict]
    suffix: str | None = None  # the protocol's answer-format instruction, ensured on every question
    split: str | None = None  # when set, answers go under answers/<split>/<ckpt>/ (LLaVA's VQAv2/GQA layout)
    max_new_tokens: int = 128  # LLaVA's model_vqa_loader default; model_vqa (MM-Vet) / science use 1024
    max_answer_words: int | None = 10  # longer predictions are counted as "too long"
    likelihood: bool = False  # options scored by likelihood instead of generating (V*Bench)
    flat_answers: bool = True  # also write answers/<ckpt>.jsonl, the file LLaVA's own evaluators read


# --------------------------------------------------------------------------------------------------------------
# Preparing questions
# --------------------------------------------------------------------------------------------------------------


def source_id(question: dict) -> str | int:
    """The benchmark's own id of a prepared question (differs only where the file repeats ids, as MME does)."""
    return question.get("source_question_id", question["question_id"])


def ensure_suffix(text: str, suffix: str | None) -> tuple[str, bool]:
    """`text` ending with the protocol suffix; LLaVA's files already carry it, a converted file may not."""
    if not suffix or suffix.strip() in text:
        return text, False
    return text.rstrip() + suffix, True


def strip_suffix(text: str, suffix: str) -> str:
    return text.replace(suffix.strip(), "").strip()


def _unique_ids(rows: list[dict], notes: dict) -> list[dict]:
    """Answer files are keyed by question id, so a repeated id gets `#k` (k-th occurrence) appended.

    MME repeats every id (two questions per image, both with the image path as id); elsewhere a repeat
    is a defect of the question file and is counted.
    """
    counts = Counter(r["question_id"] for r in rows)
    repeated = {qid for qid, n in counts.items() if n > 1}
    if not repeated:
        return rows
    notes["repeated_question_ids"] = len(repeated)
    seen: Counter = Counter()
    out = []
    for r in rows:
        qid = r["question_id"]
        if qid in repeated:
            r = {**r, "question_id": f"{qid}#{seen[qid]}", "source_question_id": qid}
            seen[qid] += 1
        out.append(r)
    return out


def load_question_rows(path: Path) -> list[tuple[str, dict]]:
    """(location, record) of a question file (JSONL or JSON list); malformed input raises naming file and
    line (`eval.qa_files.iter_records`, the reader every runner shares)."""
    from .qa_files import iter_records

    return iter_records(path)


def prepare_llava_jsonl(bench: Benchmark, paths: BenchPaths) -> Prepared:
    """LLaVA-1.5's own question JSONL (`question_id`, `image`, `text`, `category`)."""
    notes: dict[str, Any] = {"suffix_added": 0}
    rows = []
    for where, row in load_question_rows(paths.question_file):
        missing = [k for k in ("question_id", "text") if k not in row]
        if missing:
            raise ValueError(f"{where}: question lacks {missing}")
        text, added = ensure_suffix(row["text"], bench.suffix)
        notes["suffix_added"] += added
        out = {"question_id": row["question_id"], "text": text}
        for key in ("image", "category"):
            if row.get(key):
                out[key] = row[key]
        rows.append(out)
    return Prepared(_unique_ids(rows, notes), notes)


def prepare_sqa(bench: Benchmark, paths: BenchPaths) -> Prepared:
    """`llava_test_CQM-A.json` (LLaVA conversations) → questions as `model_vqa_science --single-pred-prompt` asks.

    The first human turn without `<image>`, stripped, plus the option-letter suffix; records with an
    image get it (the answerer puts `<image>\\n` in front), text-only records are asked without.
    Each row also names that suffix as its `instruction`: Chain-of-Spot's ScienceQA evaluation quotes
    the question without it in both stages and appends it after the stage-2 quote (`cos`, `fast`).
    """
    notes: dict[str, Any] = {"text_only": 0}
    rows = []
    for where, rec in load_question_rows(paths.question_file):
        turns = rec.get("conversations") or []
        if "id" not in rec or not turns or "value" not in turns[0]:
            raise ValueError(f"{where}: ScienceQA record needs `id` and a first conversation turn")
        text = turns[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip() + bench.suffix
        row = {"question_id": rec["id"], "text": text, "instruction": bench.suffix}
        if rec.get("image"):
            row["image"] = rec["image"]
        else:
            notes["text_only"] += 1
        rows.append(row)
    return Prepared(_unique_ids(rows, notes), notes)


def prepare_vstar(bench: Benchmark, paths: BenchPaths) -> Prepared:
    """V*Bench folder (read by `eval.vstar_bench`) → question rows with `options` (options[0] correct).

    A json that is not a usable question (no question, fewer than two options, ...) is skipped and
    counted; a question whose image is missing is kept, so the answerer records it as an image error.
    """
    bench_data = read_vstar_bench(paths.bench_dir)
    notes: dict[str, Any] = {
        "invalid_records": len(bench_data.invalid),
        "invalid_examples": bench_data.invalid[:5],
    }
    rows = [
        {
            "question_id": q.question_id,
            "image": f"{q.category}/{q.image.name}",
            "text": q.question,
            "options": q.options,
            "category": q.category,
        }
        for q in bench_data.questions
    ]
    if not rows:
        raise FileNotFoundError(f"no V*Bench questions (<category>/<stem>.json) under {paths.bench_dir}")
    return Prepared(rows, notes)


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------


def _pct(x: float) -> float:
    return round(100.0 * x, 2)


def _write_json(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return str(path)


def _no_score(reason: str, **extra) -> dict:
    """A run without ground truth still reports, in words, why it has no number (never a silent zero)."""
    return {"score": None, "reason": reason, **extra}


def score_vqav2(inp: ScoreInput) -> dict:
    """Submission file as LLaVA's converter writes it; val accuracy when annotations are present.

    The converter passes every prediction through the EvalAI answer processor and fills unanswered
    questions with "". For test-dev the submission covers the whole `llava_vqav2_mscoco_test2015.jsonl`
    when that file is present (EvalAI expects every test2015 id). Local accuracy applies the official
    evaluator to the processed prediction, i.e. what the server computes from the submission.
    """
    paths = inp.paths
    processed = {source_id(q): evalai_answer_processor(inp.text(q)) for q in inp.questions}
    full_split = paths.bench_dir / "llava_vqav2_mscoco_test2015.jsonl"
    ids = list(processed)
    if paths.split and "test" in paths.split and full_split.is_file():
        ids = [row["question_id"] for _, row in load_question_rows(full_split)]
    upload = [{"question_id": qid, "answer": processed.get(qid, "")} for qid in ids]
    files = {
        "submission": _write_json(
            paths.bench_dir / "answers_upload" / (paths.split or "") / f"{paths.ckpt}.json", upload
        )
    }
    ann_path = paths.annotations or paths.bench_dir / "v2_mscoco_val2014_annotations.json"
    server = "; test-dev/test-std are scored by EvalAI (challenge 830): upload the submission file"
    if not ann_path.is_file():
        return _no_score(f"no annotations at {ann_path}{server}", files=files)
    annotations = {a["question_id"]: a for a in json.loads(ann_path.read_text())["annotations"]}
    per_type: dict[str, list[float]] = defaultdict(list)
    scores = []
    for q in inp.questions:
        ann = annotations.get(source_id(q))
        if ann is None:
            continue
        acc = vqa_accuracy(processed[source_id(q)], [a["answer"] for a in ann["answers"]])
        scores.append(acc)
        per_type[ann.get("answer_type", "other")].append(acc)
    if not scores:
        return _no_score(f"none of the questions is in {ann_path}{server}", files=files)
    return {
        "score": _pct(statistics.fmean(scores)),
        "metric": "VQA accuracy (val)",
        "per_answer_type": {k: _pct(statistics.fmean(v)) for k, v in sorted(per_type.items())},
        "n_scored": len(scores),
        "files": files,
    }


def score_gqa(inp: ScoreInput) -> dict:
    """`testdev_balanced_predictions.json` for GQA's `eval.py`, and its accuracy over balanced questions."""
    paths = inp.paths
    preds = {str(source_id(q)): inp.text(q).rstrip(".").lower() for q in inp.questions}
    data_dir = paths.bench_dir / "data"  # LLaVA's GQADIR, where the official eval.py looks
    files = {
        "predictions": _write_json(
            data_dir / "testdev_balanced_predictions.json",
            [{"questionId": qid, "prediction": p} for qid, p in preds.items()],
        )
    }
    gt_path = paths.annotations or data_dir / "testdev_balanced_questions.json"
    if not gt_path.is_file():
        return _no_score(f"no GQA questions file at {gt_path}", files=files)
    gold = json.loads(gt_path.read_text())
    scored = [qid for qid in preds if qid in gold and gold[qid].get("isBalanced", True)]
    if not scored:
        return _no_score(f"none of the questions is a balanced question of {gt_path}", files=files)
    acc = gqa_accuracy([preds[q] for q in scored], [gold[q]["answer"] for q in scored])
    return {
        "score": _pct(acc),
        "metric": "accuracy (balanced)",
        "n_scored": len(scored),
        "not_in_ground_truth": sum(qid not in gold for qid in preds),
        "files": files,
    }


def textvqa_question(text: str) -> str:
    """The question of a TextVQA prompt, lowercased: its first line (the OCR line and suffix follow)."""
    lines = text.split("\n")
    if lines[0].startswith("Reference OCR token:") and len(lines) > 1:
        return lines[1].strip().lower()
    return lines[0].strip().lower()


def score_textvqa(inp: ScoreInput) -> dict:
    """M4C TextVQA accuracy against `TextVQA_0.5.1_val.json`.

    A question joins its annotation by question id when the file carries TextVQA's ids, else as LLaVA's
    `eval_textvqa.py` joins (its question file uses the image id as `question_id`): by (image id,
    lowercased question). The question is taken from the question file, never re-parsed from the
    answer's prompt, which a two-turn CoS/FaST prompt would break.
    """
    paths = inp.paths
    ocr = sum("Reference OCR token:" in q["text"] for q in inp.questions)
    extra: dict[str, Any] = {"ocr_prompts": ocr}
    if ocr < len(inp.questions):
        extra["warning"] = (
            f"{len(inp.questions) - ocr} of {len(inp.questions)} prompts lack OCR tokens: LLaVA-1.5's 58.2 uses "
            "llava_textvqa_val_v051_ocr.jsonl; without OCR tokens (lmms-eval's default) expect about 46-49"
        )
    ann_path = paths.annotations or paths.bench_dir / "TextVQA_0.5.1_val.json"
    if not ann_path.is_file():
        return _no_score(f"no annotations at {ann_path}", **extra)
    data = json.loads(ann_path.read_text())["data"]
    by_id = {a["question_id"]: a for a in data}
    by_image_question = {(str(a["image_id"]), a["question"].strip().lower()): a for a in data}
    scores = []
    for q in inp.questions:
        ann = by_id.get(source_id(q))
        if ann is None:
            image_id = Path(q["image"]).stem if q.get("image") else str(source_id(q))
            ann = by_image_question.get((image_id, textvqa_question(q["text"])))
        if ann is not None:
            scores.append(textvqa_accuracy(inp.text(q), ann["answers"]))
    if not scores:
        return _no_score(f"none of the questions is in {ann_path}", **extra)
    return {
        "score": _pct(statistics.fmean(scores)),
        "metric": "TextVQA accuracy (val)",
        "n_scored": len(scores),
        "not_in_annotations": len(inp.questions) - len(scores),
        **extra,
    }


POPE_SPLITS = ("adversarial", "popular", "random")


def score_pope(inp: ScoreInput) -> dict:
    """Per COCO split: answers → questions by question id, questions → labels by (image, question text).

    LLaVA's `eval_pope.py` zips answers with `coco_pope_<split>.json` by position, so one missing or
    reordered answer shifts every later label (AoiDragon/POPE#17). Here no position is ever used.
    The paper's POPE number is the mean F1 over the three splits (LLaVA#626).
    """
    label_dir = inp.paths.annotations or inp.paths.bench_dir / "coco"
    per_split, unlabeled, ambiguous = {}, 0, 0
    other_category = sum(q.get("category") not in POPE_SPLITS for q in inp.questions)
    for split in POPE_SPLITS:
        label_file = label_dir / f"coco_pope_{split}.json"
        questions = [q for q in inp.questions if q.get("category") == split]
        if not questions:
            continue
        if not label_file.is_file():
            per_split[split] = _no_score(f"no labels at {label_file}")
            continue
        labels: dict[tuple, str] = {}
        for n, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (row["image"], row["text"].strip())
                label = row["label"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{label_file}:{n}: not a POPE label line ({e!r})") from None
            if key in labels and labels[key] != label:
                ambiguous += 1
            labels[key] = label
        preds, golds = [], []
        for q in questions:
            label = labels.get((q.get("image"), strip_suffix(q["text"], SHORT_ANSWER_SUFFIX)))
            if label is None:
                unlabeled += 1
                continue
            preds.append(inp.text(q))
            golds.append(label)
        m = pope_metrics(preds, golds)
        per_split[split] = {k: (_pct(v) if isinstance(v, float) else v) for k, v in m.items()} | {
            "n": len(preds)
        }
    f1s = [m["f1"] for m in per_split.values() if "f1" in m]
    accs = [m["accuracy"] for m in per_split.values() if "accuracy" in m]
    out: dict[str, Any] = {
        "score": round(statistics.fmean(f1s), 2) if f1s else None,
        "metric": "F1 (mean over splits)",
        "mean_accuracy": round(statistics.fmean(accs), 2) if accs else None,
        "splits": per_split,
        "unlabeled_questions": unlabeled,
        "questions_outside_the_splits": other_category,
        "ambiguous_labels": ambiguous,
    }
    if not f1s:
        out["reason"] = f"no POPE split could be scored from {label_dir}"
    return out


def _mme_ground_truth(root: Path, category: str, stem: str, cache: dict) -> dict[str, str]:
    """`question\\tanswer` lines of one MME image (`<category>/[questions_answers_YN/]<stem>.txt`)."""
    key = (category, stem)
    if key not in cache:
        table: dict[str, str] = {}
        for candidate in (
            root / category / "questions_answers_YN" / f"{stem}.txt",
            root / category / f"{stem}.txt",
        ):
            if candidate.is_file():
                for line in candidate.read_text(encoding="utf-8").splitlines():
                    if "\t" in line:
                        question, answer = line.strip().split("\t", 1)
                        table[question] = answer
                break
        cache[key] = table
    return cache[key]


def score_mme(inp: ScoreInput) -> dict:
    """MME score (acc + acc+ per subtask; Perception and Cognition sums), as the official `calculation.py`.

    The ground truth is matched as LLaVA's `convert_answer_to_mme.py` matches it: category and image
    from the question id, the question text without the short-answer suffix (with or without
    " Please answer yes or no."). The converter's per-category files are written for the official tool.
    """
    root = inp.paths.annotations or inp.paths.image_folder
    cache: dict = {}
    rows, exports, no_gt = [], defaultdict(list), 0
    for q in inp.questions:
        sid = str(source_id(q))
        category = q.get("category") or sid.split("/")[0]
        stem = Path(sid.split("/")[-1]).stem
        table = _mme_ground_truth(root, category, stem, cache)
        question = strip_suffix(q["text"], SHORT_ANSWER_SUFFIX)
        for variant in (
            question,
            question + " Please answer yes or no.",
            question + "  Please answer yes or no.",
        ):
            if variant in table:
                question = variant
                break
        else:
            no_gt += 1
            continue
        prediction = inp.text(q)
        rows.append({"category": category, "image": stem, "prediction": prediction, "label": table[question]})
        clean = " ".join(prediction.split())  # the tool splits lines on tabs
        exports[category].append("\t".join((f"{stem}.txt", question, table[question], clean)))
    export_dir = inp.paths.bench_dir / "eval_tool" / "answers" / inp.paths.ckpt
    export_dir.mkdir(parents=True, exist_ok=True)
    for category, lines in exports.items():
        (export_dir / f"{category}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    extra = {"no_ground_truth": no_gt, "files": {"calculation_dir": str(export_dir)}}
    if not rows:
        return _no_score(f"no MME ground truth found under {root}", **extra)
    try:
        result = mme_scores(rows)
    except ValueError as e:  # e.g. an image with one of its two questions missing from the question file
        return _no_score(f"MME scores undefined: {e}", **extra)
    categories = {k: round(v["score"], 2) for k, v in result.items() if isinstance(v, dict)}
    return {
        "score": round(result["perception"], 2),
        "metric": "MME perception (max 2000)",
        "cognition": round(result["cognition"], 2),
        "categories": categories,
        "unparsed_answers": sum(v["n_other"] for v in result.values() if isinstance(v, dict)),
        **extra,
    }


def score_sqa(inp: ScoreInput) -> dict:
    """ScienceQA accuracy on `pid_splits.json[test]` with LLaVA's parser; IMG accuracy is the headline.

    IMG = questions asked with an image. (LLaVA decides it from `<image>` in the answer's prompt, which
    puts an unanswered image question outside IMG; here the question file decides.)
    """
    base = inp.paths.annotations or inp.paths.bench_dir
    splits_file, problems_file = base / "pid_splits.json", base / "problems.json"
    if not (splits_file.is_file() and problems_file.is_file()):
        return _no_score(f"need {splits_file} and {problems_file}")
    problems = json.loads(problems_file.read_text())
    asked = {str(source_id(q)): q for q in inp.questions}
    results, n_img, ok_img, ok_all, n_all, not_asked = {}, 0, 0, 0, 0, 0
    for pid in json.loads(splits_file.read_text())["test"]:
        q = asked.get(str(pid))
        if q is None:
            not_asked += 1
            continue
        prob = problems[str(pid)]
        choice = sqa_parse(inp.text(q), len(prob["choices"]))
        correct = choice == prob["answer"]
        results[str(pid)] = choice
        n_all += 1
        ok_all += correct
        if q.get("image"):
            n_img += 1
            ok_img += correct
    out = {
        "score": _pct(ok_img / n_img) if n_img else None,
        "metric": "accuracy, image questions (SQA-IMG)",
        "accuracy_all": _pct(ok_all / n_all) if n_all else None,
        "n_img": n_img,
        "n_all": n_all,
        "unparsed_answers": sum(v == -1 for v in results.values()),
        "test_questions_not_asked": not_asked,
    }
    out["files"] = {
        "result": _write_json(
            inp.paths.bench_dir / "answers" / f"{inp.paths.ckpt}_result.json", {**out, "results": results}
        )
    }
    if not n_img:
        out["reason"] = "no test question with an image was asked"
    return out


def score_seed(inp: ScoreInput) -> dict:
    """SEED-Bench, LLaVA's protocol: exact match of the generated text with the answer letter (no strip).

    Accuracy per question type; image accuracy (the headline) is the micro average over the image
    questions; video questions, when asked, are reported separately. Writes the upload file.
    """
    paths = inp.paths
    files = {
        "upload": str(paths.bench_dir / "answers_upload" / f"{paths.ckpt}.jsonl"),
    }
    Path(files["upload"]).parent.mkdir(parents=True, exist_ok=True)
    Path(files["upload"]).write_text(
        "".join(
            json.dumps({"question_id": source_id(q), "prediction": inp.text(q)}) + "\n" for q in inp.questions
        )
    )
    ann_path = paths.annotations or paths.bench_dir / "SEED-Bench.json"
    if not ann_path.is_file():
        return _no_score(f"no annotations at {ann_path}", files=files)
    ann = json.loads(ann_path.read_text())
    type_names = {v: k for k, v in ann.get("question_type", {}).items()}
    asked = {str(source_id(q)): q for q in inp.questions}
    per_type: dict[str, list[bool]] = defaultdict(list)
    per_data: dict[str, list[bool]] = defaultdict(list)
    for aq in ann["questions"]:
        q = asked.get(str(aq["question_id"]))
        if q is None:
            continue
        hit = inp.text(q) == aq["answer"]
        per_type[type_names.get(aq.get("question_type_id"), str(aq.get("question_type_id")))].append(hit)
        per_data[aq.get("data_type", "image")].append(hit)
    if not per_data.get("image"):
        return _no_score(f"no image question of {ann_path} was asked", files=files)
    return {
        "score": _pct(statistics.fmean(per_data["image"])),
        "metric": "accuracy, image questions (SEED-Img)",
        "per_data_type": {k: _pct(statistics.fmean(v)) for k, v in per_data.items()},
        "per_question_type": {k: _pct(statistics.fmean(v)) for k, v in sorted(per_type.items())},
        "n_image": len(per_data["image"]),
        "not_in_annotations": len(set(asked) - {str(a["question_id"]) for a in ann["questions"]}),
        "files": files,
    }


def score_mmvet(inp: ScoreInput) -> dict:
    """MM-Vet has no local metric (a GPT-4 grader scores it): write `results/<ckpt>.json` for submission."""
    results = {}
    for q in inp.questions:
        sid = str(source_id(q))
        results[sid if sid.startswith("v1_") else f"v1_{sid}"] = inp.text(q)
    path = _write_json(inp.paths.bench_dir / "results" / f"{inp.paths.ckpt}.json", results)
    return _no_score(
        "MM-Vet is scored by its GPT-4 grader: submit the results file", files={"submission": path}
    )


def score_vstar(inp: ScoreInput) -> dict:
    """V*Bench accuracy per category and overall (micro over all questions), likelihood protocol."""
    scores = vstar_scores(
        (q["category"], answer_is_correct(q["options"], inp.answers.get(q["question_id"])))
        for q in inp.questions
    )
    return {
        "score": _pct(scores["accuracy"]),
        "metric": "accuracy (likelihood multiple choice)",
        "per_category": {k: _pct(v) for k, v in scores["per_category"].items()},
        "n_per_category": scores["n_per_category"],
        "unscorable_answers": scores["unscorable"],
    }


# --------------------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------------------


def _jsonl_bench(**kw) -> Benchmark:
    """A benchmark whose questions come as LLaVA question JSONL."""
    return Benchmark(prepare=prepare_llava_jsonl, **kw)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        _jsonl_bench(
            name="vqav2",
            title="VQAv2 test-dev",
            folder="vqav2",
            question_file="{split}.jsonl",
            image_folder="test2015",
            score=score_vqav2,
            suffix=SHORT_ANSWER_SUFFIX,
            split="llava_vqav2_mscoco_test-dev2015",
            flat_answers=False,
        ),
        _jsonl_bench(
            name="gqa",
            title="GQA testdev-balanced",
            folder="gqa",
            question_file="{split}.jsonl",
            image_folder="data/images",
            score=score_gqa,
            suffix=SHORT_ANSWER_SUFFIX,
            split="llava_gqa_testdev_balanced",
            flat_answers=False,
        ),
        _jsonl_bench(
            name="textvqa",
            title="TextVQA val (OCR tokens)",
            folder="textvqa",
            question_file="llava_textvqa_val_v051_ocr.jsonl",
            image_folder="train_images",
            score=score_textvqa,
            suffix=SHORT_ANSWER_SUFFIX,
        ),
        _jsonl_bench(
            name="pope",
            title="POPE (COCO adversarial / popular / random)",
            folder="pope",
            question_file="llava_pope_test.jsonl",
            image_folder="val2014",
            score=score_pope,
            suffix=SHORT_ANSWER_SUFFIX,
        ),
        _jsonl_bench(
            name="mme",
            title="MME",
            folder="MME",
            question_file="llava_mme.jsonl",
            image_folder="MME_Benchmark_release_version",
            score=score_mme,
            suffix=SHORT_ANSWER_SUFFIX,
        ),
        Benchmark(
            name="sqa",
            title="ScienceQA-IMG test",
            folder="scienceqa",
            question_file="llava_test_CQM-A.json",
            image_folder="images/test",
            prepare=prepare_sqa,
            score=score_sqa,
            suffix=OPTION_LETTER_SUFFIX,
            max_new_tokens=1024,
        ),
        _jsonl_bench(
            name="seed",
            title="SEED-Bench (image)",
            folder="seed_bench",
            question_file="llava-seed-bench.jsonl",
            image_folder=".",
            score=score_seed,
            suffix=OPTION_LETTER_SUFFIX,
            flat_answers=False,
        ),
        _jsonl_bench(
            name="mmvet",
            title="MM-Vet",
            folder="mm-vet",
            question_file="llava-mm-vet.jsonl",
            image_folder="images",
            score=score_mmvet,
            max_new_tokens=1024,
            max_answer_words=None,
        ),
        Benchmark(
            name="vstar",
            title="V*Bench",
            folder="vstar_bench",
            question_file=".",
            image_folder=".",
            prepare=prepare_vstar,
            score=score_vstar,
            likelihood=True,
            max_answer_words=None,
            flat_answers=False,
        ),
    )
}
