"""The FaST agent on tiny random checkpoints: one base, adapters by name, the pipeline and its trace.

The checkpoints are written by each sibling's own code (SwiLLaVA `add_lora` + `save_pretrained`,
RoiLLaVA `add_lora` + peft `save_pretrained`) on a copy of the tiny base whose language-model head is
scaled up, so greedy choices are far from ties and float noise between merged and unmerged LoRA cannot
flip them. LoRA and projector weights are perturbed, so every adapter really differs from the base.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    LlavaForConditionalGeneration,
    SamModel,
)

from fast.agent import FastAgent, Request, _Clock
from fast.config import AgentConfig
from fast.model import ROI, SEG, SWITCH, FastModel, TokenConflict, check_token_ids, unique_parameter_count
from fast.trace import Trace, mask_to_rle, rle_to_mask, tight_box
from roillava.answer import build_prompt as build_llava_prompt
from roillava.answer import generate as llava_generate
from roillava.answer import load_for_inference
from roillava.boxes import padded_crop_bounds, paste_region_mask, region_pixel_box
from roillava.model import add_lora as roi_add_lora
from roillava.roi import FULL_IMAGE_BOX, stage1_prompt
from segllava.inference import teacher_forced_masks
from segllava.model import SegConfig, SegLLaVA, build_seg_llava, ensure_seg_tokens
from segllava.sam_checkpoint import load_sam
from segllava.train import SegTrainArgs, set_trainable
from swillava.infer import SwitchAdapter
from swillava.model import ObjectProjectorConfig, SwiConfig, build_switch, load_switch
from swillava.model import add_lora as switch_add_lora
from swillava.objects import MISSING_OBJECTS_PREFIX, patch_bounds
from swillava.switch_pass import option_confidence, option_losses_batch, switch_pass

TINY_PERCEIVER = ObjectProjectorConfig(depth=1, heads=2, dim_head=16, num_latents=8, ff_mult=2)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """A "trained" adapter: nonzero LoRA B and projector copies that differ from the base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@cache
def fast_checkpoints(tiny_base: Path) -> dict[str, Path]:
    """base (peaked head), switch and ROI adapter dirs; built once per session next to the tiny base."""
    root = tiny_base.parent / "fast_checkpoints"
    paths = {"base": root / "system1", "switch": root / "switch", "roi": root / "roi", "seg": root / "seg"}
    base, switch, roi, seg_dir = paths["base"], paths["switch"], paths["roi"], paths["seg"]
    if (seg_dir / "segllava_config.json").is_file():
        return paths
    processor = AutoProcessor.from_pretrained(tiny_base)
    llava = LlavaForConditionalGeneration.from_pretrained(tiny_base)
    with torch.no_grad():
        llava.lm_head.weight.mul_(20)
    llava.save_pretrained(base)
    processor.save_pretrained(base)
    shutil.copytree(tiny_base / "sam", base / "sam", dirs_exist_ok=True)

    torch.manual_seed(0)
    swi = build_switch(
        LlavaForConditionalGeneration.from_pretrained(base),
        processor.tokenizer,
        SwiConfig(base_model=str(base), object_projector=TINY_PERCEIVER),
    )
    switch_add_lora(swi, r=4, alpha=8, dropout=0.0)
    _perturb(swi, 1)
    swi.eval().save_pretrained(switch)
    processor.save_pretrained(switch)

    torch.manual_seed(0)
    roi_model = roi_add_lora(LlavaForConditionalGeneration.from_pretrained(base), r=4, alpha=8, dropout=0.0)
    _perturb(roi_model, 2)
    roi_model.eval().save_pretrained(roi)
    processor.save_pretrained(roi)

    # SegLLaVA: LoRA on q/v, the rows of its new tokens, text_hidden_fcs and SAM's mask decoder
    llava = LlavaForConditionalGeneration.from_pretrained(base)
    new_ids = ensure_seg_tokens(processor.tokenizer, llava, True)
    sam = load_sam(str(base / "sam"))
    seg_config = SegConfig(
        base_model=str(base),
        vision_pretrained=str(base / "sam"),
        out_dim=sam.config.prompt_encoder_config.hidden_size,
    )
    torch.manual_seed(0)
    seg = build_seg_llava(llava, sam, processor.tokenizer, seg_config)
    set_trainable(
        seg, SegTrainArgs(lora_r=4, lora_alpha=8, lora_dropout=0.0, train_embeddings="new_tokens"), new_ids
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in seg.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    seg.eval().save_pretrained(seg_dir)
    processor.save_pretrained(seg_dir)
    return paths


def agent_config(ckpts: dict[str, Path], **kw) -> AgentConfig:
    defaults = {
        "base": str(ckpts["base"]),
        "switch": str(ckpts["switch"]),
        "roi": str(ckpts["roi"]),
        "seg": str(ckpts["seg"]),
        "switch_max_new_tokens": 6,
        "roi_max_new_tokens": 8,
        "answer_max_new_tokens": 4,
    }
    return AgentConfig(**{**defaults, **kw})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is as fast on an idle CPU and far faster on a busy one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpts(tiny_base):
    return fast_checkpoints(tiny_base)


@pytest.fixture(scope="module")
def fast_model(ckpts):
    return FastModel(agent_config(ckpts))


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(0)
    return Image.fromarray((torch.rand(336, 448, 3, generator=g) * 255).byte().numpy())


def agent(fast_model, **kw) -> FastAgent:
    """An agent with other knobs on the already loaded model (the config's checkpoints are the same)."""
    return FastAgent(agent_config(fast_checkpoints_of(fast_model), **kw), fast_model)


def fast_checkpoints_of(fast_model) -> dict[str, Path]:
    c = fast_model.config
    return {"base": Path(c.base), "switch": Path(c.switch), "roi": Path(c.roi), "seg": Path(c.seg)}


QUESTION = "What pattern is on the blue object?"


# --- one model in memory --------------------------------------------------------------------------------
def test_one_base_with_adapters_by_name_and_honest_memory(fast_model):
    m = fast_model
    assert m.adapters == [SWITCH, ROI, SEG]
    # the base is loaded once: every adapter's LoRA sits on the same base weights
    q_proj = m.core.model.language_model.layers[0].self_attn.q_proj
    assert set(q_proj.lora_A) == {SWITCH, ROI, SEG}
    assert m.seg_stage.seg.llava is m.peft and m.switch.model.llava is m.peft
    base = LlavaForConditionalGeneration.from_pretrained(m.config.base)
    sam = SamModel.from_pretrained(Path(m.config.base) / "sam")
    mem = m.memory
    assert mem.llava_plus_sam_params == unique_parameter_count(base) + unique_parameter_count(sam)
    # every resident tensor is counted once, and the parts add up to the total
    parts = mem.breakdown
    assert mem.agent_params == sum(parts.values()) and parts["base"] == unique_parameter_count(base)
    assert parts["seg_heads"] == unique_parameter_count(m.seg_stage.seg.text_hidden_fcs)
    # one SAM, holding the seg adapter's trained mask decoder
    assert m.sam is m.seg_stage.seg.visual_model and parts["sam"] == unique_parameter_count(sam)
    # the object projector is one plain module (no untrained peft original beside the switch's copy)
    assert type(m.core.model.mm_projector_object).__name__ == "Sequential"
    assert set(m.core.model.multi_modal_projector.modules_to_save) == {SWITCH, ROI}
    assert "resident parameters" in mem.summary() and mem.as_dict()["ratio"] == pytest.approx(
        mem.ratio, abs=1e-4
    )


def test_token_ids_each_adapter_was_trained_with(fast_model, ckpts, tmp_path):
    m = fast_model
    tok = m.base_processor.tokenizer
    assert m.token_ids == {
        SWITCH: {"<object>": tok.convert_tokens_to_ids("<object>")},
        ROI: {},
        SEG: {"[SEG]": tok.convert_tokens_to_ids("[SEG]")},
    }
    assert m.switch.model.object_token_id == m.token_ids[SWITCH]["<object>"]
    assert m.seg_stage.seg.seg_token_id == m.token_ids[SEG]["[SEG]"]
    rows = m.embedding_rows
    kw = {"embedding_rows": rows, "image_token_id": m.core.config.image_token_id}
    # two adapters that appended their own token at the same id: allowed, noted
    swapped = AutoProcessor.from_pretrained(ckpts["base"]).tokenizer
    vocab = swapped.get_vocab()
    ids, notes = check_token_ids(
        tok, {SWITCH: tok, SEG: tok}, {SWITCH: ("<object>",), SEG: ("<object>",)}, **kw
    )
    assert ids[SWITCH] == ids[SEG] and len(notes) == 1 and "each stage uses its own tokenizer" in notes[0]
    # a checkpoint that lacks its token, or resized the vocabulary: refused with the reason
    with pytest.raises(TokenConflict, match="the seg checkpoint's tokenizer has no <nothing> token"):
        check_token_ids(tok, {SEG: swapped}, {SEG: ("<nothing>",)}, **kw)
    with pytest.raises(TokenConflict, match="resized the vocabulary"):
        check_token_ids(
            tok, {SEG: swapped}, {}, embedding_rows=len(vocab) - 1, image_token_id=kw["image_token_id"]
        )
    with pytest.raises(TokenConflict, match="<image> id"):
        check_token_ids(tok, {ROI: swapped}, {}, embedding_rows=rows, image_token_id=kw["image_token_id"] + 1)
    # a tokenizer that renumbers ordinary tokens was trained on another vocabulary
    renumbered = tmp_path / "tok"
    swapped.save_pretrained(renumbered)
    raw = json.loads((renumbered / "tokenizer.json").read_text())
    a, b = "▁the", "▁object"
    raw["model"]["vocab"][a], raw["model"]["vocab"][b] = raw["model"]["vocab"][b], raw["model"]["vocab"][a]
    (renumbered / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(TokenConflict, match="gives 2 base tokens other ids"):
        check_token_ids(tok, {ROI: AutoTokenizer.from_pretrained(renumbered)}, {}, **kw)


def test_projector_free_adapters_share_the_base_projector(ckpts, image, tmp_path):
    """Adapters trained with `--freeze_mm_mlp_adapter` bring no projector copy; the stages still equal
    the standalone models, and the memory holds the base's projector once."""
    base = ckpts["base"]
    processor = AutoProcessor.from_pretrained(base)
    torch.manual_seed(0)
    swi = build_switch(
        LlavaForConditionalGeneration.from_pretrained(base),
        processor.tokenizer,
        SwiConfig(base_model=str(base), object_projector=TINY_PERCEIVER),
    )
    switch_add_lora(swi, r=4, alpha=8, dropout=0.0, freeze_mlp_projector=True)
    _perturb(swi, 4)
    swi.eval().save_pretrained(tmp_path / "switch")
    processor.save_pretrained(tmp_path / "switch")
    roi = roi_add_lora(
        LlavaForConditionalGeneration.from_pretrained(base), r=4, alpha=8, dropout=0.0, freeze_projector=True
    )
    _perturb(roi, 5)
    roi.eval().save_pretrained(tmp_path / "roi")
    processor.save_pretrained(tmp_path / "roi")

    m = FastModel(agent_config(ckpts, switch=str(tmp_path / "switch"), roi=str(tmp_path / "roi")))
    assert not hasattr(m.core.model.multi_modal_projector, "modules_to_save")
    parts = m.memory.breakdown
    assert parts["switch_module_copies"] == parts["roi_module_copies"] == 0
    assert m.memory.agent_params == sum(parts.values())

    standalone = SwitchAdapter(*load_switch(tmp_path / "switch", str(base)), max_new_tokens=6)
    m.use(SWITCH)
    evidence = [("blue object", (100, 40, 30, 30))]
    assert m.switch.option_losses(image, QUESTION, ["plain", "checkered"], evidence) == pytest.approx(
        standalone.option_losses(image, QUESTION, ["plain", "checkered"], evidence), abs=1e-4
    )
    assert_roi_stage_equals_merged(m, tmp_path / "roi", image)


def assert_roi_stage_equals_merged(m: FastModel, roi_dir: Path, image: Image.Image):
    """The agent's ROI stage against the adapter merged onto its base; returns what the check used."""
    merged, processor = load_for_inference(str(roi_dir), m.config.base)
    prompt = stage1_prompt(
        QUESTION, image, processor=processor, model_config=merged.config, config=m.roi_config
    )
    ids = torch.tensor([prompt.input_ids])
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    m.use(SWITCH)  # switching away and back must leave nothing behind
    m.use(ROI)
    with torch.no_grad():
        torch.testing.assert_close(
            m.peft(input_ids=ids, pixel_values=pixels).logits,
            merged(input_ids=ids, pixel_values=pixels).logits,
            atol=1e-4,
            rtol=1e-4,
        )
    return merged, processor, prompt, ids, pixels


# --- each stage equals the sibling's standalone model ---------------------------------------------------
def test_switch_stage_equals_standalone_switch(fast_model, ckpts, image):
    standalone = SwitchAdapter(*load_switch(ckpts["switch"], str(ckpts["base"])), max_new_tokens=6)
    items = [(image, QUESTION), (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "What color is the star?")]
    fast_model.use(SEG)  # switching away and back must leave nothing behind
    fast_model.use(SWITCH)
    ours = fast_model.switch
    assert ours.decide_batch(items) == standalone.decide_batch(items)
    evidence = [("blue object", (100, 40, 30, 30))]
    assert ours.answer_with_evidence(image, QUESTION, evidence) == standalone.answer_with_evidence(
        image, QUESTION, evidence
    )

    def logits(adapter):
        batch = adapter._batch([adapter.build_prompt(image, QUESTION, evidence)])
        with torch.no_grad():
            embeds = adapter._embed(batch)
            return adapter.model.llava(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits

    torch.testing.assert_close(logits(ours), logits(standalone), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        torch.tensor(ours.option_losses(image, QUESTION, ["plain", "checkered"])),
        torch.tensor(standalone.option_losses(image, QUESTION, ["plain", "checkered"])),
        atol=1e-4,
        rtol=1e-4,
    )


def test_roi_stage_and_base_equal_standalone_models(fast_model, ckpts, image):
    m = fast_model
    merged, processor, prompt, ids, pixels = assert_roi_stage_equals_merged(m, ckpts["roi"], image)
    assert llava_generate(m.peft, m.roi_processor, [prompt], max_new_tokens=8) == llava_generate(
        merged, processor, [prompt], max_new_tokens=8
    )
    base = LlavaForConditionalGeneration.from_pretrained(m.config.base).eval()
    with m.base_only() as plain, torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids, pixel_values=pixels).logits,
            base(input_ids=ids, pixel_values=pixels).logits,
            atol=1e-5,
            rtol=1e-5,
        )


def test_seg_stage_equals_standalone_segllava(fast_model, ckpts, image):
    standalone = SegLLaVA.from_pretrained(ckpts["seg"])  # its own base (merged) and SAM
    region = image.crop((40, 30, 200, 190))
    names = ["blue object", "red object"]
    questions = [fast_model.config.seg_prompt.format(name=n) for n in names]
    fast_model.use(SWITCH)
    fast_model.use(SEG)
    ours = fast_model.seg_stage.segment([region], [(0, n) for n in names])
    expected = teacher_forced_masks(standalone, standalone.processor, [region, region], questions, "[SEG].")
    for (mask, text), logits in zip(ours, expected):
        assert text == "[SEG]." and mask.shape == (160, 160)
        agree = (mask == (logits[0] > 0).numpy()).mean()
        assert agree > 0.999  # equal up to pixels whose logit is within float noise of 0
    # generated answers: the same text and masks as SegLLaVA's own `segment`
    generate = agent_config(ckpts, seg_decoding="generate", seg_max_new_tokens=4)
    ((mask, text),) = fast_model.seg_stage.segment([region], [(0, names[0])], generate)
    reference = standalone.segment(region, questions[0], max_new_tokens=4)
    assert text == reference.text
    assert (mask is None) == (reference.mask is None)
    if mask is not None:
        assert (mask == reference.mask).mean() > 0.999


# --- the pipeline and its trace -------------------------------------------------------------------------
def test_system1_decision_answers_directly(fast_model, image):
    trace = agent(fast_model).answer(image, QUESTION)
    # a random switch does not write SEAL's sentence: its own words are the System-1 answer
    assert trace.system == "system1" and trace.missing_objects is None
    assert trace.answer == trace.switch_text and trace.answer
    assert trace.roi is None and trace.objects == [] and trace.evidence_prompt is None
    assert set(trace.latency) == {"switch", "total", "batch_share"}
    json.dumps(trace.to_dict())


def test_system2_trace_has_every_field(fast_model, image):
    """roi+seg with every pixel of the region above threshold: each object's box is the region on the image."""
    a = agent(fast_model, mode="system2_always", mask_threshold=float("-inf"))
    trace = a.answer(image, QUESTION, question_id="q7")
    d = json.loads(json.dumps(trace.to_dict()))
    assert d["question_id"] == "q7" and d["mode"] == "system2_always" and d["evidence_mode"] == "roi+seg"
    assert d["system"] == "system2" and d["forced_system2"]
    assert d["switch_text"].startswith(MISSING_OBJECTS_PREFIX)
    assert isinstance(d["missing_objects"], list)
    roi = d["roi"]
    assert set(roi) == {"text", "box", "box_pixels", "ok", "reason", "clamped", "constrained"}
    assert roi["constrained"] is True  # the box grammar is on unless the ROI config turns it off
    assert roi["box_pixels"] == list(region_pixel_box(448, 336, roi["box"]))
    if not roi["ok"]:  # the random ROI adapter rarely writes a box: the fallback is recorded
        assert roi["box"] == [0.0, 0.0, 1.0, 1.0]
        assert any(f["stage"] == "roi" and f["action"] == "whole image as the region" for f in d["fallbacks"])
    assert 1 <= len(d["objects"]) <= a.config.max_objects
    for o in d["objects"]:
        assert o["source"] == "seg" and o["seg_text"] == "[SEG]."
        mask = rle_to_mask(o["mask_rle"])
        assert mask.shape == (336, 448) and mask.sum() == o["mask_area"]
        assert o["box"] == pytest.approx(roi["box_pixels"]) and list(tight_box(mask)) == o["box"]
        assert o["crop_bounds"] == list(patch_bounds(o["box"], 448, 336, 1.2))
    assert d["evidence_prompt"].startswith("<image>\nAdditional visual information to focus on: ")
    assert d["evidence_prompt"].endswith(QUESTION) and d["evidence_prompt"].count("<object>") == len(
        d["objects"]
    )
    assert {"switch", "roi", "seg", "switch_answer", "total"} <= set(d["latency"])
    stages = sum(v for k, v in d["latency"].items() if k not in ("total", "batch_share"))
    assert d["latency"]["total"] == pytest.approx(stages)
    assert d["answer"] and d["option_losses"] is None


@pytest.mark.parametrize("evidence", ["roi", "seg"])
def test_evidence_modes(fast_model, image, evidence):
    trace = agent(fast_model, mode="system2_always", evidence=evidence, mask_threshold=float("-inf")).answer(
        image, QUESTION
    )
    if evidence == "roi":  # the region itself is every object's box; no seg stage
        assert "seg" not in trace.latency and trace.roi is not None
        assert all(o.source in ("roi", "image") and o.mask_rle is None for o in trace.objects)
        assert all(o.box == pytest.approx(trace.roi["box_pixels"]) for o in trace.objects)
    else:  # seg on the whole image; no ROI stage
        assert "roi" not in trace.latency and trace.roi is None
        assert all(o.source == "seg" and o.box == [0.0, 0.0, 448.0, 336.0] for o in trace.objects)


def test_empty_mask_falls_back_to_the_region(fast_model, image):
    trace = agent(fast_model, mode="system2_always", mask_threshold=float("inf")).answer(image, QUESTION)
    region_source = "roi" if trace.roi["ok"] else "image"
    for o in trace.objects:
        assert (
            o.source == region_source
            and o.mask_rle is None
            and o.box == pytest.approx(trace.roi["box_pixels"])
        )
    seg_falls = [f for f in trace.fallbacks if f.stage == "seg"]
    assert [f.object for f in seg_falls] == [o.name for o in trace.objects]
    assert all(f.reason == "empty mask" and f.action == f"{region_source} box" for f in seg_falls)


def test_no_mask_in_the_region_segments_the_whole_image(fast_model, image):
    """Region → pixel, widening to the whole image when the region yields no mask (then the region box)."""
    region = (0.25, 0.25, 0.5, 0.5)
    names = {0: ["blue object"]}
    sam_rows = []
    hook = fast_model.sam.vision_encoder.register_forward_hook(lambda m, i, o: sam_rows.append(i[0].shape[0]))
    try:
        for threshold, retried in ((float("inf"), True), (float("-inf"), False)):
            a = agent(fast_model, mode="system2_always", mask_threshold=threshold)
            trace = Trace("q", QUESTION, None, "system2_always", "roi+seg")
            trace.roi = {"ok": True, "box": list(region)}
            sam_rows.clear()
            masks = a._seg([Request("q", QUESTION, image)], names, [0], {0: region}, _Clock([trace]))
            a._collect_evidence(Request("q", QUESTION, image), trace, names[0], region, masks, 0)
            (o,) = trace.objects
            reasons = [(f.reason, f.action) for f in trace.fallbacks]
            assert sum(sam_rows) == (2 if retried else 1)  # the region, then the whole image
            if retried:
                assert reasons == [
                    ("empty mask in the region", "segmented the whole image"),
                    ("empty mask", "roi box"),
                ]
                assert o.source == "roi" and o.box == list(region_pixel_box(448, 336, region))
            else:  # every region pixel above threshold: the mask is the region, on the image
                assert (
                    reasons == [] and o.source == "seg" and o.box == list(region_pixel_box(448, 336, region))
                )
        off = agent(fast_model, mask_threshold=float("inf"), seg_retry_whole_image=False)
        masks = off._seg([Request("q", QUESTION, image)], names, [0], {0: region}, _Clock([trace]))
        assert masks[(0, 0)].retried is None and not masks[(0, 0)].found
    finally:
        hook.remove()


def test_no_seg_token_generated_falls_back_to_the_region(fast_model, image):
    trace = agent(fast_model, mode="system2_always", seg_decoding="generate", seg_max_new_tokens=1).answer(
        image, QUESTION
    )
    for o in trace.objects:
        if "[SEG]" in o.seg_text:
            assert o.source == "seg" or any(f.reason == "empty mask" for f in trace.fallbacks)
        else:
            assert o.source != "seg" and any(
                f.reason == "no [SEG] token generated" and f.object == o.name for f in trace.fallbacks
            )


def test_object_name_fallbacks(fast_model, image):
    a = agent(fast_model, max_objects=2)
    trace = Trace("q", QUESTION, None, "fast", "roi+seg", missing_objects=[])
    assert a._object_names(trace) == []
    assert trace.fallbacks[-1].reason == "no objects parsed"
    # no name: one fallback object with the region as its box, not segmented
    a._collect_evidence(Request("q", QUESTION, image), trace, [], FULL_IMAGE_BOX, {}, 0)
    (o,) = trace.objects
    assert (
        o.name == a.config.fallback_object_name and o.source == "image" and o.box == [0.0, 0.0, 448.0, 336.0]
    )
    assert o.name in trace.evidence_prompt
    trace = Trace(
        "q", QUESTION, None, "fast", "roi+seg", missing_objects=["cat", "a <object> b", "dog", "cow"]
    )
    assert a._object_names(trace) == ["cat", "dog"]
    assert [f.reason.split(":")[0] for f in trace.fallbacks] == ["unusable object name", "3 objects named"]


def test_multiple_choice_scores_options_by_likelihood(fast_model, image):
    a = agent(fast_model, mode="system2_always")
    options = ["plain", "checkered", "vertical stripes"]
    trace = a.answer(image, QUESTION, options=options)
    assert trace.options == options and len(trace.option_losses) == 3
    assert trace.answer == options[int(np.argmin(trace.option_losses))]
    fast_model.use(SWITCH)
    direct = fast_model.switch.option_losses(
        image, QUESTION, options, [(o.name, o.box) for o in trace.objects]
    )
    assert trace.option_losses == pytest.approx(direct, abs=1e-4)
    # System 1 only: the base model, scored by full recomputation of prompt + option, one option at a time,
    # on the unpadded image through a plain CLIP processor (SEAL's view) by default, else on the padded one
    other = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    base = LlavaForConditionalGeneration.from_pretrained(fast_model.config.base).eval()
    proc = fast_model.base_processor
    for view in ("unpadded", "padded"):
        s1 = agent(fast_model, mode="system1", option_image_view=view).answer_batch(
            [Request("a", QUESTION, image, options=options), Request("b", "Why?", other, options=options[:2])]
        )
        for trace, im in zip(s1, (image, other)):
            pixels = (plain_clip(proc.image_processor) if view == "unpadded" else proc.image_processor)(
                [im], return_tensors="pt"
            )["pixel_values"]
            assert trace.option_losses == pytest.approx(naive_losses(base, proc, trace, im, pixels), abs=1e-4)


def plain_clip(image_processor) -> CLIPImageProcessor:
    """The processor SEAL scores V*Bench options with: shortest side resized, centre crop, no padding."""
    ip = image_processor
    return CLIPImageProcessor(
        size=ip.size, crop_size=ip.crop_size, image_mean=ip.image_mean, image_std=ip.image_std,
        resample=ip.resample, do_convert_rgb=True,
    )  # fmt: skip


def naive_losses(base, proc, trace, im, pixels) -> list[float]:
    """Option losses by full recomputation of prompt + option, one option at a time."""
    assert trace.system == "system1" and trace.switch_text is None
    prompt = build_llava_prompt(
        trace.question, [im], tokenizer=proc.tokenizer, model_config=base.config, template="v1"
    )
    naive = []
    for option in trace.options:
        ids = proc.tokenizer(option, add_special_tokens=False).input_ids + [proc.tokenizer.eos_token_id]
        with torch.no_grad():
            logits = base(input_ids=torch.tensor([prompt.input_ids + ids]), pixel_values=pixels).logits[0]
        n = len(prompt.input_ids)
        naive.append(torch.nn.functional.cross_entropy(logits[n - 1 : -1], torch.tensor(ids)).item())
    return naive


def test_system1_options_are_scored_on_the_unpadded_image_system2_on_the_padded(fast_model, image):
    """SEAL scores a question it does not search on the unpadded image (plain CLIP), one it searched
    with evidence on the padded image; the FaST release never searches. The padded view is an option."""
    options = ["plain", "checkered"]
    fast_model.use(SWITCH)
    sw = fast_model.switch
    unpadded = plain_clip(sw.processor.image_processor)([image], return_tensors="pt")["pixel_values"][0]
    padded = sw.option_losses(image, QUESTION, options)
    for decision in ("prefix", "generate"):
        trace = agent(fast_model, switch_decision=decision).answer(image, QUESTION, options=options)
        assert trace.system == "system1"
        expected = sw.option_losses(image, QUESTION, options, pixel_values=unpadded)
        assert trace.option_losses == pytest.approx(expected, abs=1e-4)
        assert trace.option_losses != pytest.approx(padded, abs=1e-4)  # the view makes a difference
        as_padded = agent(fast_model, switch_decision=decision, option_image_view="padded").answer(
            image, QUESTION, options=options
        )
        assert as_padded.option_losses == pytest.approx(padded, abs=1e-4)
    forced = agent(fast_model, mode="system2_always").answer(image, QUESTION, options=options)
    evidence = [(o.name, o.box) for o in forced.objects]
    assert forced.option_losses == pytest.approx(
        sw.option_losses(image, QUESTION, options, evidence), abs=1e-4
    )


def test_instruction_stays_out_of_the_roi_question(fast_model, image):
    """ScienceQA's option-letter line: the switch reads it after the question, the ROI adapter's
    stage-1 prompt quotes the question without it (Chain-of-Spot's ScienceQA evaluation)."""
    letter = "\nAnswer with the option's letter from the given choices directly."
    seen: list[list[int]] = []
    hook = fast_model.core.get_input_embeddings().register_forward_hook(
        lambda m, i, o: seen.extend(i[0].tolist())
    )
    try:
        trace = agent(fast_model, mode="system2_always", evidence="roi").answer_batch(
            [Request("q", QUESTION, image, instruction=letter)]
        )[0]
    finally:
        hook.remove()
    tok = fast_model.base_processor.tokenizer
    texts = [tok.decode([t for t in ids if 0 <= t < len(tok)]) for ids in seen]
    stage1 = [t for t in texts if "region of interest" in t]
    wording = fast_model.roi_config.wording
    assert stage1 and all(f'question: "{QUESTION}", {wording} is the region' in t for t in stage1)
    assert not any("option's letter" in t for t in stage1)
    assert trace.question == QUESTION + letter
    assert trace.evidence_prompt.endswith(QUESTION + letter)  # the switch reads it after the question


def test_batch_equals_one_by_one(fast_model, image):
    a = agent(fast_model, mode="system2_always")
    other = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    requests = [Request("a", QUESTION, image), Request("b", "What color is the star?", other)]
    batched = a.answer_batch(requests)
    single = [a.answer_batch([r])[0] for r in requests]
    for x, y in zip(batched, single):
        assert (x.answer, x.switch_text, x.roi, x.evidence_prompt) == (
            y.answer,
            y.switch_text,
            y.roi,
            y.evidence_prompt,
        )
        assert [o.mask_rle for o in x.objects] == [o.mask_rle for o in y.objects]


def test_each_image_is_encoded_once_per_question(fast_model, image):
    """Switch probe, ROI, seg and evidence answer share CLIP features; SAM encodes the region once."""
    clip_rows, sam_rows = [], []
    hooks = [
        fast_model.core.model.vision_tower.embeddings.register_forward_hook(
            lambda m, i, o: clip_rows.append(o.shape[0])
        ),
        fast_model.sam.vision_encoder.register_forward_hook(lambda m, i, o: sam_rows.append(i[0].shape[0])),
    ]
    try:
        trace = agent(fast_model, mode="system2_always").answer(
            image, QUESTION, options=["plain", "checkered"]
        )
        n_objects = len(trace.objects)
        # the global image, the region (shared by every object's seg prompt; the padded global image
        # itself when the ROI fell back to the whole image), one crop per evidence object
        region_is_image = trace.roi["box"] == list(FULL_IMAGE_BOX)
        assert sum(clip_rows) == 1 + (not region_is_image) + n_objects and sum(sam_rows) == 1
        # the next question encodes its image again (nothing is remembered outside a question)
        clip_rows.clear()
        agent(fast_model).answer(image, QUESTION)
        assert sum(clip_rows) == 1
    finally:
        for h in hooks:
            h.remove()


def test_missing_image_is_a_recorded_per_question_fallback(fast_model, image):
    a = agent(fast_model, mode="system2_always")
    gone = Request("gone", QUESTION, None, "x/missing.jpg", error="image not found: x/missing.jpg")
    traces = a.answer_batch([gone, Request("ok", QUESTION, image)])
    assert traces[0].answer == "" and traces[0].error == "image not found: x/missing.jpg"
    assert traces[0].fallbacks[0].stage == "input" and traces[1].system == "system2"


def test_geometry_of_regions_and_masks():
    # 448x336: padded side 448, content 56 px down
    assert region_pixel_box(448, 336, (0.0, 0.0, 1.0, 1.0)) == (0.0, 0.0, 448.0, 336.0)
    assert region_pixel_box(448, 336, (0.25, 0.25, 0.5, 0.5)) == (112.0, 56.0, 112.0, 112.0)
    assert padded_crop_bounds(448, 336, (0.25, 0.25, 0.5, 0.5)) == (112, 112, 224, 224)
    region = np.zeros((112, 112), dtype=bool)
    region[10:20, 30:35] = True
    full = paste_region_mask(region, 448, 336, (0.25, 0.25, 0.5, 0.5))
    assert full.shape == (336, 448) and tight_box(full) == (142, 66, 5, 10)
    # a region reaching into the padding keeps only what lies on the image
    top = paste_region_mask(np.ones((112, 112), bool), 448, 336, (0.0, 0.0, 0.25, 0.25))
    assert tight_box(top) == (0, 0, 112, 56)
    with pytest.raises(ValueError, match="region mask is"):
        paste_region_mask(np.ones((5, 5), bool), 448, 336, (0.0, 0.0, 0.25, 0.25))
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:9, 10:17] = True
    assert (rle_to_mask(mask_to_rle(mask)) == mask).all()
    assert tight_box(mask) == (10, 5, 7, 4) and tight_box(np.zeros((3, 3), bool)) is None


