"""Load Meta's original SAM checkpoints (``sam_vit_h_4b8939.pth``, or SAM inside LISA) into ``transformers.SamModel``.

LISA ships SAM in Meta's own module layout; we run SAM through transformers instead, so the weights need a
pure renaming (no tensor is reshaped: HF keeps the fused ``qkv``, the rel-pos tables and Meta's tensor
shapes). Every key is accounted for, because a silently dropped SAM weight only shows up as bad masks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import torch
from transformers import SamConfig, SamModel

# Image-normalisation buffers of Meta's ``Sam`` (ImageNet mean/std in 0-255 units). Non-persistent upstream, so
# the official .pth lacks them, but other dumps may carry them. They are constants, not weights: SamModel has no
# such buffers, normalisation happens in SamProcessor / our preprocessing.
SKIPPED_KEYS = frozenset({"pixel_mean", "pixel_std"})

# Prefixes under which SAM sits inside LISA checkpoints (merged model; raw PEFT/DeepSpeed dump).
LISA_SAM_PREFIXES = ("model.visual_model.", "base_model.model.model.visual_model.")

# Meta's vit_b / vit_l / vit_h image encoders; everything else (1024 px, patch 16, window 14, 256-d prompt
# encoder and mask decoder) matches SamConfig's defaults.
SAM_PRESETS: dict[str, dict[str, object]] = {
    "vit_b": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "global_attn_indexes": [2, 5, 8, 11],
    },
    "vit_l": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "global_attn_indexes": [5, 11, 17, 23],
    },
    "vit_h": {
        "hidden_size": 1280,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "global_attn_indexes": [7, 15, 23, 31],
    },
}

_SEQ = {
    # Meta builds these as nn.Sequential (activations take the missing indices); HF names the modules.
    "image_encoder.neck": {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"},
    "prompt_encoder.mask_downscaling": {
        "0": "conv1",
        "1": "layer_norm1",
        "3": "conv2",
        "4": "layer_norm2",
        "6": "conv3",
    },
    "mask_decoder.output_upscaling": {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"},
}
_NORMS = {"norm1": "layer_norm1", "norm2": "layer_norm2", "norm3": "layer_norm3", "norm4": "layer_norm4"}
_ATTN = (
    r"(?:self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.(?:q_proj|k_proj|v_proj|out_proj)"
)
_PARAM = r"(weight|bias)"

# (pattern on the original key, function building the HF key(s) from the match); first match wins.
_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], list[str]]]
_RULES: list[_Rule] = [
    # --- image encoder
    (
        re.compile(rf"image_encoder\.patch_embed\.proj\.{_PARAM}"),
        lambda m: [f"vision_encoder.patch_embed.projection.{m[1]}"],
    ),
    (re.compile(r"image_encoder\.pos_embed"), lambda m: ["vision_encoder.pos_embed"]),
    (
        re.compile(rf"image_encoder\.blocks\.(\d+)\.(norm1|norm2)\.{_PARAM}"),
        lambda m: [f"vision_encoder.layers.{m[1]}.{_NORMS[m[2]]}.{m[3]}"],
    ),
    (
        re.compile(
            rf"image_encoder\.blocks\.(\d+)\.(attn\.(?:qkv|proj)\.{_PARAM}|attn\.rel_pos_[hw]|mlp\.lin[12]\.{_PARAM})"
        ),
        lambda m: [f"vision_encoder.layers.{m[1]}.{m[2]}"],
    ),
    (
        re.compile(rf"image_encoder\.neck\.([0-3])\.{_PARAM}"),
        lambda m: [f"vision_encoder.neck.{_SEQ['image_encoder.neck'][m[1]]}.{m[2]}"],
    ),
    # --- prompt encoder. Meta's single random-Fourier matrix serves both the prompts and the image-wide
    # positional encoding; SamModel holds it twice (tied), and state_dict() lists both names.
    (
        re.compile(r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix"),
        lambda m: [
            "shared_image_embedding.positional_embedding",
            "prompt_encoder.shared_embedding.positional_embedding",
        ],
    ),
    (
        re.compile(r"prompt_encoder\.point_embeddings\.(\d+)\.weight"),
        lambda m: [f"prompt_encoder.point_embed.{m[1]}.weight"],
    ),
    (
        re.compile(r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight"),
        lambda m: [f"prompt_encoder.{m[1]}.weight"],
    ),
    (
        re.compile(rf"prompt_encoder\.mask_downscaling\.([01346])\.{_PARAM}"),
        lambda m: [f"prompt_encoder.mask_embed.{_SEQ['prompt_encoder.mask_downscaling'][m[1]]}.{m[2]}"],
    ),
    # --- mask decoder
    (re.compile(r"mask_decoder\.(iou_token|mask_tokens)\.weight"), lambda m: [f"mask_decoder.{m[1]}.weight"]),
    (
        re.compile(rf"mask_decoder\.transformer\.layers\.(\d+)\.({_ATTN}|mlp\.lin[12])\.{_PARAM}"),
        lambda m: [f"mask_decoder.transformer.layers.{m[1]}.{m[2]}.{m[3]}"],
    ),
    (
        re.compile(rf"mask_decoder\.transformer\.layers\.(\d+)\.(norm[1-4])\.{_PARAM}"),
        lambda m: [f"mask_decoder.transformer.layers.{m[1]}.{_NORMS[m[2]]}.{m[3]}"],
    ),
    (
        re.compile(
            rf"mask_decoder\.transformer\.final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj)\.{_PARAM}"
        ),
        lambda m: [f"mask_decoder.transformer.final_attn_token_to_image.{m[1]}.{m[2]}"],
    ),
    (
        re.compile(rf"mask_decoder\.transformer\.norm_final_attn\.{_PARAM}"),
        lambda m: [f"mask_decoder.transformer.layer_norm_final_attn.{m[1]}"],
    ),
    (
        re.compile(rf"mask_decoder\.output_upscaling\.([013])\.{_PARAM}"),
        lambda m: [f"mask_decoder.{_SEQ['mask_decoder.output_upscaling'][m[1]]}.{m[2]}"],
    ),
    # MLP heads (``layers.{0..n-1}``) are rewritten by _rename_mlp_heads, which needs each head's depth.
]
_MLP_HEAD = re.compile(
    rf"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.{_PARAM}"
)


def _rename_mlp_heads(keys: list[str]) -> dict[str, str]:
    """Meta's ``MLP.layers.{0..n-1}`` -> HF's ``proj_in``, ``layers.{0..n-3}``, ``proj_out``."""
    depth: dict[str, int] = {}
    for key in keys:
        if m := _MLP_HEAD.fullmatch(key):
            depth[m[1]] = max(depth.get(m[1], 0), int(m[2]) + 1)
    renamed = {}
    for key in keys:
        if m := _MLP_HEAD.fullmatch(key):
            head, i, param = m[1], int(m[2]), m[3]
            name = "proj_in" if i == 0 else "proj_out" if i == depth[head] - 1 else f"layers.{i - 1}"
            renamed[key] = f"{head}.{name}.{param}"
    return renamed


def convert_sam_state_dict(original: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Meta-layout SAM weights (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) to SamModel keys.

    ``pixel_mean``/``pixel_std`` are skipped (see :data:`SKIPPED_KEYS`); any other key that no rule knows raises
    a ValueError listing it, so a foreign or prefixed state dict cannot load half-way.
    """
    keys = [k for k in original if k not in SKIPPED_KEYS]
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    mlp_heads = _rename_mlp_heads(keys)
    for key in keys:
        if key in mlp_heads:
            converted[mlp_heads[key]] = original[key]
            continue
        for pattern, build in _RULES:
            if m := pattern.fullmatch(key):
                for new_key in build(m):
                    converted[new_key] = original[key]
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{len(unknown)} SAM checkpoint key(s) have no SamModel equivalent: {sorted(unknown)}"
        )
    return converted


