"""SEAL's object projector (``mm_projector_object``): LayerNorm -> Perceiver resampler -> Linear.

Module and parameter names mirror the released checkpoints (``craigwu/seal_vqa_7b``, FaST's SwiLLaVA)
exactly, so their ``model.mm_projector_object.*`` weights load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

_PRETRAIN_PREFIX = "model.mm_projector."
_OBJECT_PREFIX = "model.mm_projector_object."
# Layouts in which the object projector appears: full model dumps, PEFT-wrapped
# non_lora_trainables.bin, and bare sub-module dumps.
_OBJECT_PREFIXES = (
    "base_model.model.model.mm_projector_object.",
    "model.mm_projector_object.",
    "mm_projector_object.",
)


class PerceiverAttention(nn.Module):
    """Latents attend to concat(media, latents); keys ``norm_media``, ``norm_latents``, ``to_q/kv/out``."""

    def __init__(self, dim: int, *, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        # [B, n, heads*dim_head] -> [B, heads, n, dim_head]; heads are the outer factor, as in the checkpoints.
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media [B, N, dim], latents [B, L, dim] -> update for the latents [B, L, dim]."""
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self._split_heads(self.to_q(latents)) * self.scale
        k, v = self.to_kv(torch.cat((media, latents), dim=1)).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        sim = q @ k.transpose(-1, -2)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        out = sim.softmax(dim=-1) @ v  # [B, heads, L, dim_head]
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class FeedForward(nn.Sequential):
    """Pre-norm MLP as a Sequential so its keys are ``0`` (LN), ``1``, ``3`` (bias-free Linears)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * mult, dim, bias=False),
        )


class PerceiverResampler(nn.Module):
    """Compress N media tokens into ``num_latents`` learned queries: [B, N, dim] -> [B, num_latents, dim]."""

    def __init__(
        self,
        dim: int,
        *,
        depth: int = 6,
        heads: int = 16,
        dim_head: int = 96,
        num_latents: int = 32,
        num_media_embeds: int = 1,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        # One learned vector per media slot; SEAL always has a single slot, added to every token.
        self.media_pos_emb = nn.Parameter(torch.randn(num_media_embeds, 1, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PerceiverAttention(dim, heads=heads, dim_head=dim_head), FeedForward(dim, ff_mult)]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"expected media of shape [B, N, dim], got {tuple(x.shape)}")
        x = x + self.media_pos_emb[0]
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


def build_object_projector(
    vision_hidden: int,
    text_hidden: int,
    *,
    depth: int = 6,
    heads: int = 16,
    dim_head: int = 96,
    num_latents: int = 32,
    ff_mult: int = 4,
) -> nn.Sequential:
    """``mm_projector_object``: [B, N, vision_hidden] -> [B, num_latents, text_hidden] (keys ``0``/``1``/``2``)."""
    return nn.Sequential(
        nn.LayerNorm(vision_hidden),
        PerceiverResampler(
            vision_hidden,
            depth=depth,
            heads=heads,
            dim_head=dim_head,
            num_latents=num_latents,
            ff_mult=ff_mult,
        ),
        nn.Linear(vision_hidden, text_hidden),
    )


def _describe_keys(keys: list[str], limit: int = 8) -> str:
    """Short summary of a state dict's layout (distinct two-level prefixes) for error messages."""
    prefixes = sorted({".".join(k.split(".")[:2]) for k in keys})
    more = f" (+{len(prefixes) - limit} more)" if len(prefixes) > limit else ""
    return f"{len(keys)} keys under {prefixes[:limit]}{more}"


def remap_perceiver_pretrain_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a perceiver-pretrain ``mm_projector.bin`` (``model.mm_projector.*``) to ``model.mm_projector_object.*``.

    Projector pretraining trains the perceiver in the ``mm_projector`` slot; instruction tuning expects it in
    the object slot. Refuses anything else (e.g. an mlp2x_gelu ``mm_projector.bin``) instead of guessing.
    """
    keys = list(state_dict)
    foreign = [k for k in keys if not k.startswith(_PRETRAIN_PREFIX)]
    if foreign or f"{_PRETRAIN_PREFIX}1.latents" not in state_dict:
        raise ValueError(
            "not a perceiver-pretrain mm_projector.bin (expected only 'model.mm_projector.*' keys including "
            f"'model.mm_projector.1.latents'); found {_describe_keys(keys)}"
            + (f", foreign keys {foreign[:5]}" if foreign else "")
        )
    return {_OBJECT_PREFIX + k[len(_PRETRAIN_PREFIX) :]: v for k, v in state_dict.items()}


def object_projector_state_from_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Extract ``mm_projector_object`` weights as keys of :func:`build_object_projector`'s Sequential.

    Accepts full-model, PEFT-wrapped (``non_lora_trainables.bin``) and bare dumps; exactly one layout must be
    present so that two copies can never be mixed.
    """
    found = {p: {k[len(p) :]: v for k, v in state_dict.items() if k.startswith(p)} for p in _OBJECT_PREFIXES}
    found = {p: sub for p, sub in found.items() if sub}
    if len(found) != 1:
        what = f"several layouts {sorted(found)}" if found else _describe_keys(list(state_dict))
        hint = (
            "; this looks like a perceiver-pretrain file, use remap_perceiver_pretrain_keys first"
            if f"{_PRETRAIN_PREFIX}1.latents" in state_dict
            else ""
        )
        raise ValueError(
            f"expected object-projector keys under one of {list(_OBJECT_PREFIXES)}; found {what}{hint}"
        )
    return next(iter(found.values()))
