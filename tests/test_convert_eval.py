"""Converted Chain-of-Spot, SEAL and LISA checkpoints (tiny synthetic versions of the published layouts) run
through the benchmark runners and the siblings' answerers without error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from original_layouts import (
    clip_tower,
    linear_projector_state,
    mlp_projector_state,
    original_llava_dir,
    perceiver_state,
    text_hidden_fcs_state,
)
from test_eval_runners import eval_root, run  # noqa: F401 - the benchmark layouts fixture
from test_sam_checkpoint import _tiny_config

LISA_ADDED = {"<im_patch>": 120, "<im_start>": 121, "<im_end>": 122, "[SEG]": 123}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """CoS (full fine-tune of LLaVA-1.5), SEAL's VQA LLM and LISA, each converted by its sibling's command."""
    from test_convert_segllava import tiny_meta_sam

    from roillava.convert import main as roi_convert
    from segllava.convert import main as seg_convert
    from swillava.convert import main as swi_convert

    root = tmp_path_factory.mktemp("released")
    clip_tower(root / "clip336")
    clip_tower(root / "clip224", seed=2)
    cos, _ = original_llava_dir(
        root / "cos",
        root / "clip336",
        projector=mlp_projector_state(),
        config_fields={"image_aspect_ratio": "pad"},
    )
    roi_convert(["--from", "cos", "--in", str(cos), "--out", str(root / "cos-hf")])
    seal, _ = original_llava_dir(
        root / "seal", root / "clip224", projector=linear_projector_state(), extra=perceiver_state(),
        config_fields={"mm_projector_type": "linear", "image_aspect_ratio": "pad"},
    )  # fmt: skip
    swi_convert(["--from", "seal", "--in", str(seal), "--out", str(root / "seal-swi")])
    _, meta = tiny_meta_sam()
    (root / "sam.json").write_text(_tiny_config().to_json_string())
    lisa, _ = original_llava_dir(
        root / "lisa", root / "clip224", projector=linear_projector_state(),
        extra=text_hidden_fcs_state(out_dim=16) | {f"model.visual_model.{k}": v for k, v in meta.items()},
        added=LISA_ADDED, config_fields={"mm_use_im_start_end": True, "image_aspect_ratio": "square"},
    )  # fmt: skip
    seg_convert(
        [
            "--from",
            "lisa",
            "--in",
            str(lisa),
            "--out",
            str(root / "lisa-seg"),
            "--sam-config",
            str(root / "sam.json"),
        ]
    )
    return {"cos": root / "cos-hf", "seal": root / "seal-swi", "lisa": root / "lisa-seg"}


def test_cos_through_the_eval_runner(converted, eval_root):  # noqa: F811
    cos = converted["cos"]
    roi = json.loads((cos / "roi_config.json").read_text())
    summary = run(
        "textvqa", cos, eval_root, "--mode", "cos", "--roi-path", str(cos), "--roi-wording", roi["wording"],
        "--roi-max-new-tokens", "4", "--no-constrained-box",  # Chain-of-Spot's own decoding
    )  # fmt: skip
    assert summary["answer_check"]["answered"] == 3
    rows = [json.loads(line) for line in Path(summary["answers_file"]).read_text().splitlines()]
    assert all({"roi_box", "roi_text", "fallback"} <= set(r["metadata"]) for r in rows)
    assert all(r["metadata"]["constrained_box"] is False for r in rows)


def test_seal_through_the_eval_runner_and_its_vstar_protocol(converted, eval_root, toy_world):  # noqa: F811
    seal = converted["seal"]
    summary = run("vstar", seal, eval_root)  # the VQA LLM alone, options by likelihood
    assert summary["answer_check"]["answered"] == 6
    from swillava.infer import SwitchAdapter, vstar_losses

    adapter = SwitchAdapter.from_pretrained(str(seal), max_new_tokens=4)
    bench = toy_world["playground"] / "data/eval/vstar_toy"
    result = vstar_losses(
        adapter, str(bench), oracle_evidence=True
    )  # SEAL's evidence prompt with <object> crops
    assert result["questions"] > 0 and 0.0 <= result["accuracy"] <= 1.0


def test_lisa_through_the_reasonseg_validator(converted, toy_world, tmp_path):
    from segllava.validate import main as validate

    validate(
        ["--model", str(converted["lisa"]), "--dataset_dir", str(toy_world["dataset"]), "--limit", "2",
         "--batch_size", "2", "--max_new_tokens", "3", "--device", "cpu", "--out", str(tmp_path / "m.json")]
    )  # fmt: skip
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 2 and 0.0 <= metrics["giou"] <= 1.0


@pytest.fixture(scope="module")
def llava15_and_switch(converted, tmp_path_factory) -> dict[str, Path]:
    """The converted LLaVA-1.5 base and the FaST release's switch LoRA run converted onto it."""
    import torch
    from original_layouts import original_lora_dir

    from roillava.convert import main as roi_convert
    from swillava.convert import main as swi_convert

    root = tmp_path_factory.mktemp("fast_release")
    clip_tower(root / "clip336")
    src, llama = original_llava_dir(
        root / "llava-v1.5-7b",
        root / "clip336",
        projector=mlp_projector_state(),
        config_fields={"image_aspect_ratio": "pad"},
    )
    roi_convert(["--from", "llava", "--in", str(src), "--out", str(root / "base")])
    original_lora_dir(root / "run", llama)
    torch.save(perceiver_state(prefix="model.mm_projector."), root / "resampler.bin")
    swi_convert(["--from", "fast-release", "--in", str(root / "run"), "--out", str(root / "switch"),
                 "--base", str(root / "base"), "--perceiver", str(root / "resampler.bin")])  # fmt: skip
    return {"base": root / "base", "switch": root / "switch"}


