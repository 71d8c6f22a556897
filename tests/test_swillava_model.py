"""SwiLLaVA's feature merge (0/1/3 objects and text-only in one batch), checkpoints and LoRA round trip."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from swillava.conversation import IGNORE_INDEX
from swillava.data import SealCollator, SealDataset
from swillava.model import (
    OBJECT_PROJECTOR,
    ObjectProjectorConfig,
    SwiConfig,
    add_lora,
    build_switch,
    load_object_projector,
    load_switch,
    set_trainable,
)
from swillava.train import SwiTrainer, TrainingArguments

TINY_PERCEIVER = ObjectProjectorConfig(depth=1, heads=2, dim_head=16, num_latents=8, ff_mult=2)


def tiny_switch(tiny_base):
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(tiny_base)
    processor.image_processor.do_pad = True
    llava = LlavaForConditionalGeneration.from_pretrained(tiny_base).eval()
    config = SwiConfig(base_model=str(tiny_base), object_projector=TINY_PERCEIVER)
    return build_switch(llava, processor.tokenizer, config), processor


@pytest.fixture()
def swi(tiny_base):
    return tiny_switch(tiny_base)


def mixed_batch(swi_model, processor, toy_world, tmp_path):
    """Rows with 0, 1 and 3 objects and a text-only row, from real files through the dataset."""
    toy = toy_world["playground"] / "data" / "toy"
    q1 = "<image>\nAdditional visual information to focus on: <object>.\nWhat shape is the red object?"
    q3 = "<image>\nAdditional visual information to focus on: <object>; <object>; <object>.\nWhat is it?"
    boxes = [[10, 10, 40, 30], [100, 50, 20, 60], [200, 100, 30, 30]]
    records = [
        {"image": "train/000001.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]},
        {"image": "train/000002.jpg", "search": True, "target_instances": [{"name": "red object", "bbox": boxes[0]}],
         "conversations": [{"from": "human", "value": q1}, {"from": "gpt", "value": "star"}]},
        {"image": "train/000003.jpg", "search": True,
         "target_instances": [{"name": f"thing {i}", "bbox": b} for i, b in enumerate(boxes)],
         "conversations": [{"from": "human", "value": q3}, {"from": "gpt", "value": "a cross and more words"}]},
        {"conversations": [{"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "yes"}]},
    ]  # fmt: skip
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    ds = SealDataset(
        str(path),
        str(toy / "images"),
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        layout=swi_model.token_layout(),
        template="v1",
        max_length=512,
    )
    return SealCollator(processor.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])


def runs(mask_row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    out, start = [], None
    for i, v in enumerate(mask_row.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i - start))
            start = None
    return out


def test_image_and_object_rows_land_at_their_tokens(swi, toy_world, tmp_path):
    model, processor = swi
    batch = mixed_batch(model, processor, toy_world, tmp_path)
    ids = batch["input_ids"]
    assert len(set((batch["attention_mask"].sum(1)).tolist())) == 4  # unequal lengths: real padding
    with torch.no_grad():
        embeds = model.embed_multimodal(
            ids,
            batch["pixel_values"],
            batch["image_present"],
            batch["image_long"],
            batch["object_pixel_values"],
            batch["object_present"],
            batch["object_long"],
        )

        def feats(pixels, long):
            f = model.vision_features(pixels[None])
            return (model.mlp_projector(f) if long else model.object_projector(f))[0]

        text = model.core.get_input_embeddings()(ids)
    layout = model.token_layout()
    # row: (image is long, [object crops' long flags]) -- SEAL's training rule
    expected = {0: (True, []), 1: (False, [True]), 2: (True, [False, False, False]), 3: (None, [])}
    for row, (image_long, object_long) in expected.items():
        img_runs, obj_runs = runs(ids[row] == layout.image_id), runs(ids[row] == layout.object_id)
        if image_long is None:
            assert img_runs == [] and not batch["image_present"][row]
        else:
            ((start, n),) = img_runs
            assert n == layout.length(image_long)
            torch.testing.assert_close(
                embeds[row, start : start + n], feats(batch["pixel_values"][row], image_long)
            )
        assert [n for _, n in obj_runs] == [layout.length(lg) for lg in object_long]
        for k, ((start, n), lg) in enumerate(zip(obj_runs, object_long)):
            crop = batch["object_pixel_values"][row, k]
            torch.testing.assert_close(embeds[row, start : start + n], feats(crop, lg))
        visual = (ids[row] == layout.image_id) | (ids[row] == layout.object_id)
        assert (batch["labels"][row][visual] == IGNORE_INDEX).all()
        torch.testing.assert_close(embeds[row][~visual], text[row][~visual])

    out = model(**batch)
    logits = model.llava(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    shift = batch["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), shift.flatten(), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    for proj in (model.mlp_projector, model.object_projector):
        assert all(p.grad is not None for p in proj.parameters())


def test_token_counts_that_do_not_match_the_features_are_refused(swi, toy_world, tmp_path):
    model, processor = swi
    batch = mixed_batch(model, processor, toy_world, tmp_path)
    batch["object_long"][2, 0] = True  # row 2's first object would need 49 rows, its run has 8
    with pytest.raises(ValueError, match="batch row 2: 24 object tokens, but its objects have 65 rows"):
        model(**batch)


def test_lora_and_projectors_save_load_merge_equal_logits(swi, toy_world, tmp_path):
    model, processor = swi
    set_trainable(model, language_model=False, mlp_projector=True, object_projector=True)
    add_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)  # a "trained" adapter and projectors
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(OBJECT_PROJECTOR in n for n in trainable) and any(
        "multi_modal_projector" in n for n in trainable
    )
    model.eval().save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    saved = load_file(tmp_path / "ckpt" / "adapter_model.safetensors")
    assert "base_model.model.model.mm_projector_object.1.latents" in saved
    assert json.loads((tmp_path / "ckpt" / "swillava_config.json").read_text())["weights"] == "lora"

    batch = mixed_batch(model, processor, toy_world, tmp_path)
    with torch.no_grad():
        expected = model(**batch).logits
        merged, _ = load_switch(tmp_path / "ckpt")
        got = merged(**batch).logits
    assert type(merged.llava) is LlavaForConditionalGeneration  # merged, no peft left
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_projector_files_use_seal_keys_and_reload(swi, tmp_path):
    model, _ = swi
    with torch.no_grad():
        for p in model.object_projector.parameters():
            p.add_(1.0)
    model.save_pretrained(tmp_path, projectors_only=(OBJECT_PROJECTOR,))
    saved = load_file(tmp_path / "mm_projector_object.safetensors")
    assert set(saved) == {f"model.mm_projector_object.{k}" for k in model.object_projector.state_dict()}
    # SEAL's perceiver-pretrain layout (model.mm_projector.*) loads too, remapped.
    seal = tmp_path / "mm_projector.bin"
    torch.save({k.replace("_object", ""): v for k, v in saved.items()}, seal)
    for source in (tmp_path / "mm_projector_object.safetensors", seal):
        fresh, _ = tiny_switch(model.swi_config.base_model)
        load_object_projector(fresh, source)
        for k, v in model.object_projector.state_dict().items():
            assert torch.equal(fresh.object_projector.state_dict()[k], v)
    wrong = SwiConfig(
        object_projector=ObjectProjectorConfig(depth=2, heads=2, dim_head=16, num_latents=8, ff_mult=2)
    )
    fresh, processor = tiny_switch(model.swi_config.base_model)
    other = build_switch(
        LlavaForConditionalGeneration.from_pretrained(model.swi_config.base_model), processor.tokenizer, wrong
    )
    with pytest.raises(ValueError, match="mm_projector_object.safetensors: cannot load"):
        load_object_projector(other, tmp_path / "mm_projector_object.safetensors")


def test_mm_projector_lr_applies_to_both_projectors(swi, tmp_path):
    model, processor = swi
    set_trainable(model, language_model=False, mlp_projector=True, object_projector=True)
    add_lora(model, r=4, alpha=8, dropout=0.0)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.1, mm_projector_lr=0.5, report_to=[])
    trainer = SwiTrainer(model=model, args=args, processor=processor, run_config={}, projectors_only=())
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {}
    for group in optimizer.param_groups:
        by_lr.setdefault(group["lr"], []).extend(names[id(p)] for p in group["params"])
    assert set(by_lr) == {0.1, 0.5}
    assert all("lora_" in n for n in by_lr[0.1])
    assert any(OBJECT_PROJECTOR in n for n in by_lr[0.5]) and any(
        "multi_modal_projector" in n for n in by_lr[0.5]
    )
    assert all("modules_to_save" in n for n in by_lr[0.5])


def test_lora_with_frozen_mlp_projector_keeps_it_out_of_the_adapter(swi, tmp_path):
    """`--freeze_mm_mlp_adapter`: the base's MLP projector is shared, so the adapter holds no copy of it."""
    model, _ = swi
    set_trainable(model, language_model=False, mlp_projector=False, object_projector=True)
    add_lora(model, r=4, alpha=8, dropout=0.0, freeze_mlp_projector=True, modules=("q_proj", "v_proj"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not [n for n in trainable if "multi_modal_projector" in n]
    assert any(OBJECT_PROJECTOR in n for n in trainable)
    lora_layers = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_" in n}
    assert lora_layers == {"q_proj", "v_proj"}
    model.llava.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert not [k for k in saved if "multi_modal_projector" in k]
    assert [k for k in saved if OBJECT_PROJECTOR in k]


def test_lora_modules_must_be_language_model_linears():
    from swillava.model import lora_targets

    assert lora_targets(("q_proj",)) == r".*language_model.*\.(q_proj)"
    with pytest.raises(ValueError, match="subset"):
        lora_targets(("fc1",))
    with pytest.raises(ValueError, match="non-empty"):
        lora_targets(())