def test_config_is_typed_and_checked(tmp_path):
    cfg = AgentConfig(base="b", switch="s", roi="r", seg="g")
    cfg.save(tmp_path / "c.json")
    assert AgentConfig.load(tmp_path / "c.json") == cfg
    for bad, match in [
        ({"evidence": "mask"}, "evidence must be one of"),
        ({"mode": "slow"}, "mode must be one of"),
        ({"seg": None}, "needs a seg adapter"),
        ({"roi": None}, "needs a ROI adapter"),
        ({"seg_prompt": "segment it"}, "must contain"),
        ({"seg_decoding": "beam"}, "teacher or generate"),
    ]:
        with pytest.raises(ValueError, match=match):
            AgentConfig(**{**{"base": "b", "switch": "s", "roi": "r", "seg": "g"}, **bad})
    assert AgentConfig(base="b", switch="s", mode="system1").roi is None  # the baseline needs no adapters


def test_switch_pass_equals_decoding_and_scoring_one_by_one(fast_model, image):
    """One prefill serves the decision, the names, the direct answer and the options, batched over questions;
    each equals the switch decoding / scoring that question alone. (The names' copy constraint is off:
    the "sentence" here is any prefix; `test_name_copy` checks the constraint.)"""
    fast_model.use(SWITCH)
    sw = fast_model.switch
    sw.copy_names = False
    try:
        switch_pass_equals_one_by_one(sw, image)
    finally:
        sw.copy_names = True


