"""The Chain-of-Spot protocol: its prompts, parsing the box the model proposes, two-stage answering.

Prompt wording. Chain-of-Spot trains on "... , where is the region of interest in the image?" but
its evaluation asks "... , what is the region of interest ...", a prompt the model was not trained
on. We train with **"where"** by default (`--roi_wording what` selects the other) and record the
wording with the adapter's prompt settings, saved next to every checkpoint (`roi_config.json`, this
module's `RoiConfig`; older checkpoints: `roillava_train_config.json`, `data.roi_wording`); a checkpoint
made elsewhere may record it as `"roi_wording"` in its `config.json`. At test time a model is asked with the wording it records (`resolve_roi_wording`), so
our checkpoints are asked as trained; a checkpoint that records none (e.g. Chain-of-Spot's own) is
asked with Chain-of-Spot's evaluation wording "what", which reproduces the Chain-of-Spot paper.
`--roi-wording` overrides both.

Instruction placement. Chain-of-Spot quotes the benchmark's question text verbatim inside both
stages, suffix included (GQA, TextVQA, ...), except for ScienceQA (and MMBench), where the
option-letter instruction is left out of the quotes and appended after the stage-2 quote. A question
row that carries such an `instruction` (see `split_instruction`) is asked that way.

All prompts are built here and only here, so training data (`cos_data.py`) and inference can
never drift apart.

Two-stage inference (`answer_two_stage`): stage 1 asks for the region of interest (greedy, under
the box grammar of `box_grammar` unless `RoiConfig.constrained_box` is off) →
`parse_roi_box` → crop of the padded frame → stage 2 replays stage 1 (its answer verbatim as the
assistant turn) and asks the question with the crop as the second `<image>`. Both stages are
batched. A box that cannot be used falls back to the full image and the reason is recorded in the
answer's metadata; nothing is swallowed by a bare `except`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from eval.runner import run_questions

from .answer import Prompt, build_prompt, build_turns_prompt, generate
from .box_grammar import BoxLogitsProcessor, can_write_boxes
from .boxes import crop_padded
from .conversation import IMAGE_PLACEHOLDER
from .wording import (  # noqa: F401  (re-exported: the ROI protocol's names live here too)
    DEFAULT_ROI_WORDING,
    ROI_WORDINGS,
    TRAIN_CONFIG_FILE,
    UNRECORDED_ROI_WORDING,
    check_wording,
    recorded_roi_wording,
    resolve_roi_wording,
)

logger = logging.getLogger(__name__)

RAW_IMAGE_PREFIX = "Now answer the following questions based on the raw image: "
FULL_IMAGE_BOX = (0.0, 0.0, 1.0, 1.0)
# Below 1/50 of the padded side a crop is a handful of pixels of a typical 500-640 px benchmark
# image, blown up ~30x into blur: the global view says more.
DEFAULT_MIN_SIDE = 0.02


def strip_image_placeholders(text: str) -> str:
    """The question text without `<image>` (Chain-of-Spot removes "<image>\\n" from every turn)."""
    return text.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "")


def roi_question(question: str, wording: str = DEFAULT_ROI_WORDING) -> str:
    """Stage-1 user turn (global image first): Chain-of-Spot's first training turn and evaluation prompt."""
    check_wording(wording)
    return f'{IMAGE_PLACEHOLDER}\nTo answer the question: "{question}", {wording} is the region of interest in the image?'


def roi_answer_prompt(question: str, instruction: str = "") -> str:
    """Stage-2 user turn: the crop is the second `<image>`; `instruction` follows the closing quote."""
    return (
        f'The region of interest in the image is {IMAGE_PLACEHOLDER}\n. Answer the question: "{question}"'
        + instruction
    )


def chain_of_spot_turns(
    question: str,
    roi_text: str,
    answer: str | None,
    *,
    wording: str = DEFAULT_ROI_WORDING,
    instruction: str = "",
) -> list[tuple[str, str | None]]:
    """The two Chain-of-Spot turns; `answer=None` leaves the final assistant turn open (inference).

    `instruction` (e.g. ScienceQA's `"\nAnswer with the option's letter ..."`) goes after the stage-2
    quote only, never inside the quotes of either stage.
    """
    return [(roi_question(question, wording), roi_text), (roi_answer_prompt(question, instruction), answer)]


def split_instruction(text: str, instruction: str | None) -> tuple[str, str]:
    """(question, instruction) of a question row whose `text` ends with its `instruction`."""
    if not instruction:
        return text, ""
    if not text.endswith(instruction):
        raise ValueError(f"question text does not end with its instruction {instruction!r}: {text!r}")
    return text[: len(text) - len(instruction)], instruction


@dataclass(frozen=True)
class RoiParse:
    """A proposed box on the padded frame (x1, y1, x2, y2 in [0, 1]).

    `ok` is False when the text held no usable box: `box` is then the full image and `reason`
    says why, as a short fixed phrase so reasons can be counted (the raw text is kept by the
    caller). `clamped` marks an accepted box that had to be clipped into [0, 1].
    """

    box: tuple[float, float, float, float]
    ok: bool
    reason: str | None = None
    clamped: bool = False


