"""LISA's four data families, each read from its real layout under `--dataset_dir`.

Each source indexes its files once at start-up (so a bad file fails the run early) and draws one `Sample` per
call: an image, single-turn (or, for VQA, multi-turn) conversations with LISA's prompt and answer templates,
and one mask per `[SEG]`. The randomness comes from the caller's `random.Random`, so a draw is reproducible.

| family | sub-datasets and files |
|---|---|
| sem_seg | ADE20K `ade20k/{images,annotations}/training/`, names `ade20k/classes.json` or `objectInfo150.txt`; COCO-Stuff `cocostuff/train2017/*.png` + `coco/train2017/*.jpg`, names `cocostuff/cocostuff_classes.txt`; Mapillary `mapillary/config_v2.0.json`, `mapillary/training/{images,v2.0/labels}/`; PACO-LVIS `vlpart/paco/annotations/paco_lvis_v1_train.json` (images under `coco/`); PASCAL-Part `vlpart/pascal_part/train.json` (images under `vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/`) |
| refer_seg | `refer_seg/<ds>/refs(unc).p` (refcocog: `refs(umd).p`) + `instances.json`; images `refer_seg/images/mscoco/images/train2014/`, refclef `refer_seg/images/saiapr_tc-12/` |
| vqa | `llava_dataset/llava_instruct_150k.json`, images `coco/train2017/` |
| reason_seg | `reason_seg/ReasonSeg/<split>/*.jpg` + same-name `.json`; explanatory `reason_seg/ReasonSeg/explanatory/<split>.json` |
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conversation import (
    EXPLANATORY_QUESTION_LIST,
    IMAGE_PLACEHOLDER,
    VAL_ANSWER,
    llava_turns,
    long_question,
    seg_answer,
    short_question,
    val_question,
)
from .masks import (
    IGNORE_LABEL,
    DataError,
    coco_segmentation_mask,
    image_size,
    load_plain_pickle,
    read_json,
    read_label_png,
    reason_seg_mask,
)

Turns = list[tuple[str, str]]


@dataclass
class Sample:
    """One image with its conversations; `masks` [k, H, W] (values 0/1, or 255 = ignore) follow the `[SEG]`s."""

    image_path: str
    conversations: list[Turns]
    masks: np.ndarray
    meta: dict = field(default_factory=dict)


def _empty_masks(height: int, width: int) -> np.ndarray:
    return np.zeros((0, height, width), dtype=np.uint8)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    return path


def _class_question(rng: random.Random, names: list[str], masks: list[np.ndarray], image: str) -> Sample:
    conversations = [[(short_question(rng, name), seg_answer(rng))] for name in names]
    return Sample(image, conversations, np.stack(masks).astype(np.uint8))


# --- sem_seg --------------------------------------------------------------------------------------------------
@dataclass
class LabelMapSet:
    """Images with label PNGs; `names[v]` is the class of label value v after `remap`, None = ignored."""

    name: str
    pairs: list[tuple[Path, Path]]
    names: list[str | None]
    remap: str  # "ade20k" (0 -> ignore, v -> v-1) | "identity"

    def labels(self, path: Path, image_size: tuple[int, int]) -> np.ndarray:
        raw = read_label_png(path, image_size).astype(np.int32)
        if self.remap == "ade20k":
            label = raw - 1
            label[raw == 0] = IGNORE_LABEL
            label[label == IGNORE_LABEL - 1] = IGNORE_LABEL
        else:
            label = raw.copy()
        values = np.unique(label)
        unknown = [int(v) for v in values if v != IGNORE_LABEL and (v < 0 or v >= len(self.names))]
        if unknown:
            raise DataError(
                f"{path}: label values {unknown} have no class in the {len(self.names)}-name class list"
            )
        for v in values:
            if v != IGNORE_LABEL and self.names[v] is None:
                label[label == v] = IGNORE_LABEL
        return label


def _read_class_file(path: Path) -> list[str]:
    """A JSON list of names, or text lines `name` / `k: name` / ADE's objectInfo150 table (first synonym)."""
    if path.suffix == ".json":
        names = read_json(path)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{path}: expected a JSON list of class names")
        return names
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if path.name == "objectInfo150.txt":  # Idx Ratio Train Val Name (tab-separated, header first)
        return [ln.split("\t")[-1].split(";")[0].strip() for ln in lines[1:]]
    return [re.sub(r"^\d+\s*:\s*", "", ln) for ln in lines]


