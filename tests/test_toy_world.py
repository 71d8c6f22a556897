"""The toy world is deterministic and every file it writes is in the real format."""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from playground.toyworld import SHAPES, WorldSize, generate, make_scene, roi_params
from playground.toyworld.scene import LARGE_SIDE, SMALL_SIDE
from playground.toyworld.world import MISSING_OBJECTS_PREFIX, ROI_CELLS, roi_box
from roillava.boxes import cos_box_from_params


def test_same_seed_same_world(tmp_path, toy_world):
    size = WorldSize(train=6, val=4, vstar=3, vstar_calib=2, seg_train=2, seg_val=2)
    a = generate(tmp_path / "a" / "playground", tmp_path / "a" / "dataset", seed=0, size=size)
    b = generate(tmp_path / "b" / "playground", tmp_path / "b" / "dataset", seed=0, size=size)
    assert a == b
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 30
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    # A scene depends on (seed, split, index) only, not on how many were generated.
    first = json.loads((toy_world["playground"] / "data/toy/llava_toy_instruct.json").read_text())[:6]
    assert first == json.loads((tmp_path / "a/playground/data/toy/llava_toy_instruct.json").read_text())
    c = generate(tmp_path / "c" / "playground", tmp_path / "c" / "dataset", seed=1, size=size)
    assert (tmp_path / "c/playground/data/toy/llava_toy_instruct.json").read_text() != (
        tmp_path / "a/playground/data/toy/llava_toy_instruct.json"
    ).read_text()
    del c


