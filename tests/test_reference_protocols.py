"""Golden tests: our evaluation and training data reproduce the reference code's protocol, token for token
and pixel for pixel. Every expected value is worked out by hand in the comments from what the reference
code does (LLaVA's `preprocess_multimodal`, SEAL's `vstar_bench_eval.py` / `get_patch` / location strings,
Chain-of-Spot's ScienceQA evaluation, LISA's `get_mask_from_json`); eval/README.md states the facts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoConfig, LlavaImageProcessor

import roillava.conversation as roi_conv
import segllava.conversation as seg_conv
import swillava.conversation as swi_conv
from eval.benchmarks import BENCHMARKS, BenchPaths, prepare_sqa, prepare_vstar
from eval.run import build_parser, config_from_args, fast_command
from eval.vstar_bench import (
    VSTAR_DEFAULT_IMAGE_VIEW,
    pad_to_square,
    read_vstar_bench,
    vstar_pixel_values,
)
from fast.config import AgentConfig
from fast.model import read_roi_config
from fast.run import vstar_items
from roillava.answer import build_turns_prompt
from roillava.roi import (
    RoiConfig,
    chain_of_spot_turns,
    parse_roi_box,
    resolve_roi_wording,
    split_instruction,
    stage1_prompt,
    stage2_prompt,
)
from roillava.train import TRAIN_CONFIG_FILE
from roillava.wording import ROI_CONFIG_FILE
from roillava.wording import TRAIN_CONFIG_FILE as RECORDED_IN
from segllava.masks import DataError, reason_seg_mask
from swillava.objects import ObjectInstance, check_box, expand_objects, location_string, patch_bounds

LETTER = "\nAnswer with the option's letter from the given choices directly."


# --- 1. V*Bench: the image the options are scored on ------------------------------------------------------
def test_vstar_default_view_is_seals_unpadded_plain_clip():
    """SEAL reloads the image and scores the options of an unsearched question with
    `image_processor.preprocess(image)`: shortest side resized, centre crop, no padding."""
    assert VSTAR_DEFAULT_IMAGE_VIEW == "unpadded"
    assert AgentConfig(base="b", switch="s", mode="system1").option_image_view == "unpadded"
    # 6x2: columns 0-1 red, 2-3 green, 4-5 blue. Shortest side 2 = the size: no resize; the centre 2x2
    # crop starts at (6 - 2) // 2 = 2, so every pixel is green. No normalisation: values in [0, 1].
    pixels = np.zeros((2, 6, 3), dtype=np.uint8)
    pixels[:, 0:2, 0] = pixels[:, 2:4, 1] = pixels[:, 4:6, 2] = 255
    image = Image.fromarray(pixels)
    ip = LlavaImageProcessor(
        size={"shortest_edge": 2}, crop_size={"height": 2, "width": 2}, do_normalize=False, do_pad=True
    )
    assert ip.do_pad  # the processor pads by itself: the unpadded view must not
    unpadded = vstar_pixel_values(ip, [image], "unpadded")
    assert unpadded.shape == (1, 3, 2, 2)
    assert unpadded[0, 1].eq(1).all() and unpadded[0, 0].eq(0).all() and unpadded[0, 2].eq(0).all()
    # padded: the mean-colour 6x6 square (LLaVA's and SEAL's expand2square), then the same processor
    padded = vstar_pixel_values(ip, [image], "padded")
    fill = tuple(int(m * 255) for m in ip.image_mean)
    reference = ip([pad_to_square(image, fill)], do_pad=False, return_tensors="pt")["pixel_values"]
    assert padded.equal(reference) and not padded.equal(unpadded)
    with pytest.raises(ValueError, match="image view"):
        vstar_pixel_values(ip, [image], "letterbox")


def test_pad_to_square_is_expand2square():
    # CLIP mean (0.48145466, 0.4578275, 0.40821073) x 255 -> int: (122, 116, 104); a 4x2 image goes
    # (4 - 2) // 2 = 1 row down on a 4x4 square.
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    square = np.asarray(pad_to_square(image, (122, 116, 104)))
    assert square.shape == (4, 4, 3)
    assert (square[1:3] == (255, 0, 0)).all()
    assert (square[0] == (122, 116, 104)).all() and (square[3] == (122, 116, 104)).all()
    tall = np.asarray(pad_to_square(Image.new("RGB", (1, 4), (0, 0, 255)), (122, 116, 104)))
    assert (tall[:, 1] == (0, 0, 255)).all() and (tall[:, 0] == (122, 116, 104)).all()  # 1 column right


def test_every_vstar_reader_reads_the_same_questions(toy_world, tmp_path):
    folder = toy_world["playground"] / "data" / "eval" / "vstar_toy"
    bench = read_vstar_bench(folder)
    assert bench.invalid == [] and len(bench.questions) == toy_world["size"].vstar
    prepared = prepare_vstar(BENCHMARKS["vstar"], BenchPaths(folder, folder, folder, tmp_path, "ckpt")).rows
    items = vstar_items(folder)
    assert [r["question_id"] for r in prepared] == [row["question_id"] for row, *_ in items]
    for r, (_, image, question, options), q in zip(prepared, items, bench.questions):
        assert r["text"] == question == q.question and r["options"] == options == q.options
        assert folder / r["image"] == image == q.image and image.is_file()
    # an unusable record: counted by the runner, an error for the agent, named by file either way
    bad = tmp_path / "bench"
    (bad / "direct_attributes").mkdir(parents=True)
    (bad / "direct_attributes" / "x.json").write_text(json.dumps({"question": "q?", "options": ["a"]}))
    assert read_vstar_bench(bad).invalid == [
        f"{bad / 'direct_attributes' / 'x.json'}: 'options' must list at least two answers"
    ]
    with pytest.raises(ValueError, match="x.json: 'options' must list"):
        vstar_items(bad)


def test_vstar_view_is_recorded_and_passed_to_the_agent(tmp_path):
    args = build_parser().parse_args(["vstar", "--model-path", "m", "--mode", "fast", "--switch-path", "s"])
    cfg = config_from_args(args)
    assert cfg.vstar_image_view == "unpadded"
    paths = BenchPaths(tmp_path, tmp_path, tmp_path, tmp_path, "ckpt")
    cmd = fast_command(cfg, BENCHMARKS["vstar"], paths, tmp_path / "1_0.jsonl")
    assert cmd[cmd.index("--option-image-view") + 1] == "unpadded"
    args = build_parser().parse_args(["vstar", "--model-path", "m", "--vstar-image-view", "padded"])
    assert config_from_args(args).vstar_image_view == "padded"


# --- 2. ScienceQA under Chain-of-Spot: the option-letter line after the stage-2 quote only -----------------
def test_chain_of_spot_scienceqa_turns():
    """`model_vqa_science_CoS.py --single-pred-prompt`: qs1 quotes the question alone; qs2 adds
    `'\\n' + "Answer with the option's letter ..."` after its closing quote."""
    q = "Which animal is shown?\nContext: none\nOptions: (A) cat (B) dog"
    turns = chain_of_spot_turns(q, "[0.1, 0.2, 0.5, 0.6]", None, wording="what", instruction=LETTER)
    assert turns == [
        (
            '<image>\nTo answer the question: "Which animal is shown?\nContext: none\nOptions: (A) cat (B) dog",'
            " what is the region of interest in the image?",
            "[0.1, 0.2, 0.5, 0.6]",
        ),
        (
            "The region of interest in the image is <image>\n. Answer the question: "
            '"Which animal is shown?\nContext: none\nOptions: (A) cat (B) dog"'
            "\nAnswer with the option's letter from the given choices directly.",
            None,
        ),
    ]
    # other benchmarks (GQA, TextVQA, ...): their suffix is part of the quoted `text`, no instruction
    assert chain_of_spot_turns(q, "r", None)[1][0].endswith(f'"{q}"')
    assert split_instruction(q + LETTER, LETTER) == (q, LETTER)
    assert split_instruction(q, None) == (q, "")
    with pytest.raises(ValueError, match="does not end with its instruction"):
        split_instruction(q, LETTER)


def test_scienceqa_rows_carry_their_instruction(tmp_path):
    question_file = tmp_path / "llava_test_CQM-A.json"
    question_file.write_text(
        json.dumps(
            [
                {"id": "1", "image": "1/image.png", "conversations": [{"from": "human", "value": "<image>\nQ?\nA. x\nB. y"}]},
                {"id": "2", "conversations": [{"from": "human", "value": "Text only?\nA. x\nB. y"}]},
            ]
        )
    )  # fmt: skip
    rows = prepare_sqa(BENCHMARKS["sqa"], BenchPaths(tmp_path, question_file, tmp_path, tmp_path, "c")).rows
    assert [r["text"] for r in rows] == ["Q?\nA. x\nB. y" + LETTER, "Text only?\nA. x\nB. y" + LETTER]
    assert all(r["instruction"] == LETTER for r in rows)
    assert split_instruction(rows[0]["text"], rows[0]["instruction"]) == ("Q?\nA. x\nB. y", LETTER)


def test_two_stage_prompts_tokenise_as_chain_of_spot(tiny_base, processor):
    model_config = AutoConfig.from_pretrained(tiny_base)
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    q = "Q?\nA. x\nB. y"
    config = RoiConfig(wording="what")
    kw = {"processor": processor, "model_config": model_config, "config": config}
    qs1 = f'<image>\nTo answer the question: "{q}", what is the region of interest in the image?'
    qs2 = f'The region of interest in the image is <image>\n. Answer the question: "{q}"' + LETTER
    roi_text = "[0.1, 0.2, 0.5, 0.6]"
    built = {"tokenizer": processor.tokenizer, "model_config": model_config, "template": "vicuna_v1"}
    assert (
        stage1_prompt(q, image, **kw).input_ids
        == build_turns_prompt([(qs1, None)], [image], **built).input_ids
    )
    stage2 = stage2_prompt(q, image, roi_text, parse_roi_box(roi_text), instruction=LETTER, **kw)
    expected = build_turns_prompt([(qs1, roi_text), (qs2, None)], [image, image], **built)
    assert stage2.input_ids == expected.input_ids


# --- 3. The ROI wording a checkpoint records is the one it is asked with ------------------------------------
def test_roi_wording_follows_the_checkpoint(tmp_path):
    assert RECORDED_IN == TRAIN_CONFIG_FILE  # the file our training writes next to every checkpoint
    ours, converted, unrecorded = tmp_path / "ours", tmp_path / "converted", tmp_path / "cos"
    for d in (ours, converted, unrecorded):
        d.mkdir()
    (ours / TRAIN_CONFIG_FILE).write_text(
        json.dumps({"model": {"version": "v1"}, "data": {"roi_wording": "where"}})
    )
    (converted / "config.json").write_text(json.dumps({"model_type": "llava", "roi_wording": "what"}))
    (unrecorded / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert resolve_roi_wording(ours)[0] == "where"
    assert resolve_roi_wording(converted)[0] == "what"
    assert resolve_roi_wording(unrecorded) == (
        "what",
        "not recorded by the checkpoint: Chain-of-Spot's evaluation wording",
    )
    assert resolve_roi_wording(ours, "what") == ("what", "requested")
    # the agent and the benchmark runner resolve it the same way, and the runner records it
    config, why = read_roi_config(ours, max_new_tokens=8)
    assert (config.wording, config.template) == ("where", "v1") and TRAIN_CONFIG_FILE in why
    assert read_roi_config(converted, max_new_tokens=8)[0].wording == "what"
    # a checkpoint's own prompt settings (roi_config.json) come first; the training-run file is the fallback
    (ours / ROI_CONFIG_FILE).write_text(json.dumps({"wording": "what", "template": "vicuna_v1"}))
    config, why = read_roi_config(ours, max_new_tokens=8)
    assert (config.wording, config.template) == ("what", "vicuna_v1") and ROI_CONFIG_FILE in why
    (ours / ROI_CONFIG_FILE).unlink()
    for roi_dir, wording in ((ours, "where"), (converted, "what"), (unrecorded, "what")):
        args = ["gqa", "--model-path", "m", "--mode", "cos", "--roi-path", str(roi_dir)]
        cfg = config_from_args(build_parser().parse_args(args))
        assert cfg.roi_wording == wording and cfg.roi_wording_source
    args = ["gqa", "--model-path", "m", "--mode", "cos", "--roi-path", str(ours), "--roi-wording", "what"]
    assert config_from_args(build_parser().parse_args(args)).roi_wording == "what"
    # `fast` reads the same record itself; only a requested wording is passed on
    paths = BenchPaths(tmp_path, tmp_path, tmp_path, tmp_path, "c")
    fast_args = ["gqa", "--model-path", "m", "--mode", "fast", "--switch-path", "s", "--roi-path", str(ours)]
    cfg = config_from_args(build_parser().parse_args(fast_args))
    assert cfg.roi_wording == "where"
    assert "--roi-wording" not in fast_command(cfg, BENCHMARKS["gqa"], paths, tmp_path / "a.jsonl")
    cfg = config_from_args(build_parser().parse_args([*fast_args, "--roi-wording", "what"]))
    cmd = fast_command(cfg, BENCHMARKS["gqa"], paths, tmp_path / "a.jsonl")
    assert cmd[cmd.index("--roi-wording") + 1] == "what"
    (converted / "config.json").write_text(json.dumps({"roi_wording": "which"}))
    with pytest.raises(ValueError, match="config.json: ROI prompt wording"):
        resolve_roi_wording(converted)


# --- 4. ReasonSeg ground truth: LISA's get_mask_from_json --------------------------------------------------
def _mask(
    tmp_path: Path, shapes: list[dict], height: int, width: int, *, encoding: str = "utf-8"
) -> np.ndarray:
    path = tmp_path / "a.json"
    path.write_bytes(
        json.dumps({"text": ["x"], "is_sentence": False, "shapes": shapes}, ensure_ascii=False).encode(
            encoding
        )
    )
    return reason_seg_mask(path, height, width)


def test_reason_seg_points_are_truncated_not_rounded(tmp_path):
    # np.int32 truncates toward zero: (1.9, 1.9)-(4.9, 3.9) -> (1, 1)-(4, 3), rows 1-3 x columns 1-4;
    # rounding would give (2, 2)-(5, 4). (-0.7, -0.7)-(2.5, 1.5) -> (0, 0)-(2, 1) (floor would be -1).
    rect = [[1.9, 1.9], [4.9, 1.9], [4.9, 3.9], [1.9, 3.9]]
    expected = np.zeros((6, 7), dtype=np.uint8)
    expected[1:4, 1:5] = 1
    assert np.array_equal(_mask(tmp_path, [{"label": "target", "points": rect}], 6, 7), expected)
    near_origin = [[-0.7, -0.7], [2.5, -0.7], [2.5, 1.5], [-0.7, 1.5]]
    expected = np.zeros((6, 7), dtype=np.uint8)
    expected[0:2, 0:3] = 1
    assert np.array_equal(_mask(tmp_path, [{"label": "target", "points": near_origin}], 6, 7), expected)


def test_reason_seg_order_flag_and_ignore_labels(tmp_path):
    # Equal drawn areas (4x4 = 16 each): argsort([16, 16]) = [0, 1], reversed -> the later-listed "ignore"
    # square is drawn first and the target on top of it, so the overlap (rows/cols 2-3) is 1, not 255.
    a = [[0, 0], [3, 0], [3, 3], [0, 3]]
    b = [[2, 2], [5, 2], [5, 5], [2, 5]]
    mask = _mask(tmp_path, [{"label": "target", "points": a}, {"label": "ignore", "points": b}], 6, 7)
    assert (mask[0:4, 0:4] == 1).all() and mask[4, 4] == 255 and mask[2, 5] == 255 and mask[0, 5] == 0
    # only a label equal to "flag" (any case) is skipped; "flagpole" is a target, "Ignore_me" is 255
    shapes = [
        {"label": "Flag", "points": [[0, 0], [1, 0], [1, 1]]},
        {"label": "flagpole", "points": [[4, 4], [5, 4], [5, 5], [4, 5]]},
        {"label": "Ignore_me", "points": [[0, 4], [1, 4], [1, 5], [0, 5]]},
    ]
    mask = _mask(tmp_path, shapes, 6, 7)
    assert mask[0, 0] == 0 and (mask[4:6, 4:6] == 1).all() and (mask[4:6, 0:2] == 255).all()
    assert int(mask.astype(bool).sum()) == 8
    # cp1252 annotations (LISA's fallback encoding) are read
    mask = _mask(tmp_path, [{"label": "caf\u00e9", "points": a}], 6, 7, encoding="cp1252")
    assert (mask[0:4, 0:4] == 1).all()
    with pytest.raises(DataError, match="a.json: shape 0 .* at least 3 points"):
        _mask(tmp_path, [{"label": "t", "points": [[0, 0], [5, 5]]}], 6, 7)


# --- 5. SEAL's object crops and location strings ----------------------------------------------------------
def test_seal_crop_centre_uses_the_raw_size():
    # get_patch((10, 20, 9.5, 4.5)): ceil -> 10 x 5; centre int(10 + 9.5/2) = int(14.75) = 14 (from the
    # ceiled width: 15), int(20 + 4.5/2) = 22; patch int(10*1.2) = 12 x int(5*1.2) = 6;
    # left 14 - 6 = 8, right 20; top 22 - 3 = 19, bottom 25.
    assert patch_bounds((10, 20, 9.5, 4.5), 100, 100) == (8, 19, 20, 25)
    # integer boxes are unchanged: centre int(10 + 10/2) = 15, 12 wide -> 9..21
    assert patch_bounds((10, 20, 10, 5), 100, 100) == (9, 19, 21, 25)


def test_seal_location_string_of_a_box_outside_the_image():
    # [150, 60, 100, 80] on 200x100: padded side 200, offset (0, 50); x2 = 250/200 -> 1.0 (clipped),
    # y2 = (60 + 50 + 80)/200 = 0.95. The prompt text is built from the raw box.
    box = check_box([150, 60, 100, 80], 200, 100)
    assert location_string(box, 200, 100) == "[0.750,0.550,1.000,0.950]"
    text = "<image>\nAdditional visual information to focus on: <object>.\nq?"
    turns = expand_objects([(text, "a")], [ObjectInstance("cat", box)], 200, 100)
    assert turns[0][0] == (
        "<image>\nAdditional visual information to focus on: cat <object> at location "
        "[0.750,0.550,1.000,0.950].\nq?"
    )
    # a tall image: offset ((200 - 100) // 2, 0) = (50, 0); x1 = (-20 + 50)/200 = 0.15, x2 = (-20 + 50 + 40)/200
    # = 0.35 ("0.350" as Python formats the double 0.35), y2 = (150 + 80)/200 = 1.15 -> 1.0
    box = check_box([-20, 150, 40, 80], 100, 200)
    assert box == (-20.0, 150.0, 40.0, 80.0)
    assert location_string(box, 100, 200) == f"[0.150,0.750,{(-20 + 50 + 40) / 200:.3f},1.000]"


# --- 6. "<image>" placement in training text: LLaVA's preprocess_multimodal -----------------------------
@pytest.mark.parametrize("module", [roi_conv, swi_conv, seg_conv], ids=["roillava", "swillava", "segllava"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # replace every "<image>" with "", strip, prepend "<image>\n", strip
        ("<image> What is it?", "<image>\nWhat is it?"),
        ("<image>\nWhat is it?", "<image>\nWhat is it?"),
        ("<image>\n\n  What is it?  ", "<image>\nWhat is it?"),
        ("What is it? <image>", "<image>\nWhat is it?"),
        ("What <image> is it?", "<image>\nWhat  is it?"),
        ("a <image> b <image>", "<image>\na  b"),
        ("<image>", "<image>"),
        ("  <image>\n", "<image>"),
        ("No image here. ", "No image here. "),
    ],
)
def test_image_placement_is_llavas(module, value, expected):
    assert module.image_first(value) == expected
    turns = module.llava_turns([{"from": "human", "value": value}, {"from": "gpt", "value": "ok"}])
    assert turns == [(expected, "ok")]
