"""The ROI protocol: box parsing, two images through llava-hf, and the batched, resumable two-stage answerer."""

import copy
import json
from dataclasses import replace

import pytest
import torch

import roillava.roi as roi
from roillava.answer import build_turns_prompt
from roillava.boxes import crop_padded, expand_to_square
from roillava.cos_data import ChainOfSpotDataset
from roillava.data import open_image
from roillava.roi import FULL_IMAGE_BOX, RoiConfig, answer_two_stage, parse_roi_box, roi_answer_file
from roillava.roi_answer import main as roi_answer_main

FULL = FULL_IMAGE_BOX


@pytest.mark.parametrize(
    ("text", "box", "reason"),
    [
        ("[0.1, 0.2, 0.5, 0.6]", (0.1, 0.2, 0.5, 0.6), None),
        ("[0.1,0.2,0.5,0.6]", (0.1, 0.2, 0.5, 0.6), None),
        ("[ 0.1 0.2 0.5 0.6 ]", (0.1, 0.2, 0.5, 0.6), None),
        ("The region is [0.1, 0.2, 0.5, 0.6].", (0.1, 0.2, 0.5, 0.6), None),
        ("[[0.125, 0.25, 0.5, 0.625]] and [0, 0, 1, 1]", (0.125, 0.25, 0.5, 0.625), None),
        ("[0, 0, 1, 1]", (0.0, 0.0, 1.0, 1.0), None),
        ("[-0.2, 0.1, 1.3, 0.9]", (0.0, 0.1, 1.0, 0.9), None),  # clamped
        ("[1e-1, 2E-1, .5, 6e-1]", (0.1, 0.2, 0.5, 0.6), None),
        ("[0.5, 0.2, 0.1, 0.6]", FULL, "inverted box"),
        ("[0.1, 0.6, 0.5, 0.2]", FULL, "inverted box"),
        ("[nan, 0, 1, 1]", FULL, "NaN or infinity"),
        ("[1e309, 0, 1, 1]", FULL, "NaN or infinity"),
        ("[0, -inf, 1, 1]", FULL, "NaN or infinity"),
        ("[0.1, 0.1, 0.1, 0.1]", FULL, "degenerate box (side < 0.02)"),
        ("[0.1, 0.1, 0.11, 0.5]", FULL, "degenerate box (side < 0.02)"),
        ("[1.2, 1.3, 1.5, 1.6]", FULL, "degenerate box (side < 0.02)"),  # outside: clamps to a point
        ("", FULL, "empty answer"),
        ("   \n", FULL, "empty answer"),
        ("[0.1, 0.2, 0.5]", FULL, "not 4 numbers"),
        ("[0.1, 0.2, 0.5, 0.6, 0.7]", FULL, "not 4 numbers"),
        ("[]", FULL, "not 4 numbers"),
        ("[0.1, 0.2, 0.5, 0.6", FULL, "no [x1, y1, x2, y2] list"),
        ("0.1, 0.2, 0.5, 0.6", FULL, "no [x1, y1, x2, y2] list"),
        ("star star star", FULL, "no [x1, y1, x2, y2] list"),
        ("[a, b, c, d]", FULL, "not a number"),
        ("[0.1, 0.2, 0.5, 0x1]", FULL, "not a number"),
        ("[" * 10000 + "0.1, 0.2", FULL, "no [x1, y1, x2, y2] list"),
    ],
)
def test_parse_roi_box(text, box, reason):
    parsed = parse_roi_box(text)
    assert parsed.box == pytest.approx(box)
    assert parsed.ok is (reason is None) and parsed.reason == reason


def test_parse_roi_box_flags_clamping_and_checks_min_side():
    assert parse_roi_box("[-0.2, 0.1, 1.3, 0.9]").clamped
    assert not parse_roi_box("[0.1, 0.2, 0.5, 0.6]").clamped
    assert parse_roi_box("[0.1, 0.1, 0.3, 0.3]", min_side=0.25).reason == "degenerate box (side < 0.25)"
    with pytest.raises(ValueError, match="min_side"):
        parse_roi_box("[0, 0, 1, 1]", min_side=1.5)


