"""SEAL records: file order, object text and crops, long/short rules, and bad input failing with file + index."""

import json

import pytest
import torch
from PIL import Image

from swillava.conversation import IGNORE_INDEX, RecordError, TokenLayout
from swillava.data import SEAL_FILES, SealCollator, SealDataset, data_files
from swillava.objects import (
    MISSING_OBJECTS_PREFIX,
    check_box,
    crop_object,
    feature_layout,
    location_string,
    patch_bounds,
)

LAYOUT_SHORT = 8  # short run length used here (the perceiver's num_latents in these tests)


@pytest.fixture(scope="module")
def layout(processor):
    tok = processor.tokenizer
    return TokenLayout(
        tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<object>"), 49, LAYOUT_SHORT
    )


@pytest.fixture(scope="module")
def toy(toy_world):
    return toy_world["playground"] / "data" / "toy"


def make(path, toy, processor, layout, image_folder=None, **kw):
    processor.image_processor.do_pad = True
    return SealDataset(
        str(path),
        str(image_folder or toy / "images"),
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        layout=layout,
        template="v1",
        max_length=kw.pop("max_length", 512),
        **kw,
    )


def record(question, answer="cross", objects=(), image="train/000000.jpg", search=True):
    rec = {
        "image": image,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }
    if objects:
        rec["target_instances"] = [{"name": n, "bbox": b} for n, b in objects]
        if search:
            rec["search"] = True
    return rec