def ade20k_set(root: Path) -> LabelMapSet:
    base = root / "ade20k"
    candidates = [base / "classes.json", base / "objectInfo150.txt"]
    class_file = next((c for c in candidates if c.is_file()), None)
    if class_file is None:
        raise DataError(f"{base}: no class list (want {candidates[0].name} or {candidates[1].name})")
    images = sorted(_require(base / "images" / "training", "ADE20K images").glob("*.jpg"))
    pairs = [(im, base / "annotations" / "training" / f"{im.stem}.png") for im in images]
    return LabelMapSet("ade20k", pairs, list(_read_class_file(class_file)), "ade20k")


def cocostuff_set(root: Path) -> LabelMapSet:
    """COCO-Stuff 164k: value v is line v + 1 of LISA's `cocostuff_classes.txt` (line 0 = unlabeled)."""
    class_file = _require(root / "cocostuff" / "cocostuff_classes.txt", "COCO-Stuff class list")
    names: list[str | None] = list(_read_class_file(class_file))[1:]
    names = [
        None if n is not None and "-" in n else n for n in names
    ]  # LISA ignores merged "x-other" classes
    labels = sorted(_require(root / "cocostuff" / "train2017", "COCO-Stuff labels").glob("*.png"))
    pairs = [(root / "coco" / "train2017" / f"{lb.stem}.jpg", lb) for lb in labels]
    return LabelMapSet("cocostuff", pairs, names, "identity")


def mapillary_set(root: Path) -> LabelMapSet:
    config = read_json(_require(root / "mapillary" / "config_v2.0.json", "Mapillary config"))
    names: list[str | None] = [str(x["readable"]).lower() for x in config["labels"]]
    names = [None if n == "unlabeled" else n for n in names]
    base = root / "mapillary" / "training"
    labels = sorted(_require(base / "v2.0" / "labels", "Mapillary labels").glob("*.png"))
    return LabelMapSet(
        "mapillary", [(base / "images" / f"{lb.stem}.jpg", lb) for lb in labels], names, "identity"
    )


@dataclass
class CocoPartsSet:
    """PACO-LVIS / PASCAL-Part: COCO-format part annotations, names "object:part"."""

    name: str
    json_path: Path
    image_root: Path
    images: dict[int, dict]
    anns: dict[int, list[dict]]
    categories: dict[int, str]


def coco_parts_set(name: str, json_path: Path, image_root: Path) -> CocoPartsSet:
    data = read_json(_require(json_path, f"{name} annotations"))
    images = {im["id"]: im for im in data["images"]}
    categories = {c["id"]: c["name"] for c in data["categories"]}
    anns: dict[int, list[dict]] = defaultdict(list)
    for k, ann in enumerate(data["annotations"]):
        if ann["category_id"] not in categories:
            raise DataError(
                f"{json_path}: annotation {k} has category {ann['category_id']} missing from the class list"
            )
        if ann["image_id"] not in images:
            raise DataError(f"{json_path}: annotation {k} refers to image {ann['image_id']}, not in 'images'")
        anns[ann["image_id"]].append(ann)
    return CocoPartsSet(name, json_path, image_root, images, dict(anns), categories)


def part_name(rng: random.Random, name: str) -> str:
    """LISA's phrasing of "object:part": "object part" or "the part of the object", 50/50."""
    if ":" not in name:
        return name
    obj, part = name.split(":", 1)
    return f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"