@pytest.fixture()
def padded_processor(processor):
    proc = copy.deepcopy(processor)
    proc.image_processor.do_pad = True
    return proc


def test_two_image_features_land_in_order(toy_world, padded_processor, llava):
    """The global view's projected features fill the first image-token run, the crop's the second."""
    toy = toy_world["playground"] / "data" / "toy"
    ds = ChainOfSpotDataset(
        str(toy / "llava_toy_instruct.json"),
        str(toy / "images"),
        roi_data_path=str(toy / "chain-of-spot.json"),
        tokenizer=padded_processor.tokenizer,
        image_processor=padded_processor.image_processor,
        model_config=llava.config,
        template="v1",
        max_length=1024,
    )
    item = ds[0]
    ids, pixels = item["input_ids"][None], item["pixel_values"]
    assert pixels.shape[0] == 2
    captured = {}

    def capture(_module, _args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"].detach()

    hook = llava.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            llava(input_ids=ids, pixel_values=pixels)
            cfg = llava.config
            kw = {
                "vision_feature_layer": cfg.vision_feature_layer,
                "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
            }
            global_feats = llava.get_image_features(pixel_values=pixels[:1], **kw).pooler_output[0]
            crop_feats = llava.get_image_features(pixel_values=pixels[1:], **kw).pooler_output[0]
            text_embeds = llava.get_input_embeddings()(ids)[0]
    finally:
        hook.remove()
    embeds = captured["embeds"][0]
    positions = (ids[0] == cfg.image_token_id).nonzero().flatten()
    first, second = positions[:49], positions[49:]
    assert len(second) == 49 and first[-1] + 1 < second[0]  # two separate runs
    torch.testing.assert_close(embeds[first], global_feats)
    torch.testing.assert_close(embeds[second], crop_feats)
    assert not torch.allclose(global_feats, crop_feats)
    text = ids[0] != cfg.image_token_id
    torch.testing.assert_close(embeds[text], text_embeds[text])


@pytest.fixture(scope="module")
def val(toy_world):
    pg = toy_world["playground"]
    qfile = pg / "data/eval/toy/llava_toy_val.jsonl"
    return [json.loads(line) for line in qfile.read_text().splitlines()], qfile, pg / "data/toy/images"


def test_stage_two_replays_stage_one_exactly(val, padded_processor, llava, monkeypatch):
    """Stage-1 text verbatim as the assistant turn, then the question about the crop."""
    rows, _, images_dir = val
    calls, processors = [], []
    replies = [
        ["The region is [0.25, 0.25, 0.75, 0.75].", "nonsense"],  # stage 1, two image questions
        ["star", "red"],  # stage 2
    ]

    def fake_generate(model, processor, prompts, *, max_new_tokens, logits_processor=None):
        calls.append(prompts)
        processors.append(logits_processor)
        if not prompts[0].images:
            return ["text answer"] * len(prompts)
        return replies[sum(bool(c[0].images) for c in calls) - 1]

    monkeypatch.setattr(roi, "generate", fake_generate)
    imgs = [open_image(images_dir / r["image"]) for r in rows[:2]]
    questions = [r["text"] for r in rows[:2]] + ["What is two plus two?"]
    out = answer_two_stage(llava, padded_processor, questions, [[imgs[0]], [imgs[1]], []])
    text_only, stage1, stage2 = calls
    assert [a.text for a in out] == ["star", "red", "text answer"]
    assert [a.metadata for a in out] == [
        {
            "roi_box": [0.25, 0.25, 0.75, 0.75],
            "roi_text": replies[0][0],
            "fallback": None,
            "constrained_box": True,
        },
        {
            "roi_box": [0.0, 0.0, 1.0, 1.0],
            "roi_text": "nonsense",
            "fallback": "no [x1, y1, x2, y2] list",
            "constrained_box": True,
        },
        {"roi_box": None, "roi_text": None, "fallback": "no image", "constrained_box": None},
    ]
    # Only stage 1 (the box) decodes under the box grammar.
    assert [type(p).__name__ for p in processors] == ["NoneType", "BoxLogitsProcessor", "NoneType"]

    def expected(turns):
        kw = {"tokenizer": padded_processor.tokenizer, "model_config": llava.config, "template": "vicuna_v1"}
        return build_turns_prompt(turns, [], **kw).input_ids

    for i, q in enumerate(questions[:2]):
        ask = f'<image>\nTo answer the question: "{q}", where is the region of interest in the image?'
        assert stage1[i].input_ids == expected([(ask, None)])
        then = f'The region of interest in the image is <image>\n. Answer the question: "{q}"'
        assert stage2[i].input_ids == expected([(ask, replies[0][i]), (then, None)])
        assert stage2[i].images[0] is imgs[i]
    assert stage2[0].images[1].tobytes() == crop_padded(imgs[0], (0.25, 0.25, 0.75, 0.75)).tobytes()
    assert stage2[1].images[1].tobytes() == expand_to_square(imgs[1]).tobytes()  # fallback: whole frame
    assert text_only[0].images == []


def peaked(llava):
    with torch.no_grad():
        llava.lm_head.weight.mul_(20)
    return llava


def test_two_stage_batched_equals_single(val, padded_processor, llava):
    rows, _, images_dir = val
    model = peaked(llava)
    config = RoiConfig(roi_max_new_tokens=5, max_new_tokens=3)
    qs = [r["text"] + " ok" * 3 * i for i, r in enumerate(rows[:2])]  # different lengths: real left padding
    ims = [[open_image(images_dir / r["image"])] for r in rows[:2]]
    batched = answer_two_stage(model, padded_processor, qs, ims, config)
    single = [answer_two_stage(model, padded_processor, [q], [im], config)[0] for q, im in zip(qs, ims)]
    assert batched == single
    # a region-only adapter's answer is its stage-1 region: the same region, no stage 2
    regions = answer_two_stage(model, padded_processor, qs, ims, replace(config, region_only=True))
    assert [(a.text, a.roi_text, a.roi) for a in regions] == [
        (a.roi_text, a.roi_text, a.roi) for a in batched
    ]


def test_random_model_falls_back_and_run_resumes(val, tiny_base, padded_processor, llava, tmp_path):
    """A random model's garbage box is a recorded fallback; a cut-off run resumes via the CLI."""
    rows, _, images_dir = val
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    answers = tmp_path / "a.jsonl"
    config = RoiConfig(roi_max_new_tokens=6, max_new_tokens=3)
    summary = roi_answer_file(
        llava,
        padded_processor,
        str(qfile),
        str(images_dir),
        str(answers),
        config=config,
        batch_size=2,
        model_signature="tiny llava",
        progress=False,
    )
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert summary["answered_now"] == 4 and summary["fallbacks"] == 4 and summary["fallback_rate"] == 1.0
    for a in lines:
        assert set(a["metadata"]) == {"roi_box", "roi_text", "fallback", "constrained_box"}
        assert a["metadata"]["roi_box"] == [0.0, 0.0, 1.0, 1.0] and a["metadata"]["fallback"]
        assert a["metadata"]["fallback"] == parse_roi_box(a["metadata"]["roi_text"]).reason
    # Keep two answers and half a line, as a kill mid-write leaves it; the CLI answers the other two.
    kept = answers.read_text().splitlines(keepends=True)[:2]
    answers.write_text("".join(kept) + kept[0][:20])
    roi_answer_main([
        "--model-path", str(tiny_base), "--question-file", str(qfile), "--image-folder", str(images_dir),
        "--answers-file", str(answers), "--batch-size", "2", "--max-new-tokens", "3",
        "--roi-max-new-tokens", "6", "--device", "cpu",
    ])  # fmt: skip
    ids = [json.loads(line)["question_id"] for line in answers.read_text().splitlines()]
    assert sorted(ids) == sorted(r["question_id"] for r in rows[:4]) and len(ids) == len(set(ids))
    assert ids[:2] == [json.loads(line)["question_id"] for line in kept]
