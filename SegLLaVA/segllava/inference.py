"""Masks for (image, question) pairs, teacher-forced or generated, batched with left padding.

Both modes build the prompt with the training tokenisation (`conversation.py`). Teacher-forced: the answer
is given (LISA's validation `"[SEG]."`) and one forward pass yields the `[SEG]` hidden states. Generated:
greedy decoding; the hidden state that produced each generated `[SEG]` is the last position of that
decoding step, so no second pass is needed. SAM's image encoder runs once per image in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from eval.images import to_rgb
from eval.llava_hf import left_pad

from .conversation import IMAGE_PLACEHOLDER, conversation_segments, tokenize_segments

if TYPE_CHECKING:  # `model.py` imports this module (SegLLaVA.segment); the model is only an annotation here
    from .model import SegLLaVA


@dataclass
class SegResult:
    """One query's answer: the generated text and one boolean mask [H, W] per `[SEG]` it produced."""

    text: str
    masks: list[np.ndarray]

    @property
    def mask(self) -> np.ndarray | None:
        return self.masks[0] if self.masks else None


def prompt_ids(seg: SegLLaVA, tokenizer, question: str, answer: str | None = None) -> list[int]:
    """Token ids of one single-turn `llava_v1` conversation (answer None: the assistant turn stays open)."""
    if IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER + "\n" + question
    ids, _ = tokenize_segments(conversation_segments([(question, answer)]), tokenizer, seg.layout)
    return ids


def clip_pixels(seg: SegLLaVA, processor, images: Sequence[Image.Image]) -> torch.Tensor:
    pixels = processor.image_processor([to_rgb(im) for im in images], return_tensors="pt")["pixel_values"]
    return pixels.to(device=seg.core.device, dtype=seg.core.dtype)


@torch.inference_mode()
def teacher_forced_masks(
    seg: SegLLaVA, processor, images: Sequence[Image.Image], questions: Sequence[str], answer: str
) -> list[list[torch.Tensor]]:
    """Per (image, question): the mask logits [H, W] of every `[SEG]` in the given answer."""
    tok = processor.tokenizer
    rows = [prompt_ids(seg, tok, q, answer) for q in questions]
    ids, mask = left_pad(rows, tok.pad_token_id)
    device = seg.core.device
    ids, mask = ids.to(device), mask.to(device)
    index = torch.arange(len(images), device=device)
    embeds = seg.embed(ids, clip_pixels(seg, processor, images), index)
    out = seg.language_forward(embeds, mask)
    hidden, which = seg.seg_hidden_states(out.hidden_states[-1], ids)
    logits = seg.masks_from_seg_hidden(hidden, seg.sam_image_embeddings(images), which)
    grouped: list[list[torch.Tensor]] = [[] for _ in images]
    for m, r in zip(logits, which.tolist()):
        grouped[r].append(m)
    return grouped


@torch.inference_mode()
def generate_masks(
    seg: SegLLaVA,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    max_new_tokens: int = 32,
) -> list[SegResult]:
    """Greedy answers to each (image, question) and a boolean mask per generated `[SEG]`."""
    tok = processor.tokenizer
    ids, mask = left_pad([prompt_ids(seg, tok, q) for q in questions], tok.pad_token_id)
    device = seg.core.device
    states, where, new = generated_seg_states(
        seg, tok, ids.to(device), mask.to(device), clip_pixels(seg, processor, images), max_new_tokens
    )
    logits = seg.masks_from_seg_hidden(states, seg.sam_image_embeddings(images), where[:, 0])
    masks: list[list[np.ndarray]] = [[] for _ in images]
    for m, r in zip(logits, where[:, 0].tolist()):
        masks[r].append((m > 0).cpu().numpy())
    texts = tok.batch_decode(new, skip_special_tokens=False)
    cleaned = [clean_answer(t, tok) for t in texts]
    return [SegResult(text, m) for text, m in zip(cleaned, masks)]


def generated_seg_states(
    seg: SegLLaVA, tok, ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy decoding; the hidden state of every generated `[SEG]`, its (row, step), and the new tokens.

    Step k's last position produced new token k, so its last-layer state is what LISA feeds to SAM:
    no second pass is needed.
    """
    out = seg.llava.generate(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[:, ids.shape[1] :]
    step_states = torch.stack([step[-1][:, -1] for step in out.hidden_states], dim=1)  # [B, steps, H]
    where = (new[:, : step_states.shape[1]] == seg.seg_token_id).nonzero()
    return step_states[where[:, 0], where[:, 1]], where, new


def clean_answer(text: str, tok) -> str:
    """Decoded answer up to EOS, without padding (keeps `[SEG]`, which is the point of the answer)."""
    text = text.split(tok.eos_token)[0]
    return (text.replace(tok.pad_token, "") if tok.pad_token else text).strip()


def overlay(image: Image.Image, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.5) -> Image.Image:
    """The image with `mask` tinted in `color` (LISA's chat shows the same red overlay)."""
    rgb = np.asarray(to_rgb(image), dtype=np.float32)
    m = mask.astype(bool)[..., None]
    tinted = np.where(m, rgb * (1 - alpha) + np.asarray(color, np.float32) * alpha, rgb)
    return Image.fromarray(tinted.round().astype(np.uint8))
