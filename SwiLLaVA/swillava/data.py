"""SEAL records -> token ids, labels, image and object crops, with loud, located errors.

`--data_path` is a SEAL data folder, or one JSON file (e.g. captions for projector alignment). In a
folder holding SEAL's files (`craigwu/seal_vqa_data`) they are read in SEAL's order, the spatial file
twice; any other folder is read as every `*.json` in sorted name order.

A record is LLaVA's `{"image", "conversations"}` plus, optionally, `"target_instances":
[{"name", "bbox": [x, y, w, h]}]` and `"search"`. The objects are used (cropped and shown) when the
record has `"search"` or an `<object>` placeholder; then the placeholder count must equal the number of
instances. Otherwise `target_instances` is metadata (SEAL's negative records name the missing objects
there) and is ignored. Each sample has `object_slots` fixed slots; unused ones are zeros marked absent.
"""

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
    OBJECT_PLACEHOLDER,
    RecordError,
    TokenLayout,
    conversation_segments,
    get_template,
    llava_turns,
    tokenize_segments,
)
from .objects import ObjectInstance, check_box, check_name, crop_object, expand_objects, feature_layout

logger = logging.getLogger(__name__)

# SEAL's training mix (train_search.py): file order, with the spatial-relation file used twice.
SEAL_FILES = (
    "vaw_attribute_data.json",
    "llava_instruct_data.json",
    "GQA_data.json",
    "llava_focus_data.json",
    "spatial_relation_data.json",
    "spatial_relation_data.json",
    "negative_data.json",
)


