"""Meta-layout SAM checkpoints -> transformers.SamModel: renaming, strictness, numerical equivalence."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import SamConfig, SamModel

from segllava.sam_checkpoint import (
    convert_sam_state_dict,
    infer_sam_variant,
    load_sam,
    sam_config_for,
)

TIED = "prompt_encoder.shared_embedding.positional_embedding"  # HF's second name for the Fourier matrix


def _meta_to_hf(num_blocks: int, decoder_layers: int = 2, mask_tokens: int = 4) -> dict[str, str]:
    """Inverse naming written by hand: Meta key (Meta's segment-anything checkpoint layout) -> SamModel key."""
    wb = ("weight", "bias")
    table = {
        "image_encoder.patch_embed.proj.weight": "vision_encoder.patch_embed.projection.weight",
        "image_encoder.patch_embed.proj.bias": "vision_encoder.patch_embed.projection.bias",
        "image_encoder.pos_embed": "vision_encoder.pos_embed",
        "image_encoder.neck.0.weight": "vision_encoder.neck.conv1.weight",
        "image_encoder.neck.1.weight": "vision_encoder.neck.layer_norm1.weight",
        "image_encoder.neck.1.bias": "vision_encoder.neck.layer_norm1.bias",
        "image_encoder.neck.2.weight": "vision_encoder.neck.conv2.weight",
        "image_encoder.neck.3.weight": "vision_encoder.neck.layer_norm2.weight",
        "image_encoder.neck.3.bias": "vision_encoder.neck.layer_norm2.bias",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": "shared_image_embedding.positional_embedding",
        "prompt_encoder.not_a_point_embed.weight": "prompt_encoder.not_a_point_embed.weight",
        "prompt_encoder.no_mask_embed.weight": "prompt_encoder.no_mask_embed.weight",
        "mask_decoder.iou_token.weight": "mask_decoder.iou_token.weight",
        "mask_decoder.mask_tokens.weight": "mask_decoder.mask_tokens.weight",
    }
    for i in range(num_blocks):
        a, b = f"image_encoder.blocks.{i}", f"vision_encoder.layers.{i}"
        table[f"{a}.attn.rel_pos_h"] = f"{b}.attn.rel_pos_h"
        table[f"{a}.attn.rel_pos_w"] = f"{b}.attn.rel_pos_w"
        for p in wb:
            table[f"{a}.norm1.{p}"] = f"{b}.layer_norm1.{p}"
            table[f"{a}.norm2.{p}"] = f"{b}.layer_norm2.{p}"
            table[f"{a}.attn.qkv.{p}"] = f"{b}.attn.qkv.{p}"
            table[f"{a}.attn.proj.{p}"] = f"{b}.attn.proj.{p}"
            table[f"{a}.mlp.lin1.{p}"] = f"{b}.mlp.lin1.{p}"
            table[f"{a}.mlp.lin2.{p}"] = f"{b}.mlp.lin2.{p}"
    for j in range(4):
        table[f"prompt_encoder.point_embeddings.{j}.weight"] = f"prompt_encoder.point_embed.{j}.weight"
    for meta, hf in [
        ("0", "conv1"),
        ("1", "layer_norm1"),
        ("3", "conv2"),
        ("4", "layer_norm2"),
        ("6", "conv3"),
    ]:
        for p in wb:
            table[f"prompt_encoder.mask_downscaling.{meta}.{p}"] = f"prompt_encoder.mask_embed.{hf}.{p}"
    for meta, hf in [("0", "upscale_conv1"), ("1", "upscale_layer_norm"), ("3", "upscale_conv2")]:
        for p in wb:
            table[f"mask_decoder.output_upscaling.{meta}.{p}"] = f"mask_decoder.{hf}.{p}"
    t = "mask_decoder.transformer"
    for p in wb:
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            table[f"{t}.final_attn_token_to_image.{proj}.{p}"] = f"{t}.final_attn_token_to_image.{proj}.{p}"
            for i in range(decoder_layers):
                for attn in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
                    table[f"{t}.layers.{i}.{attn}.{proj}.{p}"] = f"{t}.layers.{i}.{attn}.{proj}.{p}"
        table[f"{t}.norm_final_attn.{p}"] = f"{t}.layer_norm_final_attn.{p}"
        for i in range(decoder_layers):
            for n in range(1, 5):
                table[f"{t}.layers.{i}.norm{n}.{p}"] = f"{t}.layers.{i}.layer_norm{n}.{p}"
            table[f"{t}.layers.{i}.mlp.lin1.{p}"] = f"{t}.layers.{i}.mlp.lin1.{p}"
            table[f"{t}.layers.{i}.mlp.lin2.{p}"] = f"{t}.layers.{i}.mlp.lin2.{p}"
        heads = [f"mask_decoder.output_hypernetworks_mlps.{j}" for j in range(mask_tokens)]
        for head in [*heads, "mask_decoder.iou_prediction_head"]:
            table[f"{head}.layers.0.{p}"] = f"{head}.proj_in.{p}"
            table[f"{head}.layers.1.{p}"] = f"{head}.layers.0.{p}"
            table[f"{head}.layers.2.{p}"] = f"{head}.proj_out.{p}"
    return table


def _tiny_config() -> SamConfig:
    return SamConfig(
        vision_config={
            "hidden_size": 32,
            "output_channels": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
            "window_size": 2,
            "global_attn_indexes": [1],
            "num_pos_feats": 8,
        },
        prompt_encoder_config={
            "hidden_size": 16,
            "image_size": 64,
            "patch_size": 16,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": 16,
            "mlp_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 16,
        },
    )


@pytest.fixture(scope="module")
def source() -> tuple[SamModel, dict[str, torch.Tensor]]:
    """A tiny random SamModel and the same weights in Meta's layout."""
    torch.manual_seed(0)
    model = SamModel(_tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():  # rel-pos / pos-embed start at zero; make every weight distinctive
            p.copy_(torch.randn_like(p) * 0.2)
    hf_state = model.state_dict()
    table = _meta_to_hf(num_blocks=2)
    assert set(table.values()) == set(hf_state) - {TIED}, "test table out of sync with SamModel"
    original = {meta: hf_state[hf].clone() for meta, hf in table.items()}
    return model, original


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.randn(1, 3, 64, 64, generator=g),
        "input_points": torch.tensor([[[[20.0, 30.0], [50.0, 10.0]]]]),
        "input_labels": torch.tensor([[[1, 0]]]),
        "input_boxes": torch.tensor([[[5.0, 5.0, 40.0, 50.0]]]),
    }


def _assert_loaded(loaded: SamModel, source_model: SamModel, original: dict[str, torch.Tensor]) -> None:
    state = loaded.state_dict()
    for meta, hf in _meta_to_hf(num_blocks=2).items():
        assert torch.equal(state[hf], original[meta]), hf
    pe = loaded.shared_image_embedding.positional_embedding
    assert loaded.prompt_encoder.shared_embedding.positional_embedding is pe  # still tied
    with torch.no_grad():
        want, got = source_model(**_inputs()), loaded(**_inputs())
    torch.testing.assert_close(got.pred_masks, want.pred_masks)
    torch.testing.assert_close(got.iou_scores, want.iou_scores)


def test_convert_renames_every_key(source) -> None:
    model, original = source
    converted = convert_sam_state_dict(
        {**original, "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}
    )
    assert set(converted) == set(model.state_dict())
    assert converted[TIED] is converted["shared_image_embedding.positional_embedding"]


def test_load_pth_matches_source_model(source, tmp_path) -> None:
    model, original = source
    path = tmp_path / "sam_tiny.pth"
    torch.save(original, path)
    _assert_loaded(load_sam(str(path), config=_tiny_config()), model, original)


def test_load_from_lisa_checkpoint_prefix(source, tmp_path) -> None:
    model, original = source
    lisa = {f"model.visual_model.{k}": v for k, v in original.items()}
    lisa["model.embed_tokens.weight"] = torch.zeros(4, 2)  # the LLM's weights are not SAM's business
    lisa["model.text_hidden_fcs.0.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "lisa.bin"
    torch.save(lisa, path)
    _assert_loaded(load_sam(str(path), config=_tiny_config()), model, original)


def test_load_safetensors_and_hf_directory(source, tmp_path) -> None:
    model, original = source
    path = tmp_path / "sam_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in original.items()}, str(path))
    _assert_loaded(load_sam(str(path), config=_tiny_config()), model, original)
    model.save_pretrained(tmp_path / "hf")
    _assert_loaded(load_sam(str(tmp_path / "hf")), model, original)


def test_unknown_key_is_named(source, tmp_path) -> None:
    _, original = source
    bad = dict(original)
    bad["image_encoder.blocks.0.attn.qkv_typo.weight"] = bad.pop("image_encoder.blocks.0.attn.qkv.weight")
    with pytest.raises(ValueError, match=r"image_encoder\.blocks\.0\.attn\.qkv_typo\.weight"):
        convert_sam_state_dict(bad)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError, match="qkv_typo"):
        load_sam(str(path), config=_tiny_config())


def test_missing_key_names_file_and_key(source, tmp_path) -> None:
    _, original = source
    partial = {k: v for k, v in original.items() if k != "mask_decoder.iou_token.weight"}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(ValueError, match=r"partial\.pth.*missing \['mask_decoder\.iou_token\.weight'\]"):
        load_sam(str(path), config=_tiny_config())


def test_wrong_config_reports_shapes(source, tmp_path) -> None:
    _, original = source
    path = tmp_path / "sam_tiny.pth"
    torch.save(original, path)
    cfg = _tiny_config()
    cfg.vision_config.global_attn_indexes = [0]  # rel-pos tables of blocks 0 and 1 swap sizes
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.rel_pos_h: file \(3, 16\) vs model \(7, 16\)"):
        load_sam(str(path), config=cfg)
    with pytest.raises(ValueError, match="no SAM preset"):
        load_sam(str(path))  # width 32 / depth 2 is none of Meta's sizes


@pytest.mark.parametrize(
    ("variant", "width", "depth", "heads", "global_idx"),
    [
        ("vit_b", 768, 12, 12, [2, 5, 8, 11]),
        ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
        ("vit_h", 1280, 32, 16, [7, 15, 23, 31]),
    ],
)
def test_presets_match_meta_layout(
    variant: str, width: int, depth: int, heads: int, global_idx: list[int]
) -> None:
    """Full-size skeletons on the meta device: shapes of the released checkpoints, inferred size, complete key coverage."""
    with torch.device("meta"):
        model = SamModel(sam_config_for(variant))
    hf_state = model.state_dict()
    original = {meta: hf_state[hf] for meta, hf in _meta_to_hf(num_blocks=depth).items()}
    assert original["image_encoder.patch_embed.proj.weight"].shape == (width, 3, 16, 16)
    assert original["image_encoder.pos_embed"].shape == (1, 64, 64, width)
    assert original["image_encoder.blocks.0.attn.qkv.weight"].shape == (3 * width, width)
    for i in range(depth):
        rows = 127 if i in global_idx else 27  # 2*64-1 global, 2*14-1 windowed; vit_h: [127|27, 80]
        assert original[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape == (rows, width // heads)
    assert original["image_encoder.neck.0.weight"].shape == (256, width, 1, 1)
    assert original["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape == (2, 128)
    assert original["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape == (
        128,
        256,
    )
    assert original["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape == (2048, 256)
    assert original["mask_decoder.output_hypernetworks_mlps.0.layers.2.weight"].shape == (32, 256)
    assert original["mask_decoder.iou_prediction_head.layers.2.weight"].shape == (4, 256)
    assert infer_sam_variant(original) == variant
    assert set(convert_sam_state_dict(original)) == set(hf_state)
