"""Every SegLLaVA data family on files written in its real layout, LISA's templates, and the bad-input errors."""

from __future__ import annotations

import json
import pickle
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segllava.conversation import ANSWER_LIST, LONG_QUESTION_LIST, SHORT_QUESTION_LIST, TokenLayout
from segllava.hybrid import HybridDataset, SegCollator, encode_conversations
from segllava.masks import DataError, load_plain_pickle, reason_seg_mask
from segllava.sources import (
    ReasonSegSource,
    ReferSegSource,
    Sample,
    SemSegSource,
    VqaSource,
    part_name,
    val_gt_mask,
    val_items,
)

SHORT = [q.split("{class_name}") for q in SHORT_QUESTION_LIST]


def _image(path: Path, w: int = 40, h: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(path)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _class_of(question: str) -> str:
    """The class name inside one of LISA's short questions."""
    for head, tail in SHORT:
        if question.startswith(head) and question.endswith(tail):
            return question[len(head) : len(question) - len(tail)]
    raise AssertionError(f"not a short LISA question: {question!r}")


def _check_class_sample(sample: Sample, names_to_masks: dict[str, np.ndarray]) -> None:
    assert len(sample.conversations) == len(sample.masks) > 0
    for (turn,), mask in zip(sample.conversations, sample.masks):
        question, answer = turn
        assert answer in ANSWER_LIST
        name = _class_of(question)
        assert np.array_equal(mask, names_to_masks[name]), name


# --- sem_seg ------------------------------------------------------------------------------------------------
def test_ade20k_toy_world_layout(toy_world) -> None:
    root = toy_world["dataset"]
    names = json.loads((root / "ade20k" / "classes.json").read_text())
    source = SemSegSource(root, ["ade20k"], num_classes=3)
    rng = random.Random(0)
    for _ in range(3):
        sample = source.sample(rng)
        label_path = sample.image_path.replace("/images/training/", "/annotations/training/")
        label = np.asarray(Image.open(Path(label_path).with_suffix(".png")))
        # ADE20K convention: value v + 1 is class v of the list, 0 is unlabelled
        _check_class_sample(sample, {n.lower(): (label == k + 1) for k, n in enumerate(names)})


def test_ade20k_errors_name_the_file(tmp_path) -> None:
    ade = tmp_path / "ade20k"
    _json(ade / "classes.json", ["wall", "sky"])
    _image(ade / "images" / "training" / "ADE_train_00000001.jpg")
    bad_size = ade / "annotations" / "training" / "ADE_train_00000001.png"
    _png(bad_size, np.ones((31, 40)))
    source = SemSegSource(tmp_path, ["ade20k"], 3)
    with pytest.raises(
        DataError, match=r"ADE_train_00000001.png: label map size 40x31 differs from its image 40x30"
    ):
        source.sample(random.Random(0))
    _png(bad_size, np.full((30, 40), 5))  # class 4 of a 2-name list
    with pytest.raises(DataError, match=r"ADE_train_00000001.png: label values \[4\] have no class"):
        source.sample(random.Random(0))
    with pytest.raises(ValueError, match="unknown --sem_seg_data"):
        SemSegSource(tmp_path, ["ade21k"], 3)


def test_cocostuff_and_mapillary(tmp_path) -> None:
    label = np.zeros((30, 40), np.uint8)
    label[:10] = 1  # "wall-other": ignored as in LISA
    label[20:] = 255
    _image(tmp_path / "coco" / "train2017" / "000000000009.jpg")
    _png(tmp_path / "cocostuff" / "train2017" / "000000000009.png", label)
    (tmp_path / "cocostuff" / "cocostuff_classes.txt").write_text("0: unlabeled\n1: person\n2: wall-other\n")
    sample = SemSegSource(tmp_path, ["cocostuff"], 3).sample(random.Random(1))
    _check_class_sample(sample, {"person": label == 0})

    _json(
        tmp_path / "mapillary" / "config_v2.0.json",
        {"labels": [{"readable": "Bird"}, {"readable": "Unlabeled"}]},
    )
    _image(tmp_path / "mapillary" / "training" / "images" / "m1.jpg")
    _png(tmp_path / "mapillary" / "training" / "v2.0" / "labels" / "m1.png", np.where(label == 0, 0, 1))
    sample = SemSegSource(tmp_path, ["mapillary"], 3).sample(random.Random(2))
    _check_class_sample(sample, {"bird": label == 0})


def _parts_json(path: Path, file_name: str, category: str, width: int = 40, height: int = 30) -> None:
    _json(
        path,
        {
            "images": [{"id": 7, "file_name": file_name, "width": width, "height": height}],
            "annotations": [
                {"id": 70, "image_id": 7, "category_id": 3, "segmentation": [[2, 2, 12, 2, 12, 8, 2, 8]]},
            ],
            "categories": [{"id": 3, "name": category}],
        },
    )


def test_paco_lvis_and_pascal_part(tmp_path) -> None:
    want = np.zeros((30, 40), bool)
    want[2:8, 2:12] = True  # pycocotools fills the polygon's interior, half-open like COCO
    _image(tmp_path / "coco" / "train2017" / "000000000007.jpg")
    _parts_json(
        tmp_path / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json",
        "train2017/000000000007.jpg",
        "mug:handle",
    )
    _image(tmp_path / "vlpart" / "pascal_part" / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2008_000007.jpg")
    _parts_json(tmp_path / "vlpart" / "pascal_part" / "train.json", "2008_000007.jpg", "dog:leg")
    for name, phrases in (
        ("paco_lvis", {"mug handle", "the handle of the mug"}),
        ("pascal_part", {"dog leg", "the leg of the dog"}),
    ):
        source = SemSegSource(tmp_path, [name], 3)
        seen = set()
        for seed in range(8):
            sample = source.sample(random.Random(seed))
            _check_class_sample(sample, {p: want for p in phrases})
            seen.add(_class_of(sample.conversations[0][0][0]))
        assert seen == phrases  # both of LISA's phrasings occur
    assert part_name(random.Random(0), "person") == "person"


def test_parts_errors_name_the_file(tmp_path) -> None:
    ann = tmp_path / "vlpart" / "pascal_part" / "train.json"
    _image(tmp_path / "vlpart" / "pascal_part" / "VOCdevkit" / "VOC2010" / "JPEGImages" / "a.jpg")
    _parts_json(ann, "a.jpg", "dog:leg", width=41)
    with pytest.raises(DataError, match=r"train.json: image 7 is 41x30 there but 40x30"):
        SemSegSource(tmp_path, ["pascal_part"], 3).sample(random.Random(0))
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 99
    ann.write_text(json.dumps(data))
    with pytest.raises(
        DataError, match=r"train.json: annotation 0 has category 99 missing from the class list"
    ):
        SemSegSource(tmp_path, ["pascal_part"], 3)


# --- refer_seg ----------------------------------------------------------------------------------------------
def _refer(root: Path, refs: list, width: int = 40) -> None:
    base = root / "refer_seg" / "refcoco"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    _json(
        base / "instances.json",
        {
            "images": [
                {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": width, "height": 30}
            ],
            "annotations": [
                {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 9, 0, 9, 9, 0, 9]]},
                {
                    "id": 12,
                    "image_id": 1,
                    "category_id": 1,
                    "segmentation": [[20, 10, 29, 10, 29, 19, 20, 19]],
                },
            ],
            "categories": [{"id": 1, "name": "person"}],
        },
    )
    _image(
        root / "refer_seg" / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000001.jpg"
    )


REFS = [
    {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "train", "sentences": [{"sent": "man on the left"}]},
    {"ref_id": 1, "ann_id": 12, "image_id": 1, "split": "train", "sentences": [{"sent": "right guy"}, {"sent": "man in red"}]},
    {"ref_id": 2, "ann_id": 12, "image_id": 1, "split": "val", "sentences": [{"sent": "the other man"}]},
]  # fmt: skip


def test_refer_seg_layout_and_val(tmp_path) -> None:
    _refer(tmp_path, REFS)
    left, right = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
    left[0:9, 0:9] = True
    right[10:19, 20:29] = True
    sample = ReferSegSource(tmp_path, ["refcoco"], 3).sample(random.Random(0))
    _check_class_sample(sample, {"man on the left": left, "right guy": right, "man in red": right})
    assert len(sample.conversations) == 3  # all three training sentences of the image
    (item,) = val_items(tmp_path, "refcoco|unc|val")
    assert item.question == "<image>\n What is the other man in this image? Please output segmentation mask."
    assert np.array_equal(val_gt_mask(item, 30, 40), right)


def test_refer_errors_name_the_file(tmp_path) -> None:
    _refer(tmp_path, [{**REFS[0], "ann_id": 99}])
    with pytest.raises(
        DataError, match=r"refs\(unc\).p: ref 0 \(ref_id 0\) annotation 99 is not in .*instances.json"
    ):
        ReferSegSource(tmp_path, ["refcoco"], 3)
    _refer(tmp_path, REFS, width=50)
    with pytest.raises(
        DataError, match=r"instances.json: COCO_train2014_000000000001.jpg is 50x30 there but 40x30"
    ):
        ReferSegSource(tmp_path, ["refcoco"], 3).sample(random.Random(0))
    with open(tmp_path / "code.p", "wb") as f:
        pickle.dump(OrderedDict(a=1), f)
    with pytest.raises(
        DataError, match=r"code.p: cannot read the pickle .*refusing to load collections.OrderedDict"
    ):
        load_plain_pickle(tmp_path / "code.p")


# --- vqa ----------------------------------------------------------------------------------------------------
def test_vqa_llava_instruct(tmp_path) -> None:
    _image(tmp_path / "coco" / "train2017" / "000000000042.jpg")
    record = {
        "id": "42",
        "image": "000000000042.jpg",
        "conversations": [
            {"from": "human", "value": "What is this?\n<image>"},
            {"from": "gpt", "value": "A grey square."},
            {"from": "human", "value": "Is it big?"},
            {"from": "gpt", "value": "No."},
        ],
    }
    _json(tmp_path / "llava_dataset" / "llava_instruct_150k.json", [record])
    sample = VqaSource(tmp_path, "llava_instruct_150k").sample(random.Random(0))
    assert sample.conversations == [[("<image>\nWhat is this?", "A grey square."), ("Is it big?", "No.")]]
    assert sample.masks.shape == (0, 30, 40)


# --- reason_seg ---------------------------------------------------------------------------------------------
def test_reason_seg_polygons_ignore_and_flag(tmp_path) -> None:
    path = tmp_path / "a.json"
    shapes = [
        {"label": "target", "points": [[0, 0], [19, 0], [19, 19], [0, 19]]},
        {"label": "ignore", "points": [[5, 5], [9, 5], [9, 9], [5, 9]]},  # smaller: drawn over the target
        {"label": "flag", "points": [[30, 20], [35, 20], [35, 25]]},
    ]
    _json(path, {"text": ["x"], "is_sentence": False, "shapes": shapes})
    mask = reason_seg_mask(path, 30, 40)
    assert mask[0, 0] == 1 and mask[7, 7] == 255 and mask[22, 33] == 0 and mask[25, 25] == 0
    assert set(np.unique(mask)) == {0, 1, 255}
    _json(path, {"text": ["x"], "shapes": [{"label": "target", "points": [[0, 0], [5, 5]]}]})
    with pytest.raises(
        DataError, match=r"a.json: shape 0 \('target'\) is not a polygon of at least 3 points"
    ):
        reason_seg_mask(path, 30, 40)


def test_reason_seg_toy_world_train_and_val(toy_world) -> None:
    root = toy_world["dataset"]
    source = ReasonSegSource(root, "ReasonSeg|train", num_classes=3, explanatory=0.1)
    sample = source.sample(random.Random(0))
    (turn,) = sample.conversations[0]
    assert turn[1] in ANSWER_LIST and _class_of(turn[0]).startswith("the ")
    assert sample.masks.shape[0] == 1 and sample.masks.max() == 1
    items = val_items(root, "ReasonSeg|val")
    assert len(items) == toy_world["size"].seg_val
    assert items[0].question.startswith("<image>\n What is the ") and items[0].question.endswith(
        " in this image? Please output segmentation mask."
    )
    assert items[0].meta["query"] == "short" and items[0].meta["target_size"] in ("small", "large")


def test_reason_seg_sentences_and_explanations(tmp_path) -> None:
    split = tmp_path / "reason_seg" / "ReasonSeg" / "train"
    _image(split / "q.jpg")
    _json(split / "q.json", {"text": ["The thing you sit on."], "is_sentence": True,
                             "shapes": [{"label": "target", "points": [[0, 0], [9, 0], [9, 9]]}]})  # fmt: skip
    _json(tmp_path / "reason_seg" / "ReasonSeg" / "explanatory" / "train.json",
          [{"image": "q.jpg", "query": "The thing you sit on.", "outputs": "A chair is for sitting."}])  # fmt: skip
    source = ReasonSegSource(tmp_path, "ReasonSeg|train", num_classes=3, explanatory=0.5)
    kinds = set()
    for seed in range(30):
        sample = source.sample(random.Random(seed))
        ((question, answer),) = sample.conversations[0]
        if answer == "A chair is for sitting.":
            kinds.add("explanation only")
            assert question == "<image>\nThe thing you sit on." and sample.masks.shape[0] == 0
        elif answer.endswith(" A chair is for sitting."):
            kinds.add("mask and explanation")
            assert "Please output segmentation mask and" in question and sample.masks.shape[0] == 1
        else:
            kinds.add("mask")
            assert any(question == q.format(sent="The thing you sit on.") for q in LONG_QUESTION_LIST)
    assert kinds == {"explanation only", "mask and explanation", "mask"}


# --- the hybrid dataset and collator ------------------------------------------------------------------------
def test_encode_and_collate(tmp_path, processor) -> None:
    tok = processor.tokenizer
    ids_of = tok.convert_tokens_to_ids
    layout = TokenLayout(
        ids_of("<image>"), 4, tok.bos_token_id, tok.eos_token_id, ids_of("<im_start>"), ids_of("<im_end>")
    )
    seg_id = ids_of("[SEG]")
    masks = np.stack([np.eye(3, dtype=np.uint8), np.full((3, 3), 255, np.uint8)])
    masks[1, 0, 0] = 1
    conversations = [[("<image>\nfind a", "It is [SEG].")], [("<image>\nfind b", "[SEG] and more")]]
    sample = Sample("x.jpg", conversations, masks)
    ids, labels, per_conv = encode_conversations(sample, tok, layout, seg_token_id=seg_id, max_length=128)
    run = [layout.im_start_id, *[layout.image_token_id] * 4, layout.im_end_id]  # wrapped, as LISA does
    start = ids[0].index(layout.im_start_id)
    assert ids[0][0] == tok.bos_token_id and ids[0][start : start + 6] == run
    assert ids[0].count(layout.image_token_id) == 4
    supervised = [[i for i, lab in zip(r, labs) if lab != -100] for r, labs in zip(ids, labels)]
    assert supervised[0] == tok("It is [SEG].", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert [m.shape[0] for m in per_conv] == [1, 1]
    with pytest.raises(DataError, match="x.jpg: conversation 0 is .* would drop a \\[SEG\\] or image token"):
        encode_conversations(sample, tok, layout, seg_token_id=seg_id, max_length=5)
    with pytest.raises(DataError, match="x.jpg: 1 masks but 2 \\[SEG\\] tokens"):
        encode_conversations(Sample("x.jpg", conversations, masks[:1]), tok, layout, seg_id, 128)

    image = tmp_path / "x.jpg"
    _image(image, 3, 3)

    class OneImage:
        """A source that always draws the same sample (the families are tested above)."""

        def sample(self, rng):
            return Sample(str(image), conversations, masks)

    data = HybridDataset(
        [OneImage()], [1.0], 2, tokenizer=tok, image_processor=processor.image_processor, layout=layout,
        seg_token_id=seg_id, sam_image_size=16, max_length=128,
    )  # fmt: skip
    batch = SegCollator(pad_token_id=tok.pad_token_id)([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["image_run_index"].tolist() == [0, 0, 1, 1]
    assert (
        batch["sam_pixel_values"].shape == (2, 3, 16, 16) and batch["original_sizes"].tolist() == [[3, 3]] * 2
    )
    assert [m.tolist() for m in batch["gt_masks"][:2]] == [
        [np.eye(3).tolist()],
        [[[1, 0, 0], [0] * 3, [0] * 3]],
    ]
    assert batch["labels"][batch["attention_mask"] == 0].eq(-100).all()
    with pytest.raises(ValueError, match="1 datasets but 2 --sample_rates"):
        HybridDataset([OneImage()], [1, 2], 1, tokenizer=tok, image_processor=None, layout=layout,
                      seg_token_id=seg_id, sam_image_size=16, max_length=64)  # fmt: skip
    # A mask of another size than its image is refused by name.
    bad = HybridDataset([OneImage()], [1.0], 1, tokenizer=tok, image_processor=processor.image_processor,
                        layout=layout, seg_token_id=seg_id, sam_image_size=16, max_length=128)  # fmt: skip
    image.unlink()
    _image(image, 4, 3)
    with pytest.raises(DataError, match="x.jpg: masks are 3x3, the image 4x3"):
        bad[0]


def test_model_max_length_counts_each_image_as_one_token_as_lisa_does(processor) -> None:
    """LISA cuts the text (image as one token) at model_max_length - 255; 576 image rows change nothing."""
    from segllava.train import SegTrainArgs, check_args, text_token_limit

    tok = processor.tokenizer
    ids_of = tok.convert_tokens_to_ids
    layout = TokenLayout(
        ids_of("<image>"), 576, tok.bos_token_id, tok.eos_token_id, ids_of("<im_start>"), ids_of("<im_end>")
    )
    seg_id = ids_of("[SEG]")
    limit = text_token_limit(512)
    assert limit == 257
    question = "<image>\n" + "What is the thing you sit on? " * 3
    short = Sample("x.jpg", [[(question, "Sure, [SEG].")]], np.zeros((1, 2, 2)))
    (ids,), _, _ = encode_conversations(short, tok, layout, seg_id, limit)
    assert len(ids) > 600 and ids.count(layout.image_token_id) == 576 and ids.count(seg_id) == 1
    long = Sample("x.jpg", [[("<image>\nThe thing you sit on.", "[SEG]" + " because it is a chair" * 80)]],
                  np.zeros((1, 2, 2)))  # fmt: skip
    (ids,), (labels,), _ = encode_conversations(long, tok, layout, seg_id, limit)
    assert len(ids) - 575 == limit and len(labels) == len(ids) and ids.count(seg_id) == 1
    with pytest.raises(ValueError, match="--model_max_length 200 leaves -55 text tokens"):
        check_args(SegTrainArgs(model_max_length=200))


def test_split_metrics_golden_subsets() -> None:
    """LISA's gIoU/cIoU over a split and per subset: empty/empty counts 1.0, 255 is ignored."""
    from segllava.validate import split_metrics

    preds = [np.array([[1, 1, 0, 0]]), np.zeros((1, 4), np.uint8), np.array([[1, 1, 1, 1]])]
    gts = [np.array([[1, 0, 0, 0]]), np.zeros((1, 4), np.uint8), np.array([[255, 0, 1, 1]])]
    metas = [{"query": "short", "target_size": "small"}, {"query": "long", "target_size": "large"},
             {"query": "short", "target_size": "large"}]  # fmt: skip
    m = split_metrics(preds, gts, metas)
    # I/U: (1, 2), (0, 0) -> 1.0, (2, 3) with the 255 pixel ignored
    assert m["n"] == 3
    assert m["giou"] == pytest.approx((1 / (2 + 1e-5) + 1.0 + 2 / (3 + 1e-5)) / 3)
    assert m["ciou"] == pytest.approx(3 / 5)
    assert m["giou_small"] == pytest.approx(1 / (2 + 1e-5))
    assert m["giou_large"] == pytest.approx((1.0 + 2 / (3 + 1e-5)) / 2)
    assert m["giou_long"] == 1.0 and m["giou_short"] == pytest.approx((1 / (2 + 1e-5) + 2 / (3 + 1e-5)) / 2)
