"""Chain-of-Spot data: the four-turn rewrite of the toy files, its masks, seeded choice and counted fallbacks."""

import copy
import json

import pytest
import torch
from transformers import TrainerState

from roillava.boxes import cos_box_from_params, crop_padded, expand_to_square
from roillava.conversation import IGNORE_INDEX, V1_SYSTEM, RecordError
from roillava.cos_data import ChainOfSpotDataset
from roillava.data import open_image
from roillava.train import EpochCallback

N_IMG = 49
SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def padded_processor(processor):
    """A copy of the session processor with LLaVA-1.5's pad-to-square on (as training sets it)."""
    proc = copy.deepcopy(processor)
    proc.image_processor.do_pad = True
    return proc


@pytest.fixture(scope="module")
def model_config(tiny_base):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_base)


@pytest.fixture(scope="module")
def toy(toy_world):
    toy = toy_world["playground"] / "data" / "toy"
    return {
        "data": toy / "llava_toy_instruct.json",
        "images": toy / "images",
        "rois": toy / "chain-of-spot.json",
        "records": json.loads((toy / "llava_toy_instruct.json").read_text()),
        "roi_json": json.loads((toy / "chain-of-spot.json").read_text()),
    }


def make(toy, proc, model_config, *, data=None, rois=None, **kw):
    return ChainOfSpotDataset(
        str(data or toy["data"]),
        str(toy["images"]),
        roi_data_path=str(rois or toy["rois"]),
        tokenizer=proc.tokenizer,
        image_processor=proc.image_processor,
        model_config=model_config,
        template="v1",
        max_length=1024,
        **kw,
    )


