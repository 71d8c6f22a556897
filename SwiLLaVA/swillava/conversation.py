"""Vicuna-v1 / plain prompts tokenised per segment, with `<image>` and `<object>` placeholder runs.

A conversation is a list of `Segment`s: prompt text (never supervised) and assistant answers
(supervised, each closed by EOS). Each text chunk between placeholders is tokenised on its own and the
ids concatenated, so the label mask is exact by construction for any tokenizer. Placeholders become
runs of their token id, one id per feature row that the model scatters there: `<image>` a run of the
image's length (long or short), the k-th `<object>` a run of the k-th object's length. Training and
inference build prompts with the same functions, so both see identical token sequences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
OBJECT_PLACEHOLDER = "<object>"
_PLACEHOLDERS = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(OBJECT_PLACEHOLDER)})")

V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class ConversationTemplate:
    """Separator style "TWO" (vicuna v1) or "plain" (projector alignment)."""

    name: str
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    plain: bool = False


TEMPLATES: dict[str, ConversationTemplate] = {
    "v1": ConversationTemplate("v1", V1_SYSTEM),
    "vicuna_v1": ConversationTemplate("vicuna_v1", V1_SYSTEM),
    "plain": ConversationTemplate("plain", plain=True),
}


def get_template(name: str) -> ConversationTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}") from None


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool
    closes_turn: bool = True  # a supervised segment ends with EOS, except plain captions


class RecordError(ValueError):
    """A training or evaluation record that cannot be used; the message names file and index."""


def conversation_segments(
    template: ConversationTemplate, turns: list[tuple[str, str | None]]
) -> list[Segment]:
    """Segments of `turns` = [(user, assistant or None)]; a final None leaves the assistant turn open."""
    if template.plain:
        if len(turns) != 1 or turns[0][1] is None:
            raise ValueError("the plain template takes exactly one (image, caption) turn")
        # LLaVA's plain format keeps only the image and the caption; the instruction is dropped.
        return [Segment(IMAGE_PLACEHOLDER, False), Segment(turns[0][1] + "\n", True, closes_turn=False)]
    user, assistant = template.roles
    segments: list[Segment] = []
    prefix = template.system + " " if template.system else ""
    for k, (question, answer) in enumerate(turns):
        if answer is None and k != len(turns) - 1:
            raise ValueError("only the last turn may leave the assistant answer open")
        segments.append(Segment(f"{prefix}{user}: {question} {assistant}:", False))
        prefix = ""
        if answer is not None:
            segments.append(Segment(answer, True))
    return segments


@dataclass(frozen=True)
class TokenLayout:
    """Placeholder token ids and the run lengths of "long" and "short" features."""

    image_id: int
    object_id: int
    long_length: int
    short_length: int

    def length(self, long: bool) -> int:
        return self.long_length if long else self.short_length


def tokenize_segments(
    segments: list[Segment],
    tokenizer,
    layout: TokenLayout,
    *,
    image_long: bool = True,
    object_long: list[bool] | tuple[bool, ...] = (),
) -> tuple[list[int], list[int]]:
    """Token ids and labels: BOS, then each segment with its placeholders expanded to runs.

    The k-th `<object>` (counting across the whole conversation) expands to the run of object k; a
    count mismatch is an error, never a silent shift of features. Placeholders in a supervised
    segment are rejected: the model cannot be taught to emit feature rows.
    """
    ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    n_objects = 0
    for seg in segments:
        for piece in _PLACEHOLDERS.split(seg.text):
            if piece in (IMAGE_PLACEHOLDER, OBJECT_PLACEHOLDER):
                if seg.supervised:
                    raise ValueError(f"{piece} placeholder inside an assistant answer")
                if piece == IMAGE_PLACEHOLDER:
                    run = [layout.image_id] * layout.length(image_long)
                else:
                    if n_objects >= len(object_long):
                        raise ValueError(
                            f"more {OBJECT_PLACEHOLDER} placeholders than objects ({len(object_long)})"
                        )
                    run = [layout.object_id] * layout.length(object_long[n_objects])
                    n_objects += 1
                ids += run
                labels += [IGNORE_INDEX] * len(run)
            elif piece:
                tok = tokenizer(piece, add_special_tokens=False).input_ids
                ids += tok
                labels += tok if seg.supervised else [IGNORE_INDEX] * len(tok)
        if seg.supervised and seg.closes_turn:
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
    if n_objects != len(object_long):
        raise ValueError(f"{n_objects} {OBJECT_PLACEHOLDER} placeholders but {len(object_long)} objects")
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

    Each user turn is rewritten by `image_first`, as LLaVA-1.5 and SEAL do.
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
