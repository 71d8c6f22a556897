"""Questions, regions of interest and every data format the real pipelines read.

`generate()` writes, from one seed, the same files the real projects consume:
LLaVA instruction JSON, an LCS-558K-style caption JSON, the Chain-of-Spot ROI JSON, SEAL records,
LLaVA eval question JSONL, a V*Bench-style folder, ReasonSeg-style polygons and ADE20K-style
label PNGs. Each scene is seeded by (seed, split, index), so a file never depends on how many
other files were asked for.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .scene import COLORS, PATTERNS, Scene, Target, make_scene

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
MISSING_OBJECTS_PREFIX = "Sorry, I can not answer the question. Some visual information about the following objects is missing or unclear:"
# ROI squares: 5/16 of the padded side (a 20-30 px target is seen at 16-24 px in the crop), centred
# on the 1/16 cell that holds the target's centre
ROI_CELLS = 16
ROI_SIDE_CELLS = 5
SEG_CLASSES = ("background", "clutter", *(f"{c} object" for c in COLORS))


@dataclass(frozen=True)
class Question:
    text: str  # without the short-answer suffix
    answer: str
    kind: str  # "pattern" | "color" | "position"
    difficulty: str  # "easy" | "hard"
    target_name: str  # how the question refers to the target, and so how the switch names it


def pattern_difficulty(t: Target) -> str:
    """A pattern question about a small target is hard: at 112 px its stripes blur into the plain
    mean colour. A colour question is always easy: every pattern has the same mean colour, and the
    vision tower reports the target's colour in every patch."""
    return "hard" if t.size == "small" else "easy"


def pattern_question(t: Target) -> Question:
    return Question(
        f"What pattern is on the {t.color} object?", t.pattern, "pattern", pattern_difficulty(t), t.name
    )


def color_question(t: Target) -> Question:
    return Question(f"What color is the {t.shape}?", t.color, "color", "easy", t.shape)


def position_answer(t: Target, width: int) -> str:
    x, _, w, _ = t.bbox
    return "left" if x + w / 2 < width / 2 else "right"


def position_question(t: Target, width: int) -> Question:
    """V*'s relative-position question about the target, asked as V*Bench asks it. Always easy: the
    colour shows at every size, and so does the half of the image that holds it. Training asks it
    too, so that System 1, the ROI adapter and the switch can answer it rather than guess."""
    return Question(
        f"Is the {t.color} object on the left or right side of the image?",
        position_answer(t, width),
        "position",
        "easy",
        t.name,
    )


_PATTERN_PREDICATES = {
    "horizontal stripes": "has horizontal stripes",
    "vertical stripes": "has vertical stripes",
    "checkered": "is checkered",
    "plain": "is plain",
}


def sentence_answer(q: Question) -> str:
    """The conversational answer: the question's subject, as the question names it, then the answer."""
    if q.kind == "pattern":
        predicate = _PATTERN_PREDICATES[q.answer]
    elif q.kind == "position":
        predicate = f"is on the {q.answer}"
    else:
        predicate = f"is {q.answer}"
    return f"The {q.target_name} {predicate}."


GROUNDING_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {}."


def grounding_turn(t: Target, width: int, height: int) -> tuple[str, str]:
    """LLaVA-1.5's RefCOCO-style grounding question and answer (2 decimals, on the padded square).

    LLaVA-665K mixes such region data into instruction tuning; here it is what teaches System 1
    where things are, which the ROI adapter then builds on.
    """
    pad = max(width, height)
    ox, oy = (pad - width) // 2, (pad - height) // 2
    x, y, w, h = t.bbox
    box = [(x + ox) / pad, (y + oy) / pad, (x + w + ox) / pad, (y + h + oy) / pad]
    return GROUNDING_PROMPT.format(f"the {t.color} object"), "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


# How a person may ask besides LLaVA's short-answer form: the bare question, or wrapped in conversation.
CONVERSATIONAL_TEMPLATES = (
    "{question}",
    "Can you tell me: {question}",
    "Please look closely at the image. {question}",
    "I have a question about this picture. {question}",
)


def phrase(q: Question, rng: random.Random) -> tuple[str, bool]:
    """A phrasing of `q` for the switch's data, and whether it asks for a short answer.

    Half the questions carry LLaVA's short-answer suffix; the other half are bare or conversational and
    are answered with a sentence. The switch thus decides from what is asked, not from how.
    """
    if rng.random() < 0.5:
        return q.text + SHORT_ANSWER_SUFFIX, True
    return rng.choice(CONVERSATIONAL_TEMPLATES).format(question=q.text), False


def missing_objects_answer(names: list[str]) -> str:
    """SEAL's exact sentence, which the switch adapter emits when it needs System 2."""
    return f"{MISSING_OBJECTS_PREFIX} {', '.join(names)}."


