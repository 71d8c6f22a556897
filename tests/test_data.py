"""LLaVA JSON loading: real records read back, bad records fail loudly with file and index."""

import json

import pytest

from roillava.conversation import IGNORE_INDEX, RecordError
from roillava.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, image_seq_length


def make_dataset(path, image_folder, processor, model_config, **kw):
    kw.setdefault("max_length", 512)
    return LazySupervisedDataset(
        str(path),
        str(image_folder),
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        model_config=model_config,
        template=kw.pop("template", "v1"),
        **kw,
    )


@pytest.fixture(scope="module")
def model_config(tiny_base):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_base)


def test_toy_instruct_and_captions_load(toy_world, processor, model_config):
    toy = toy_world["playground"] / "data" / "toy"
    ds = make_dataset(toy / "llava_toy_instruct.json", toy / "images", processor, model_config)
    item = ds[0]
    n_img = image_seq_length(model_config)
    assert n_img == 49
    assert (item["input_ids"] == model_config.image_token_id).sum() == n_img
    assert item["pixel_values"].shape == (1, 3, 112, 112)
    assert (item["labels"] != IGNORE_INDEX).sum() >= 4  # two answers + two EOS
    caps = make_dataset(
        toy / "blip_laion_cc_sbu_toy.json", toy / "images", processor, model_config, template="plain"
    )
    batch = DataCollatorForSupervisedDataset(processor.tokenizer.pad_token_id)([caps[0], ds[1], caps[2]])
    assert batch["pixel_values"].shape[0] == 3
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def write(tmp_path, records):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


GOOD = {
    "image": "train/000000.jpg",
    "conversations": [{"from": "human", "value": "<image>\nq?"}, {"from": "gpt", "value": "a"}],
}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"image": "missing.jpg", "conversations": GOOD["conversations"]}, "image not found: .*missing.jpg"),
        ({"image": "train/000000.jpg"}, "no conversations"),
        ({"conversations": GOOD["conversations"]}, "1 <image> placeholders but 0 images"),
        (
            {
                "image": "train/000000.jpg",
                # two turns with an image each (within one turn LLaVA keeps a single <image>)
                "conversations": [
                    {"from": "human", "value": "<image> q"},
                    {"from": "gpt", "value": "a"},
                    {"from": "human", "value": "r <image>"},
                    {"from": "gpt", "value": "b"},
                ],
            },
            "2 <image> placeholders but 1 images",
        ),
    ],
)
def test_bad_records_name_file_and_index(tmp_path, toy_world, processor, model_config, bad, message):
    images = toy_world["playground"] / "data" / "toy" / "images"
    path = write(tmp_path, [GOOD, bad])
    ds = make_dataset(path, images, processor, model_config)
    ds[0]
    with pytest.raises(RecordError, match=f"{path} record 1: .*{message}"):
        ds[1]
    skipping = make_dataset(path, images, processor, model_config, skip_bad_records=True)
    assert skipping[1]["input_ids"].tolist() == ds[0]["input_ids"].tolist()  # the next good record
    assert skipping.summary() == {"records": 2, "skipped": 1, "truncated": 0}


def test_unreadable_image(tmp_path, processor, model_config):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    path = write(tmp_path, [{**GOOD, "image": "broken.jpg"}])
    with pytest.raises(RecordError, match="record 0: unreadable image .*broken.jpg"):
        make_dataset(path, tmp_path, processor, model_config)[0]


def test_truncation(tmp_path, toy_world, processor, model_config):
    images = toy_world["playground"] / "data" / "toy" / "images"
    long_answer = " ".join(["star"] * 200)
    rec = {
        "image": GOOD["image"],
        "conversations": [GOOD["conversations"][0], {"from": "gpt", "value": long_answer}],
    }
    path = write(tmp_path, [rec])
    ds = make_dataset(path, images, processor, model_config, max_length=120)
    item = ds[0]
    assert len(item["input_ids"]) == 120 and ds.summary()["truncated"] == 1
    with pytest.raises(RecordError, match="record 0: .*exceeds model_max_length=30 inside image tokens"):
        make_dataset(path, images, processor, model_config, max_length=30)[0]
    # Cutting right before the first answer token leaves nothing to learn.
    prompt_len = (item["labels"] != IGNORE_INDEX).nonzero()[0].item()
    with pytest.raises(RecordError, match="record 0: no supervised token left"):
        make_dataset(path, images, processor, model_config, max_length=prompt_len)[0]


def test_invalid_json_names_file(tmp_path, processor, model_config):
    path = tmp_path / "bad.json"
    path.write_text("[{")
    with pytest.raises(ValueError, match="bad.json: invalid JSON"):
        make_dataset(path, tmp_path, processor, model_config)
