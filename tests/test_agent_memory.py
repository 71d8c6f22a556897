"""The agent's resident parameters at the true LLaVA-1.5-7B + SAM-H sizes, counted on the meta device."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fast.memory import (
    PROJECTOR_COPIES_AND_FULL_EMBEDDINGS,
    SCRIPT_DEFAULTS,
    agent_memory_on_meta,
    real_size_configs,
)

ROOT = Path(__file__).resolve().parent.parent
LLAVA_7B_HF = 7_063_427_072  # llava-1.5-7b-hf: CLIP-336 303.5M + projector 21.0M + LLaMA-7B 6738.9M
SAM_VIT_H = 641_090_864


@pytest.fixture(scope="module")
def configs():
    return real_size_configs()


def test_agent_at_real_size_is_within_1_1_of_llava_plus_sam(configs):
    report = agent_memory_on_meta(*configs, SCRIPT_DEFAULTS)
    parts = report.breakdown
    assert (parts["base"], parts["sam"]) == (LLAVA_7B_HF, SAM_VIT_H)  # the true sizes, not a shallow copy
    # Adapters share the base's projector (no copies); seg holds only the rows of [SEG], <im_start>, <im_end>.
    assert parts["switch_module_copies"] == parts["roi_module_copies"] == parts["seg_module_copies"] == 0
    assert parts["seg_other"] == 2 * 3 * 4096
    assert parts["switch_lora"] == parts["roi_lora"] == 319_815_680 and parts["seg_lora"] == 4_194_304
    assert parts["object_projector"] == 92_353_536 and parts["seg_heads"] == 17_830_144
    assert report.agent_params == sum(v for k, v in parts.items())
    assert report.ratio <= 1.1, report.summary()


def test_projector_copies_and_full_embeddings_would_exceed_the_limit(configs):
    """What the scripts trained before: a projector copy per LoRA adapter and seg's whole embedding copies."""
    report = agent_memory_on_meta(*configs, PROJECTOR_COPIES_AND_FULL_EMBEDDINGS)
    assert report.breakdown["switch_module_copies"] == report.breakdown["roi_module_copies"] == 20_979_712
    assert report.breakdown["seg_module_copies"] == 2 * 32064 * 4096
    assert report.ratio > 1.13


def test_training_scripts_default_to_the_counted_recipe():
    """The ROI and switch scripts share the base's projector unless told otherwise; seg trains new rows only."""
    from segllava.train import SegTrainArgs

    roi = (ROOT / "RoiLLaVA/scripts/v1_5/finetune_lora.sh").read_text()
    assert '--freeze_mm_mlp_adapter "${FREEZE_PROJECTOR:-True}"' in roi
    switch = (ROOT / "SwiLLaVA/finetune_lora.sh").read_text()
    (default_line,) = [line for line in switch.splitlines() if line.startswith("FREEZE_MM_MLP_ADAPTER=")]
    assert '--freeze_mm_mlp_adapter "$FREEZE_MM_MLP_ADAPTER"' in switch
    env = {k: v for k, v in os.environ.items() if k not in ("PROJECTOR", "FREEZE_MM_MLP_ADAPTER")}
    shell = subprocess.run(
        ["bash", "-c", f"{default_line}; echo $FREEZE_MM_MLP_ADAPTER"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert shell.stdout.strip() == "True"
    assert (
        SegTrainArgs.__dataclass_fields__["train_embeddings"].default == SCRIPT_DEFAULTS.seg_train_embeddings
    )
