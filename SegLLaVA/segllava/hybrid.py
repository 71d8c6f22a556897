"""LISA's HybridDataset and its collator.

An item is drawn, not indexed: a family is chosen with probability ∝ `--sample_rates`, then an item inside it
(as LISA does). The draw is seeded by (seed, epoch, index), so reruns and resumes see the same data. An epoch
is `batch_size × grad_accumulation_steps × steps_per_epoch × world_size` items, as in LISA.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .conversation import IGNORE_INDEX, TokenLayout, conversation_segments, tokenize_segments
from .masks import DataError, open_rgb
from .sam_io import sam_preprocess
from .sources import Sample


def encode_conversations(
    sample: Sample, tokenizer, layout: TokenLayout, seg_token_id: int, max_length: int
) -> tuple[list[list[int]], list[list[int]], list[np.ndarray]]:
    """Ids, labels and the gt masks of each conversation (one mask per `[SEG]`, in order).

    `max_length` counts tokens as LISA's collator does, each image as one placeholder token whatever its
    number of feature rows (256 in LISA, 576 at CLIP-336): a longer conversation is cut there, after its
    image runs, so the same text is kept whatever the vision tower.
    """
    all_ids, all_labels = [], []
    extra_rows = layout.image_length - 1
    for k, turns in enumerate(sample.conversations):
        ids, labels = tokenize_segments(conversation_segments(turns), tokenizer, layout)
        n_images = ids.count(layout.image_token_id) // layout.image_length
        length = len(ids) - n_images * extra_rows
        if length > max_length:
            # Every image run lies before the cut, or the cut is refused below.
            cut_at = max_length + n_images * extra_rows
            cut = ids[cut_at:]
            if seg_token_id in cut or layout.image_token_id in cut:
                raise DataError(
                    f"{sample.image_path}: conversation {k} is {length} tokens (each image counted as one); "
                    f"cutting it to {max_length} (--model_max_length) would drop a [SEG] or image token"
                )
            ids, labels = ids[:cut_at], labels[:cut_at]
        all_ids.append(ids)
        all_labels.append(labels)
    counts = [ids.count(seg_token_id) for ids in all_ids]
    if sum(counts) != len(sample.masks):
        raise DataError(f"{sample.image_path}: {len(sample.masks)} masks but {sum(counts)} [SEG] tokens")
    bounds = np.cumsum([0, *counts])
    return all_ids, all_labels, [sample.masks[bounds[i] : bounds[i + 1]] for i in range(len(counts))]


class HybridDataset(Dataset):
    """Family by `sample_rates`, then a random item of that family; returns one image's encoded conversations."""

    def __init__(
        self,
        sources: Sequence,
        sample_rates: Sequence[float],
        length: int,
        *,
        tokenizer,
        image_processor,
        layout: TokenLayout,
        seg_token_id: int,
        sam_image_size: int,
        max_length: int,
        seed: int = 0,
    ):
        if len(sources) != len(sample_rates):
            raise ValueError(f"{len(sources)} datasets but {len(sample_rates)} --sample_rates")
        if not sources or min(sample_rates) < 0 or sum(sample_rates) <= 0:
            raise ValueError(
                f"--sample_rates must be non-negative with a positive sum, got {list(sample_rates)}"
            )
        self.sources = list(sources)
        self.sample_rates = [float(r) for r in sample_rates]
        self.length = length
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.layout = layout
        self.seg_token_id = seg_token_id
        self.sam_image_size = sam_image_size
        self.max_length = max_length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        source = rng.choices(self.sources, weights=self.sample_rates)[0]
        return self.encode(source.sample(rng))

    def encode(self, sample: Sample) -> dict:
        image = open_rgb(sample.image_path)
        if sample.masks.shape[1:] != (image.size[1], image.size[0]):
            raise DataError(
                f"{sample.image_path}: masks are {sample.masks.shape[2]}x{sample.masks.shape[1]}, the image "
                f"{image.size[0]}x{image.size[1]}"
            )
        ids, labels, masks = encode_conversations(
            sample, self.tokenizer, self.layout, self.seg_token_id, self.max_length
        )
        sam = sam_preprocess(image, self.sam_image_size)
        return {
            "input_ids": ids,
            "labels": labels,
            # Training targets are the object (value 1); ignore regions (255) count as background, as in LISA.
            "masks": [torch.from_numpy((m == 1).astype(np.float32)) for m in masks],
            "pixel_values": self.image_processor(image, return_tensors="pt")["pixel_values"][0],
            "sam_pixel_values": sam.pixel_values,
            "resized_size": sam.resized_size,
            "original_size": sam.original_size,
        }


class SegCollator:
    """Images -> one LM row per conversation (right-padded), with each row's image index and gt masks."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict:
        rows = [
            (i, ids, labels)
            for i, it in enumerate(items)
            for ids, labels in zip(it["input_ids"], it["labels"])
        ]
        length = max(len(ids) for _, ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, (_, ids, lab) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            labels[r, : len(lab)] = torch.tensor(lab)
            attention_mask[r, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "image_run_index": torch.tensor([i for i, _, _ in rows], dtype=torch.long),
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "sam_pixel_values": torch.stack([it["sam_pixel_values"] for it in items]),
            "resized_sizes": torch.tensor([it["resized_size"] for it in items], dtype=torch.long),
            "original_sizes": torch.tensor([it["original_size"] for it in items], dtype=torch.long),
            "gt_masks": [m for it in items for m in it["masks"]],
        }