def test_same_seed_same_world_in_processes_with_different_hash_seeds(tmp_path):
    """Two `python -m playground.toyworld` runs with different PYTHONHASHSEED write the same bytes: no
    set or hash order reaches a file (the demo's processes each draw their own hash seed)."""
    sizes = ["--train", "4", "--val", "3", "--vstar", "3", "--seg-train", "2", "--seg-val", "2"]
    root = Path(__file__).resolve().parent.parent
    for run, hash_seed in (("a", "1"), ("b", "2")):
        out = tmp_path / run
        cmd = [sys.executable, "-m", "playground.toyworld", "--playground", str(out / "playground")]
        cmd += ["--dataset", str(out / "dataset"), "--seed", "3", *sizes]
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, timeout=300)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 30
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_scene_sizes_and_masks():
    sizes = set()
    for i in range(30):
        scene = make_scene(random.Random(i))
        t = scene.target
        sizes.add(scene.image.size)
        x, y, w, h = t.bbox
        assert scene.mask.shape == (scene.image.height, scene.image.width)
        ys, xs = np.nonzero(scene.mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        lo, hi = LARGE_SIDE if t.size == "large" else SMALL_SIDE
        assert lo - 2 <= max(w, h) <= hi + 2
        assert t.shape in SHAPES
    assert sizes == {(448, 336), (336, 448), (448, 448)}


def test_roi_params_centre_a_fixed_square_on_the_target_cell():
    for i in range(60):
        scene = make_scene(random.Random(100 + i), size="small" if i % 2 else "large")
        w, h = scene.image.size
        x, y, bw, bh = scene.target.bbox
        top, left, side = roi_params(scene.target.bbox, w, h)
        assert side == max(w, h) * 5 // 16 and 0 <= left <= w - side and 0 <= top <= h - side
        if scene.target.size == "small":  # a small target lies wholly inside its ROI
            assert left <= x and top <= y and left + side >= x + bw and top + side >= y + bh
        else:  # a large one at least has its centre well inside
            assert left + side / 4 <= x + bw / 2 <= left + 3 * side / 4
        box = cos_box_from_params([top, left, side], w, h)
        assert all(abs(v - round(v * 16) / 16) < 1e-3 for v in box), box  # on the 1/16 grid, to 3 decimals
        assert roi_box(scene.target.bbox, w, h) == box  # the annotation's label = Chain-of-Spot's conversion


def test_tower_scene_labels():
    """Every patch of the tower learns the cell the ROI label is centred on, the target colour and its
    pattern where it can be read."""
    from playground.vision_pretrain import MIN_READABLE_SIDE, UNREADABLE, _scene_arrays, make_view

    centred = unreadable = 0
    for index in range(20):
        scene = _scene_arrays(index)
        view = make_view(scene, random.Random(0), 112, 16, global_view=True)
        # and, in every patch, the target's colour, and its pattern only where it can be read
        assert view.scene_colour == scene[2] > 0
        readable = scene[4] * 112 / max(scene[1].shape) >= MIN_READABLE_SIDE
        assert view.scene_pattern == (scene[3] if readable else UNREADABLE)
        unreadable += not readable
        h, w = scene[1].shape
        ys, xs = np.nonzero(scene[1])
        bbox = (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
        top, left, side = roi_params(bbox, w, h)
        pad = max(w, h)
        cell = pad / ROI_CELLS
        centre = np.array([left + (pad - w) // 2 + side / 2, top + (pad - h) // 2 + side / 2])
        shifted = np.abs(centre / cell - (view.where + 0.5)) > 1e-6
        centred += not shifted.any()
        # the label is centred on the target's cell unless it was shifted inside the image content
        for axis in np.nonzero(shifted)[0]:
            lo = ((pad - w) // 2, (pad - h) // 2)[axis]
            extent = (w, h)[axis]
            start = (left, top)[axis] + lo
            assert start == lo or start + side == lo + extent
    assert centred >= 10 and 0 < unreadable < 20


def test_roi_params_by_hand():
    # 448x336 pads to 448 (28 px cells, rows offset by 56); centre (100, 200) → padded (100, 256):
    # cell (3, 9), square of 140 px centred at (98, 266) → left 28, top 196 - 56 = 140
    assert roi_params((90, 190, 20, 20), 448, 336) == (140, 28, 140)
    # at the bottom-right corner the square is shifted inside the content
    assert roi_params((420, 310, 20, 20), 448, 336) == (196, 308, 140)


def test_formats(toy_world):
    pg, ds, size = toy_world["playground"], toy_world["dataset"], toy_world["size"]
    toy = pg / "data" / "toy"
    instruct = json.loads((toy / "llava_toy_instruct.json").read_text())
    assert len(instruct) == size.train
    for rec in instruct:
        assert rec["conversations"][0]["value"].startswith("<image>\n")
        assert (toy / "images" / rec["image"]).is_file()
        grounding_q, grounding_a = (turn["value"] for turn in rec["conversations"][-2:])
        assert grounding_q.startswith("Please provide the bounding box coordinate of the region")
        x1, y1, x2, y2 = json.loads(grounding_a)
        assert (
            0 <= x1 < x2 <= 1
            and 0 <= y1 < y2 <= 1
            and re.fullmatch(r"\[(\d\.\d\d, ){3}\d\.\d\d\]", grounding_a)
        )
    captions = json.loads((toy / "blip_laion_cc_sbu_toy.json").read_text())
    assert captions[0]["image"] == instruct[0]["image"]
    rois = json.loads((toy / "chain-of-spot.json").read_text())
    assert len(rois) == 3 * size.train  # one per question, the grounding turn included
    assert f"000003_{instruct[3]['id']}_q2" in rois and len(rois["000003_toy_000003_q1"]["params"]) == 3

    negatives = json.loads((toy / "seal" / "toy_negative_data.json").read_text())
    focus = json.loads((toy / "seal" / "toy_focus_data.json").read_text())
    # one negative record per small-target image, one turn per hard question; one focus record each,
    # and one for each left/right question about a large target
    position_focus = [rec for rec in focus if "left or right" in rec["conversations"][0]["value"]]
    assert sum(len(rec["conversations"]) // 2 for rec in negatives) == len(focus) - len(position_focus) > 0
    for rec in negatives:
        names = [inst["name"] for inst in rec["target_instances"]]
        answers = [c["value"] for c in rec["conversations"][1::2]]
        assert answers == [f"{MISSING_OBJECTS_PREFIX} {name}." for name in names]
    for rec in focus:
        n_obj = sum(c["value"].count("<object>") for c in rec["conversations"])
        assert n_obj == len(rec["target_instances"]) == 1 and "search" in rec

    questions = [
        json.loads(line) for line in (pg / "data/eval/toy/llava_toy_val.jsonl").read_text().splitlines()
    ]
    ann = json.loads((pg / "data/eval/toy/toy_val_annotations.json").read_text())
    assert [q["question_id"] for q in questions] == list(ann)
    for a in ann.values():  # hard exactly when a small target's pattern is asked: colour is always readable
        small_pattern = a["kind"] == "pattern" and a["target"]["size"] == "small"
        assert a["difficulty"] == ("hard" if small_pattern else "easy")

    vstar = sorted((pg / "data/eval/vstar_toy").rglob("*.json"))
    assert len(vstar) == size.vstar
    for path in vstar:
        item = json.loads(path.read_text())
        assert len(set(item["options"])) == len(item["options"]) >= 2 and path.with_suffix(".jpg").is_file()

    for split in ("train", "val"):
        for path in (ds / "reason_seg/ReasonSeg" / split).glob("*.json"):
            item = json.loads(path.read_text())
            assert item["text"] and item["shapes"] and all(len(s["points"]) >= 3 for s in item["shapes"])
    classes = json.loads((ds / "ade20k/classes.json").read_text())
    for png in (ds / "ade20k/annotations/training").glob("*.png"):
        label = np.asarray(Image.open(png))
        jpg = ds / "ade20k/images/training" / png.with_suffix(".jpg").name
        assert label.shape[::-1] == Image.open(jpg).size
        assert label.min() >= 1 and label.max() <= len(classes)


@pytest.mark.parametrize("bad", [(0, 0, 500, 10), (-1, 0, 10, 10)])
def test_roi_params_rejects_boxes_outside_the_image(bad):
    with pytest.raises(ValueError, match="outside the 448x336 image"):
        roi_params(bad, 448, 336)


def test_switch_data_is_asked_in_every_phrasing_and_calibration_is_held_out(toy_world):
    """The switch sees short-answer, bare and conversational questions; the calibration split shares no
    image with the evaluation split."""
    from playground.toyworld.world import CONVERSATIONAL_TEMPLATES, SHORT_ANSWER_SUFFIX

    pg = toy_world["playground"]
    seal = pg / "data/toy/seal"
    direct = json.loads((seal / "toy_direct_data.json").read_text())
    focus = json.loads((seal / "toy_focus_data.json").read_text())
    negatives = json.loads((seal / "toy_negative_data.json").read_text())
    turns = [
        (h["value"].removeprefix("<image>\n"), g["value"], kind)
        for kind, records in (("direct", direct), ("focus", focus), ("negative", negatives))
        for rec in records
        for h, g in zip(rec["conversations"][::2], rec["conversations"][1::2])
    ]
    short = [t for t in turns if t[0].endswith(SHORT_ANSWER_SUFFIX)]
    other = [t for t in turns if not t[0].endswith(SHORT_ANSWER_SUFFIX)]
    assert short and other and all(t[0].count(SHORT_ANSWER_SUFFIX.strip()) <= 1 for t in turns)
    wrappers = {tpl.split("{")[0] for tpl in CONVERSATIONAL_TEMPLATES if tpl.split("{")[0]}
    assert any(t[0].split("Additional visual information to focus on: <object>.\n")[-1].startswith(w)
               for t in other for w in wrappers)  # fmt: skip
    for question, answer, kind in turns:
        if kind == "negative":
            assert answer.startswith(MISSING_OBJECTS_PREFIX)
        elif question.endswith(SHORT_ANSWER_SUFFIX):
            assert " " not in answer or answer in ("horizontal stripes", "vertical stripes")
        else:
            assert answer.startswith("The ") and answer.endswith(".")
    calib = sorted((pg / "data/eval/vstar_toy_calib").rglob("*.json"))
    bench = sorted((pg / "data/eval/vstar_toy").rglob("*.jpg"))
    assert calib and bench
    bench_bytes = {p.read_bytes() for p in bench}
    assert not any(p.with_suffix(".jpg").read_bytes() in bench_bytes for p in calib)


def test_training_asks_vstars_position_question_with_the_side_that_holds_the_target(toy_world):
    """V*'s relative-position questions are learnable: System 1's and the switch's training data ask
    them in V*'s words, answered with the half of the image that holds the target's centre."""
    pg = toy_world["playground"]
    toy = pg / "data" / "toy"
    template = r"Is the (\w+) object on the left or right side of the image\?"
    for path in (pg / "data/eval/vstar_toy/relative_position").glob("*.json"):
        assert re.fullmatch(template, json.loads(path.read_text())["question"]), path
    instruct = json.loads((toy / "llava_toy_instruct.json").read_text())
    asked = 0
    for rec in instruct:
        turns = rec["conversations"]
        x1, _, x2, _ = json.loads(turns[-1]["value"])  # the grounding box, on the padded square
        for q, a in zip(turns[0:-2:2], turns[1:-2:2]):
            m = re.search(template, q["value"])
            if not m:
                continue
            asked += 1
            side = "left" if (x1 + x2) / 2 < 0.5 else "right"
            assert a["value"] in (side, f"The {m.group(1)} object is on the {side}."), (q, a)
    assert 0 < asked < len(instruct)
    direct = json.loads((toy / "seal" / "toy_direct_data.json").read_text())
    assert any("left or right" in c["value"] for rec in direct for c in rec["conversations"])
    # System 2 asks it with the target as evidence: the switch learns that too
    focus = json.loads((toy / "seal" / "toy_focus_data.json").read_text())
    position_focus = [rec for rec in focus if "left or right" in rec["conversations"][0]["value"]]
    assert position_focus and all(
        rec["search"] and len(rec["target_instances"]) == 1 for rec in position_focus
    )
