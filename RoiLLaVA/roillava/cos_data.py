"""Chain-of-Spot training data: a LLaVA record rewritten into the two-turn ROI conversation.

For record `i` (its index in `data_path`) with image, one question `k` is chosen and the record
becomes (prompts from `roi.py`):

1. user  `<image>\\nTo answer the question: "q", where is the region of interest in the image?`
2. model `str(box)`, the ROI as a Python list `[x1, y1, x2, y2]` on the padded square frame
3. user  `The region of interest in the image is <image>\\n. Answer the question: "q"`
4. model the record's answer to q; then every other turn in order, the first prefixed
   "Now answer the following questions based on the raw image: ".

With `region_only` the record is turns 1–2 alone, with the global image only: the ROI adapter
learns the region, which is all the agent asks it for; the stage-2 answer and the raw-image turns
are left out (less than half the tokens of a toy record).

The ROI comes from the Chain-of-Spot JSON, key `f"{i:06d}_{id with / → _}_q{k}"`, value
`{"params": [top, left, side]}` in original pixels, converted by `cos_box_from_params`. The
two images are the global view and `crop_padded(image, box)` (padded to square again by the
processor): two `<image>` placeholders, scattered in order by llava-hf.

Wording: "where", in training and at test time (see `roi.py`); `wording="what"` is the flag.

Question choice: `k = Random(f"{seed}-{i}-{epoch}").randrange(n_questions)`, with `epoch` set by
the trainer at each epoch start (`set_epoch`). Chain-of-Spot draws k unseeded on every load; ours
gives a fresh draw per epoch and the same draws on a rerun or a resume, whatever the loader
workers do.

Fallbacks: a record with an image but no ROI key for the chosen question
is trained with the full image as crop and the answer `[0.0, 0.0, 1.0, 1.0]`; a text-only record
has nothing to look at and is trained as the plain LLaVA conversation. `summary()` reports both,
counted over the whole file at construction (exact) and as served by this process. A malformed
ROI value (not three numbers, side ≤ 0, outside the image) is a record error, not a fallback.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .boxes import cos_box_from_params, crop_padded
from .conversation import IMAGE_PLACEHOLDER
from .data import LazySupervisedDataset
from .roi import (
    DEFAULT_ROI_WORDING,
    FULL_IMAGE_BOX,
    RAW_IMAGE_PREFIX,
    chain_of_spot_turns,
    check_wording,
    roi_question,
    strip_image_placeholders,
)

logger = logging.getLogger(__name__)


def roi_key(index: int, record_id: str, question: int) -> str:
    """Chain-of-Spot's key: record index in the data file, id with '/' → '_', question index."""
    return f"{index:06d}_{str(record_id).replace('/', '_')}_q{question}"


def load_roi_file(path: str | Path) -> dict[str, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Chain-of-Spot ROI file not found: {path}")
    try:
        from eval.checks import read_utf8

        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of {{key: {{'params': [top, left, side]}}}}")
    return data


def roi_params(entry, key: str) -> list[float]:
    """`[top, left, side]` of one ROI entry; anything else is a data error naming the key."""
    params = entry.get("params") if isinstance(entry, dict) else None
    if (
        not isinstance(params, list)
        or len(params) != 3
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in params)
        or params[2] <= 0
    ):
        raise ValueError(f"ROI {key!r}: expected {{'params': [top, left, side > 0]}}, got {entry!r}")
    return params


@dataclass(frozen=True)
class RoiAudit:
    """ROI coverage of the whole data file, computed once at construction."""

    questions: int  # questions of records with an image
    missing: int  # of those, without a ROI key (trained with the full-image fallback)
    text_only: int  # records without an image (trained as plain LLaVA)


class ChainOfSpotDataset(LazySupervisedDataset):
    """LLaVA records + the Chain-of-Spot ROI JSON → two-image, two-turn ROI conversations."""

    def __init__(
        self,
        data_path: str,
        image_folder: str,
        *,
        roi_data_path: str,
        seed: int = 0,
        wording: str = DEFAULT_ROI_WORDING,
        region_only: bool = False,
        **kwargs,
    ):
        super().__init__(data_path, image_folder, **kwargs)
        if not getattr(self.image_processor, "do_pad", False):
            raise ValueError(
                "Chain-of-Spot boxes live in the padded square frame: use --image_aspect_ratio pad"
            )
        self.roi_data_path = Path(roi_data_path)
        self.rois = load_roi_file(self.roi_data_path)
        self.wording = check_wording(wording)
        self.region_only = region_only
        self.seed = seed
        self.epoch = 0
        self.audit = self._audit()
        if self.audit.questions and self.audit.missing == self.audit.questions:
            raise ValueError(
                f"{self.roi_data_path}: no key matches a question of {self.data_path}; keys must read "
                f"{roi_key(0, 'ID', 0)!r} with the record's index in that file (same file, same order)"
            )
        if self.audit.missing:
            logger.warning(
                "%s: %d of %d questions have no ROI and train on the full image",
                self.roi_data_path,
                self.audit.missing,
                self.audit.questions,
            )

    def _audit(self) -> RoiAudit:
        questions = missing = text_only = 0
        for i, rec in enumerate(self.records):
            if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
                continue  # reported as a record error when served
            if "image" not in rec:
                text_only += 1
                continue
            n = len(rec["conversations"]) // 2
            questions += n
            missing += sum(roi_key(i, rec.get("id", ""), k) not in self.rois for k in range(n))
        return RoiAudit(questions, missing, text_only)

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at each epoch start, before the loader starts its workers."""
        self.epoch = epoch

    def question_index(self, index: int, n_questions: int) -> int:
        return random.Random(f"{self.seed}-{index}-{self.epoch}").randrange(n_questions)

    def turns_and_images(self, index: int) -> tuple[list[tuple[str, str | None]], list[Image.Image]]:
        turns, images = super().turns_and_images(index)
        if not images:
            self.stats["text_only"] += 1
            return turns, images
        n_placeholders = sum(q.count(IMAGE_PLACEHOLDER) for q, _ in turns)
        if n_placeholders != 1:
            raise ValueError(f"{n_placeholders} <image> placeholders but 1 image")
        image = images[0]
        turns = [(strip_image_placeholders(q), a) for q, a in turns]
        k = self.question_index(index, len(turns))
        key = roi_key(index, self.records[index].get("id", ""), k)
        if key in self.rois:
            box = cos_box_from_params(roi_params(self.rois[key], key), *image.size)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"ROI {key!r} lies outside the {image.width}x{image.height} image")
        else:
            self.stats["roi_fallback"] += 1
            box = list(FULL_IMAGE_BOX)
        question, answer = turns[k]
        if self.region_only:
            return [(roi_question(question, self.wording), str(box))], [image]
        rest = [t for j, t in enumerate(turns) if j != k]
        if rest:
            rest[0] = (RAW_IMAGE_PREFIX + rest[0][0], rest[0][1])
        conversation = chain_of_spot_turns(question, str(box), answer, wording=self.wording) + rest
        return conversation, [image, crop_padded(image, box)]

    def summary(self) -> dict:
        return {
            **super().summary(),
            "roi_questions": self.audit.questions,
            "roi_missing": self.audit.missing,
            "text_only_records": self.audit.text_only,
            # per process: with dataloader workers these stay 0 in the main process
            "served_roi_fallbacks": self.stats["roi_fallback"],
            "served_text_only": self.stats["text_only"],
        }
