"""SEAL object projector: checkpoint key layout, forward semantics, key-remapping helpers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from swillava.resampler import (
    PerceiverAttention,
    PerceiverResampler,
    build_object_projector,
    object_projector_state_from_checkpoint,
    remap_perceiver_pretrain_keys,
)


def _expected_seal_keys() -> dict[str, tuple[int, ...]]:
    """model.mm_projector_object.* sub-keys of craigwu/seal_vqa_7b (the released checkpoint's key layout), H=4096."""
    keys: dict[str, tuple[int, ...]] = {
        "0.weight": (1024,),
        "0.bias": (1024,),
        "1.latents": (32, 1024),
        "1.media_pos_emb": (1, 1, 1024),
    }
    for i in range(6):
        keys[f"1.layers.{i}.0.norm_media.weight"] = (1024,)
        keys[f"1.layers.{i}.0.norm_media.bias"] = (1024,)
        keys[f"1.layers.{i}.0.norm_latents.weight"] = (1024,)
        keys[f"1.layers.{i}.0.norm_latents.bias"] = (1024,)
        keys[f"1.layers.{i}.0.to_q.weight"] = (1536, 1024)
        keys[f"1.layers.{i}.0.to_kv.weight"] = (3072, 1024)
        keys[f"1.layers.{i}.0.to_out.weight"] = (1024, 1536)
        keys[f"1.layers.{i}.1.0.weight"] = (1024,)
        keys[f"1.layers.{i}.1.0.bias"] = (1024,)
        keys[f"1.layers.{i}.1.1.weight"] = (4096, 1024)
        keys[f"1.layers.{i}.1.3.weight"] = (1024, 4096)
    keys["1.norm.weight"] = (1024,)
    keys["1.norm.bias"] = (1024,)
    keys["2.weight"] = (4096, 1024)
    keys["2.bias"] = (4096,)
    return keys


def test_real_size_state_dict_matches_seal_checkpoint_layout() -> None:
    with torch.device("meta"):
        proj = build_object_projector(1024, 4096)
    got = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert got == _expected_seal_keys()
    assert len(got) == 4 + 6 * 11 + 4


def _tiny(depth: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    return build_object_projector(8, 12, depth=depth, heads=2, dim_head=3, num_latents=4, ff_mult=2)


def test_tiny_forward_shapes() -> None:
    proj = _tiny()
    x = torch.randn(3, 5, 8)
    assert proj(x).shape == (3, 4, 12)
    assert proj[1](x).shape == (3, 4, 8)
    with pytest.raises(ValueError, match="B, N, dim"):
        proj[1](x[None])


def _naive_layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _naive_attention(attn: PerceiverAttention, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """One head at a time, explicit softmax; heads own contiguous dim_head slices of the inner dim."""
    m = _naive_layer_norm(media, attn.norm_media)
    lat = _naive_layer_norm(latents, attn.norm_latents)
    q = lat @ attn.to_q.weight.T
    kv = torch.cat([m, lat], dim=1) @ attn.to_kv.weight.T
    inner = attn.heads * attn.dim_head
    k, v = kv[..., :inner], kv[..., inner:]
    outs = []
    for h in range(attn.heads):
        s = slice(h * attn.dim_head, (h + 1) * attn.dim_head)
        logits = (q[..., s] / math.sqrt(attn.dim_head)) @ k[..., s].transpose(-1, -2)
        w = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
        outs.append(w @ v[..., s])
    return torch.cat(outs, dim=-1) @ attn.to_out.weight.T


def _randomize(module: nn.Module) -> None:
    # LayerNorms start at 1/0; random affine params make the comparison meaningful.
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def test_attention_matches_naive_reference() -> None:
    proj = _tiny()
    _randomize(proj)
    attn = proj[1].layers[0][0]
    media, latents = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    torch.testing.assert_close(attn(media, latents), _naive_attention(attn, media, latents))


def test_resampler_matches_naive_reference() -> None:
    proj = _tiny(depth=2)
    _randomize(proj)
    res: PerceiverResampler = proj[1]
    x = torch.randn(2, 5, 8)
    media = x + res.media_pos_emb.reshape(1, 1, -1)
    lat = res.latents.expand(2, -1, -1)
    for attn, ff in res.layers:
        lat = _naive_attention(attn, media, lat) + lat
        h = _naive_layer_norm(lat, ff[0]) @ ff[1].weight.T
        lat = nn.functional.gelu(h) @ ff[3].weight.T + lat
    expected = _naive_layer_norm(lat, res.norm)
    torch.testing.assert_close(res(x), expected)
    full = _naive_layer_norm(x, proj[0])
    torch.testing.assert_close(proj(x), res(full) @ proj[2].weight.T + proj[2].bias)


def test_remap_perceiver_pretrain_keys_round_trips_into_projector() -> None:
    proj = _tiny()
    pretrain = {f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()}
    remapped = remap_perceiver_pretrain_keys(pretrain)
    assert set(remapped) == {f"model.mm_projector_object.{k}" for k in proj.state_dict()}
    fresh = _tiny()
    _randomize(fresh)
    fresh.load_state_dict(object_projector_state_from_checkpoint(remapped), strict=True)
    for k, v in proj.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_remap_refuses_non_perceiver_files() -> None:
    mlp2x = {
        "model.mm_projector.0.weight": torch.zeros(2, 2),
        "model.mm_projector.2.weight": torch.zeros(2, 2),
    }
    with pytest.raises(ValueError, match="1.latents"):
        remap_perceiver_pretrain_keys(mlp2x)
    with pytest.raises(ValueError, match="model.vision_resampler.x"):
        remap_perceiver_pretrain_keys(
            {"model.mm_projector.1.latents": torch.zeros(1), "model.vision_resampler.x": torch.zeros(1)}
        )


@pytest.mark.parametrize(
    "prefix",
    ["model.mm_projector_object.", "base_model.model.model.mm_projector_object.", "mm_projector_object."],
)
def test_object_projector_state_accepts_known_prefixes(prefix: str) -> None:
    proj = _tiny()
    ckpt = {f"{prefix}{k}": v for k, v in proj.state_dict().items()}
    ckpt["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(1)  # rest of the LLM is ignored
    ckpt[f"{prefix.replace('_object', '')}weight"] = torch.zeros(1)  # and so is the image projector
    state = object_projector_state_from_checkpoint(ckpt)
    assert set(state) == set(proj.state_dict())
    _tiny().load_state_dict(state, strict=True)


def test_object_projector_state_rejects_unknown_layouts() -> None:
    with pytest.raises(ValueError, match=r"model\.mm_projector"):
        object_projector_state_from_checkpoint({"model.mm_projector.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="remap_perceiver_pretrain_keys"):
        object_projector_state_from_checkpoint({"model.mm_projector.1.latents": torch.zeros(1)})
    both = {
        "model.mm_projector_object.0.weight": torch.zeros(1),
        "mm_projector_object.0.weight": torch.zeros(1),
    }
    with pytest.raises(ValueError, match="several layouts"):
        object_projector_state_from_checkpoint(both)