_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_SEPARATORS = re.compile(r"[\s,]+")


def _reject(reason: str) -> RoiParse:
    return RoiParse(FULL_IMAGE_BOX, False, reason)


def parse_roi_box(text: str, min_side: float = DEFAULT_MIN_SIDE) -> RoiParse:
    """The first `[x1, y1, x2, y2]` list in `text` (commas and/or spaces, words around it allowed).

    Rejected (full-image fallback with a reason): no list, not exactly four numbers, a
    non-number, NaN or infinity, x2 < x1 or y2 < y1, or a side below `min_side` after clamping
    to [0, 1].
    """
    if not 0 <= min_side < 1:
        raise ValueError(f"min_side must be in [0, 1), got {min_side}")
    if not text or not text.strip():
        return _reject("empty answer")
    match = _BRACKETED.search(text)
    if match is None:
        return _reject("no [x1, y1, x2, y2] list")
    parts = [p for p in _SEPARATORS.split(match.group(1)) if p]
    if len(parts) != 4:
        return _reject("not 4 numbers")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return _reject("not a number")
    if not all(math.isfinite(v) for v in values):
        return _reject("NaN or infinity")
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        return _reject("inverted box")
    box = tuple(min(1.0, max(0.0, v)) for v in values)
    if box[2] - box[0] < min_side or box[3] - box[1] < min_side:
        return _reject(f"degenerate box (side < {min_side})")
    return RoiParse(box, True, None, clamped=list(box) != values)


@dataclass(frozen=True)
class RoiConfig:
    """How the two-stage answerer asks and decodes (the defaults are Chain-of-Spot's, except wording)."""

    wording: str = DEFAULT_ROI_WORDING
    min_side: float = DEFAULT_MIN_SIDE
    template: str = "vicuna_v1"
    roi_max_new_tokens: int = 128
    max_new_tokens: int = 128
    # Stage 1 decodes under the box grammar (`box_grammar`): every box it finishes is usable.
    # False decodes freely, as Chain-of-Spot does.
    constrained_box: bool = True
    # Stage 1 alone, the answer being the region's text: an adapter trained on the region turn only
    # (`--roi_region_only`) has no stage-2 answer; the agent asks every ROI adapter for its region only.
    region_only: bool = False

    def __post_init__(self):
        check_wording(self.wording)


def roi_logits_processor(tokenizer, config: RoiConfig) -> BoxLogitsProcessor | None:
    """The stage-1 decoding constraint of `config`; None (free decoding) when `constrained_box` is off,
    or, with a warning, when the vocabulary has no single token for some character of a box."""
    if not config.constrained_box:
        return None
    if not can_write_boxes(tokenizer):
        logger.warning(
            "the ROI model's vocabulary cannot write a box token by token: its box is decoded freely"
        )
        return None
    return BoxLogitsProcessor(tokenizer, config.min_side)


def generate_roi_texts(model, processor, prompts: list[Prompt], config: RoiConfig) -> tuple[list[str], bool]:
    """Stage 1: the boxes' texts (greedy) and whether they were decoded under the box grammar.

    Under the grammar a row can only fail by running out of `roi_max_new_tokens` before its `]`,
    which cannot happen from `box_grammar.MAX_BOX_CHARS` + 1 (for EOS) tokens up.
    """
    box_grammar = roi_logits_processor(processor.tokenizer, config)
    texts = generate(
        model, processor, prompts, max_new_tokens=config.roi_max_new_tokens, logits_processor=box_grammar
    )
    return texts, box_grammar is not None


@dataclass(frozen=True)
class TwoStageAnswer:
    text: str
    roi_text: str | None
    roi: RoiParse | None  # None for a question without an image (answered in one stage)
    constrained_box: bool | None = None  # whether stage 1 decoded under the box grammar

    @property
    def metadata(self) -> dict:
        if self.roi is None:
            return {"roi_box": None, "roi_text": None, "fallback": "no image", "constrained_box": None}
        return {
            "roi_box": list(self.roi.box),
            "roi_text": self.roi_text,
            "fallback": self.roi.reason,
            "constrained_box": self.constrained_box,
        }


def stage1_prompt(question: str, image, *, processor, model_config, config: RoiConfig) -> Prompt:
    turns = [(roi_question(strip_image_placeholders(question), config.wording), None)]
    return build_turns_prompt(
        turns, [image], tokenizer=processor.tokenizer, model_config=model_config, template=config.template
    )