class SemSegSource:
    """`sem_seg`: one sub-dataset uniformly, then an image, then up to `num_classes` of its classes."""

    def __init__(self, root: Path, names: list[str], num_classes: int):
        builders = {
            "ade20k": lambda: ade20k_set(root),
            "cocostuff": lambda: cocostuff_set(root),
            "mapillary": lambda: mapillary_set(root),
            "paco_lvis": lambda: coco_parts_set(
                "paco_lvis",
                root / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json",
                root / "coco",
            ),
            "pascal_part": lambda: coco_parts_set(
                "pascal_part",
                root / "vlpart" / "pascal_part" / "train.json",
                root / "vlpart" / "pascal_part" / "VOCdevkit" / "VOC2010" / "JPEGImages",
            ),
        }
        unknown = [n for n in names if n not in builders]
        if unknown:
            raise ValueError(f"unknown --sem_seg_data {unknown}; known: {sorted(builders)}")
        self.sets = [builders[n]() for n in names]
        self.num_classes = num_classes

    def __len__(self) -> int:
        return sum(len(s.pairs) if isinstance(s, LabelMapSet) else len(s.anns) for s in self.sets)

    def sample(self, rng: random.Random) -> Sample:
        data = rng.choice(self.sets)
        for _ in range(100):  # an image may hold no usable class; LISA redraws too
            sample = (
                self._from_label_map(rng, data)
                if isinstance(data, LabelMapSet)
                else self._from_parts(rng, data)
            )
            if sample is not None:
                return sample
        raise DataError(f"{data.name}: 100 draws found no image with a usable class")

    def _from_label_map(self, rng: random.Random, data: LabelMapSet) -> Sample | None:
        image_path, label_path = rng.choice(data.pairs)
        label = data.labels(label_path, image_size(image_path))
        present = [int(v) for v in np.unique(label) if v != IGNORE_LABEL]
        if not present:
            return None
        chosen = rng.sample(present, min(self.num_classes, len(present)))
        return _class_question(
            rng, [data.names[v] for v in chosen], [(label == v) for v in chosen], str(image_path)
        )

    def _from_parts(self, rng: random.Random, data: CocoPartsSet) -> Sample | None:
        image_id = rng.choice(sorted(data.anns))
        info = data.images[image_id]
        image_path = data.image_root / info["file_name"]
        size = image_size(image_path)
        if size != (info["width"], info["height"]):
            raise DataError(
                f"{data.json_path}: image {image_id} is {info['width']}x{info['height']} there but "
                f"{size[0]}x{size[1]} in {image_path}"
            )
        anns = rng.sample(data.anns[image_id], min(self.num_classes, len(data.anns[image_id])))
        names = [part_name(rng, data.categories[a["category_id"]]) for a in anns]
        masks = [
            coco_segmentation_mask(
                a["segmentation"], info["height"], info["width"], f"{data.json_path} ann {a['id']}"
            )
            for a in anns
        ]
        return _class_question(rng, names, masks, str(image_path))


# --- refer_seg ------------------------------------------------------------------------------------------------
@dataclass
class ReferImage:
    path: Path
    height: int
    width: int
    sentences: list[tuple[str, dict]]  # (sentence, annotation)


