"""SwiLLaVA's scripts as a user runs them (`cd SwiLLaVA && sh pretrain.sh && sh finetune_lora.sh`), on the toy world."""

import json
import os
import subprocess
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from swillava.infer import SwitchAdapter

ROOT = Path(__file__).resolve().parent.parent
SWI = ROOT / "SwiLLaVA"
TINY_PERCEIVER = "--object_projector_depth 1 --object_projector_heads 2 --object_projector_dim_head 16"


def run_sh(script: str, env: dict, log: Path) -> str:
    full_env = {
        **os.environ,
        "BF16": "False",
        "NUM_GPUS": "1",
        "WORKERS": "0",
        "BATCH": "2",
        "GRAD_CKPT": "True",
        "WARMUP": "0",
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        **env,
    }
    proc = subprocess.run(["sh", script], cwd=SWI, env=full_env, capture_output=True, text=True, timeout=600)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def test_pretrain_then_two_lora_steps_give_a_loadable_switch(tiny_base, toy_world, tmp_path):
    toy = toy_world["playground"] / "data" / "toy"
    common = {"MODEL": str(tiny_base), "IMAGE_FOLDER": str(toy / "images"), "EXTRA_ARGS": TINY_PERCEIVER}
    pretrain = tmp_path / "pretrain"
    run_sh(
        "pretrain.sh",
        {**common, "LAUNCHER": "python", "DS_CONFIG": "", "OUTPUT_DIR": str(pretrain), "MAX_STEPS": "1",
         "DATA_PATH": str(toy / "blip_laion_cc_sbu_toy.json"), "LR": "1e-2"},
        tmp_path / "pretrain.log",
    )  # fmt: skip
    object_file = pretrain / "mm_projector_object.safetensors"
    assert not (pretrain / "mm_projector.safetensors").exists()  # only the perceiver aligns by default
    assert all(k.startswith("model.mm_projector_object.") for k in load_file(object_file))
    assert json.loads((pretrain / "swillava_config.json").read_text())["weights"] == "projectors"

    out = tmp_path / "lora"
    # Focus records only: every sample shows an object, so both projectors see gradients in 2 steps.
    log = run_sh(
        "finetune_lora.sh",
        {**common, "DATA_PATH": str(toy / "seal" / "toy_focus_data.json"), "OUTPUT_DIR": str(out), "MAX_STEPS": "2", "SAVE_STEPS": "1",
         "OBJECT_PROJECTOR": str(object_file), "LR": "1e-2", "MM_PROJECTOR_LR": "1e-2", "LORA_R": "8", "LORA_ALPHA": "16"},
        tmp_path / "lora.log",
    )  # fmt: skip
    assert "'loss'" in log
    assert (out / "checkpoint-2" / "swillava_config.json").exists()
    run = json.loads((out / "checkpoint-2" / "swillava_train_config.json").read_text())
    assert run["training"]["deepspeed"].endswith("zero3.json")  # FaST's ZeRO-3 default
    adapter = SwitchAdapter.from_pretrained(out, max_new_tokens=3)
    trained = adapter.model.object_projector.state_dict()
    start = load_file(object_file)
    assert not torch.equal(trained["1.latents"], start["model.mm_projector_object.1.latents"])
    base_mlp = load_file(tiny_base / "model.safetensors")
    (mlp_key,) = [k for k in base_mlp if k.endswith("multi_modal_projector.linear_1.weight")]
    assert not torch.equal(adapter.model.mlp_projector.linear_1.weight, base_mlp[mlp_key])
    image = Image.open(toy / "images" / "train" / "000000.jpg")
    decision = adapter.decide(image, "What shape is the red object?")
    assert isinstance(decision.text, str)
    assert (
        len(adapter.option_losses(image, "What shape?", ["star", "cross"], [("red object", (1, 1, 30, 30))]))
        == 2
    )