def switch_pass_equals_one_by_one(sw, image):
    other = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    prompts = [sw.build_prompt(image, QUESTION), sw.build_prompt(other, "What color is the star? Answer.")]

    def greedy_ids(prompt):
        batch = sw._batch([prompt])
        with torch.no_grad():
            out = sw.model.llava.generate(
                inputs_embeds=sw._embed(batch), attention_mask=batch["attention_mask"], max_new_tokens=3,
                do_sample=False, eos_token_id=sw.tokenizer.eos_token_id, pad_token_id=sw.tokenizer.pad_token_id,
            )  # fmt: skip
        return out[0].tolist()

    greedy = [greedy_ids(p) for p in prompts]
    options = ["plain", "checkered stripes"]

    def check(sentence):
        res = switch_pass(
            sw, prompts, sentence, force=False, max_new_tokens=5, direct_rows=[0], options={1: options}
        )
        assert res.starts == [g[: len(sentence)] == sentence for g in greedy]
        for r, (prompt, im, q) in enumerate(
            zip(prompts, (image, other), (QUESTION, "What color is the star? Answer."))
        ):
            if res.starts[r]:
                after = replace(prompt, input_ids=prompt.input_ids + sentence)
                assert res.continuation[r] == sw.generate([after], 5)[0]
            elif r == 0:
                assert res.direct[0] == sw.generate([prompt], 5)[0]
            else:
                assert res.option_losses[1] == pytest.approx(sw.option_losses(im, q, options), abs=1e-4)
        return res.starts

    # a "sentence" the first prompt's greedy output starts with; one the second's does not
    sentence = greedy[0]
    assert check(sentence)[0]
    assert not check(greedy[1][:-1] + [(greedy[1][-1] + 1) % len(sw.tokenizer)])[1]
    forced = switch_pass(sw, prompts, sentence, force=True, max_new_tokens=5)
    assert forced.starts == [True, True] and forced.direct == {} and forced.option_losses == {}
    assert (
        forced.continuation[1]
        == sw.generate([replace(prompts[1], input_ids=prompts[1].input_ids + sentence)], 5)[0]
    )
    # evidence prompts of different lengths, scored in one batch
    evidence = [[("blue object", (100, 40, 30, 30))], []]
    batched = option_losses_batch(
        sw,
        [sw.build_prompt(image, QUESTION, evidence[0]), sw.build_prompt(other, QUESTION)],
        [options, options[:1]],
    )
    assert batched[0] == pytest.approx(sw.option_losses(image, QUESTION, options, evidence[0]), abs=1e-4)
    assert batched[1] == pytest.approx(sw.option_losses(other, QUESTION, options[:1]), abs=1e-4)


