"""Released LISA weights and Meta SAM checkpoints -> SegLLaVA: same outputs as the original parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from original_layouts import (
    BASE_VOCAB,
    PLACEHOLDER,
    clip_tower,
    converted_logits,
    linear_projector_state,
    original_llava_dir,
    reference_logits,
    reference_projector,
    reference_text_hidden_fcs,
    text_hidden_fcs_state,
)
from PIL import Image
from test_sam_checkpoint import _assert_loaded, _meta_to_hf, _tiny_config
from transformers import LlavaForConditionalGeneration, SamModel

from segllava.convert import main
from segllava.convert import text_hidden_fcs_state as fcs_heads
from segllava.model import SegConfig, SegLLaVA, build_text_hidden_fcs

LISA_ADDED = {
    "<im_patch>": BASE_VOCAB,
    "<im_start>": BASE_VOCAB + 1,
    "<im_end>": BASE_VOCAB + 2,
    "[SEG]": BASE_VOCAB + 3,
}
PROMPT = [1, 12, 13, PLACEHOLDER, 44, 45]


def tiny_meta_sam(seed: int = 0) -> tuple[SamModel, dict[str, torch.Tensor]]:
    """A tiny SamModel and the same weights in Meta's layout (the names `sam_vit_h_4b8939.pth` uses)."""
    torch.manual_seed(seed)
    model = SamModel(_tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    hf = model.state_dict()
    return model, {meta: hf[name].clone() for meta, name in _meta_to_hf(num_blocks=2).items()}


@pytest.fixture(scope="module")
def lisa(tmp_path_factory):
    root = tmp_path_factory.mktemp("lisa")
    tower = clip_tower(root / "clip224")
    sam, meta = tiny_meta_sam()
    (root / "sam_config.json").write_text(_tiny_config().to_json_string())
    projector, fcs = linear_projector_state(), text_hidden_fcs_state(out_dim=16)
    src, llama = original_llava_dir(
        root / "LISA-7B-v1",
        root / "clip224",
        projector=projector,
        extra=fcs | {f"model.visual_model.{k}": v for k, v in meta.items()},
        added=LISA_ADDED,
        config_fields={
            "architectures": ["LISAForCausalLM"],
            "vision_tower": str(root / "clip224"),
            "mm_use_im_start_end": True,
            "image_aspect_ratio": "square",
            "out_dim": 16,
            "train_mask_decoder": True,
        },
    )
    main(
        [
            "--from",
            "lisa",
            "--in",
            str(src),
            "--out",
            str(root / "seg"),
            "--sam-config",
            str(root / "sam_config.json"),
        ]
    )
    return root / "seg", llama, tower, projector, fcs, sam, meta


def test_lisa_loads_with_no_missing_or_unexpected_key(lisa):
    out = lisa[0]
    _, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    config = SegConfig.load(out)
    assert (config.weights, config.use_mm_start_end, config.image_aspect_ratio, config.out_dim) == (
        "full",
        True,
        "square",
        16,
    )


def test_lisa_token_ids_and_preprocessing_kept(lisa):
    seg = SegLLaVA.from_pretrained(lisa[0])
    tok = seg.processor.tokenizer
    assert {t: tok.convert_tokens_to_ids(t) for t in LISA_ADDED} == LISA_ADDED  # [SEG] keeps its id
    assert seg.seg_token_id == LISA_ADDED["[SEG]"]
    assert tok.convert_tokens_to_ids("<image>") == BASE_VOCAB + 4
    assert not seg.processor.image_processor.do_pad  # LISA: plain CLIP resize + centre crop


def test_lisa_llm_projector_heads_and_sam_equal_the_original(lisa):
    out, llama, tower, projector, fcs, sam, meta = lisa
    seg = SegLLaVA.from_pretrained(out)
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    want = reference_logits(llama, tower, lambda x: reference_projector(projector, x), PROMPT, pixels)
    got = converted_logits(seg.core, PROMPT, pixels, image_rows=4)
    original_vocab = BASE_VOCAB + len(LISA_ADDED)  # LISA's 32004 rows, [SEG] included
    torch.testing.assert_close(got[:, :original_vocab], want, atol=1e-5, rtol=1e-4)
    h = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(seg.text_hidden_fcs[0](h), reference_text_hidden_fcs(fcs, h))
    _assert_loaded(seg.visual_model, sam, meta)


def test_lisa_segments_end_to_end(lisa):
    seg = SegLLaVA.from_pretrained(lisa[0])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    from segllava.inference import prompt_ids, teacher_forced_masks

    question = "Can you segment the dog in this image?"
    ids = prompt_ids(seg, seg.processor.tokenizer, question, "[SEG].")
    image_id = seg.core.config.image_token_id
    first = ids.index(image_id)
    assert ids[first - 1] == LISA_ADDED["<im_start>"] and ids[first + 4] == LISA_ADDED["<im_end>"]
    (masks,) = teacher_forced_masks(seg, seg.processor, [image], [question], "[SEG].")
    assert len(masks) == 1 and masks[0].shape == (40, 56)
    result = seg.segment(image, question, max_new_tokens=4)  # generation runs too
    assert isinstance(result.text, str)


def test_text_hidden_fcs_full_width():
    """LISA-7B's 4096 -> 4096 -> 256 heads load into our module and compute the same."""
    state = text_hidden_fcs_state(hidden=4096, out_dim=256)
    heads = fcs_heads({k.removeprefix("model.text_hidden_fcs."): v for k, v in state.items()}, "lisa")
    module = build_text_hidden_fcs(4096, 256)
    module.load_state_dict({k.removeprefix("text_hidden_fcs."): v for k, v in heads.items()}, strict=True)
    h = torch.randn(2, 4096)
    with torch.no_grad():
        torch.testing.assert_close(module[0](h), reference_text_hidden_fcs(state, h), atol=1e-4, rtol=1e-4)


def test_sam_pth_converts_to_a_sam_directory(tmp_path):
    sam, meta = tiny_meta_sam(seed=3)
    torch.save(
        {**meta, "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}, tmp_path / "sam.pth"
    )
    (tmp_path / "cfg.json").write_text(_tiny_config().to_json_string())
    main(
        [
            "--from",
            "sam",
            "--in",
            str(tmp_path / "sam.pth"),
            "--out",
            str(tmp_path / "sam"),
            "--sam-config",
            str(tmp_path / "cfg.json"),
        ]
    )
    _assert_loaded(SamModel.from_pretrained(tmp_path / "sam").eval(), sam, meta)


def test_truncated_sam_file_is_named(tmp_path):
    _, meta = tiny_meta_sam()
    torch.save(meta, tmp_path / "sam.pth")
    data = (tmp_path / "sam.pth").read_bytes()
    (tmp_path / "sam.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match=r"sam\.pth: cannot read it"):
        main(["--from", "sam", "--in", str(tmp_path / "sam.pth"), "--out", str(tmp_path / "o")])


def test_llava_checkpoint_given_as_lisa_names_missing_part(tmp_path):
    from original_layouts import mlp_projector_state

    clip_tower(tmp_path / "clip")
    src, _ = original_llava_dir(tmp_path / "llava", tmp_path / "clip", projector=mlp_projector_state())
    with pytest.raises(SystemExit, match=r"missing keys model\.text_hidden_fcs\.\*.*LLaVA-1\.5"):
        main(["--from", "lisa", "--in", str(src), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "config.json").exists()  # stopped before writing anything