def test_four_turn_conversation_labels_and_images(toy, padded_processor, model_config):
    tok = padded_processor.tokenizer
    ds = make(toy, padded_processor, model_config, seed=3)
    index = 5
    item = ds[index]
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    rec = toy["records"][index]
    turns = [
        (
            rec["conversations"][2 * j]["value"].replace("<image>\n", ""),
            rec["conversations"][2 * j + 1]["value"],
        )
        for j in range(len(rec["conversations"]) // 2)
    ]
    assert len(turns) == 3
    k = ds.question_index(index, len(turns))
    q, answer = turns[k]
    others = [turn for j, turn in enumerate(turns) if j != k]
    image = open_image(toy["images"] / rec["image"])
    params = toy["roi_json"][f"{index:06d}_toy_{index:06d}_q{k}"]["params"]
    box = cos_box_from_params(params, *image.size)
    assert len(str(box)) > 10

    # The exact Chain-of-Spot strings, each piece tokenised on its own as training does (split at <image>).
    def t(text):
        return tok(text, add_special_tokens=False).input_ids

    img, eos = [model_config.image_token_id] * N_IMG, [tok.eos_token_id]
    pieces = [  # (ids, supervised)
        ([tok.bos_token_id] + t(f"{V1_SYSTEM} USER: ") + img, False),
        (
            t(f'\nTo answer the question: "{q}", where is the region of interest in the image? ASSISTANT:'),
            False,
        ),
        (t(str(box)) + eos, True),
        (t("USER: The region of interest in the image is ") + img, False),
        (t(f'\n. Answer the question: "{q}" ASSISTANT:'), False),
        (t(answer) + eos, True),
        (
            t(f"USER: Now answer the following questions based on the raw image: {others[0][0]} ASSISTANT:"),
            False,
        ),
        (t(others[0][1]) + eos, True),
        (t(f"USER: {others[1][0]} ASSISTANT:"), False),
        (t(others[1][1]) + eos, True),
    ]
    assert ids == [i for piece, _ in pieces for i in piece]
    assert labels == [i if sup else IGNORE_INDEX for piece, sup in pieces for i in piece]
    assert tok.decode(t(str(box))) == f"[{', '.join(str(v) for v in box)}]"
    # Images: global view, then the crop of the padded frame (padded to square again by the processor).
    ip = padded_processor.image_processor
    expected = ip([image, crop_padded(image, box)], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(item["pixel_values"], expected)


def test_region_only_is_the_first_turn_with_the_global_image(toy, padded_processor, model_config):
    tok = padded_processor.tokenizer
    full = make(toy, padded_processor, model_config, seed=3)
    region = make(toy, padded_processor, model_config, seed=3, region_only=True)
    index = 5
    turns, images = full.turns_and_images(index)
    item = region[index]
    # the same question and box as the whole conversation's first turn, the global view alone
    assert region.turns_and_images(index) == (turns[:1], images[:1])
    assert item["pixel_values"].shape[0] == 1
    supervised = [
        i for i, label in zip(item["input_ids"].tolist(), item["labels"].tolist()) if label != IGNORE_INDEX
    ]
    assert supervised == tok(turns[0][1], add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert len(item["input_ids"]) < len(full[index]["input_ids"]) / 2


def test_other_wording_is_a_flag(toy, padded_processor, model_config):
    turns, _ = make(toy, padded_processor, model_config, wording="what").turns_and_images(0)
    assert turns[0][0].endswith(", what is the region of interest in the image?")
    with pytest.raises(ValueError, match="wording"):
        make(toy, padded_processor, model_config, wording="which")


def test_question_choice_is_seeded_per_epoch(toy, padded_processor, model_config):
    def draws(ds, epoch):
        ds.set_epoch(epoch)
        return [ds.question_index(i, 3) for i in range(len(ds))]

    a, b = (
        make(toy, padded_processor, model_config, seed=7),
        make(toy, padded_processor, model_config, seed=7),
    )
    assert draws(a, 0) == draws(b, 0) and draws(a, 1) == draws(b, 1)
    assert draws(a, 0) != draws(a, 1)  # a fresh draw each epoch
    assert draws(a, 0) != draws(make(toy, padded_processor, model_config, seed=8), 0)
    assert set(draws(a, 0)) == {0, 1, 2}
    # The same draw whenever the sample is loaded within an epoch.
    a.set_epoch(2)
    assert torch.equal(a[4]["input_ids"], a[4]["input_ids"])
    turns, _ = a.turns_and_images(4)
    rec = toy["records"][4]
    assert turns[1][1] == rec["conversations"][2 * a.question_index(4, 3) + 1]["value"]
    # The trainer sets the epoch at each epoch start; a run resumed mid-epoch gets that epoch back.
    callback, state = EpochCallback(a), TrainerState()
    for epoch, expected in [(None, 0), (1.0, 1), (1.5, 1), (2.9999999, 2)]:
        state.epoch = epoch
        callback.on_epoch_begin(None, state, None)
        assert a.epoch == expected


def test_missing_roi_and_text_only_fall_back_and_are_counted(toy, padded_processor, model_config, tmp_path):
    records = [
        *toy["records"],
        {
            "id": "text/1",
            "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "hello"}],
        },
    ]
    rois = {key: v for key, v in toy["roi_json"].items() if not key.startswith("000003_")}
    (tmp_path / "data.json").write_text(json.dumps(records))
    (tmp_path / "rois.json").write_text(json.dumps(rois))
    ds = make(toy, padded_processor, model_config, data=tmp_path / "data.json", rois=tmp_path / "rois.json")
    assert ds.summary() == {
        "records": 25,
        "skipped": 0,
        "truncated": 0,
        "roi_questions": 72,
        "roi_missing": 3,
        "text_only_records": 1,
        "served_roi_fallbacks": 0,
        "served_text_only": 0,
    }
    turns, images = ds.turns_and_images(3)
    assert turns[0][1] == "[0.0, 0.0, 1.0, 1.0]"
    assert images[1].size == (448, 448) and list(images[1].getdata()) == list(
        expand_to_square(images[0]).getdata()
    )
    plain = ds[24]
    assert "pixel_values" not in plain and (plain["input_ids"] == model_config.image_token_id).sum() == 0
    assert (
        padded_processor.tokenizer.decode(plain["input_ids"][plain["labels"] != IGNORE_INDEX]) == "hello</s>"
    )
    assert ds.summary()["served_roi_fallbacks"] == 1 and ds.summary()["served_text_only"] == 1


def test_bad_roi_data_fail_loudly(toy, padded_processor, model_config, tmp_path):
    rois = dict(toy["roi_json"])
    for k in (0, 1):
        rois[f"000002_toy_000002_q{k}"] = {"params": [10, 20]}
    (tmp_path / "bad.json").write_text(json.dumps(rois))
    ds = make(toy, padded_processor, model_config, rois=tmp_path / "bad.json")
    with pytest.raises(RecordError, match=r"llava_toy_instruct.json record 2: ROI '000002_toy_000002_q\d'"):
        ds[2]
    # Keys shifted by one record (data file and ROI file out of step) match nothing: an error, not 100% fallback.
    shifted = {f"{int(key[:6]) + 1:06d}{key[6:]}": v for key, v in toy["roi_json"].items()}
    (tmp_path / "shifted.json").write_text(json.dumps(shifted))
    with pytest.raises(ValueError, match="no key matches"):
        make(toy, padded_processor, model_config, rois=tmp_path / "shifted.json")
    centre_crop = copy.deepcopy(padded_processor)
    centre_crop.image_processor.do_pad = False
    with pytest.raises(ValueError, match="image_aspect_ratio pad"):
        make(toy, centre_crop, model_config)
    with pytest.raises(FileNotFoundError, match="ROI file not found"):
        make(toy, padded_processor, model_config, rois=tmp_path / "nope.json")