def read_refer(root: Path, name: str, split: str) -> tuple[list[ReferImage], Path]:
    """REFER data of one dataset and split, grouped by image, checked against `instances.json`."""
    split_by = "umd" if name == "refcocog" else "unc"
    base = root / "refer_seg" / name
    refs_path = _require(base / f"refs({split_by}).p", f"{name} refs pickle")
    inst_path = _require(base / "instances.json", f"{name} instances")
    refs = load_plain_pickle(refs_path)
    instances = read_json(inst_path)
    images = {im["id"]: im for im in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    image_dir = (
        root / "refer_seg" / "images" / "saiapr_tc-12"
        if name == "refclef"
        else root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    )
    by_image: dict[int, ReferImage] = {}
    if not isinstance(refs, list):
        raise DataError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    for k, ref in enumerate(refs):
        if ref.get("split") != split:
            continue
        image_id, ann_id = ref.get("image_id"), ref.get("ann_id")
        if image_id not in images:
            raise DataError(
                f"{refs_path}: ref {k} (ref_id {ref.get('ref_id')}) image {image_id} is not in {inst_path}"
            )
        if ann_id not in anns:
            raise DataError(
                f"{refs_path}: ref {k} (ref_id {ref.get('ref_id')}) annotation {ann_id} is not in {inst_path}"
            )
        if anns[ann_id]["image_id"] != image_id:
            raise DataError(
                f"{refs_path}: ref {k} annotation {ann_id} belongs to another image than {image_id}"
            )
        info = images[image_id]
        entry = by_image.setdefault(
            image_id, ReferImage(image_dir / info["file_name"], info["height"], info["width"], [])
        )
        entry.sentences += [(s["sent"], anns[ann_id]) for s in ref.get("sentences", [])]
    return [im for _, im in sorted(by_image.items()) if im.sentences], inst_path


def _refer_mask(entry: ReferImage, ann: dict, inst_path: Path) -> np.ndarray:
    return coco_segmentation_mask(
        ann["segmentation"], entry.height, entry.width, f"{inst_path} ann {ann['id']}"
    )


def _check_image_size(entry: ReferImage, inst_path: Path) -> None:
    size = image_size(entry.path)
    if size != (entry.width, entry.height):
        raise DataError(
            f"{inst_path}: {entry.path.name} is {entry.width}x{entry.height} there but "
            f"{size[0]}x{size[1]} in {entry.path}"
        )


class ReferSegSource:
    """`refer_seg`: a dataset uniformly, an image, up to `num_classes` of its referring sentences."""

    def __init__(self, root: Path, names: list[str], num_classes: int):
        known = ("refclef", "refcoco", "refcoco+", "refcocog")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown --refer_seg_data {unknown}; known: {list(known)}")
        self.sets = [read_refer(root, n, "train") for n in names]
        self.num_classes = num_classes

    def __len__(self) -> int:
        return sum(len(images) for images, _ in self.sets)

    def sample(self, rng: random.Random) -> Sample:
        images, inst_path = rng.choice(self.sets)
        entry = rng.choice(images)
        _check_image_size(entry, inst_path)
        chosen = rng.sample(entry.sentences, min(self.num_classes, len(entry.sentences)))
        return _class_question(
            rng,
            [s for s, _ in chosen],
            [_refer_mask(entry, a, inst_path) for _, a in chosen],
            str(entry.path),
        )


# --- vqa ------------------------------------------------------------------------------------------------------
class VqaSource:
    """`vqa`: LLaVA-Instruct records with their whole conversation, no masks."""

    def __init__(self, root: Path, name: str):
        self.path = _require(root / "llava_dataset" / f"{name}.json", "LLaVA instruction data")
        self.records = read_json(self.path)
        self.image_dir = root / "coco" / "train2017"

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, rng: random.Random) -> Sample:
        index = rng.randrange(len(self.records))
        record = self.records[index]
        try:
            turns = llava_turns(record["conversations"])
            image_path = self.image_dir / record["image"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.path}: record {index}: {e}") from None
        if IMAGE_PLACEHOLDER not in turns[0][0]:
            turns[0] = (IMAGE_PLACEHOLDER + "\n" + turns[0][0], turns[0][1])
        width, height = image_size(image_path)
        return Sample(str(image_path), [turns], _empty_masks(height, width))


# --- reason_seg -----------------------------------------------------------------------------------------------
@dataclass
class ReasonSegItem:
    image_path: Path
    json_path: Path
    texts: list[str]
    is_sentence: bool
    meta: dict


