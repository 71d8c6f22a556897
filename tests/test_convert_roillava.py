"""Released LLaVA-1.5 / Chain-of-Spot checkpoints and LoRA runs -> llava-hf: same outputs as the original forward."""

from __future__ import annotations

import json

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
    reference_logits,
    reference_projector,
)
from transformers import LlavaForConditionalGeneration

from eval.original_checkpoint import (
    CheckpointError,
    llava_hf_projector_state,
    read_state_dict,
)
from roillava.answer import load_for_inference
from roillava.convert import ROI_CONFIG_FILE, main
from roillava.model import llava_processor

PROMPT = [1, 17, 23, PLACEHOLDER, 40, 41, 42]


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip336")
    return d, clip_tower(d)


@pytest.fixture(scope="module")
def llava15(tmp_path_factory, tower):
    """An original llava-v1.5 checkpoint (sharded .bin + index) and its llava-hf conversion."""
    root = tmp_path_factory.mktemp("llava15")
    projector = mlp_projector_state()
    src, llama = original_llava_dir(
        root / "llava-v1.5-7b", tower[0], projector=projector, config_fields={"image_aspect_ratio": "pad"}
    )
    main(["--from", "llava", "--in", str(src), "--out", str(root / "hf")])
    return src, root / "hf", llama, projector


def _pixels(seed=0):
    return torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_llava15_converts_with_every_key_and_same_logits(llava15, tower):
    src, out, llama, projector = llava15
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    # every original weight is in the converted model, unchanged
    original = read_state_dict(src)
    sd = model.state_dict()
    assert torch.equal(
        sd["model.language_model.layers.0.self_attn.q_proj.weight"],
        original["model.layers.0.self_attn.q_proj.weight"],
    )
    assert torch.equal(sd["lm_head.weight"][:BASE_VOCAB], original["lm_head.weight"])
    assert torch.equal(
        sd["model.multi_modal_projector.linear_2.weight"], original["model.mm_projector.2.weight"]
    )
    assert model.config.projector_hidden_act == "gelu"
    assert model.config.text_config.vocab_size % 64 == 0
    assert model.config.vision_feature_layer == -2
    want = reference_logits(llama, tower[1], lambda x: reference_projector(projector, x), PROMPT, _pixels())
    got = converted_logits(model, PROMPT, _pixels(), image_rows=4)
    # every position (text, image rows, text): the original vocabulary's logits are the original model's
    torch.testing.assert_close(got[:, :BASE_VOCAB], want, atol=1e-5, rtol=1e-4)


def test_llava15_tokenizer_and_processor(llava15):
    src, out, _, _ = llava15
    processor = llava_processor(out, "pad")
    tok = processor.tokenizer
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(src)
    text = "USER: what is the region of interest ASSISTANT:"
    assert tok(text).input_ids == original(text).input_ids  # every original id kept
    assert tok.convert_tokens_to_ids("<image>") == BASE_VOCAB  # appended after the original vocabulary
    saved = json.loads((out / "processor_config.json").read_text())["image_processor"]
    assert saved["do_pad"] is True and saved["crop_size"] == {"height": 28, "width": 28}
    record = json.loads((out / "conversion.json").read_text())
    assert record["image_aspect_ratio"] == "pad" and record["projector"] == "mlp2x_gelu"
    assert load_for_inference(str(out))[1].image_processor.do_pad is True


def test_square_aspect_ratio_is_kept(tmp_path, tower):
    src, _ = original_llava_dir(
        tmp_path / "v1", tower[0], projector=linear_projector_state(), safetensors=True
    )
    main(["--from", "llava", "--in", str(src), "--out", str(tmp_path / "hf")])
    saved = json.loads((tmp_path / "hf" / "processor_config.json").read_text())["image_processor"]
    assert saved["do_pad"] is False  # no image_aspect_ratio in the config: LLaVA's resize + centre crop
    _, processor = load_for_inference(str(tmp_path / "hf"))  # the answerers preprocess as the model did
    assert processor.image_processor.do_pad is False


def test_im_start_end_checkpoint_is_refused_by_the_llava_converter(tmp_path, tower):
    src, _ = original_llava_dir(
        tmp_path / "se",
        tower[0],
        projector=mlp_projector_state(),
        config_fields={"mm_use_im_start_end": True},
    )
    with pytest.raises(SystemExit, match="mm_use_im_start_end is true"):
        main(["--from", "llava", "--in", str(src), "--out", str(tmp_path / "hf")])


def test_linear_projector_full_width_is_exact():
    """1024 -> 4096 (SEAL / LISA): linear_1 + identity act + identity linear_2 equals the original layer."""
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    state = linear_projector_state(inp=1024, out=4096)
    converted, act = llava_hf_projector_state(
        {k.removeprefix("model.mm_projector."): v for k, v in state.items()}
    )
    config = LlavaConfig(projector_hidden_act=act)
    config.vision_config.hidden_size, config.text_config.hidden_size = 1024, 4096
    projector = LlavaMultiModalProjector(config)
    projector.load_state_dict(converted, strict=True)
    x = torch.randn(2, 16, 1024)
    with torch.no_grad():
        torch.testing.assert_close(projector(x), reference_projector(state, x), atol=1e-5, rtol=1e-5)