def sam_config_for(variant: str) -> SamConfig:
    """SamConfig of Meta's ``vit_b`` / ``vit_l`` / ``vit_h``."""
    return SamConfig(vision_config=dict(SAM_PRESETS[variant]))


def infer_sam_variant(original: Mapping[str, torch.Tensor]) -> str:
    """Pick vit_b/l/h from the encoder width (patch-embed channels) and depth (number of blocks)."""
    width_key = "image_encoder.patch_embed.proj.weight"
    if width_key not in original:
        raise ValueError(f"cannot infer the SAM size: no {width_key!r} in the state dict")
    width = original[width_key].shape[0]
    blocks = {m[1] for k in original if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    for name, preset in SAM_PRESETS.items():
        if (preset["hidden_size"], preset["num_hidden_layers"]) == (width, len(blocks)):
            return name
    raise ValueError(f"no SAM preset has width {width} and depth {len(blocks)}; pass a SamConfig explicitly")


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    if path.endswith((".pth", ".pt", ".bin")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path}: expected a flat dict of tensors, got {type(state).__name__}")
        return state
    raise ValueError(f"{path}: unsupported checkpoint type (want a directory, .pth/.pt/.bin or .safetensors)")


def extract_sam_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return Meta-layout SAM keys; from a LISA checkpoint only the ``visual_model`` subtree (the rest is the LLM)."""
    for prefix in LISA_SAM_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def load_sam(path_or_dir: str, config: SamConfig | None = None) -> SamModel:
    """Load SAM from an HF directory, or from a Meta/LISA checkpoint file converted on the fly.

    Files are loaded strictly: a missing, unexpected or mis-shaped key raises a ValueError naming the file and
    the keys (LISA's own loader uses strict=False, which hides truncated or wrong-size checkpoints).
    """
    if os.path.isdir(path_or_dir):
        return (
            SamModel.from_pretrained(path_or_dir)
            if config is None
            else SamModel.from_pretrained(path_or_dir, config=config)
        )
    return sam_from_meta_state(extract_sam_weights(_read_state_dict(path_or_dir)), config, source=path_or_dir)


def sam_from_meta_state(
    original: Mapping[str, torch.Tensor], config: SamConfig | None = None, *, source: str = "SAM weights"
) -> SamModel:
    """A SamModel holding exactly these Meta-layout weights (config inferred for vit_b/l/h); strict."""
    converted = convert_sam_state_dict(original)
    if config is None:
        config = sam_config_for(infer_sam_variant(original))
    with torch.device("meta"):  # no point in random-initialising ~640M parameters we overwrite next
        model = SamModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong_shape = sorted(
        f"{k}: file {tuple(converted[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(converted)
        if tuple(converted[k].shape) != expected[k]
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{source}: SAM weights do not match the SamModel config: missing {missing}, "
            f"unexpected {unexpected}, wrong shape {wrong_shape}"
        )
    model.load_state_dict(converted, strict=True, assign=True)
    model.tie_weights()  # assign=True gave the two positional-embedding names separate Parameters
    return model.eval()