def _fast(argv: list[str], tmp_path: Path, capsys) -> str:
    import numpy as np
    from PIL import Image

    from fast.cli import main as fast_main

    image = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
    fast_main([
        "--image", str(image), "--question", "What color is the dog?", "--mode", "system2-always",
        "--switch-max-new-tokens", "4", "--roi-max-new-tokens", "6", "--max-new-tokens", "3", "--device", "cpu",
        "--trace-file", str(tmp_path / "trace.json"), *argv,
    ])  # fmt: skip
    return capsys.readouterr().out


def test_fast_with_the_released_switch_and_standalone_cos_and_lisa(
    converted, llava15_and_switch, tmp_path, capsys
):
    """`python -m fast` on the converted LLaVA-1.5 base with the FaST switch adapter; CoS and LISA (their own
    weights, towers and vocabularies) run as standalone stages."""
    out = _fast(
        ["--base", str(llava15_and_switch["base"]), "--switch", str(llava15_and_switch["switch"]),
         "--roi", str(converted["cos"]), "--seg", str(converted["lisa"]), "--evidence", "roi+seg"],
        tmp_path, capsys,
    )  # fmt: skip
    assert "system:   system2 (forced)" in out and "roi:" in out


def test_fast_with_seal_as_the_switch(converted, llava15_and_switch, tmp_path, capsys):
    out = _fast(
        ["--base", str(llava15_and_switch["base"]), "--switch", str(converted["seal"]),
         "--roi", str(converted["cos"]), "--evidence", "roi"],
        tmp_path, capsys,
    )  # fmt: skip
    assert "answer:" in out


def test_fast_asks_converted_cos_with_its_wording(converted):
    from fast.model import read_roi_config

    config = read_roi_config(converted["cos"], max_new_tokens=4)
    config = config[0] if isinstance(config, tuple) else config  # (config, why) where the reader says why
    assert config.wording == "what"
    assert json.loads((converted["cos"] / "config.json").read_text())["roi_wording"] == "what"