def data_files(data_path: str | Path) -> list[Path]:
    """The JSON files of `data_path`, in reading order (see the module docstring)."""
    path = Path(data_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"data path not found: {path}")
    if any((path / name).is_file() for name in SEAL_FILES):
        missing = sorted({n for n in SEAL_FILES if not (path / n).is_file()})
        if missing:
            raise FileNotFoundError(f"{path}: looks like SEAL's data folder but lacks {missing}")
        return [path / name for name in SEAL_FILES]
    files = sorted(path.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.json data files")
    return files


def record_objects(rec: dict, turns: list[tuple[str, str]]) -> list[dict]:
    """The raw instances a record shows as evidence (see the module docstring for the rule)."""
    n_placeholders = sum(q.count(OBJECT_PLACEHOLDER) for q, _ in turns)
    if any(OBJECT_PLACEHOLDER in a for _, a in turns):
        raise ValueError(f"{OBJECT_PLACEHOLDER} placeholder inside an assistant answer")
    if n_placeholders == 0 and "search" not in rec:
        return []
    instances = rec.get("target_instances", [])
    if not isinstance(instances, list):
        raise ValueError(f"target_instances must be a list, got {type(instances).__name__}")
    if len(instances) != n_placeholders:
        raise ValueError(
            f"{n_placeholders} {OBJECT_PLACEHOLDER} placeholders but {len(instances)} target_instances"
        )
    for k, inst in enumerate(instances):
        if not isinstance(inst, dict) or "name" not in inst or "bbox" not in inst:
            raise ValueError(
                f"target_instances[{k}] must be {{'name': ..., 'bbox': [x, y, w, h]}}, got {inst!r}"
            )
    return instances


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    image: Image.Image | None
    image_long: bool
    crops: list[Image.Image]
    object_long: list[bool]
    truncated: bool = False


def build_example(
    rec: dict,
    image_folder: Path,
    *,
    tokenizer,
    layout: TokenLayout,
    template: str,
    object_slots: int,
    crop_size: int,
    patch_scale: float,
    max_length: int,
    image_features: str = "rule",
) -> Example:
    """One record, checked and tokenised. `image_features` = "rule" (SEAL's training rule), "long" or "short"."""
    if not isinstance(rec, dict) or "conversations" not in rec:
        raise ValueError("record has no conversations")
    turns = llava_turns(rec["conversations"])
    n_images = sum(q.count(IMAGE_PLACEHOLDER) + a.count(IMAGE_PLACEHOLDER) for q, a in turns)
    if n_images != ("image" in rec):
        raise ValueError(f"{n_images} {IMAGE_PLACEHOLDER} placeholders but {int('image' in rec)} images")
    instances = record_objects(rec, turns)
    if instances and "image" not in rec:
        raise ValueError("objects given for a text-only record")
    if len(instances) > object_slots:
        raise ValueError(f"{len(instances)} objects but only {object_slots} object slots (--object_slots)")
    names = [check_name(inst["name"]) for inst in instances]

    image, crops, objects = None, [], []
    if "image" in rec:
        image = open_image(image_folder / rec["image"])
        width, height = image.size
        for k, (name, inst) in enumerate(zip(names, instances)):
            try:
                box = check_box(inst["bbox"], width, height)
            except ValueError as e:
                raise ValueError(f"target_instances[{k}] ({name!r}): {e}") from None
            objects.append(ObjectInstance(name, box))
        crops = [crop_object(image, o.box, crop_size, patch_scale) for o in objects]
        turns = expand_objects(turns, objects, width, height)

    image_long, object_long = feature_layout(len(objects), "train")
    if image_features != "rule":
        image_long = image_features == "long"
    segments = conversation_segments(get_template(template), turns)
    ids, labels = tokenize_segments(
        segments, tokenizer, layout, image_long=image_long, object_long=object_long
    )
    truncated = False
    if len(ids) > max_length:
        if any(t in (layout.image_id, layout.object_id) for t in ids[max_length:]):
            raise ValueError(
                f"sequence of {len(ids)} tokens exceeds model_max_length={max_length} inside image/object tokens"
            )
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError(f"no supervised token left (length {len(ids)}, model_max_length={max_length})")
    return Example(ids, labels, image, image_long, crops, object_long, truncated)


class SealDataset(Dataset):
    """SEAL (or LLaVA) records from one file or a data folder, tokenised on access.

    With `skip_bad_records`, a broken record is counted (and the next good one served in its place)
    instead of stopping the run; `summary()` reports what was skipped and truncated. `image_features`
    overrides SEAL's long/short rule for the image: "long", "short", or "alternate" (even records long,
    odd short; aligns both projectors in one projector-alignment run).
    """

    def __init__(
        self,
        data_path: str,
        image_folder: str,
        *,
        tokenizer,
        image_processor,
        layout: TokenLayout,
        template: str,
        max_length: int,
        object_slots: int = 3,
        patch_scale: float = 1.2,
        image_features: str = "rule",
        skip_bad_records: bool = False,
    ):
        if image_features not in ("rule", "long", "short", "alternate"):
            raise ValueError(
                f"image_features must be rule | long | short | alternate, got {image_features!r}"
            )
        self.files = data_files(data_path)
        loaded = {f: load_json_records(f) for f in dict.fromkeys(self.files)}
        self.records = [(f, i, rec) for f in self.files for i, rec in enumerate(loaded[f])]
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.layout = layout
        self.template = template
        self.max_length = max_length
        self.object_slots = object_slots
        self.patch_scale = patch_scale
        self.image_features = image_features
        self.skip_bad_records = skip_bad_records
        self.crop_size = image_processor.crop_size["height"]
        self.stats: Counter = Counter()

    def __len__(self) -> int:
        return len(self.records)

    def example(self, index: int) -> Example:
        path, local, rec = self.records[index]
        features = self.image_features
        if features == "alternate":
            features = "long" if index % 2 == 0 else "short"
        try:
            return build_example(
                rec,
                self.image_folder,
                tokenizer=self.tokenizer,
                layout=self.layout,
                template=self.template,
                object_slots=self.object_slots,
                crop_size=self.crop_size,
                patch_scale=self.patch_scale,
                max_length=self.max_length,
                image_features=features,
            )
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise RecordError(f"{path} record {local}: {e}") from e

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
            raise RecordError(f"{self.files}: every record is bad")
        self.stats["truncated"] += ex.truncated
        return self.tensors(ex)

    def tensors(self, ex: Example) -> dict:
        size, slots = self.crop_size, self.object_slots
        pixels = torch.zeros(3, size, size)
        if ex.image is not None:
            pixels = self.image_processor([ex.image], return_tensors="pt")["pixel_values"][0]
        crops = torch.zeros(slots, 3, size, size)
        present = torch.zeros(slots, dtype=torch.bool)
        long = torch.zeros(slots, dtype=torch.bool)
        if ex.crops:
            n = len(ex.crops)
            crops[:n] = self.image_processor(ex.crops, return_tensors="pt")["pixel_values"]
            present[:n] = True
            long[:n] = torch.tensor(ex.object_long)
        return {
            "input_ids": torch.tensor(ex.input_ids),
            "labels": torch.tensor(ex.labels),
            "pixel_values": pixels,
            "image_present": torch.tensor(ex.image is not None),
            "image_long": torch.tensor(ex.image_long),
            "object_pixel_values": crops,
            "object_present": present,
            "object_long": long,
        }

    def summary(self) -> dict:
        return {
            "files": [str(f) for f in self.files],
            "records": len(self),
            "skipped": self.stats["skipped"],
            "truncated": self.stats["truncated"],
        }


@dataclass
class SealCollator:
    """Right-pads ids into fresh tensors and stacks the fixed-shape image and object slots."""

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        length = max(len(it["input_ids"]) for it in items)
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(items), length), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            input_ids[row, :n], labels[row, :n], attention[row, :n] = it["input_ids"], it["labels"], 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        for key in (
            "pixel_values",
            "image_present",
            "image_long",
            "object_pixel_values",
            "object_present",
            "object_long",
        ):
            batch[key] = torch.stack([it[key] for it in items])
        return batch
