"""Benchmark metrics that reproduce the reference evaluators LLaVA-1.5 numbers are reported with.

Every function here follows the reference evaluators (eval/README.md names each one), including the quirks of the
reference code (e.g. the VQA period regex, the POPE case-sensitive parser), because a "cleaner" metric would
not be comparable with published numbers. The VQA normalisation tables are loaded from
``vqa_normalization.json`` next to this file (a byte-for-byte copy of the reference tables).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "evalai_answer_processor",
    "gqa_accuracy",
    "intersection_union",
    "mme_parse",
    "mme_scores",
    "pope_metrics",
    "pope_parse",
    "seed_accuracy",
    "seg_giou_ciou",
    "sqa_accuracy",
    "sqa_parse",
    "textvqa_accuracy",
    "vqa_accuracy",
    "vstar_accuracy",
]

# --------------------------------------------------------------------------------------------------------------
# VQA normalisation tables (GT-Vision-Lab vqaEval.py and the EvalAI/MMF answer processor)
# --------------------------------------------------------------------------------------------------------------

_NORM: dict[str, Any] = json.loads(
    Path(__file__).with_name("vqa_normalization.json").read_text(encoding="utf-8")
)

_CONTRACTIONS: dict[str, str] = dict(_NORM["contractions"])
_NUMBER_MAP: dict[str, str] = dict(_NORM["number_map"])
_ARTICLES: frozenset[str] = frozenset(_NORM["articles"])
_PUNCT_VQA: tuple[str, ...] = tuple(_NORM["punctuation_vqa_official"])
_PUNCT_EVALAI: tuple[str, ...] = tuple(_NORM["punctuation_evalai_m4c"])
_COMMA_STRIP_VQA = re.compile(_NORM["comma_strip_regex_vqa_official"])
_COMMA_STRIP_EVALAI = re.compile(_NORM["comma_strip_regex_evalai_m4c"])
# "(?!<=\d)(\.)(?!\d)": the first group is a (buggy) negative *lookahead*, so only "a period followed by a digit
# survives" is effective; "5." loses its period while "1.5" keeps it.
_PERIOD_STRIP = re.compile(_NORM["period_strip_regex"])
# The reference calls ``periodStrip.sub("", text, re.UNICODE)``: re.UNICODE lands in the *count* slot, so at most
# 32 periods are deleted. Reproduced on purpose.
_PERIOD_STRIP_COUNT: int = int(re.UNICODE)

# The VQA leave-one-out score saturates at this many matching annotators.
_VQA_MATCHES_FOR_FULL_CREDIT = 3


def _check_same_length(**named: Sequence[Any]) -> int:
    """Raise a ValueError naming the arguments when parallel lists disagree (silent zip truncation hides bugs)."""
    lengths = {name: len(values) for name, values in named.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"mismatched list lengths: {detail}")
    return next(iter(lengths.values()), 0)


def _process_punctuation(text: str, punctuation: Sequence[str], comma_strip: re.Pattern[str]) -> str:
    """Punctuation rule shared by vqaEval.processPunctuation and EvalAIAnswerProcessor.process_punctuation.

    Tests are made on the *original* text; the replacements are applied to the running output, in list order.
    """
    out = text
    digit_comma = comma_strip.search(text) is not None
    for p in punctuation:
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """Lowercase, map number words to digits, drop articles, then expand contractions (vqaEval order)."""
    words = [_NUMBER_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def _leave_one_out_score(prediction: str, answers: Sequence[str]) -> float:
    """Average over the n "leave one annotator out" subsets of min(1, #matches/3) (VQA / M4C definition)."""
    total = 0.0
    matches_all = sum(1 for a in answers if a == prediction)
    for a in answers:
        matches = matches_all - (1 if a == prediction else 0)
        total += min(1.0, matches / _VQA_MATCHES_FOR_FULL_CREDIT)
    return total / len(answers)


def _require_answers(answers: Sequence[str]) -> None:
    if len(answers) == 0:
        raise ValueError("answers must contain at least one ground-truth answer")


# --------------------------------------------------------------------------------------------------------------
# VQAv2 / TextVQA
# --------------------------------------------------------------------------------------------------------------


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Official VQAv2 per-question accuracy (GT-Vision-Lab ``vqaEval.py``), so local val numbers match EvalAI.

    The prediction and answers get ``\\n``/``\\t`` -> space and ``strip``. Only when the answers are not all
    identical are prediction and answers normalised (processPunctuation, then processDigitArticle); with a
    unanimous answer set the comparison is exact and case-sensitive, as in the reference. The score averages
    ``min(1, matches/3)`` over the leave-one-out subsets (10 for VQAv2; any count >= 1 is accepted).
    The prediction is scored exactly as given; LLaVA's submission converter pre-normalises it with
    :func:`evalai_answer_processor`, which callers must apply themselves if they want that protocol.
    """
    _require_answers(answers)
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:
        gts = [_process_digit_article(_process_punctuation(a, _PUNCT_VQA, _COMMA_STRIP_VQA)) for a in gts]
        pred = _process_digit_article(_process_punctuation(pred, _PUNCT_VQA, _COMMA_STRIP_VQA))
    return _leave_one_out_score(pred, gts)


def evalai_answer_processor(answer: str) -> str:
    """EvalAI/MMF ``EvalAIAnswerProcessor`` (LLaVA ``m4c_evaluator.py``), used by TextVQA and the VQAv2 converter.

    Steps in reference order: lowercase, drop ``,`` and ``?``, ``'s`` -> `` 's``, strip; ``\\n``/``\\t`` -> space,
    strip; punctuation rule (with the M4C digit-comma regex, which can no longer fire since commas are gone);
    number words, articles and contractions.
    """
    item = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    item = item.replace("\n", " ").replace("\t", " ").strip()
    item = _process_punctuation(item, _PUNCT_EVALAI, _COMMA_STRIP_EVALAI)
    return _process_digit_article(item)


def textvqa_accuracy(prediction: str, answers: list[str]) -> float:
    """M4C ``TextVQAAccuracyEvaluator`` score: both sides always go through :func:`evalai_answer_processor`.

    Unlike VQAv2 the normalisation is applied even when all answers agree, which is why the two differ.
    """
    _require_answers(answers)
    pred = evalai_answer_processor(prediction)
    gts = [evalai_answer_processor(a) for a in answers]
    return _leave_one_out_score(pred, gts)


# --------------------------------------------------------------------------------------------------------------
# GQA
# --------------------------------------------------------------------------------------------------------------


def gqa_accuracy(predictions: list[str], answers: list[str]) -> float:
    """GQA accuracy in [0, 1] as LLaVA computes it (``convert_gqa_for_eval.py`` + official ``eval.py``).

    Each prediction is normalised with ``text.rstrip('.').lower()`` (LLaVA's converter), then compared to the
    gold answer by exact string match; the gold answer is not normalised. Returns 0.0 for empty input.
    """
    n = _check_same_length(predictions=predictions, answers=answers)
    if n == 0:
        return 0.0
    correct = sum(1 for p, a in zip(predictions, answers) if p.rstrip(".").lower() == a)
    return correct / n


# --------------------------------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------------------------------

_POPE_NEGATIVE_WORDS = frozenset({"No", "not", "no"})


def pope_parse(text: str) -> str:
    """LLaVA ``eval_pope.py`` parser, kept case-sensitive and space-split so F1 matches the paper.

    Keep the text before the first ``.``, remove ``,``, split on single spaces; any of ``No``/``not``/``no``
    gives ``'no'``, anything else (including ``NO`` or ``Not``) gives ``'yes'``.
    """
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if any(w in _POPE_NEGATIVE_WORDS for w in words) else "yes"


def _safe_div(num: float, den: float) -> float:
    return num / den if den else 0.0


def pope_metrics(predictions: list[str], labels: list[str]) -> dict:
    """POPE metrics for one split with positive class ``yes`` (LLaVA ``eval_pope.py``).

    Predictions are raw generations (or already parsed ``yes``/``no``; the parser is idempotent on those).
    Labels must be ``'yes'``/``'no'``. ``yes_ratio`` is the *predicted* yes ratio, unlike lmms-eval. Zero
    denominators give 0.0 instead of raising. Returns accuracy, precision, recall, f1, yes_ratio, tp, fp, tn, fn.
    """
    n = _check_same_length(predictions=predictions, labels=labels)
    bad = sorted({lab for lab in labels if lab not in ("yes", "no")})
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {bad[:5]}")
    tp = fp = tn = fn = 0
    for pred_text, label in zip(predictions, labels):
        pred_yes = pope_parse(pred_text) == "yes"
        label_yes = label == "yes"
        if pred_yes and label_yes:
            tp += 1
        elif pred_yes:
            fp += 1
        elif label_yes:
            fn += 1
        else:
            tn += 1
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return {
        "accuracy": _safe_div(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": _safe_div(2 * precision * recall, precision + recall),
        "yes_ratio": _safe_div(tp + fp, n),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# --------------------------------------------------------------------------------------------------------------
# MME
# --------------------------------------------------------------------------------------------------------------

_MME_PERCEPTION: tuple[str, ...] = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
_MME_COGNITION: tuple[str, ...] = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)


def mme_parse(text: str) -> str:
    """MME ``calculation.py`` parser: lowercase; exact yes/no kept; else look at the first 4 characters only.

    Returns ``'yes'``, ``'no'`` or ``'other'`` (``other`` is always scored wrong). No stripping is done, as in
    the reference, so leading whitespace can push the answer out of the 4-character window.
    """
    lowered = text.lower()
    if lowered in ("yes", "no"):
        return lowered
    prefix = lowered[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_scores(rows: list[dict]) -> dict:
    """MME scores per subtask plus the Perception / Cognition totals (official ``calculation.py``).

    ``rows`` carry ``category``, ``image``, ``prediction`` (raw text) and ``label`` (yes/no). Per category:
    ``acc`` = correct / questions, ``acc_plus`` = images with both questions correct / images,
    ``score = 100*acc + 100*acc_plus``. Every image must have exactly the benchmark's 2 questions, otherwise
    acc+ would be ill-defined. ``perception`` / ``cognition`` sum the scores of the official categories that
    are present (absent ones are skipped, categories outside both lists are reported but not summed).
    """
    per_image: dict[str, dict[Any, list[bool]]] = defaultdict(lambda: defaultdict(list))
    other_counts: dict[str, int] = defaultdict(int)
    for i, row in enumerate(rows):
        missing = [k for k in ("category", "image", "prediction", "label") if k not in row]
        if missing:
            raise ValueError(f"MME row {i} lacks keys {missing}")
        label = str(row["label"]).lower()
        if label not in ("yes", "no"):
            raise ValueError(f"MME row {i}: label must be yes/no, got {row['label']!r}")
        pred = mme_parse(row["prediction"])
        if pred == "other":
            other_counts[row["category"]] += 1
        per_image[row["category"]][row["image"]].append(pred == label)

    result: dict[str, Any] = {}
    for category, images in per_image.items():
        for image, flags in images.items():
            if len(flags) != 2:
                raise ValueError(
                    f"MME category {category!r} image {image!r} has {len(flags)} questions; expected exactly 2"
                )
        n_questions = sum(len(flags) for flags in images.values())
        acc = sum(sum(flags) for flags in images.values()) / n_questions
        acc_plus = sum(1 for flags in images.values() if all(flags)) / len(images)
        result[category] = {
            "acc": acc,
            "acc_plus": acc_plus,
            "score": 100.0 * acc + 100.0 * acc_plus,
            "n_questions": n_questions,
            "n_images": len(images),
            "n_other": other_counts[category],
        }
    result["perception"] = sum((result[c]["score"] for c in _MME_PERCEPTION if c in per_image), 0.0)
    result["cognition"] = sum((result[c]["score"] for c in _MME_COGNITION if c in per_image), 0.0)
    return result


# --------------------------------------------------------------------------------------------------------------
# ScienceQA
# --------------------------------------------------------------------------------------------------------------

_SQA_OPTIONS: tuple[str, ...] = ("A", "B", "C", "D", "E")
# As in eval_science_qa.py: the trailing "." is an unescaped wildcard, so it needs *some* character after the letter.
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def sqa_parse(prediction: str, n_options: int) -> int:
    """Option index chosen by a ScienceQA generation, or -1 (FAILED), following LLaVA ``eval_science_qa.py``.

    Branches in reference order: the text is exactly one of A-E; else ``len >= 3`` with an A-E letter followed
    by ``". "``; else ``The answer is X.`` matching exactly once. The letter must then be among the first
    ``n_options`` letters. No random-guess fallback (dead code in the reference).
    """
    if n_options < 1:
        raise ValueError(f"n_options must be >= 1, got {n_options}")
    if prediction in _SQA_OPTIONS:
        letter = prediction
    elif len(prediction) >= 3 and prediction[0] in _SQA_OPTIONS and prediction[1:3] == ". ":
        letter = prediction[0]
    else:
        found = _SQA_ANSWER_IS.findall(prediction)
        if len(found) != 1:
            return -1
        letter = found[0]
    valid = _SQA_OPTIONS[:n_options]
    return valid.index(letter) if letter in valid else -1


def sqa_accuracy(predictions: list[str], answers: list[int], n_options: list[int]) -> float:
    """ScienceQA accuracy in [0, 1]: a question counts iff :func:`sqa_parse` equals the gold index (FAILED is wrong)."""
    n = _check_same_length(predictions=predictions, answers=answers, n_options=n_options)
    if n == 0:
        return 0.0
    correct = sum(1 for p, a, k in zip(predictions, answers, n_options) if sqa_parse(p, k) == a)
    return correct / n


# --------------------------------------------------------------------------------------------------------------
# SEED-Bench
# --------------------------------------------------------------------------------------------------------------


def seed_accuracy(
    predictions: list[str], answers: list[str], question_types: list[str] | None = None
) -> dict:
    """SEED-Bench accuracy with LLaVA's protocol: exact string match, no strip (``convert_seed_for_submission``).

    Returns ``{"accuracy": float}`` and, when ``question_types`` is given, ``"per_type": {type: accuracy}``.
    Empty input gives accuracy 0.0.
    """
    if question_types is None:
        n = _check_same_length(predictions=predictions, answers=answers)
    else:
        n = _check_same_length(predictions=predictions, answers=answers, question_types=question_types)
    hits = [p == a for p, a in zip(predictions, answers)]
    out: dict[str, Any] = {"accuracy": _safe_div(sum(hits), n)}
    if question_types is not None:
        buckets: dict[Any, list[bool]] = defaultdict(list)
        for qtype, hit in zip(question_types, hits):
            buckets[qtype].append(hit)
        out["per_type"] = {qtype: sum(v) / len(v) for qtype, v in buckets.items()}
    return out


# --------------------------------------------------------------------------------------------------------------
# ReasonSeg / refCOCO gIoU and cIoU (LISA validate)
# --------------------------------------------------------------------------------------------------------------

_SEG_IGNORE = 255


def _to_numpy(mask: Any) -> np.ndarray:
    """Accept numpy arrays, torch tensors (duck-typed, so torch is not imported here) or nested lists."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask)


def intersection_union(pred: Any, gt: Any) -> tuple[int, int]:
    """Foreground intersection and union of one mask, as LISA's ``intersectionAndUnionGPU`` (class 1, K=2).

    ``pred`` must be binary {0, 1} (bool allowed); ``gt`` holds {0, 1, 255}. Pixels where gt is 255 are ignored
    (LISA sets pred to 255 there so ``histc`` drops them). Exposed separately so streaming evaluators can sum.
    """
    p = _to_numpy(pred)
    g = _to_numpy(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    if not np.isin(p, (0, 1)).all():
        raise ValueError("pred mask must be binary {0, 1}")
    if not np.isin(g, (0, 1, _SEG_IGNORE)).all():
        raise ValueError("gt mask values must be in {0, 1, 255}")
    valid = g != _SEG_IGNORE
    pred_fg = (p == 1) & valid
    gt_fg = g == 1
    intersection = int(np.count_nonzero(pred_fg & gt_fg))
    union = int(np.count_nonzero(pred_fg)) + int(np.count_nonzero(gt_fg)) - intersection
    return intersection, union


def seg_giou_ciou(pred_masks: Sequence[Any], gt_masks: Sequence[Any]) -> tuple[float, float]:
    """LISA gIoU and cIoU in [0, 1] over a split (multiply by 100 to report).

    Per mask ``iou = I / (U + 1e-5)``, or 1.0 when ``U == 0`` (empty prediction on empty target);
    ``gIoU = mean(iou)``; ``cIoU = sum(I) / (sum(U) + 1e-10)``. Empty input gives (0.0, 0.0).
    """
    n = _check_same_length(pred_masks=pred_masks, gt_masks=gt_masks)
    if n == 0:
        return 0.0, 0.0
    sum_i = sum_u = 0
    sum_iou = 0.0
    for pred, gt in zip(pred_masks, gt_masks):
        inter, union = intersection_union(pred, gt)
        sum_i += inter
        sum_u += union
        sum_iou += 1.0 if union == 0 else inter / (union + 1e-5)
    return sum_iou / n, sum_i / (sum_u + 1e-10)


# --------------------------------------------------------------------------------------------------------------
# V*Bench
# --------------------------------------------------------------------------------------------------------------


def vstar_accuracy(option_losses: list[list[float]]) -> float:
    """V*Bench accuracy in [0, 1]: a question is right iff the lowest-loss option is option 0 (the correct one).

    Ties resolve to the first index, like ``argmin``. NaN losses are rejected rather than silently chosen.
    Empty input gives 0.0.
    """
    if len(option_losses) == 0:
        return 0.0
    correct = 0
    for i, losses in enumerate(option_losses):
        if len(losses) == 0:
            raise ValueError(f"question {i} has no option losses")
        values = [float(x) for x in losses]
        if any(math.isnan(v) for v in values):
            raise ValueError(f"question {i} has a NaN option loss")
        if min(range(len(values)), key=values.__getitem__) == 0:
            correct += 1
    return correct / len(option_losses)