def test_decision_modes_agree(fast_model, image):
    by_pass = agent(fast_model).answer(image, QUESTION)
    by_decoding = agent(fast_model, switch_decision="generate").answer(image, QUESTION)
    assert (by_pass.decision, by_decoding.decision) == ("prefix", "generate")
    assert (by_pass.system, by_pass.answer) == (by_decoding.system, by_decoding.answer)
    options = ["plain", "checkered"]
    mc_pass = agent(fast_model).answer(image, QUESTION, options=options)
    mc_decoding = agent(fast_model, switch_decision="generate").answer(image, QUESTION, options=options)
    assert mc_pass.option_losses == pytest.approx(mc_decoding.option_losses, abs=1e-4)
    assert mc_pass.switch_text is None and mc_pass.system == "system1"  # options need no decoded answer


# --- routing: unsure and garbled System-1 replies go to System 2 ----------------------------------------
def test_confidence_is_the_answers_token_probability_and_routes_below_the_threshold(fast_model, image):
    other = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    requests = [Request("a", QUESTION, image), Request("b", "What color is the square?", other)]
    plain = agent(fast_model).answer_batch(requests)
    assert [t.system for t in plain] == ["system1", "system1"] and all(t.route is None for t in plain)
    # the confidence is the geometric mean of the greedy tokens' probabilities (EOS included), as the
    # standalone switch's own `generate` scores them
    fast_model.use(SWITCH)
    sw = fast_model.switch
    for t, r in zip(plain, requests):
        batch = sw._batch([sw.build_prompt(r.image, r.question)])
        with torch.no_grad():
            out = sw.model.llava.generate(
                inputs_embeds=sw._embed(batch), attention_mask=batch["attention_mask"], max_new_tokens=6,
                do_sample=False, eos_token_id=sw.tokenizer.eos_token_id, pad_token_id=sw.tokenizer.pad_token_id,
                output_scores=True, return_dict_in_generate=True,
            )  # fmt: skip
        tokens = out.sequences[0].tolist()  # with only inputs_embeds: the new tokens alone
        logprobs = [torch.log_softmax(s[0].float(), -1)[k].item() for s, k in zip(out.scores, tokens)]
        assert sw.tokenizer.decode(tokens, skip_special_tokens=True).strip() == t.switch_text
        assert t.confidence == pytest.approx(float(np.exp(np.mean(logprobs))), rel=1e-4)
        assert 0 < t.confidence <= 1
    # a threshold between the two confidences sends only the less sure one to System 2, which then
    # answers it exactly as System 2 always would
    low, high = sorted(plain, key=lambda t: t.confidence)
    threshold = (low.confidence + high.confidence) / 2
    routed = {
        t.question_id: t for t in agent(fast_model, confidence_threshold=threshold).answer_batch(requests)
    }
    always = {t.question_id: t for t in agent(fast_model, mode="system2_always").answer_batch(requests)}
    assert routed[high.question_id].system == "system1" and routed[high.question_id].answer == high.answer
    r, s2 = routed[low.question_id], always[low.question_id]
    assert (r.system, r.route, r.forced_system2) == ("system2", "low_confidence", False)
    assert r.missing_objects == s2.missing_objects and r.answer == s2.answer
    assert r.evidence_prompt == s2.evidence_prompt and "switch" in r.latency and "roi" in r.latency


