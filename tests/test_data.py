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


TEXT_ONLY = {"conversations": [{"from": "human", "value": "say hi"}, {"from": "gpt", "value": "hi there"}]}


def test_text_only_batch_runs_the_vision_tower(tmp_path, toy_world, processor, tiny_base):
    """A text-only sample gets a zero image (LLaVA's behaviour): every batch, all-text ones too, runs the
    vision tower and projector (their output weighs 0 in the loss), so under ZeRO-3 no rank skips them."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from roillava.model import find_projector
    from roillava.train import LLaVATrainer, TrainingArguments, processed_image_size

    model = LlavaForConditionalGeneration.from_pretrained(tiny_base)
    toy = toy_world["playground"] / "data" / "toy"
    ds = make_dataset(write(tmp_path, [TEXT_ONLY, TEXT_ONLY, GOOD]), toy / "images", processor, model.config)
    collate = DataCollatorForSupervisedDataset(
        processor.tokenizer.pad_token_id, image_size=processed_image_size(processor.image_processor)
    )
    trainer = LLaVATrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))
    projector = find_projector(model)
    for items, present in (([ds[0], ds[1]], [False, False]), ([ds[2], ds[0]], [True, False])):
        batch = collate(items)
        assert batch["pixel_values"].shape == (2, 3, 112, 112)
        assert batch["image_present"].tolist() == present
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in projector.parameters())  # the projector ran
        if not any(present):
            assert all(not p.grad.any() for p in projector.parameters())  # ... with weight 0


def test_modality_lengths_and_grouped_order():
    """LLaVA's `--group_by_modality_length`: each world_size × batch_size group is one modality."""
    import torch

    from roillava.data import ModalityLengthGroupedSampler, modality_length_grouped_indices

    lengths = [5, -3, 7, -2, 9, 4, -8, 6, -1, 2, 3, -4, 8]  # 8 with an image, 5 text-only
    order = modality_length_grouped_indices(lengths, 2, 2, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    full = len(lengths) // 4 * 4
    groups = [order[k : k + 4] for k in range(0, 12, 4)]
    assert all(len({lengths[i] > 0 for i in g}) == 1 for g in groups)  # one modality per step
    assert sum(lengths[i] > 0 for g in groups for i in g) == 8 and full == 12
    for g in groups:  # inside a group: longest first, dealt to even batch totals
        assert sorted(abs(lengths[i]) for i in g)[-1] in (abs(lengths[g[0]]), abs(lengths[g[2]]))
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=2, world_size=2, seed=3)
    first = list(sampler)
    assert list(sampler) == first  # the same epoch replays (resume)
    sampler.set_epoch(1)
    assert sorted(sampler) == sorted(first) and list(sampler) != first


def test_modality_lengths_from_records(tmp_path, processor, model_config):
    ds = make_dataset(write(tmp_path, [GOOD, TEXT_ONLY]), tmp_path, processor, model_config)
    assert ds.modality_lengths == [3, -4]  # "<image>\nq?" + "a"; "say hi" + "hi there"
