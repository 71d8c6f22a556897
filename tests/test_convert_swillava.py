"""Released SEAL weights and the FaST switch LoRA run -> SwiLLaVA: same outputs as the original architecture."""

from __future__ import annotations

import pytest
import torch
from original_layouts import (
    BASE_VOCAB,
    PLACEHOLDER,
    clip_tower,
    converted_logits,
    linear_projector_state,
    merged_llama,
    mlp_projector_state,
    original_llava_dir,
    original_lora_dir,
    perceiver_state,
    reference_logits,
    reference_perceiver,
    reference_projector,
)
from transformers import LlavaForConditionalGeneration

from swillava.convert import main
from swillava.model import SwiConfig, load_switch

PROMPT = [1, 30, 31, PLACEHOLDER, 50, 51]
OBJ = "model.mm_projector_object."


@pytest.fixture(scope="module")
def seal(tmp_path_factory):
    """SEAL's VQA LLM layout (linear projector + perceiver, CLIP at 224 in the real one), converted."""
    root = tmp_path_factory.mktemp("seal")
    tower = clip_tower(root / "clip224")
    projector, perceiver = linear_projector_state(), perceiver_state()
    src, llama = original_llava_dir(
        root / "seal_vqa_7b",
        root / "clip224",
        projector=projector,
        extra=perceiver,
        config_fields={
            "model_type": "llava_search",
            "mm_projector_type": "linear",
            "object_mm_projector_type": "perceiver",
            "image_aspect_ratio": "pad",
        },
    )
    main(["--from", "seal", "--in", str(src), "--out", str(root / "swi")])
    return root / "swi", llama, tower, projector, perceiver


def _pixels(seed=0):
    return torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_seal_loads_with_no_missing_or_unexpected_key(seal):
    out = seal[0]
    _, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    config = SwiConfig.load(out)
    assert config.weights == "full"
    assert (config.object_projector.heads, config.object_projector.dim_head) == (2, 96)
    assert (config.object_projector.depth, config.object_projector.num_latents) == (2, 8)


def test_seal_linear_projector_and_llm_equal_the_original(seal):
    out, llama, tower, projector, _ = seal
    swi, processor = load_switch(out)
    assert swi.core.config.projector_hidden_act == "linear"
    want = reference_logits(llama, tower, lambda x: reference_projector(projector, x), PROMPT, _pixels())
    got = converted_logits(swi.core, PROMPT, _pixels(), image_rows=4)
    torch.testing.assert_close(got[:, :BASE_VOCAB], want, atol=1e-5, rtol=1e-4)
    assert processor.image_processor.do_pad  # SEAL pads to a square (its object boxes live in that frame)
    assert processor.tokenizer.convert_tokens_to_ids("<object>") > BASE_VOCAB


def test_seal_perceiver_equals_the_original(seal):
    out, _, tower, _, perceiver = seal
    swi, _ = load_switch(out)
    with torch.no_grad():
        features = swi.vision_features(_pixels(2))
        got = swi.object_projector(features)
    want = reference_perceiver(perceiver, features, heads=2, prefix=OBJ)
    assert got.shape == (1, 8, 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def llava15_base(tmp_path_factory):
    from roillava.convert import main as roi_convert

    root = tmp_path_factory.mktemp("base")
    clip_tower(root / "clip336")
    src, llama = original_llava_dir(
        root / "llava-v1.5-7b",
        root / "clip336",
        projector=mlp_projector_state(),
        config_fields={"image_aspect_ratio": "pad"},
    )
    roi_convert(["--from", "llava", "--in", str(src), "--out", str(root / "hf")])
    return root / "hf", llama


@pytest.mark.parametrize("perceiver_in", ["pretrain_file", "non_lora"])
def test_fast_release_switch_equals_merged_original(llava15_base, tmp_path, perceiver_in):
    base, llama = llava15_base
    pretrain = perceiver_state(
        seed=11, prefix="model.mm_projector."
    )  # the perceiver-pretrain mm_projector.bin
    in_object_slot = {OBJ + k.removeprefix("model.mm_projector."): v for k, v in pretrain.items()}
    non_lora = in_object_slot if perceiver_in == "non_lora" else {}
    lora = original_lora_dir(tmp_path / "run", llama, r=4, alpha=8, non_lora=non_lora)
    torch.save(pretrain, tmp_path / "mm_projector.bin")
    args = [
        "--from",
        "fast-release",
        "--in",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "sw"),
        "--base",
        str(base),
    ]
    if perceiver_in == "pretrain_file":
        args += ["--perceiver", str(tmp_path / "mm_projector.bin")]
    main(args)
    assert SwiConfig.load(tmp_path / "sw").weights == "lora"
    swi, processor = load_switch(tmp_path / "sw")
    reference = merged_llama(llama, lora, r=4, alpha=8)
    ids = torch.tensor([[1, 30, 31, 50, 51]])
    with torch.no_grad():
        got = swi.core(input_ids=ids).logits[0, :, :BASE_VOCAB]
        want = reference(input_ids=ids).logits[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        features = swi.vision_features(_pixels(3))
        torch.testing.assert_close(
            swi.object_projector(features),
            reference_perceiver(in_object_slot, features, heads=2, prefix=OBJ),
            atol=1e-5,
            rtol=1e-4,
        )
    # `<object>` fits the base's spare embedding rows: the adapter can share the base (fast)
    assert (
        processor.tokenizer.convert_tokens_to_ids("<object>") < swi.core.get_input_embeddings().num_embeddings
    )
    assert (
        swi.core.get_input_embeddings().num_embeddings
        == LlavaForConditionalGeneration.from_pretrained(base).get_input_embeddings().num_embeddings
    )


def test_fast_release_without_perceiver_says_what_to_pass(llava15_base, tmp_path):
    base, llama = llava15_base
    original_lora_dir(tmp_path / "run", llama)
    with pytest.raises(SystemExit, match="pass --perceiver"):
        main(
            [
                "--from",
                "fast-release",
                "--in",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "o"),
                "--base",
                str(base),
            ]
        )


def test_llava_checkpoint_given_as_seal_names_missing_part(tmp_path):
    clip_tower(tmp_path / "clip")
    src, _ = original_llava_dir(tmp_path / "llava", tmp_path / "clip", projector=mlp_projector_state())
    with pytest.raises(SystemExit, match=r"missing keys model\.mm_projector_object\.\*.*LLaVA-1\.5"):
        main(["--from", "seal", "--in", str(src), "--out", str(tmp_path / "o")])
