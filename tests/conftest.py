"""Shared fixtures: a tiny offline base and a tiny toy world, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny LLaVA-1.5 + SAM directory (random vision tower: tests check wiring, not skill)."""
    from playground.tiny_base import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def real_base(tmp_path_factory) -> Path:
    """A llava-1.5-7b-hf-shaped directory (real widths, 1 text / 2 vision / 1 SAM layers, bf16, hub
    `CLIPImageProcessor` config) with SAM-H widths in `sam/`; about 1.1 GB on disk, 15 s to build."""
    from playground.real_shapes import build_real_shape_base

    return build_real_shape_base(tmp_path_factory.mktemp("real_base"))


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory) -> dict:
    """A small toy world in the real layouts; returns its roots and summary."""
    from playground.toyworld import WorldSize, generate

    root = tmp_path_factory.mktemp("toy")
    size = WorldSize(train=24, val=12, vstar=6, vstar_calib=3, seg_train=4, seg_val=3)
    summary = generate(root / "playground", root / "dataset", seed=0, size=size)
    return {"playground": root / "playground", "dataset": root / "dataset", "summary": summary, "size": size}


@pytest.fixture(scope="session")
def processor(tiny_base):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_base)


@pytest.fixture()
def llava(tiny_base):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(tiny_base).eval()