def test_option_margin_routes_multiple_choice(fast_model, image):
    options = ["plain", "checkered", "vertical stripes"]
    for view in ("padded", "unpadded"):  # scored in the shared pass, or on their own view first
        plain = agent(fast_model, option_image_view=view).answer(image, QUESTION, options=options)
        assert plain.system == "system1"
        probs = np.sort(np.exp(-np.array(plain.option_losses)) / np.exp(-np.array(plain.option_losses)).sum())
        assert plain.confidence == pytest.approx(probs[-1] - probs[-2], abs=1e-6)
        assert option_confidence(plain.option_losses) == plain.confidence
        above = min(1.0, plain.confidence + 1e-3)
        up = agent(
            fast_model, option_image_view=view, confidence_threshold=above, confidence_option_counts=[3]
        )
        routed = up.answer(image, QUESTION, options=options)
        # routing applies only to the configured numbers of options (here 3)
        elsewhere = agent(
            fast_model, option_image_view=view, confidence_threshold=above, confidence_option_counts=[0, 2, 4]
        ).answer(image, QUESTION, options=options)
        assert (elsewhere.system, elsewhere.route, elsewhere.answer) == ("system1", None, plain.answer)
        assert elsewhere.confidence == pytest.approx(plain.confidence, abs=1e-6)
        s2 = agent(fast_model, mode="system2_always", option_image_view=view).answer(
            image, QUESTION, options=options
        )
        assert (routed.system, routed.route) == ("system2", "low_confidence")
        assert (
            routed.option_losses == pytest.approx(s2.option_losses, abs=1e-5) and routed.answer == s2.answer
        )
        down = agent(
            fast_model, option_image_view=view, confidence_threshold=max(0.0, plain.confidence - 1e-3)
        )
        assert down.answer(image, QUESTION, options=options).system == "system1"
    assert option_confidence([0.7]) == 1.0