def test_cos_writes_roi_config_what(tmp_path, tower):
    src, _ = original_llava_dir(
        tmp_path / "cos",
        tower[0],
        projector=mlp_projector_state(),
        config_fields={"image_aspect_ratio": "pad"},
    )
    main(["--from", "cos", "--in", str(src), "--out", str(tmp_path / "hf")])
    roi = json.loads((tmp_path / "hf" / ROI_CONFIG_FILE).read_text())
    assert roi["wording"] == "what"
    assert LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf") is not None


def test_llava_lora_run_equals_merged_original(llava15, tmp_path):
    src, base, llama, projector = llava15
    new_projector = mlp_projector_state(seed=9)
    lora = original_lora_dir(tmp_path / "lora", llama, r=4, alpha=8, non_lora=new_projector)
    main(
        [
            "--from",
            "llava-lora",
            "--in",
            str(tmp_path / "lora"),
            "--out",
            str(tmp_path / "adapter"),
            "--base",
            str(base),
        ]
    )
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.multi_modal_projector.linear_1.weight" in keys
    model, _ = load_for_inference(str(tmp_path / "adapter"))  # base from the adapter config, LoRA merged
    reference = merged_llama(llama, lora, r=4, alpha=8)
    tower = model.model.vision_tower
    want = reference_logits(
        reference, tower, lambda x: reference_projector(new_projector, x), PROMPT, _pixels(1)
    )
    got = converted_logits(model, PROMPT, _pixels(1), image_rows=4)
    torch.testing.assert_close(got[:, :BASE_VOCAB], want, atol=1e-5, rtol=1e-4)


def test_peft_keys_with_adapter_name_are_accepted(llava15, tmp_path):
    _, base, llama, _ = llava15
    original_lora_dir(tmp_path / "lora", llama, adapter_name_in_keys=True)
    main(
        [
            "--from",
            "llava-lora",
            "--in",
            str(tmp_path / "lora"),
            "--out",
            str(tmp_path / "a"),
            "--base",
            str(base),
        ]
    )
    model, _ = load_for_inference(str(tmp_path / "a"))
    assert model.config.text_config.num_hidden_layers == 1


# --- bad input -----------------------------------------------------------------------------------------------------
def test_seal_checkpoint_given_as_llava_names_key_and_layout(tmp_path, tower):
    from original_layouts import perceiver_state

    src, _ = original_llava_dir(
        tmp_path / "seal", tower[0], projector=linear_projector_state(), extra=perceiver_state()
    )
    with pytest.raises(SystemExit, match=r"unexpected key 'model\.mm_projector_object\..*SEAL"):
        main(["--from", "llava", "--in", str(src), "--out", str(tmp_path / "hf")])


def test_missing_key_is_named(tmp_path, tower):
    src, _ = original_llava_dir(tmp_path / "m", tower[0], projector=mlp_projector_state())
    state = read_state_dict(src)
    del state["lm_head.weight"]
    for f in src.glob("pytorch_model*"):
        f.unlink()
    torch.save(state, src / "pytorch_model.bin")
    with pytest.raises(SystemExit, match=r"missing key 'lm_head\.weight'.*LLaVA-1\.5"):
        main(["--from", "llava", "--in", str(src), "--out", str(tmp_path / "hf")])


def test_truncated_shard_is_named(tmp_path, tower):
    src, _ = original_llava_dir(tmp_path / "t", tower[0], projector=mlp_projector_state())
    shard = src / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin: cannot read it"):
        read_state_dict(src)


def test_llava_hf_directory_is_recognised(llava15, tmp_path):
    _, out, _, _ = llava15
    (out / "tokenizer.model").write_bytes(b"")
    (out / "config.json").rename(out / "config.json.bak")
    try:
        with pytest.raises(SystemExit, match="config.json: missing"):
            main(["--from", "llava", "--in", str(out), "--out", str(tmp_path / "x")])
    finally:
        (out / "config.json.bak").rename(out / "config.json")
        (out / "tokenizer.model").unlink()
    from eval.original_checkpoint import split_original

    with pytest.raises(CheckpointError, match="llava-hf checkpoint"):
        split_original(read_state_dict(out), source=str(out), family="LLaVA-1.5")


def test_lora_run_given_as_full_checkpoint_says_which_option(llava15, tmp_path):
    _, _, llama, _ = llava15
    original_lora_dir(tmp_path / "lora", llama)
    (tmp_path / "lora" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="a LoRA run .* --from llava-lora"):
        main(["--from", "cos", "--in", str(tmp_path / "lora"), "--out", str(tmp_path / "o")])


def test_legacy_pickle_shard_reads(tmp_path):
    from eval.original_checkpoint import load_weights_file

    torch.save({"a": torch.ones(2)}, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(load_weights_file(tmp_path / "old.bin")["a"], torch.ones(2))
