"""LLaVA-1.5 conversation templates, tokenised per segment so labels never need length arithmetic.

A conversation becomes a list of `Segment`s: prompt text (never supervised) and assistant
answers (supervised, each closed by `</s>`). Every segment is tokenised on its own and the ids
are concatenated, so the label mask is exact by construction for any tokenizer (legacy Llama,
Llama-3-style, or the toy BPE). Inference builds its prompt with the same function, so training
and generation see identical token sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"

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


def tokenize_segments(
    segments: list[Segment], tokenizer, image_token_id: int, image_seq_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels: BOS, then each segment; `<image>` expands to `image_seq_length` ids.

    A supervised segment that closes a turn is followed by EOS, supervised too (the model must
    learn to stop).
    """
    ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    for seg in segments:
        chunks = seg.text.split(IMAGE_PLACEHOLDER)
        for i, chunk in enumerate(chunks):
            if i > 0:
                ids += [image_token_id] * image_seq_length
                labels += [IGNORE_INDEX] * image_seq_length
            if chunk:
                piece = tokenizer(chunk, add_special_tokens=False).input_ids
                ids += piece
                labels += piece if seg.supervised else [IGNORE_INDEX] * len(piece)
        if seg.supervised and seg.closes_turn:
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
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

    Each user turn is rewritten by `image_first`, as LLaVA-1.5 does.
    """
    if not conversations:
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