def read_reason_seg(root: Path, split: str) -> list[ReasonSegItem]:
    """Every `*.jpg` of `reason_seg/ReasonSeg/<split>` with its `.json` (text list, is_sentence, shapes)."""
    folder = _require(root / "reason_seg" / "ReasonSeg" / split, "ReasonSeg split")
    items = []
    for image_path in sorted(folder.glob("*.jpg")):
        json_path = image_path.with_suffix(".json")
        record = read_json(_require(json_path, "ReasonSeg annotation"))
        texts = record.get("text") if isinstance(record, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise DataError(f"{json_path}: 'text' must be a non-empty list of strings")
        meta = {k: record[k] for k in ("target_size",) if k in record}
        items.append(
            ReasonSegItem(image_path, json_path, texts, bool(record.get("is_sentence", False)), meta)
        )
    if not items:
        raise DataError(f"{folder}: no *.jpg images")
    return items


class ReasonSegSource:
    """`reason_seg`: LISA's ReasonSeg training items, optionally with explanations."""

    def __init__(self, root: Path, spec: str, num_classes: int, explanatory: float):
        name, _, split = spec.partition("|")
        if name != "ReasonSeg" or not split:
            raise ValueError(f"--reason_seg_data must look like 'ReasonSeg|train', got {spec!r}")
        self.items = read_reason_seg(root, split)
        self.num_classes = num_classes
        self.explanatory = explanatory
        self.explanations: dict[str, str] = {}
        exp_path = root / "reason_seg" / "ReasonSeg" / "explanatory" / f"{split}.json"
        if explanatory > 0 and exp_path.is_file():
            self.explanations = {r["image"]: r["outputs"] for r in read_json(exp_path)}
            # As LISA: with explanations, train only on the images that have one.
            self.items = [it for it in self.items if it.image_path.name in self.explanations]
            if not self.items:
                raise DataError(f"{exp_path}: names no image of the {split} split")

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, rng: random.Random) -> Sample:
        item = rng.choice(self.items)
        width, height = image_size(item.image_path)
        mask = reason_seg_mask(item.json_path, height, width)
        texts = rng.sample(item.texts, min(self.num_classes, len(item.texts)))
        explanation = self.explanations.get(item.image_path.name)
        conversations: list[Turns] = []
        masks = []
        for text in texts:
            question = long_question(rng, text) if item.is_sentence else short_question(rng, text)
            if explanation is None:
                conversations.append([(question, seg_answer(rng))])
                masks.append(mask)
                continue
            draw = rng.random()
            if draw < self.explanatory:  # the explanation alone, no mask
                conversations.append([(f"{IMAGE_PLACEHOLDER}\n{text}", explanation)])
                continue
            if rng.random() < 0.5:
                conversations.append([(question, seg_answer(rng))])
            else:
                asked = f"{IMAGE_PLACEHOLDER}\n{text} {rng.choice(EXPLANATORY_QUESTION_LIST)}"
                conversations.append([(asked, f"{seg_answer(rng)} {explanation}")])
            masks.append(mask)
        stacked = np.stack(masks) if masks else _empty_masks(height, width)
        return Sample(str(item.image_path), conversations, stacked, dict(item.meta))


# --- validation -----------------------------------------------------------------------------------------------
@dataclass
class ValItem:
    """One validation query: LISA's prompt and where its gt mask (0/1/255) comes from."""

    image_path: str
    question: str
    meta: dict
    reason_json: str | None = None  # ReasonSeg polygons, or
    segmentation: object = None  # a COCO polygon list / RLE (REFER)
    where: str = ""


def val_items(root: Path, spec: str) -> list[ValItem]:
    """`ReasonSeg|val` (first sentence of each image) or `refcoco+|unc|val` (every sentence of the split)."""
    parts = spec.split("|")
    if parts[0] == "ReasonSeg" and len(parts) == 2:
        return [
            ValItem(
                str(it.image_path),
                val_question(it.texts[0], it.is_sentence),
                {"query": "long" if it.is_sentence else "short", **it.meta},
                reason_json=str(it.json_path),
            )
            for it in read_reason_seg(root, parts[1])
        ]
    if len(parts) == 3 and parts[0] in ("refclef", "refcoco", "refcoco+", "refcocog"):
        images, inst_path = read_refer(root, parts[0], parts[2])
        return [
            ValItem(
                str(entry.path),
                val_question(sent, False),
                {"query": "short"},
                segmentation=ann["segmentation"],
                where=f"{inst_path} ann {ann['id']}",
            )
            for entry in images
            for sent, ann in entry.sentences
        ]
    raise ValueError(
        f"--val_dataset must be 'ReasonSeg|<split>' or '<refer ds>|<splitBy>|<split>', got {spec!r}"
    )


def val_gt_mask(item: ValItem, height: int, width: int) -> np.ndarray:
    if item.reason_json is not None:
        return reason_seg_mask(item.reason_json, height, width)
    return coco_segmentation_mask(item.segmentation, height, width, item.where)


__all__ = [
    "VAL_ANSWER",
    "ReasonSegSource",
    "ReferSegSource",
    "Sample",
    "SemSegSource",
    "ValItem",
    "VqaSource",
    "part_name",
    "read_reason_seg",
    "read_refer",
    "val_gt_mask",
    "val_items",
]
