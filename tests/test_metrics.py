"""Golden tests for eval.metrics, hand-computed from the reference evaluators' definitions (eval/README.md).

Each expected value carries a comment with the hand computation. VQA leave-one-out scores with 10 answers of
which k equal the (normalised) prediction: the k subsets that drop a matching answer see k-1 matches, the
10-k others see k, so score = (k*min(1,(k-1)/3) + (10-k)*min(1,k/3)) / 10:
k=0 -> 0, k=1 -> 9*(1/3)/10 = 0.3, k=2 -> (2*(1/3) + 8*(2/3))/10 = 0.6, k=3 -> (3*(2/3) + 7*1)/10 = 0.9,
k>=4 -> 1.0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.metrics import (
    evalai_answer_processor,
    gqa_accuracy,
    intersection_union,
    mme_parse,
    mme_scores,
    pope_metrics,
    pope_parse,
    seed_accuracy,
    seg_giou_ciou,
    sqa_accuracy,
    sqa_parse,
    textvqa_accuracy,
    vqa_accuracy,
    vstar_accuracy,
)


def mixed(answer: str, k: int, filler: str = "zzz") -> list[str]:
    """10 answers, k of them `answer` and the rest a filler, so the set is never unanimous (normalisation on)."""
    return [answer] * k + [filler] * (10 - k)


# ----------------------------------------------------------------------------------------------------------
# VQAv2
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # Unanimous: no normalisation, so case matters: "yes" != "Yes" in all 10 subsets -> 0.
        ("yes", ["Yes"] * 10, 0.0),
        # Unanimous exact: every subset has 9 matches -> min(1, 9/3) = 1.
        ("Yes", ["Yes"] * 10, 1.0),
        # \n/\t -> space then strip still applies when unanimous: " Yes\n" -> "Yes" -> 1.
        (" Yes\n", ["Yes"] * 10, 1.0),
        # Unanimous: no punctuation handling, "yes." != "yes" -> 0.
        ("yes.", ["yes"] * 10, 0.0),
        # The set is taken after strip: "yes\t" -> "yes", so all 10 identical -> exact match -> 1.
        ("yes", ["yes\t"] * 9 + ["yes"], 1.0),
        # Mixed: "Yes" lowercased by processDigitArticle, k=3 -> 0.9.
        ("Yes", mixed("yes", 3, "no"), 0.9),
    ],
)
def test_vqa_unanimous_vs_mixed(prediction: str, answers: list[str], expected: float) -> None:
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("k", "expected"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (9, 1.0)],  # see module docstring formula
)
def test_vqa_leave_one_out(k: int, expected: float) -> None:
    assert vqa_accuracy("cat", mixed("cat", k, "dog")) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # Tie 5/5: each side has k=5 matches -> min(1, 4/3) and min(1, 5/3) are all 1 -> 1.0 for either answer.
        ("cat", ["cat"] * 5 + ["dog"] * 5, 1.0),
        ("dog", ["cat"] * 5 + ["dog"] * 5, 1.0),
        # Tie 3/3 with 4 singletons: both tied answers get k=3 -> 0.9; a singleton gets k=1 -> 0.3.
        ("cat", ["cat"] * 3 + ["dog"] * 3 + ["a1", "a2", "a3", "a4"], 0.9),
        ("dog", ["cat"] * 3 + ["dog"] * 3 + ["a1", "a2", "a3", "a4"], 0.9),
        ("a2", ["cat"] * 3 + ["dog"] * 3 + ["a1", "a2", "a3", "a4"], 0.3),
        # Tie 2/2 after normalisation: "Two" and "2" are the same answer -> k=2 -> 0.6.
        ("2", ["Two", "2", "three", "3", "x", "y", "z", "u", "v", "w"], 0.6),
    ],
)
def test_vqa_tied_answers(prediction: str, answers: list[str], expected: float) -> None:
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)
    # TextVQA uses the same leave-one-out average, so ties score the same there.
    assert textvqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_vqa_one_of_ten_by_hand() -> None:
    # 1 match among 10: dropping the match -> 0 matches -> 0; the other 9 subsets -> 1 match -> 1/3.
    # (0 + 9 * 1/3) / 10 = 0.3
    answers = ["cat", "dog", "cow", "pig", "hen", "fox", "owl", "elk", "emu", "yak"]
    assert vqa_accuracy("cat", answers) == pytest.approx(0.3)


def test_vqa_non_ten_answers() -> None:
    # 3 answers [cat, cat, dog]: drop cat -> 1/3, drop cat -> 1/3, drop dog -> 2/3; mean = (4/3)/3 = 4/9.
    assert vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx(4 / 9)
    # A single answer: its only subset is empty -> 0 matches -> 0.
    assert vqa_accuracy("cat", ["cat"]) == 0.0


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        # "!" with no space around -> replaced by a space -> "yes " -> split/join -> "yes"; k=3 -> 0.9.
        ("yes!", "yes", 0.9),
        # digit-comma-digit regex matches -> "," removed (no space) -> "3000"; both sides -> 0.9.
        ("3,000", "3000", 0.9),
        ("3000", "3,000", 0.9),
        # Digit-comma anywhere -> *every* mark is removed, incl. "-": "1,000-2" -> "10002".
        ("1,000-2", "10002", 0.9),
        # No digit-comma, no space around "-" -> replaced by space: "well-known" -> "well known".
        ("well-known", "well known", 0.9),
        # " -" occurs -> "-" removed: "x - y" -> "x  y" -> split/join -> "x y".
        ("x - y", "x y", 0.9),
        # Period followed by a digit survives the period regex: "1.5" stays "1.5".
        ("1.5", "1.5", 0.9),
        ("15", "1.5", 0.0),
        # Period not followed by a digit is deleted: "end." -> "end".
        ("end.", "end", 0.9),
        # The "(?!<=\d)" group is a lookahead, not a lookbehind: "5." still loses its period -> "5".
        ("5.", "5", 0.9),
        # Number words: "two" -> "2", "none" -> "0".
        ("two", "2", 0.9),
        ("None", "0", 0.9),
        # Articles dropped: "a dog" -> "dog"; "The Dog" -> "dog".
        ("a dog", "dog", 0.9),
        ("The Dog", "dog", 0.9),
        # Contractions: "dont" -> "don't" ("'" is not in the punctuation list).
        ("dont", "don't", 0.9),
        # Empty prediction: "" matches nothing here -> 0.
        ("", "yes", 0.0),
        # ...but the answer "a" normalises to "" (article dropped), so "" matches 3 of 10 -> 0.9.
        ("", "a", 0.9),
    ],
)
def test_vqa_normalisation(prediction: str, answer: str, expected: float) -> None:
    assert vqa_accuracy(prediction, mixed(answer, 3)) == pytest.approx(expected)


def test_vqa_period_count_quirk() -> None:
    # periodStrip.sub("", s, re.UNICODE) -> count=32: 40 periods lose only the first 32 -> 8 remain.
    # Answer "."*40 also -> "."*8, so k=3 -> 0.9; a prediction of "."*8 -> "" matches nothing -> 0.
    answers = mixed("." * 40, 3)
    assert vqa_accuracy("." * 40, answers) == pytest.approx(0.9)
    assert vqa_accuracy("." * 8, answers) == 0.0


def test_vqa_empty_answers_raise() -> None:
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


# ----------------------------------------------------------------------------------------------------------
# EvalAI answer processor / TextVQA
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World?", "hello world"),  # lowercase, "," and "?" dropped
        ("The cat's toy", "cat 's toy"),  # "'s" -> " 's", article dropped
        ("Two Dogs", "2 dogs"),  # number word
        ("3,000", "3000"),  # commas dropped in word_tokenize
        ("yes!", "yes"),  # "!" -> space, then whitespace collapsed
        ("coca-cola", "coca cola"),  # "-" without surrounding space -> space
        ("x - y", "x y"),  # " -" present -> "-" removed
        ("(red)", "red"),  # "(" and ")" -> spaces
        ("e.g.", "eg"),  # both periods not followed by a digit
        ("1.5", "1.5"),  # period before a digit kept
        ("5.", "5"),  # lookahead quirk: trailing period after a digit removed
        ("\tdont\n", "don't"),  # whitespace, contraction
        ("none", "0"),
        ("An apple", "apple"),
        ("the", ""),  # only an article -> empty
        ("." * 40, "." * 8),  # count=32 period quirk
    ],
)
def test_evalai_answer_processor(raw: str, expected: str) -> None:
    assert evalai_answer_processor(raw) == expected


def test_textvqa_normalises_unanimous_answers() -> None:
    # TextVQA processes both sides always: "Stop Sign" -> "stop sign", 9 matches per subset -> 1.0.
    assert textvqa_accuracy("Stop Sign", ["stop sign"] * 10) == 1.0
    # The VQA evaluator does not normalise a unanimous set -> exact compare fails -> 0.0.
    assert vqa_accuracy("Stop Sign", ["stop sign"] * 10) == 0.0


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("Two", mixed("2", 3, "other"), 0.9),  # "two" -> "2", k=3
        ("coca cola", mixed("Coca-Cola", 1, "pepsi"), 0.3),  # "Coca-Cola" -> "coca cola", k=1
        ("nothing", mixed("Coca-Cola", 1, "pepsi"), 0.0),  # no match
        ("", mixed("the", 2, "pepsi"), 0.6),  # "the" -> "", k=2
    ],
)
def test_textvqa_accuracy(prediction: str, answers: list[str], expected: float) -> None:
    assert textvqa_accuracy(prediction, answers) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------------------
# GQA
# ----------------------------------------------------------------------------------------------------------


def test_gqa_accuracy() -> None:
    # "Yes." -> "yes" ok; "dog" ok; "Red.." -> rstrip all dots -> "red" ok;
    # "cat" vs gold "Cat" wrong (gold untouched); " yes" wrong (no strip). 3/5 = 0.6
    preds = ["Yes.", "dog", "Red..", "cat", " yes"]
    golds = ["yes", "dog", "red", "Cat", "yes"]
    assert gqa_accuracy(preds, golds) == pytest.approx(0.6)
    assert gqa_accuracy([], []) == 0.0


# ----------------------------------------------------------------------------------------------------------
# POPE
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No, there is not.", "no"),  # words [No, there, is, not]
        ("Yes.", "yes"),
        ("Yes", "yes"),
        ("no", "no"),
        ("There is no dog.", "no"),
        ("Yes, there is a dog. No other animals.", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # case-sensitive set
        ("Not really", "yes"),  # "Not" is not in {No, not, no}
        ("Nope", "yes"),
        ("There is a dog,no cat", "yes"),  # comma removed -> "dogno"
        ("No\nthere is", "yes"),  # split on " " only -> "No\nthere"
        ("not.", "no"),
        ("", "yes"),
    ],
)
def test_pope_parse(text: str, expected: str) -> None:
    assert pope_parse(text) == expected


def test_pope_metrics_balanced() -> None:
    # pred  y y n n y n ; label y n n y y n
    # TP = idx0, idx4 = 2; FP = idx1 = 1; TN = idx2, idx5 = 2; FN = idx3 = 1
    # acc = 4/6, P = 2/3, R = 2/3, F1 = 2/3, yes_ratio = 3/6
    m = pope_metrics(["yes", "yes", "no", "no", "yes", "no"], ["yes", "no", "no", "yes", "yes", "no"])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(0.5)


def test_pope_metrics_raw_text() -> None:
    # parsed: y y y n n ; labels y n n y n -> TP=1, FP=2, FN=1, TN=1
    # acc = 2/5, P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 2/5, yes_ratio = 3/5
    preds = ["Yes, there is.", "Yes.", "Yes", "There is no cat.", "no"]
    m = pope_metrics(preds, ["yes", "no", "no", "yes", "no"])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 2, 1, 1)
    assert m["accuracy"] == pytest.approx(0.4)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.4)
    assert m["yes_ratio"] == pytest.approx(0.6)


def test_pope_metrics_zero_division() -> None:
    # All "no": TP=FP=0 -> precision 0/0 -> 0.0, F1 0.0; TN=1, FN=1 -> acc 0.5; yes_ratio 0.
    m = pope_metrics(["no", "no"], ["yes", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["accuracy"] == pytest.approx(0.5)
    empty = pope_metrics([], [])
    assert empty["accuracy"] == 0.0 and empty["f1"] == 0.0 and empty["yes_ratio"] == 0.0


def test_pope_bad_label() -> None:
    with pytest.raises(ValueError):
        pope_metrics(["yes"], ["Yes"])


# ----------------------------------------------------------------------------------------------------------
# MME
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"),
        ("No", "no"),  # lowercased first
        ("Yes, there is", "yes"),  # prefix "yes,"
        ("not sure", "no"),  # prefix "not " contains "no"
        ("None", "no"),
        ("eyes", "yes"),  # "yes" inside the 4-char prefix
        ("I think yes", "other"),  # prefix "i th"
        ("  yes", "other"),  # no strip: prefix "  ye"
        ("", "other"),
    ],
)
def test_mme_parse(text: str, expected: str) -> None:
    assert mme_parse(text) == expected


def _row(category: str, image: str, prediction: str, label: str) -> dict:
    return {"category": category, "image": image, "prediction": prediction, "label": label}


def test_mme_scores() -> None:
    rows = [
        # existence: img1 both right; img2 one right, "maybe" parses to other (wrong)
        _row("existence", "img1.jpg", "Yes", "Yes"),
        _row("existence", "img1.jpg", "No", "No"),
        _row("existence", "img2.jpg", "Yes, it is", "Yes"),
        _row("existence", "img2.jpg", "maybe", "No"),
        # OCR: both wrong
        _row("OCR", "img3.jpg", "no", "yes"),
        _row("OCR", "img3.jpg", "yes", "no"),
        # code_reasoning: both right
        _row("code_reasoning", "img4.png", "yes", "yes"),
        _row("code_reasoning", "img4.png", "no", "no"),
    ]
    res = mme_scores(rows)
    # existence: acc = 3/4, acc+ = 1/2 images -> 75 + 50 = 125
    assert res["existence"]["acc"] == pytest.approx(0.75)
    assert res["existence"]["acc_plus"] == pytest.approx(0.5)
    assert res["existence"]["score"] == pytest.approx(125.0)
    assert res["existence"]["n_other"] == 1
    # OCR: 0 + 0 = 0; code_reasoning: 100 + 100 = 200
    assert res["OCR"]["score"] == pytest.approx(0.0)
    assert res["code_reasoning"]["score"] == pytest.approx(200.0)
    # perception = existence + OCR = 125; cognition = code_reasoning = 200 (absent categories skipped)
    assert res["perception"] == pytest.approx(125.0)
    assert res["cognition"] == pytest.approx(200.0)


def test_mme_acc_plus_needs_both() -> None:
    # Two images, each with exactly one right answer: acc = 2/4 = 0.5 but acc+ = 0 -> score 50.
    rows = [
        _row("count", "a", "yes", "yes"),
        _row("count", "a", "yes", "no"),
        _row("count", "b", "no", "yes"),
        _row("count", "b", "no", "no"),
    ]
    res = mme_scores(rows)
    assert res["count"]["acc"] == pytest.approx(0.5)
    assert res["count"]["acc_plus"] == 0.0
    assert res["count"]["score"] == pytest.approx(50.0)
    assert res["perception"] == pytest.approx(50.0) and res["cognition"] == 0.0


@pytest.mark.parametrize(
    "rows",
    [
        [_row("count", "a", "yes", "yes")],  # only one question for the image
        [_row("count", "a", "yes", "maybe"), _row("count", "a", "yes", "no")],  # bad label
        [{"category": "count", "image": "a", "prediction": "yes"}],  # missing key
    ],
)
def test_mme_invalid_rows(rows: list[dict]) -> None:
    with pytest.raises(ValueError):
        mme_scores(rows)


# ----------------------------------------------------------------------------------------------------------
# ScienceQA
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "n_options", "expected"),
    [
        ("A", 4, 0),  # letter alone
        ("C", 4, 2),
        ("E", 4, -1),  # a letter, but beyond the 4 choices
        ("E", 5, 4),
        ("B. The cat", 4, 1),  # "X. " prefix
        ("B. ", 4, 1),  # len 3 is enough
        ("B.", 4, -1),  # len 2: not the prefix branch, no "The answer is"
        ("E. text", 3, -1),  # prefix branch letter beyond the choices
        ("A. The answer is B.", 4, 0),  # prefix branch wins before the regex
        ("The answer is C.", 4, 2),
        ("Because of that. The answer is B.", 4, 1),  # one regex match anywhere
        ("The answer is Cx", 4, 2),  # the regex "." is a wildcard
        ("The answer is C", 4, -1),  # ...but it needs a character after the letter
        ("The answer is A. The answer is B.", 4, -1),  # two matches -> FAILED
        ("The answer is F.", 5, -1),  # letter not an option
        ("F. foo", 5, -1),
        ("b", 4, -1),  # lowercase is not an option letter
        (" A", 4, -1),
        ("A, because", 4, -1),
        ("garbage", 4, -1),
        ("", 4, -1),
    ],
)
def test_sqa_parse(prediction: str, n_options: int, expected: int) -> None:
    assert sqa_parse(prediction, n_options) == expected


def test_sqa_accuracy() -> None:
    # A -> 0 right; "The answer is B." -> 1 right; "C. x" -> 2 vs 0 wrong; garbage -> -1 wrong. 2/4 = 0.5
    preds = ["A", "The answer is B.", "C. x", "garbage"]
    assert sqa_accuracy(preds, [0, 1, 0, 2], [4, 4, 4, 4]) == pytest.approx(0.5)
    assert sqa_accuracy([], [], []) == 0.0


# ----------------------------------------------------------------------------------------------------------
# SEED-Bench
# ----------------------------------------------------------------------------------------------------------


def test_empty_predictions_are_wrong_not_skipped() -> None:
    # An empty prediction stays in the denominator everywhere: GQA 1/2, SEED 1/2, SQA 1/2, POPE parses "" as yes.
    assert gqa_accuracy(["", "yes"], ["no", "yes"]) == pytest.approx(0.5)
    assert seed_accuracy(["", "B"], ["A", "B"])["accuracy"] == pytest.approx(0.5)
    assert sqa_accuracy(["", "B"], [0, 1], [4, 4]) == pytest.approx(0.5)
    m = pope_metrics(["", "no"], ["no", "no"])  # "" -> yes: FP 1, TN 1
    assert (m["fp"], m["tn"], m["accuracy"], m["yes_ratio"]) == (1, 1, 0.5, 0.5)


def test_seed_accuracy() -> None:
    # "A"==A ok, "B " != B (no strip), "c" != C (no case folding), "D"==D ok -> 2/4 = 0.5
    preds, golds = ["A", "B ", "c", "D"], ["A", "B", "C", "D"]
    assert seed_accuracy(preds, golds) == {"accuracy": 0.5}
    # types 1,2,2,3 -> type 1: 1/1, type 2: 0/2, type 3: 1/1
    res = seed_accuracy(preds, golds, ["1", "2", "2", "3"])
    assert res["accuracy"] == pytest.approx(0.5)
    assert res["per_type"] == {"1": 1.0, "2": 0.0, "3": 1.0}


# ----------------------------------------------------------------------------------------------------------
# ReasonSeg gIoU / cIoU
# ----------------------------------------------------------------------------------------------------------


def test_seg_empty_pred_and_gt() -> None:
    # I = U = 0 -> per-mask iou = 1.0 (no-object rule); cIoU = 0 / (0 + 1e-10) = 0.
    z = np.zeros((2, 2), dtype=np.uint8)
    assert intersection_union(z, z) == (0, 0)
    giou, ciou = seg_giou_ciou([z], [z])
    assert giou == 1.0
    assert ciou == 0.0


def test_seg_ignore_label() -> None:
    # gt [[1,255],[0,1]], pred [[1,1],[1,0]]: pixel (0,1) ignored.
    # pred fg (valid) = {(0,0),(1,0)} = 2; gt fg = {(0,0),(1,1)} = 2; I = {(0,0)} = 1; U = 2 + 2 - 1 = 3
    pred = np.array([[1, 1], [1, 0]], dtype=np.uint8)
    gt = np.array([[1, 255], [0, 1]], dtype=np.uint8)
    assert intersection_union(pred, gt) == (1, 3)
    giou, ciou = seg_giou_ciou([pred], [gt])
    assert giou == pytest.approx(1 / (3 + 1e-5), abs=1e-12)
    assert ciou == pytest.approx(1 / 3)
    # the caller's prediction is not modified
    assert pred[0, 1] == 1


def test_seg_all_ignored_counts_as_empty() -> None:
    # gt all 255 -> every pred pixel ignored -> I = U = 0 -> iou 1.0
    pred = np.ones((3, 3), dtype=np.uint8)
    gt = np.full((3, 3), 255, dtype=np.uint8)
    assert intersection_union(pred, gt) == (0, 0)
    assert seg_giou_ciou([pred], [gt])[0] == 1.0


def test_seg_several_masks() -> None:
    # A: pred 1100, gt 1000 -> I=1, U=2; B: empty/empty -> I=U=0, iou 1; C: pred 1111, gt 0011 -> I=2, U=4
    # gIoU = (1/(2+1e-5) + 1 + 2/(4+1e-5)) / 3 ~ 2/3; cIoU = 3 / (6 + 1e-10) = 0.5
    preds = [np.array([[1, 1, 0, 0]]), np.zeros((1, 4), dtype=int), np.array([[1, 1, 1, 1]])]
    gts = [np.array([[1, 0, 0, 0]]), np.zeros((1, 4), dtype=int), np.array([[0, 0, 1, 1]])]
    assert [intersection_union(p, g) for p, g in zip(preds, gts)] == [(1, 2), (0, 0), (2, 4)]
    giou, ciou = seg_giou_ciou(preds, gts)
    assert giou == pytest.approx((1 / (2 + 1e-5) + 1.0 + 2 / (4 + 1e-5)) / 3, abs=1e-12)
    assert giou == pytest.approx(2 / 3, abs=1e-5)
    assert ciou == pytest.approx(0.5)


def test_seg_bool_and_torch_inputs() -> None:
    torch = pytest.importorskip("torch")
    # Same as mask A above: I=1, U=2
    pred = torch.tensor([[True, True, False, False]])
    gt = torch.tensor([[1, 0, 0, 0]], dtype=torch.uint8)
    assert intersection_union(pred, gt) == (1, 2)
    assert intersection_union(np.array([[True, True, False, False]]), np.array([[1, 0, 0, 0]])) == (1, 2)


@pytest.mark.parametrize(
    ("pred", "gt"),
    [
        (np.zeros((2, 2)), np.zeros((2, 3))),  # shape mismatch
        (np.full((2, 2), 2), np.zeros((2, 2))),  # non-binary prediction
        (np.zeros((2, 2)), np.full((2, 2), 7)),  # unknown gt label
    ],
)
def test_seg_invalid_masks(pred: np.ndarray, gt: np.ndarray) -> None:
    with pytest.raises(ValueError):
        intersection_union(pred, gt)


# ----------------------------------------------------------------------------------------------------------
# V*Bench
# ----------------------------------------------------------------------------------------------------------


def test_vstar_accuracy() -> None:
    # q1 argmin 0 right; q2 argmin 1 wrong; q3 tie 0/1 -> first index 0 right. 2/3
    assert vstar_accuracy([[0.1, 0.5], [0.9, 0.2], [0.3, 0.3, 0.4]]) == pytest.approx(2 / 3)
    assert vstar_accuracy([]) == 0.0
    with pytest.raises(ValueError):
        vstar_accuracy([[]])
    with pytest.raises(ValueError):
        vstar_accuracy([[math.nan, 1.0]])


# ----------------------------------------------------------------------------------------------------------
# Mismatched lengths
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: gqa_accuracy(["a"], []),
        lambda: pope_metrics(["yes", "no"], ["yes"]),
        lambda: sqa_accuracy(["A"], [0], [4, 4]),
        lambda: sqa_accuracy(["A", "B"], [0], [4, 4]),
        lambda: seed_accuracy(["A"], ["A", "B"]),
        lambda: seed_accuracy(["A"], ["A"], ["1", "2"]),
        lambda: seg_giou_ciou([np.zeros((1, 1))], []),
    ],
    ids=["gqa", "pope", "sqa-n", "sqa-ans", "seed", "seed-types", "seg"],
)
def test_mismatched_lengths_raise(call) -> None:
    with pytest.raises(ValueError, match="mismatched"):
        call()