def centre_cell(centre: float, side: float) -> int:
    """The cell, on a ROI_CELLS grid across a square of `side`, that holds coordinate `centre`.

    The ROI label is centred on the target's cell, and the vision tower reports that same cell.
    """
    return min(ROI_CELLS - 1, int(centre * ROI_CELLS // side))


def roi_params(bbox: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int]:
    """Chain-of-Spot `[top, left, side]` (original pixels) of the square ROI for a target at `bbox`.

    The square is ROI_SIDE_CELLS / ROI_CELLS of the padded side, centred on the cell of a
    ROI_CELLS x ROI_CELLS grid that holds the target's centre, and shifted inside the image content.
    The label thus depends only on which cell the target is in, which the vision tower reports in
    every patch (`vision_pretrain.py`), and its corners are multiples of 1/16: short decimals.
    """
    x, y, w, h = bbox
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"bbox {bbox} lies outside the {width}x{height} image")
    side_pad = max(width, height)
    ox, oy = (side_pad - width) // 2, (side_pad - height) // 2
    cell = side_pad / ROI_CELLS
    side = ROI_SIDE_CELLS * cell

    def start(centre: float, offset: int, extent: int) -> float:
        k = centre_cell(centre, side_pad)
        return min(max((k + 0.5) * cell - side / 2, offset), offset + extent - side)

    left, top = start(x + w / 2 + ox, ox, width), start(y + h / 2 + oy, oy, height)
    return round(top) - oy, round(left) - ox, round(side)


def roi_box(bbox: tuple[int, int, int, int], width: int, height: int) -> list[float]:
    """The labelled ROI as Chain-of-Spot's answer: `[x1, y1, x2, y2]` on the padded frame."""
    top, left, side = roi_params(bbox, width, height)
    pad = max(width, height)
    ox, oy = (pad - width) // 2, (pad - height) // 2
    return [
        round((left + ox) / pad, 3),
        round((top + oy) / pad, 3),
        round((left + ox + side) / pad, 3),
        round((top + oy + side) / pad, 3),
    ]


def mask_polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """Outer contours of a binary mask as ReasonSeg/labelme point lists."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).tolist() for c in contours if len(c) >= 3]


def mask_to_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _scene(seed: int, split: str, index: int, size: str | None = None) -> Scene:
    return make_scene(random.Random(f"{seed}-{split}-{index}"), size=size)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@dataclass(frozen=True)
class WorldSize:
    train: int = 4000
    val: int = 400
    vstar: int = 200
    vstar_calib: int = 200  # held out: routing thresholds are calibrated here, never on `vstar`
    seg_train: int = 1000
    seg_val: int = 200


def generate(playground: Path, dataset: Path, *, seed: int = 0, size: WorldSize = WorldSize()) -> dict:
    """Write the whole toy world; returns a summary with the file paths and counts."""
    toy = playground / "data" / "toy"
    img_root = toy / "images"
    instruct, captions, cos_rois = [], [], {}
    seal_direct, seal_focus, seal_negative = [], [], []

    with Pool(min(2, os.cpu_count() or 1)) as pool:
        items = pool.map(partial(_train_item, seed, img_root), range(size.train), chunksize=64)
    for i, (record, caption, rois, direct, focus, negative) in enumerate(items):
        for k, params in enumerate(rois):
            cos_rois[f"{i:06d}_{record['id'].replace('/', '_')}_q{k}"] = {"params": params}
        instruct.append(record)
        captions.append(caption)
        seal_direct += direct
        seal_focus += focus
        seal_negative += negative

    _write_json(toy / "llava_toy_instruct.json", instruct)
    _write_json(toy / "blip_laion_cc_sbu_toy.json", captions)
    _write_json(toy / "chain-of-spot.json", cos_rois)
    _write_json(toy / "seal" / "toy_direct_data.json", seal_direct)
    _write_json(toy / "seal" / "toy_focus_data.json", seal_focus)
    _write_json(toy / "seal" / "toy_negative_data.json", seal_negative)

    val_rows, val_ann = _write_val(seed, size.val, img_root)
    eval_dir = playground / "data" / "eval" / "toy"
    _write_jsonl(eval_dir / "llava_toy_val.jsonl", val_rows)
    _write_json(eval_dir / "toy_val_annotations.json", val_ann)
    n_vstar = _write_vstar(seed, size.vstar, playground / "data" / "eval" / "vstar_toy")
    _write_vstar(
        seed, size.vstar_calib, playground / "data" / "eval" / "vstar_toy_calib", split="vstar-calib"
    )
    n_seg = _write_seg(seed, size, dataset)
    return {
        "train_records": len(instruct),
        "val_questions": len(val_rows),
        "val_hard": sum(a["difficulty"] == "hard" for a in val_ann.values()),
        "vstar_questions": n_vstar,
        "seg": n_seg,
    }


def _train_item(seed: int, img_root: Path, i: int) -> tuple:
    """One training scene in every training format (runs in a worker process)."""
    scene = _scene(seed, "train", i)
    t, (width, height) = scene.target, scene.image.size
    rel = f"train/{i:06d}.jpg"
    _save_image(scene.image, img_root / rel)
    rng = random.Random(f"{seed}-train-q-{i}")
    # The pattern question, and half the time the colour question, half the time V*'s position one.
    second = color_question(t) if rng.random() < 0.5 else position_question(t, width)
    questions = [pattern_question(t), second]
    rng.shuffle(questions)
    convs = []
    for k, q in enumerate(questions):
        # Half the turns are conversational, as in LLaVA-Instruct: no short-answer suffix, and an
        # answer that restates its subject. System 1 thereby learns to copy a name from the question,
        # which the switch adapter needs to name the missing objects.
        long_form = rng.random() < 0.5
        convs.append(
            {
                "from": "human",
                "value": ("<image>\n" if k == 0 else "")
                + q.text
                + ("" if long_form else SHORT_ANSWER_SUFFIX),
            }
        )
        convs.append({"from": "gpt", "value": sentence_answer(q) if long_form else q.answer})
    grounding_q, grounding_a = grounding_turn(t, width, height)
    convs += [{"from": "human", "value": grounding_q}, {"from": "gpt", "value": grounding_a}]
    # one ROI per human turn, the grounding one included (Chain-of-Spot keys every question)
    rois = [list(roi_params(t.bbox, width, height)) for _ in range(len(convs) // 2)]
    record = {"id": f"toy_{i:06d}", "image": rel, "conversations": convs}
    caption = {
        "id": record["id"],
        "image": rel,
        "conversations": [
            {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
            {"from": "gpt", "value": f"a {t.size} {t.color} {t.shape}, {t.pattern}, among grey clutter"},
        ],
    }
    # SEAL switch data: easy questions answered directly; hard ones both answered from evidence
    # and refused with the missing-objects sentence that names the target as the question does.
    # Direct and negative records hold every such question of the image as turns (LLaVA records are
    # multi-turn): the image is encoded once for all of them. Focus records keep one question each,
    # as SEAL's do, since each turn would need its own `<object>`.
    easy = [q for q in questions if q.difficulty == "easy"]
    hard = [q for q in questions if q.difficulty == "hard"]
    switch_rng = random.Random(f"{seed}-switch-phrasing-{i}")
    direct_turns = []
    for q in easy:
        text, short = phrase(q, switch_rng)
        direct_turns.append((text, q.answer if short else sentence_answer(q)))
    direct = [_multi_turn_record(rel, direct_turns)] if easy else []
    focus = [_seal_record(rel, q, t, *phrase(q, switch_rng)) for q in hard]
    # V*'s left/right question about a large target is also asked with the target as evidence, as
    # System 2 asks it (SEAL answers its spatial questions from the searched objects); its own phrasing
    # draws leave every other record as it was.
    position_rng = random.Random(f"{seed}-switch-position-focus-{i}")
    focus += [
        _seal_record(rel, q, t, *phrase(q, position_rng))
        for q in questions
        if q.kind == "position" and t.size == "large"
    ]
    negative = []
    if hard:
        negative.append(
            {
                **_multi_turn_record(
                    rel, [(phrase(q, switch_rng)[0], missing_objects_answer([q.target_name])) for q in hard]
                ),
                "target_instances": [
                    {"name": name, "bbox": list(t.bbox)} for name in {q.target_name: 0 for q in hard}
                ],
            }
        )
    return record, caption, rois, direct, focus, negative


def _save_image(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95)


def _multi_turn_record(rel: str, turns: list[tuple[str, str]]) -> dict:
    """A record of (question as asked, answer) turns on one image."""
    conversations = []
    for k, (question, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + question})
        conversations.append({"from": "gpt", "value": answer})
    return {"image": rel, "conversations": conversations}


def _seal_record(rel: str, q: Question, evidence: Target | None, asked: str, short: bool) -> dict:
    """A SEAL VQA record for `q` phrased as `asked`; with `evidence` it carries an `<object>` focus prefix."""
    prefix = "Additional visual information to focus on: <object>.\n" if evidence else ""
    rec = {
        "image": rel,
        "conversations": [
            {"from": "human", "value": "<image>\n" + prefix + asked},
            {"from": "gpt", "value": q.answer if short else sentence_answer(q)},
        ],
    }
    if evidence is not None:
        rec["search"] = True
        rec["target_instances"] = [{"name": q.target_name, "bbox": list(evidence.bbox)}]
    return rec


def _write_val(seed: int, n: int, img_root: Path) -> tuple[list[dict], dict]:
    rows, ann = [], {}
    for i in range(n):
        scene = _scene(seed, "val", i)
        t, (width, height) = scene.target, scene.image.size
        rel = f"val/{i:06d}.jpg"
        _save_image(scene.image, img_root / rel)
        q = pattern_question(t) if random.Random(f"{seed}-val-q-{i}").random() < 0.7 else color_question(t)
        qid = f"toy_val_{i:06d}"
        rows.append(
            {"question_id": qid, "image": rel, "text": q.text + SHORT_ANSWER_SUFFIX, "category": q.kind}
        )
        ann[qid] = {
            **asdict(q),
            "question": q.text,
            "image_size": [width, height],
            "target": {
                "name": q.target_name,
                "shape": t.shape,
                "pattern": t.pattern,
                "color": t.color,
                "size": t.size,
                "bbox": list(t.bbox),
            },
            "roi_params": list(roi_params(t.bbox, width, height)),
            "roi_box": roi_box(t.bbox, width, height),
            "mask_rle": mask_to_rle(scene.mask),
        }
    return rows, ann


def _write_vstar(seed: int, n: int, root: Path, split: str = "vstar") -> int:
    """V*Bench layout: `<category>/<stem>.jpg` + `<stem>.json`, options[0] correct."""
    for i in range(n):
        rng = random.Random(f"{seed}-{split}-q-{i}")
        scene = _scene(seed, split, i, size="small" if rng.random() < 0.3 else "large")
        t = scene.target
        roll = rng.random()
        if roll < 0.7 or t.size == "small":
            q, pool = (
                (pattern_question(t), PATTERNS)
                if roll < 0.85 or t.size == "small"
                else (color_question(t), tuple(COLORS))
            )
            others = [o for o in pool if o != q.answer]
            options, category = [q.answer, *rng.sample(others, 3)], "direct_attributes"
            question = q.text
        else:
            q = position_question(t, scene.image.size[0])
            options, category = [q.answer, "right" if q.answer == "left" else "left"], "relative_position"
            question = q.text
        stem = f"toy_{i:04d}"
        _save_image(scene.image, root / category / f"{stem}.jpg")
        _write_json(
            root / category / f"{stem}.json",
            {"target_object": [t.name], "bbox": [list(t.bbox)], "question": question, "options": options},
        )
    return n


def _reason_seg_item(seed: int, root: Path, split: str, i: int) -> None:
    scene = _scene(seed, f"seg-{split}", i)
    t = scene.target
    stem = f"toy_{split}_{i:06d}"
    _save_image(scene.image, root / split / f"{stem}.jpg")
    shapes = [{"label": "target", "points": p} for p in mask_polygons(scene.mask)]
    _write_json(
        root / split / f"{stem}.json",
        {"text": [f"the {t.color} object"], "is_sentence": False, "shapes": shapes, "target_size": t.size},
    )


def _ade_item(seed: int, ade: Path, i: int) -> None:
    scene = _scene(seed, "ade", i)
    label = np.full(scene.mask.shape, 1 + SEG_CLASSES.index("background"), dtype=np.uint8)
    label[scene.clutter_mask > 0] = 1 + SEG_CLASSES.index("clutter")
    label[scene.mask > 0] = 1 + SEG_CLASSES.index(scene.target.name)
    _save_image(scene.image, ade / "images" / "training" / f"ADE_train_{i:08d}.jpg")
    (ade / "annotations" / "training").mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(ade / "annotations" / "training" / f"ADE_train_{i:08d}.png")


def _write_seg(seed: int, size: WorldSize, dataset: Path) -> dict:
    """ReasonSeg-style polygons (train/val) and ADE20K-style label PNGs (train).

    ADE20K convention: label 0 is "unlabelled" (ignored), class k of `classes.json` is stored as k + 1.
    """
    rs = dataset / "reason_seg" / "ReasonSeg"
    ade = dataset / "ade20k"
    with Pool(min(2, os.cpu_count() or 1)) as pool:
        for split, n in (("train", size.seg_train), ("val", size.seg_val)):
            pool.map(partial(_reason_seg_item, seed, rs, split), range(n), chunksize=32)
        pool.map(partial(_ade_item, seed, ade), range(size.seg_train), chunksize=32)
    _write_json(ade / "classes.json", list(SEG_CLASSES))
    return {
        "reason_seg_train": size.seg_train,
        "reason_seg_val": size.seg_val,
        "ade20k_train": size.seg_train,
    }