def test_suffix_is_never_added_twice(fast_model, image):
    suffix = "\nAnswer the question using a single word or phrase."
    a = agent(fast_model, question_suffix=suffix)
    bare, suffixed = a.answer(image, QUESTION), a.answer(image, QUESTION + suffix)
    assert (bare.switch_text, bare.answer, bare.confidence) == (
        suffixed.switch_text, suffixed.answer, suffixed.confidence,
    )  # fmt: skip
    assert a._question(Request("x", QUESTION + suffix + "  ", None)).count(suffix.strip()) == 1


def test_confidence_threshold_is_checked():
    with pytest.raises(ValueError, match="confidence_threshold must be in"):
        AgentConfig(base="b", switch="s", mode="system1", confidence_threshold=1.5)
    with pytest.raises(ValueError, match="confidence_option_counts must be numbers of options"):
        AgentConfig(base="b", switch="s", mode="system1", confidence_option_counts=[4, -1])
    with pytest.raises(ValueError, match="needs switch_decision 'prefix'"):
        AgentConfig(
            base="b", switch="s", mode="system1", switch_decision="generate", confidence_threshold=0.2
        )


def test_vision_memo_encodes_each_distinct_row_once_and_returns_the_towers_output():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from fast.vision_cache import VisionMemo

    torch.manual_seed(0)
    tower = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         image_size=32, patch_size=16)
    ).eval()  # fmt: skip
    a, b, c = torch.randn(3, 3, 32, 32)
    batch = torch.stack([a, b, a, c, b])
    expected = tower(batch, output_hidden_states=True).hidden_states[-2]
    memo = VisionMemo(tower, keep_layers=[-2])
    with torch.no_grad(), memo.scope():
        first = tower(batch)
        assert memo.encoded_rows == 3  # a, b and c, each once within the call
        again = tower(torch.stack([c, a]))
        assert memo.encoded_rows == 3  # and never again inside the scope
    torch.testing.assert_close(first.hidden_states[-2], expected)
    torch.testing.assert_close(again.hidden_states[-2], expected[[3, 0]])
    assert first.hidden_states[0] is None  # layers nobody selects are not kept