def write(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_toy_folder_reads_every_json_in_sorted_order(toy, processor, layout):
    ds = make(toy / "seal", toy, processor, layout)
    assert [f.name for f in ds.files] == [
        "toy_direct_data.json",
        "toy_focus_data.json",
        "toy_negative_data.json",
    ]
    counts = [len(json.loads(f.read_text())) for f in ds.files]
    assert len(ds) == sum(counts)
    negative = ds[counts[0] + counts[1]]  # the negative record: its target_instances are not shown
    assert not negative["object_present"].any() and negative["image_long"]
    answer = processor.tokenizer.decode(negative["input_ids"][negative["labels"] != IGNORE_INDEX])
    assert MISSING_OBJECTS_PREFIX in answer


def test_seal_folder_uses_seals_order_with_the_spatial_file_twice(tmp_path):
    for name in set(SEAL_FILES):
        (tmp_path / name).write_text("[]")
    (tmp_path / "other.json").write_text("[]")
    assert [f.name for f in data_files(tmp_path)] == list(SEAL_FILES)
    (tmp_path / "GQA_data.json").unlink()
    with pytest.raises(FileNotFoundError, match="GQA_data.json"):
        data_files(tmp_path)


def test_focus_record_text_crops_and_layout(toy, processor, layout, tmp_path):
    torch.manual_seed(0)
    image = Image.fromarray((torch.rand(336, 448, 3) * 255).byte().numpy())  # padded side 448, 56 px down
    (tmp_path / "images").mkdir()
    image.save(tmp_path / "images" / "scene.png")
    box = [88, 108, 23, 23]
    q = "<image>\nAdditional visual information to focus on: <object>.\nWhat shape is the purple object?"
    data = write(tmp_path, [record(q, objects=[("purple object", box)], image="scene.png")])
    item = make(data, toy, processor, layout, image_folder=tmp_path / "images")[0]
    width, height = image.size
    expected = "[0.196,0.366,0.248,0.417]"  # x / 448, (y + 56) / 448
    assert location_string(box, width, height) == expected
    text = processor.tokenizer.decode(item["input_ids"])
    assert f"focus on: purple object {'<object>' * 49} at location {expected}.\nWhat shape" in text
    # SEAL's training rule for one object: short image, long object.
    assert not item["image_long"] and item["object_long"].tolist() == [True, False, False]
    assert (item["input_ids"] == layout.image_id).sum() == LAYOUT_SHORT
    assert (item["labels"][item["input_ids"] == layout.object_id] == IGNORE_INDEX).all()
    crop = crop_object(image, box, 112)
    expected_pixels = processor.image_processor([crop], return_tensors="pt")["pixel_values"][0]
    assert item["object_present"].tolist() == [True, False, False]
    assert (item["object_pixel_values"][0] == expected_pixels).all()
    assert (item["object_pixel_values"][1:] == 0).all()


def test_get_patch_semantics():
    # w, h ceiled; centre int(x + w/2); patch int(1.2 w) x int(1.2 h); shifted inside the image.
    assert patch_bounds((10, 20, 10, 5), 100, 100) == (9, 19, 21, 25)
    assert patch_bounds((10.5, 20.2, 9.1, 4.3), 100, 100) == (9, 19, 21, 25)
    assert patch_bounds((95, 0, 5, 5), 100, 100) == (94, 0, 100, 6)
    assert patch_bounds((0, 0, 100, 50), 100, 50) == (0, 0, 100, 50)
    assert crop_object(Image.new("RGB", (100, 50)), (10, 20, 10, 5), 112).size == (112, 112)


def test_feature_layout_rules():
    assert feature_layout(0, "train") == (True, [])
    assert feature_layout(1, "train") == (False, [True])
    assert feature_layout(3, "train") == (True, [False, False, False])
    assert feature_layout(0, "infer") == (True, [])
    assert feature_layout(2, "infer") == (False, [True, True])
    assert feature_layout(3, "infer") == (False, [False, False, False])


def test_partially_outside_box_is_kept_raw_and_clipped_only_in_crop_and_location():
    """SEAL computes crop and location from the raw box; only their results are cut at the image / [0, 1]."""
    assert check_box([-10, 90, 30, 30], 100, 100) == (-10.0, 90.0, 30.0, 30.0)
    assert location_string((-10.0, 90.0, 30.0, 30.0), 100, 100) == "[0.000,0.900,0.200,1.000]"
    # [150, 60, 100, 80] on 200x100 (padded side 200, 50 px down): y2 = (60 + 50 + 80) / 200 = 0.95;
    # the clamped box (150, 60, 50, 40) would give (60 + 50 + 40) / 200 = 0.75.
    box = check_box([150, 60, 100, 80], 200, 100)
    assert location_string(box, 200, 100) == "[0.750,0.550,1.000,0.950]"
    # get_patch: centre int(150 + 100/2) = 200, int(60 + 80/2) = 100; patch int(100*1.2) = 120 x
    # int(80*1.2) = 96; left max(0, 200 - 60) = 140, right min(260, 200); top 100 - 48 = 52, bottom 100.
    assert patch_bounds(box, 200, 100) == (140, 52, 200, 100)


THREE = "<image>\nAdditional visual information to focus on: <object>; <object>; <object>.\nq?"
BAD = [
    (record(THREE.replace("; <object>; <object>", ""), objects=[("a", [1000, 1000, 10, 10])]), "outside"),
    (record(THREE.replace("; <object>; <object>", ""), objects=[("a", [10, 10, 0, 5])]), "zero-area"),
    (record(THREE.replace("; <object>; <object>", ""), objects=[("a", [10, 10, -5, 5])]), "negative"),
    (record(THREE.replace("; <object>; <object>", ""), objects=[("a", [10, 10, 5])]), r"\[x, y, w, h\]"),
    (record(THREE.replace("; <object>; <object>", ""), objects=[("red, blue", [10, 10, 5, 5])]), "comma"),
    (record(THREE + " <object>", objects=[(f"o{i}", [10, 10, 5, 5]) for i in range(4)]), "object slots"),
    (record(THREE, objects=[("a", [10, 10, 5, 5])]), "3 <object> placeholders but 1 target_instances"),
    (record("<image>\nq?", objects=[("a", [10, 10, 5, 5])]), "0 <object> placeholders but 1"),
    (record("<image>\nq?", answer="see <object>"), "assistant answer"),
    (record("q? <object>", objects=[("a", [1, 1, 5, 5])], image=None), "text-only"),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_bad_records_fail_with_file_and_index(bad, message, toy, processor, layout, tmp_path):
    if bad.get("image") is None:
        bad.pop("image")
    good = record("<image>\nq?")
    path = write(tmp_path, [good, bad])
    ds = make(path, toy, processor, layout)
    ds[0]
    with pytest.raises(RecordError, match=message) as err:
        ds[1]
    assert f"{path} record 1" in str(err.value)
    skipping = make(path, toy, processor, layout, skip_bad_records=True)
    skipping[1]
    assert skipping.summary()["skipped"] == 1


def test_truncation_never_cuts_object_tokens(toy, processor, layout, tmp_path):
    q = "<image>\nAdditional visual information to focus on: <object>.\nq?"
    path = write(tmp_path, [record(q, objects=[("a", [10, 10, 20, 20])])])
    with pytest.raises(RecordError, match="inside image/object tokens"):
        make(path, toy, processor, layout, max_length=60)[0]


def test_mixed_batch_collates_fixed_slots(toy, processor, layout, tmp_path):
    objs = [(f"o{i}", [10 + 30 * i, 10, 20, 20]) for i in range(3)]
    records = [
        record("<image>\nq?"),
        record(THREE, objects=objs),
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    ]
    ds = make(write(tmp_path, records), toy, processor, layout)
    batch = SealCollator(processor.tokenizer.pad_token_id)([ds[i] for i in range(3)])
    assert batch["object_pixel_values"].shape == (3, 3, 3, 112, 112)
    assert batch["object_present"].sum(1).tolist() == [0, 3, 0]
    assert batch["image_present"].tolist() == [True, True, False]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert ((batch["input_ids"] == layout.object_id).sum(1) == 3 * LAYOUT_SHORT).tolist() == [
        False,
        True,
        False,
    ]
