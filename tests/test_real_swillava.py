"""SwiLLaVA's scripts at llava-1.5-7b-hf widths (`real_base`): `sh pretrain.sh` (perceiver only, ZeRO-2) and
`sh finetune_lora.sh` (LoRA r128, ZeRO-3), both in bf16 as the scripts default, one step each.

Checks what only real shapes show: 576 rows per long image and per long object crop, 32 per short one; the
padded frame; one dtype for every trained weight under ZeRO-3; checkpoints that hold the trained weights only.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parent.parent
SWI = ROOT / "SwiLLaVA"
# SEAL's perceiver widths (16 heads x 96, 32 latents), one layer of six: the widths are what matter here.
PERCEIVER = "--object_projector_depth 1 --use_cpu True"


def run_sh(script: str, env: dict, log: Path) -> str:
    full_env = {
        **os.environ,
        "NUM_GPUS": "1",
        "WORKERS": "0",
        "WARMUP": "0",
        "MAX_STEPS": "1",
        "SAVE_STEPS": "1",
        "EXTRA_ARGS": PERCEIVER,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        **env,
    }
    proc = subprocess.run(["sh", script], cwd=SWI, env=full_env, capture_output=True, text=True, timeout=900)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def states_bytes(checkpoint: Path) -> int:
    """DeepSpeed's module states (its optimizer states are separate files)."""
    return sum(f.stat().st_size for f in checkpoint.glob("global_step*/*model_states.pt"))


@pytest.fixture(scope="module")
def runs(real_base, toy_world, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("real_swillava")
    toy = toy_world["playground"] / "data" / "toy"
    common = {"MODEL": str(real_base), "IMAGE_FOLDER": str(toy / "images")}  # BF16 is the scripts' default
    pretrain = tmp / "pretrain"
    pre_log = run_sh(
        "pretrain.sh",
        {**common, "OUTPUT_DIR": str(pretrain), "DATA_PATH": str(toy / "blip_laion_cc_sbu_toy.json"), "BATCH": "2"},
        tmp / "pretrain.log",
    )  # fmt: skip
    lora = tmp / "lora"
    lora_log = run_sh(
        "finetune_lora.sh",
        {**common, "OUTPUT_DIR": str(lora), "DATA_PATH": str(toy / "seal" / "toy_focus_data.json"), "BATCH": "1",
         "OBJECT_PROJECTOR": str(pretrain / "mm_projector_object.safetensors")},
        tmp / "lora.log",
    )  # fmt: skip
    return {"pretrain": pretrain, "lora": lora, "pre_log": pre_log, "lora_log": lora_log, "toy": toy}


def test_pretrain_checkpoint_holds_the_perceiver_only(runs, real_base) -> None:
    out = runs["pretrain"]
    assert "'loss'" in runs["pre_log"]
    ckpt = out / "checkpoint-1"
    run = json.loads((ckpt / "swillava_train_config.json").read_text())
    assert run["training"]["deepspeed"].endswith("zero2.json")
    projector = load_file(ckpt / "mm_projector_object.safetensors")
    assert all(k.startswith("model.mm_projector_object.") for k in projector)
    assert {v.dtype for v in projector.values()} == {torch.bfloat16}
    assert not list(out.rglob("model.safetensors")) and not (out / "mm_projector.safetensors").exists()
    projector_bytes = (ckpt / "mm_projector_object.safetensors").stat().st_size
    # Whole-model states would be the 1 GB base; the trained perceiver is ~38 MB.
    assert 0 < states_bytes(ckpt) < 1.5 * projector_bytes
    assert (real_base / "model.safetensors").stat().st_size > 20 * projector_bytes


def test_lora_zero3_bf16_adapter_holds_lora_and_perceiver_in_one_dtype(runs) -> None:
    out = runs["lora"]
    assert "'loss'" in runs["lora_log"]
    ckpt = out / "checkpoint-1"
    run = json.loads((ckpt / "swillava_train_config.json").read_text())
    assert run["training"]["deepspeed"].endswith("zero3.json")
    adapter = load_file(ckpt / "adapter_model.safetensors")
    assert {v.dtype for v in adapter.values()} == {torch.bfloat16}
    assert all("lora_" in k or "mm_projector_object" in k for k in adapter)
    assert not any("multi_modal_projector" in k for k in adapter)  # the base's projector is shared
    assert any(".lora_A." in k and v.shape[0] == 128 for k, v in adapter.items())  # r 128, the recipe's
    assert not list(out.rglob("model.safetensors"))
    assert 0 < states_bytes(ckpt) < 0.5 * (ckpt / "adapter_model.safetensors").stat().st_size + 2**20
    config = json.loads((out / "swillava_config.json").read_text())
    assert config["weights"] == "lora"


def test_saved_processor_pads_and_images_are_576_rows(runs) -> None:
    from swillava.data import SealDataset
    from swillava.infer import SwitchAdapter

    out = runs["lora"]
    saved = json.loads((out / "processor_config.json").read_text())["image_processor"]
    assert saved["image_processor_type"].startswith("LlavaImageProcessor") and saved["do_pad"] is True
    assert saved["crop_size"] == {"height": 336, "width": 336}

    adapter = SwitchAdapter.from_pretrained(out, dtype=torch.bfloat16, max_new_tokens=2)
    model = adapter.model
    assert (model.long_length, model.short_length) == (576, 32)
    layout = model.token_layout()
    data = SealDataset(
        runs["toy"] / "seal" / "toy_focus_data.json", runs["toy"] / "images", tokenizer=adapter.tokenizer,
        image_processor=adapter.processor.image_processor, layout=layout, template="v1", max_length=2048,
    )  # fmt: skip
    for i in range(min(4, len(data))):
        item = data[i]
        ids = item["input_ids"]
        assert item["pixel_values"].shape == (3, 336, 336)
        want_image = model.feature_length(bool(item["image_long"])) if item["image_present"] else 0
        assert int((ids == layout.image_id).sum()) == want_image
        present, long = item["object_present"].tolist(), item["object_long"].tolist()
        want_objects = sum(model.feature_length(lg) for lg, p in zip(long, present) if p)
        assert int((ids == layout.object_id).sum()) == want_objects and any(present)
        assert item["object_pixel_values"].shape[-2:] == (336, 336)


def test_qlora_4bit_step_at_real_widths(runs, real_base, tmp_path) -> None:
    """`--bits 4` (no DeepSpeed: bitsandbytes weights do not shard): the 4096/11008 linears quantise and a LoRA
    step runs; CLIP, both projectors and lm_head stay bf16, so the adapter holds LoRA and the perceiver only."""
    out = tmp_path / "qlora"
    log = run_sh(
        "finetune_lora.sh",
        {"MODEL": str(real_base), "IMAGE_FOLDER": str(runs["toy"] / "images"), "OUTPUT_DIR": str(out), "BATCH": "1",
         "DATA_PATH": str(runs["toy"] / "seal" / "toy_focus_data.json"), "LAUNCHER": "python", "DS_CONFIG": "",
         "SAVE_STEPS": "100", "LORA_R": "16", "LORA_ALPHA": "32",
         "OBJECT_PROJECTOR": str(runs["pretrain"] / "mm_projector_object.safetensors"),
         "EXTRA_ARGS": f"{PERCEIVER} --bits 4"},
        tmp_path / "qlora.log",
    )  # fmt: skip
    assert "'loss'" in log
    adapter = load_file(out / "adapter_model.safetensors")
    assert all("lora_" in k or "mm_projector_object" in k for k in adapter)
    assert any(".mlp.down_proj.lora_A." in k and v.shape == (16, 11008) for k, v in adapter.items())
