"""LISA's `llava_v1` conversation, prompt and answer templates, tokenised per segment.

A conversation is a list of `Segment`s: prompt text (never supervised) and assistant answers (supervised,
each closed by EOS). Each text chunk is tokenised on its own and the ids concatenated, so the label mask is
exact by construction for any tokenizer (LISA's length arithmetic is not, and its check was disabled). The
`<image>` placeholder becomes a run of the llava-hf image token, one id per image feature row, optionally
wrapped in `<im_start>`/`<im_end>` (LISA's `use_mm_start_end`). Training, validation and inference build
prompts with the same functions, so all of them see identical token sequences.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
SEG_TOKEN = "[SEG]"
IM_START, IM_END = "<im_start>", "<im_end>"

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# LISA's templates, protocol literals.
SHORT_QUESTION_LIST = (
    IMAGE_PLACEHOLDER + "\nCan you segment the {class_name} in this image?",
    IMAGE_PLACEHOLDER + "\nPlease segment the {class_name} in this image.",
    IMAGE_PLACEHOLDER + "\nWhat is {class_name} in this image? Please respond with segmentation mask.",
    IMAGE_PLACEHOLDER + "\nWhat is {class_name} in this image? Please output segmentation mask.",
)
LONG_QUESTION_LIST = (
    IMAGE_PLACEHOLDER + "\n{sent} Please respond with segmentation mask.",
    IMAGE_PLACEHOLDER + "\n{sent} Please output segmentation mask.",
)
EXPLANATORY_QUESTION_LIST = (
    "Please output segmentation mask and explain why.",
    "Please output segmentation mask and explain the reason.",
    "Please output segmentation mask and give some explanation.",
)
ANSWER_LIST = (
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)
VAL_ANSWER = "[SEG]."  # LISA's validation answer, teacher-forced


def short_question(rng: random.Random, class_name: str) -> str:
    return rng.choice(SHORT_QUESTION_LIST).format(class_name=class_name.lower())


def long_question(rng: random.Random, sentence: str) -> str:
    return rng.choice(LONG_QUESTION_LIST).format(sent=sentence)


def seg_answer(rng: random.Random) -> str:
    return rng.choice(ANSWER_LIST)


def val_question(text: str, is_sentence: bool) -> str:
    """LISA's ValDataset prompt (note the space after the newline, kept as LISA has it)."""
    if is_sentence:
        return f"{IMAGE_PLACEHOLDER}\n {text} Please output segmentation mask."
    return f"{IMAGE_PLACEHOLDER}\n What is {text} in this image? Please output segmentation mask."


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool


def conversation_segments(
    turns: list[tuple[str, str | None]], system: str = LLAVA_V1_SYSTEM
) -> list[Segment]:
    """`llava_v1` ("TWO" separator) segments of [(user, assistant or None)]; a final None leaves the turn open."""
    segments: list[Segment] = []
    prefix = system + " "
    for k, (question, answer) in enumerate(turns):
        if answer is None and k != len(turns) - 1:
            raise ValueError("only the last turn may leave the assistant answer open")
        segments.append(Segment(f"{prefix}USER: {question} ASSISTANT:", False))
        prefix = ""
        if answer is not None:
            segments.append(Segment(answer, True))
    return segments


@dataclass(frozen=True)
class TokenLayout:
    """Ids the prompt needs: image placeholder run (llava-hf expands `<image>` to `image_length` ids)."""

    image_token_id: int
    image_length: int
    bos_token_id: int
    eos_token_id: int
    im_start_id: int | None = None  # set (with im_end_id) to wrap images as LISA's use_mm_start_end does
    im_end_id: int | None = None

    def image_run(self) -> list[int]:
        run = [self.image_token_id] * self.image_length
        if self.im_start_id is not None and self.im_end_id is not None:
            run = [self.im_start_id, *run, self.im_end_id]
        return run


_IMAGE_SPLIT = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)})")


def tokenize_segments(segments: list[Segment], tokenizer, layout: TokenLayout) -> tuple[list[int], list[int]]:
    """Token ids and labels: BOS, then each segment, `<image>` expanded to its run, answers closed by EOS."""
    ids, labels = [layout.bos_token_id], [IGNORE_INDEX]
    for seg in segments:
        for piece in _IMAGE_SPLIT.split(seg.text):
            if piece == IMAGE_PLACEHOLDER:
                if seg.supervised:
                    raise ValueError(f"{IMAGE_PLACEHOLDER} placeholder inside an assistant answer")
                run = layout.image_run()
                ids += run
                labels += [IGNORE_INDEX] * len(run)
            elif piece:
                tok = tokenizer(piece, add_special_tokens=False).input_ids
                ids += tok
                labels += tok if seg.supervised else [IGNORE_INDEX] * len(tok)
        if seg.supervised:
            ids.append(layout.eos_token_id)
            labels.append(layout.eos_token_id)
    return ids, labels


def image_first(text: str) -> str:
    """LLaVA's `preprocess_multimodal` on one turn: a turn holding `<image>` becomes `"<image>\\n"` + the
    rest with every `<image>` removed and stripped, and the result is stripped again (so an image-only
    turn is `"<image>"`). A turn that already starts with `<image>` is rewritten too: `"<image> What?"` and
    `"<image>\\nWhat?"` both become `"<image>\\nWhat?"`, as LLaVA trains on them."""
    if IMAGE_PLACEHOLDER not in text:
        return text
    return (IMAGE_PLACEHOLDER + "\n" + text.replace(IMAGE_PLACEHOLDER, "").strip()).strip()


def llava_turns(conversations: list[dict]) -> list[tuple[str, str]]:
    """LLaVA `conversations` ([{from, value}], human first, alternating) as (user, assistant) pairs.

    Each user turn is rewritten by `image_first`, as LISA's VQA loader (LLaVA's rule) does.
    """
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("record has no conversations")
    if len(conversations) % 2:
        raise ValueError(f"record has an odd number of turns ({len(conversations)})")
    turns = []
    for k in range(0, len(conversations), 2):
        human, gpt = conversations[k], conversations[k + 1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise ValueError(
                f"turn {k // 2} is not a human/gpt pair: {human.get('from')!r}, {gpt.get('from')!r}"
            )
        turns.append((image_first(human["value"]), gpt["value"]))
    return turns
