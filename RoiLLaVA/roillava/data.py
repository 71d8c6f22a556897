"""LLaVA conversation JSON → token ids, labels and pixel values, with loud, located errors."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from eval.checks import load_json_records
from eval.images import open_image

from .conversation import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    RecordError,
    conversation_segments,
    get_template,
    llava_turns,
    tokenize_segments,
)

logger = logging.getLogger(__name__)


def image_seq_length(model_config) -> int:
    """Image tokens per image, from the vision config (never a hard-coded offset)."""
    vc = model_config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    return n + (1 if model_config.vision_feature_select_strategy == "full" else 0)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    images: list[Image.Image]
    truncated: bool = False


def build_example(
    turns: list[tuple[str, str | None]],
    images: list[Image.Image],
    *,
    tokenizer,
    template: str,
    image_token_id: int,
    image_seq_len: int,
    max_length: int,
) -> Example:
    """Tokenise one conversation; over-long sequences are truncated unless that would break them."""
    n_placeholders = sum(q.count(IMAGE_PLACEHOLDER) + (a or "").count(IMAGE_PLACEHOLDER) for q, a in turns)
    if n_placeholders != len(images):
        raise ValueError(f"{n_placeholders} <image> placeholders but {len(images)} images")
    segments = conversation_segments(get_template(template), turns)
    ids, labels = tokenize_segments(segments, tokenizer, image_token_id, image_seq_len)
    truncated = False
    if len(ids) > max_length:
        if image_token_id in ids[max_length:]:
            raise ValueError(
                f"sequence of {len(ids)} tokens exceeds model_max_length={max_length} inside image tokens"
            )
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError(f"no supervised token left (length {len(ids)}, model_max_length={max_length})")
    return Example(ids, labels, images, truncated)


class LazySupervisedDataset(Dataset):
    """LLaVA instruction/caption records, tokenised on access.

    With `skip_bad_records`, a broken record is counted (and the next good one served in its
    place) instead of stopping the run; `summary()` reports what was skipped and truncated.
    """

    def __init__(
        self,
        data_path: str,
        image_folder: str,
        *,
        tokenizer,
        image_processor,
        model_config,
        template: str,
        max_length: int,
        skip_bad_records: bool = False,
    ):
        self.data_path = Path(data_path)
        self.records = load_json_records(self.data_path)
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template
        self.max_length = max_length
        self.skip_bad_records = skip_bad_records
        self.image_token_id = model_config.image_token_id
        self.image_seq_len = image_seq_length(model_config)
        self.stats: Counter = Counter()

    def __len__(self) -> int:
        return len(self.records)

    def turns_and_images(self, index: int) -> tuple[list[tuple[str, str | None]], list[Image.Image]]:
        """Hook for variants (Chain-of-Spot) that rewrite a record before tokenisation."""
        rec = self.records[index]
        if not isinstance(rec, dict) or "conversations" not in rec:
            raise ValueError("record has no conversations")
        turns = llava_turns(rec["conversations"])
        images = [open_image(self.image_folder / rec["image"])] if "image" in rec else []
        return turns, images

    def example(self, index: int) -> Example:
        try:
            turns, images = self.turns_and_images(index)
            return build_example(
                turns,
                images,
                tokenizer=self.tokenizer,
                template=self.template,
                image_token_id=self.image_token_id,
                image_seq_len=self.image_seq_len,
                max_length=self.max_length,
            )
        except (ValueError, OSError, KeyError) as e:
            raise RecordError(f"{self.data_path} record {index}: {e}") from e

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                ex = self.example(i)
                break
            except RecordError as e:
                if not self.skip_bad_records:
                    raise
                self.stats["skipped"] += 1
                logger.warning("skipping bad record: %s", e)
        else:
            raise RecordError(f"{self.data_path}: every record is bad")
        self.stats["truncated"] += ex.truncated
        item = {"input_ids": torch.tensor(ex.input_ids), "labels": torch.tensor(ex.labels)}
        if ex.images:
            item["pixel_values"] = self.image_processor(ex.images, return_tensors="pt")["pixel_values"]
        return item

    def summary(self) -> dict:
        return {"records": len(self), "skipped": self.stats["skipped"], "truncated": self.stats["truncated"]}

    @property
    def modality_lengths(self) -> list[int]:
        """Per record, its conversation's word count: positive with an image, negative without (LLaVA's
        cheap length estimate for `--group_by_modality_length`; no tokenisation, no image opened)."""
        out = []
        for rec in self.records:
            turns = rec.get("conversations", []) if isinstance(rec, dict) else []
            words = max(1, sum(len(str(t.get("value", "")).split()) for t in turns if isinstance(t, dict)))
            out.append(words if isinstance(rec, dict) and "image" in rec else -words)
        return out


def length_grouped_indices(lengths: list[int], group_size: int, world_size: int, generator) -> list[int]:
    """A random order whose consecutive `group_size`-sample groups are sorted longest first and dealt
    into `world_size` batches of near-equal total length (one batch per rank and accumulation step)."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    out = []
    for start in range(0, len(order), group_size):
        group = sorted(order[start : start + group_size], key=lambda i: lengths[i], reverse=True)
        if len(group) % world_size:
            out += [i for k in range(world_size) for i in group[k::world_size]]
            continue
        per_batch = len(group) // world_size
        batches: list[list[int]] = [[] for _ in range(world_size)]
        totals = [0] * world_size
        for i in group:
            k = min((k for k in range(world_size) if len(batches[k]) < per_batch), key=totals.__getitem__)
            batches[k].append(i)
            totals[k] += lengths[i]
        out += [i for batch in batches for i in batch]
    return out


