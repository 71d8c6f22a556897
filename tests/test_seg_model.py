"""SegLLaVA wiring on the tiny base: [SEG] positions, image placement, padding invariance, loss weights, SAM I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from segllava.conversation import conversation_segments, tokenize_segments
from segllava.losses import SegLossWeights
from segllava.model import SegConfig, build_seg_llava, ensure_seg_tokens, load_processor, seg_token_positions
from segllava.sam_checkpoint import load_sam
from segllava.sam_io import postprocess_masks, resized_longest_side, sam_preprocess


@pytest.fixture(scope="module")
def seg(tiny_base):
    processor = load_processor(tiny_base, "pad")
    llava = LlavaForConditionalGeneration.from_pretrained(tiny_base)
    ensure_seg_tokens(processor.tokenizer, llava, use_mm_start_end=True)
    sam = load_sam(str(tiny_base / "sam"))
    config = SegConfig(base_model=str(tiny_base), out_dim=sam.config.prompt_encoder_config.hidden_size)
    torch.manual_seed(0)
    model = build_seg_llava(llava, sam, processor.tokenizer, config, SegLossWeights(1.0, 2.0, 0.5)).eval()
    model.processor = processor
    return model


def _images(n: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(3)
    sizes = [(96, 64), (64, 80), (72, 72)]
    return [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()) for w, h in sizes[:n]]


def _rows(seg, turns_per_row):
    tok = seg.processor.tokenizer
    return [tokenize_segments(conversation_segments(turns), tok, seg.layout) for turns in turns_per_row]


def _pad(rows, pad_id: int, left: bool):
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), pad_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, (i, lab) in enumerate(rows):
        sl = slice(length - len(i), length) if left else slice(0, len(i))
        ids[r, sl], labels[r, sl], mask[r, sl] = torch.tensor(i), torch.tensor(lab), 1
    return ids, labels, mask


def _batch(seg, images, rows, image_run_index, left: bool):
    ids, labels, mask = _pad(rows, seg.processor.tokenizer.pad_token_id, left)
    prepared = [sam_preprocess(im, seg.sam_image_size) for im in images]
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "pixel_values": seg.processor.image_processor(images, return_tensors="pt")["pixel_values"],
        "image_run_index": torch.tensor(image_run_index),
        "sam_pixel_values": torch.stack([p.pixel_values for p in prepared]),
        "resized_sizes": torch.tensor([p.resized_size for p in prepared]),
        "original_sizes": torch.tensor([p.original_size for p in prepared]),
    }


# Row 0 shows image 0 and asks for one mask; row 1 shows images 0 then 1 and gets two [SEG]s, both after image 1.
TURNS = [
    [("<image>\nCan you segment the red object in this image?", "Sure, [SEG].")],
    [("<image>\nThis one. <image>\nPlease segment the blue object in this image.", "It is [SEG] and [SEG].")],
]


def test_seg_token_positions_two_images_three_segs_left_and_right_padding(seg) -> None:
    rows = _rows(seg, TURNS)
    seg_id = seg.seg_token_id
    for left in (False, True):
        ids, _, _ = _pad(rows, seg.processor.tokenizer.pad_token_id, left)
        where = seg_token_positions(ids, seg_id)
        assert where[:, 0].tolist() == [0, 1, 1]
        assert all(ids[r, p] == seg_id for r, p in where.tolist())
        pad = [ids.shape[1] - len(i) if left else 0 for i, _ in rows]
        expected = [(r, pad[r] + p) for r, (i, _) in enumerate(rows) for p, t in enumerate(i) if t == seg_id]
        assert [tuple(x) for x in where.tolist()] == expected
        # row 1's [SEG]s follow its second image run: they are decoded on image 1
        assert seg.seg_image_index(ids, where, torch.tensor([0, 0, 1])).tolist() == [0, 1, 1]


def test_masks_and_states_do_not_depend_on_padding_side(seg) -> None:
    images = _images(2)
    rows = _rows(seg, TURNS)
    with torch.no_grad():
        right = seg(**_batch(seg, images, rows, [0, 0, 1], left=False))
        left = seg(**_batch(seg, images, rows, [0, 0, 1], left=True))
        single = seg(**_batch(seg, images, rows[1:], [0, 1], left=False))
    assert [m.shape for m in right.pred_masks] == [(1, 64, 96), (2, 80, 64)]
    for a, b in zip(right.pred_masks, left.pred_masks):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(right.pred_masks[1], single.pred_masks[0], atol=1e-4, rtol=1e-4)


def test_image_features_go_to_their_runs(seg) -> None:
    """Our scatter equals llava-hf's own placement (one image per row, image repeated per conversation)."""
    images = _images(2)
    rows = _rows(seg, [TURNS[0], [("<image>\nWhat is the red object?", "[SEG].")]])
    batch = _batch(seg, images, rows, [1, 0], left=False)
    with torch.no_grad():
        ours = seg.embed(batch["input_ids"], batch["pixel_values"], batch["image_run_index"])
        theirs = seg.core(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"][[1, 0]],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        ).hidden_states[0]
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(ValueError, match="image tokens"):
        seg.embed(batch["input_ids"], batch["pixel_values"], torch.tensor([0]))


def test_loss_is_weighted_sum_and_checks_mask_count(seg) -> None:
    images = _images(2)
    rows = _rows(seg, TURNS)
    batch = _batch(seg, images, rows, [0, 0, 1], left=False)
    g = torch.Generator().manual_seed(0)
    gt = [
        (torch.rand(1, 64, 96, generator=g) > 0.7).float(),
        (torch.rand(2, 80, 64, generator=g) > 0.5).float(),
    ]
    out = seg(**batch, gt_masks=gt)
    want = 1.0 * out.ce_loss + 2.0 * out.bce_loss + 0.5 * out.dice_loss
    torch.testing.assert_close(out.loss, want)
    assert out.bce_loss > 0 and out.dice_loss > 0 and out.ce_loss > 0
    with pytest.raises(ValueError, match="conversation 1: 2 \\[SEG\\] tokens but 1 gt masks"):
        seg(**batch, gt_masks=[gt[0], gt[1][:1]])


def test_sam_preprocess_and_postprocess_round_trip() -> None:
    assert resized_longest_side(480, 640, 1024) == (768, 1024)
    assert resized_longest_side(333, 500, 1024) == (682, 1024)  # 681.98 -> int(x + 0.5)
    image = Image.new("RGB", (100, 60), (123, 116, 103))
    prepared = sam_preprocess(image, 64)
    assert prepared.resized_size == (38, 64) and prepared.original_size == (60, 100)
    assert prepared.pixel_values.shape == (3, 64, 64)
    assert prepared.pixel_values[:, 38:].abs().max() == 0  # zero padding below the image
    red = torch.full((38, 64), (123 - 123.675) / 58.395)  # (value - mean) / std, in 0-255 units
    torch.testing.assert_close(prepared.pixel_values[0, :38], red)
    # A mask drawn in the padded 16x16 low-res frame comes back at the original size, in the same place.
    low = torch.full((1, 16, 16), -10.0)
    low[0, 2:6, 4:12] = 10.0  # rows 2-6 of the 9.5 valid rows, columns 4-12 of 16
    mask = postprocess_masks(low, 64, (38, 64), (60, 100))[0] > 0
    assert mask.shape == (60, 100)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert 10 <= ys.min() <= 14 and 34 <= ys.max() <= 39
    assert 23 <= xs.min() <= 27 and 72 <= xs.max() <= 77


def test_generated_seg_matches_teacher_forcing_and_chat_writes_pngs(seg, tmp_path) -> None:
    """Greedy decoding (left-padded batch) uses the state that emitted [SEG]: the teacher-forced one for "[SEG]."."""
    from project_scripts import load_script

    chat_once = load_script("SegLLaVA/chat.py").chat_once

    from segllava.inference import generate_masks, prompt_ids, teacher_forced_masks

    images = _images(2)
    questions = ["What is the red object in this image? Please output segmentation mask.", "Segment it."]
    tok = seg.processor.tokenizer
    rows = [prompt_ids(seg, tok, q) for q in questions]
    assert len(rows[0]) != len(rows[1])  # so the batch is really left-padded
    head = seg.core.lm_head
    saved = head.weight.detach().clone()
    try:
        with torch.no_grad():
            # Make [SEG] the first answer token, as training would: raise its row along the last prompt states.
            ids = torch.tensor([rows[0]])
            embeds = seg.embed(
                ids,
                seg.processor.image_processor(images[:1], return_tensors="pt")["pixel_values"],
                torch.tensor([0]),
            )
            last = seg.language_forward(embeds, torch.ones_like(ids)).hidden_states[-1][0, -1]
            head.weight[seg.seg_token_id] += 200 * last / last.norm() ** 2
            results = generate_masks(seg, seg.processor, images, questions, max_new_tokens=2)
            forced = teacher_forced_masks(seg, seg.processor, images, questions, "[SEG].")
            assert all(r.text.startswith("[SEG]") for r in results), [r.text for r in results]
            for result, logits in zip(results, forced):
                assert len(result.masks) >= 1
                assert result.masks[0].shape == tuple(logits[0].shape)
                assert (result.masks[0] != (logits[0] > 0).numpy()).mean() < 1e-3
            image_path = tmp_path / "in.png"
            images[0].save(image_path)
            written = chat_once(seg, str(image_path), questions[0], tmp_path / "vis", max_new_tokens=1)
    finally:
        with torch.no_grad():
            head.weight.copy_(saved)
    mask_png, overlay_png = written
    mask = np.asarray(Image.open(mask_png))
    assert mask.shape == (64, 96) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(overlay_png).size == (96, 64)


def test_training_model_is_the_same_whatever_ran_before(tiny_base):
    """`train_ds.py` builds its trainable weights (new token rows, LoRA, head) from `--seed` alone, not
    from whatever the process drew before: two same-seed runs start from equal weights."""
    from transformers import HfArgumentParser

    from segllava.train import SegTrainArgs, build_model, set_trainable

    flags = [f"--version={tiny_base}", f"--vision_pretrained={tiny_base / 'sam'}", "--precision=fp32"]
    flags += ["--train_embeddings=new_tokens", "--train_sam_encoder", "--seed=3"]
    (args,) = HfArgumentParser(SegTrainArgs).parse_args_into_dataclasses(args=flags)
    built = []
    for earlier_draws in (1, 2):
        torch.manual_seed(earlier_draws)
        torch.rand(earlier_draws)
        model, _, new_ids = build_model(args)
        set_trainable(model, args, new_ids)
        built.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    a, b = built
    assert a.keys() == b.keys() and any("lora_A" in n for n in a)
    assert [n for n in a if not torch.equal(a[n], b[n])] == []
