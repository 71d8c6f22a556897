"""Encode each image once per question: a memo on the CLIP tower that every stage reuses.

The switch (long and short rows), the ROI adapter (global view and crop) and the seg adapter all run
the same frozen CLIP tower on the same padded images; only the projectors after it differ per adapter.
`VisionMemo` replaces the tower's `forward` on the instance (so module names and weights stay the same)
and, inside a `scope()`, returns stored hidden states for any image row it has seen, comparing pixel
tensors exactly. Outside a scope the tower runs as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling


class VisionMemo:
    """Per-scope memo of a vision tower's outputs, one entry per image row.

    Only the hidden states at `keep_layers` are stored (the layers llava-hf and SwiLLaVA select); the
    others come back as None, so a consumer that reads an unexpected layer fails loudly.
    `encoded_rows` counts the rows the tower really ran on (tests use it to check "encoded once").
    """

    def __init__(self, tower: nn.Module, keep_layers: list[int]):
        self.tower = tower
        self.keep_layers = keep_layers
        self._forward = tower.forward
        self._entries: dict[tuple, list[tuple[torch.Tensor, dict]]] | None = None
        self.encoded_rows = 0
        self.requested_rows = 0
        tower.forward = self._memo_forward

    @contextlib.contextmanager
    def scope(self) -> Iterator[VisionMemo]:
        """Everything encoded inside is remembered until the scope ends (one question or one batch)."""
        outer = self._entries
        self._entries = {} if outer is None else outer
        try:
            yield self
        finally:
            if outer is None:
                self._entries = None

    def _find(self, row: torch.Tensor, key: tuple) -> dict | None:
        for pixels, out in self._entries.get(key, ()):
            if torch.equal(pixels, row):
                return out
        return None

    def _memo_forward(self, pixel_values: torch.Tensor, *args, **kwargs):
        self.requested_rows += pixel_values.shape[0]
        if self._entries is None or args:
            self.encoded_rows += pixel_values.shape[0]
            return self._forward(pixel_values, *args, **kwargs)
        rows = list(pixel_values)
        keys = [_key(r) for r in rows]
        found = [self._find(r, k) for r, k in zip(rows, keys)]
        # Identical rows within one call are encoded once too, compared within their key's bucket only
        # (comparing every pair is quadratic in the batch: 500 comparisons of 32 CLIP-336 rows).
        unique: list[int] = []
        seen: dict[tuple, list[int]] = {}
        for i, f in enumerate(found):
            if f is None and not any(torch.equal(rows[i], rows[j]) for j in seen.get(keys[i], ())):
                unique.append(i)
                seen.setdefault(keys[i], []).append(i)
        if unique:
            self.encoded_rows += len(unique)
            out = self._forward(
                torch.stack([rows[i] for i in unique]), output_hidden_states=True, return_dict=True
            )
            n_layers = len(out.hidden_states)
            keep = {k % n_layers for k in self.keep_layers}
            for j, i in enumerate(unique):
                entry = {
                    "last_hidden_state": out.last_hidden_state[j],
                    "pooler_output": None if out.pooler_output is None else out.pooler_output[j],
                    "hidden_states": [h[j] if k in keep else None for k, h in enumerate(out.hidden_states)],
                }
                self._entries.setdefault(keys[i], []).append((rows[i], entry))
        found = [self._find(r, k) for r, k in zip(rows, keys)]
        hidden = tuple(
            None
            if found[0]["hidden_states"][k] is None
            else torch.stack([f["hidden_states"][k] for f in found])
            for k in range(len(found[0]["hidden_states"]))
        )
        pooled = (
            None if found[0]["pooler_output"] is None else torch.stack([f["pooler_output"] for f in found])
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=torch.stack([f["last_hidden_state"] for f in found]),
            pooler_output=pooled,
            hidden_states=hidden,
        )


def _key(row: torch.Tensor) -> tuple:
    """A cheap bucket for exact comparison: shape, dtype and two sums."""
    flat = row.detach().float().flatten()
    return (tuple(row.shape), row.dtype, round(flat.sum().item(), 3), round(flat[::7].sum().item(), 3))