def modality_length_grouped_indices(
    lengths: list[int], batch_size: int, world_size: int, generator
) -> list[int]:
    """LLaVA's `--group_by_modality_length` order: every group of `world_size × batch_size` samples holds
    one modality (image or text-only, the sign of `lengths`), grouped by length inside; the groups come
    in random order, and the two modalities' incomplete remainders come last, together."""
    group_size = world_size * batch_size
    image = [i for i, n in enumerate(lengths) if n > 0]
    text = [i for i, n in enumerate(lengths) if n < 0]
    groups: list[list[int]] = []
    rest: list[int] = []
    for indices in (image, text):
        if not indices:
            continue
        order = length_grouped_indices([abs(lengths[i]) for i in indices], group_size, world_size, generator)
        ordered = [indices[i] for i in order]
        chunks = [ordered[k : k + group_size] for k in range(0, len(ordered), group_size)]
        if len(chunks[-1]) < group_size:
            rest += chunks.pop()
        groups += chunks
    shuffled = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return [i for group in shuffled for i in group] + rest


class ModalityLengthGroupedSampler(torch.utils.data.Sampler):
    """Samples in `modality_length_grouped_indices` order, reshuffled per epoch from `seed`, so a
    resumed run replays the same order."""

    def __init__(self, lengths: list[int], batch_size: int, world_size: int, seed: int = 0):
        self.lengths, self.batch_size, self.world_size, self.seed = lengths, batch_size, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(
            modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator)
        )


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads a batch; images of all samples are concatenated in sample order.

    With `image_size` (height, width), a text-only sample gets a zero image and `image_present` marks
    which images are real, as in LLaVA: every batch then runs the vision tower and projector (the
    trainer adds their zero-weighted output to the loss), so under ZeRO-3 no rank skips the tower's
    parameter gathers while the others wait for it.
    """

    pad_token_id: int
    image_size: tuple[int, int] | None = None

    def __call__(self, items: list[dict]) -> dict:
        length = max(len(it["input_ids"]) for it in items)
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(items), length), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            input_ids[row, :n], labels[row, :n], attention[row, :n] = it["input_ids"], it["labels"], 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        pixels, present = [], []
        for it in items:
            if "pixel_values" in it:
                pixels.append(it["pixel_values"])
                present += [True] * len(it["pixel_values"])
            elif self.image_size is not None:
                pixels.append(torch.zeros(1, 3, *self.image_size))
                present.append(False)
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        if self.image_size is not None:
            batch["image_present"] = torch.tensor(present, dtype=torch.bool)
        return batch