def stage2_prompt(
    question: str,
    image,
    roi_text: str,
    roi: RoiParse,
    *,
    processor,
    model_config,
    config: RoiConfig,
    instruction: str = "",
) -> Prompt:
    """Stage 1 replayed with its answer verbatim, then the question about the crop, `instruction` after it.

    A stray `<image>` in the generated text is removed, or it would claim a third image.
    """
    q = strip_image_placeholders(question)
    turns = chain_of_spot_turns(
        q, roi_text.replace(IMAGE_PLACEHOLDER, ""), None, wording=config.wording, instruction=instruction
    )
    crop = crop_padded(image, roi.box)
    return build_turns_prompt(
        turns,
        [image, crop],
        tokenizer=processor.tokenizer,
        model_config=model_config,
        template=config.template,
    )


def answer_two_stage(
    model,
    processor,
    questions: list[str],
    images: list[list],
    config: RoiConfig = RoiConfig(),
    instructions: list[str] | None = None,
) -> list[TwoStageAnswer]:
    """Answer a batch: stage 1 for every question with an image, then stage 2, each as one batch.

    `images[i]` is `[]` (text-only: a single plain answer to question + instruction, fallback "no
    image") or `[image]`. `instructions[i]` goes after the stage-2 quote (`chain_of_spot_turns`).
    """
    instructions = instructions or [""] * len(questions)
    if len(instructions) != len(questions):
        raise ValueError("answer_two_stage takes one instruction per question")
    results: list[TwoStageAnswer | None] = [None] * len(questions)
    visual = [i for i, ims in enumerate(images) if ims]
    text_only = [i for i, ims in enumerate(images) if not ims]
    if len(images) != len(questions) or any(len(images[i]) != 1 for i in visual):
        raise ValueError("answer_two_stage takes exactly one image (or none) per question")
    if text_only:
        prompts = [
            build_prompt(
                questions[i] + instructions[i],
                [],
                tokenizer=processor.tokenizer,
                model_config=model.config,
                template=config.template,
            )
            for i in text_only
        ]
        for i, text in zip(
            text_only, generate(model, processor, prompts, max_new_tokens=config.max_new_tokens)
        ):
            results[i] = TwoStageAnswer(text, None, None)
    if visual:
        kw = {"processor": processor, "model_config": model.config, "config": config}
        stage1 = [stage1_prompt(questions[i], images[i][0], **kw) for i in visual]
        roi_texts, constrained = generate_roi_texts(model, processor, stage1, config)
        rois = [parse_roi_box(t, config.min_side) for t in roi_texts]
        if config.region_only:
            for i, roi_text, roi in zip(visual, roi_texts, rois):
                results[i] = TwoStageAnswer(roi_text, roi_text, roi, constrained)
            return results
        stage2 = [
            stage2_prompt(questions[i], images[i][0], t, roi, instruction=instructions[i], **kw)
            for i, t, roi in zip(visual, roi_texts, rois)
        ]
        answers = generate(model, processor, stage2, max_new_tokens=config.max_new_tokens)
        for i, text, roi_text, roi in zip(visual, answers, roi_texts, rois):
            results[i] = TwoStageAnswer(text, roi_text, roi, constrained)
    return results


def roi_answer_file(
    model,
    processor,
    question_file: str,
    image_folder: str,
    answers_file: str,
    *,
    config: RoiConfig = RoiConfig(),
    batch_size: int = 8,
    model_id: str = "cos",
    num_chunks: int = 1,
    chunk_idx: int = 0,
    progress: bool = True,
    model_signature: str,
) -> dict:
    """The System-1 answerer's resumable loop with the two-stage solver; adds the fallback count."""

    def solve(rows: list[dict], images: list[list]) -> list[tuple[str, dict]]:
        split = [split_instruction(q["text"], q.get("instruction")) for q in rows]
        answers = answer_two_stage(
            model, processor, [q for q, _ in split], images, config, [i for _, i in split]
        )
        return [(a.text, a.metadata) for a in answers]

    summary = run_questions(
        question_file,
        image_folder,
        answers_file,
        solve,
        batch_size=batch_size,
        model_id=model_id,
        num_chunks=num_chunks,
        chunk_idx=chunk_idx,
        progress=progress,
        error_metadata={
            "roi_box": None,
            "roi_text": None,
            "fallback": "image error",
            "constrained_box": None,
        },
        settings={"runner": "roi_answer", "model": model_signature, "config": dataclasses.asdict(config)},
        needs_image=True,
    )
    return {**summary, **fallback_counts(answers_file)}


def fallback_counts(answers_file: str | Path) -> dict:
    """How many answers of the whole file used the full image instead of a proposed box, and why."""
    reasons: dict[str, int] = {}
    n = 0
    for line in Path(answers_file).read_text().splitlines():
        meta = json.loads(line).get("metadata", {})
        n += 1
        if meta.get("fallback"):
            reasons[meta["fallback"]] = reasons.get(meta["fallback"], 0) + 1
    return {
        "answers": n,
        "fallbacks": sum(reasons.values()),
        "fallback_rate": sum(reasons.values()) / max(1, n),
        "fallback_reasons": reasons,
    }
