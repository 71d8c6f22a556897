"""The real training scripts, run as a user runs them: DeepSpeed ZeRO-2/3 on the CPU, resume, LoRA round trip."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
ROI = ROOT / "RoiLLaVA"


def key(state: dict, suffix: str) -> str:
    """The one checkpoint key ending in `suffix` (llava-hf files use the legacy key layout)."""
    (match,) = [k for k in state if k.endswith(suffix)]
    return match


def run_script(script, env, tmp_path, returncode=0):
    full_env = {
        **os.environ,
        "BF16": "False",
        "NUM_GPUS": "1",
        "WORKERS": "0",
        "BATCH": "2",
        "LOG_STEPS": "1",
        "GRAD_CKPT": "True",
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        **env,
    }
    proc = subprocess.run(
        ["bash", script], cwd=ROI, env=full_env, capture_output=True, text=True, timeout=600
    )
    (tmp_path / "log.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == returncode, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def toy_data(toy_world):
    toy = toy_world["playground"] / "data" / "toy"
    return {
        "IMAGE_FOLDER": str(toy / "images"),
        "instruct": str(toy / "llava_toy_instruct.json"),
        "captions": str(toy / "blip_laion_cc_sbu_toy.json"),
    }


def instruct_env(tiny_base, toy_data, out: Path, **overrides: str) -> dict:
    """The environment of a System-1 finetune on the toy instruction data."""
    return {
        "MODEL": str(tiny_base),
        "DATA_PATH": toy_data["instruct"],
        "IMAGE_FOLDER": toy_data["IMAGE_FOLDER"],
        "OUTPUT_DIR": str(out),
        **overrides,
    }


def test_pretrain_script_three_steps_trains_projector_only(tiny_base, toy_data, tmp_path):
    out = tmp_path / "pretrain"
    env = {
        "MODEL": str(tiny_base),
        "DATA_PATH": toy_data["captions"],
        "IMAGE_FOLDER": toy_data["IMAGE_FOLDER"],
        "OUTPUT_DIR": str(out),
        "MAX_STEPS": "3",
    }
    log = run_script("scripts/v1_5/pretrain.sh", env, tmp_path)
    assert "'loss'" in log
    projector = load_file(out / "mm_projector.safetensors")
    base = load_file(tiny_base / "model.safetensors")
    assert set(projector) == {
        f"multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")
    }
    assert not torch.equal(
        projector["multi_modal_projector.linear_1.weight"], base[key(base, "linear_1.weight")]
    )
    # The step-3 checkpoint holds what trains: the projector, and DeepSpeed's states of it alone.
    ckpt = out / "checkpoint-3"
    assert not (ckpt / "model.safetensors").exists()
    assert set(load_file(ckpt / "mm_projector.safetensors")) == set(projector)
    projector_bytes = sum(t.numel() * 4 for t in projector.values())
    states = sum(f.stat().st_size for f in (ckpt / "global_step3").iterdir())
    assert states < 4 * projector_bytes + 200_000  # fp32 master + Adam moments + the module's trainables
    config = json.loads((out / "roillava_train_config.json").read_text())
    assert (
        config["model"]["tune_mm_mlp_adapter"] is True and config["data"]["data_path"] == toy_data["captions"]
    )
    assert (out / "checkpoint-3" / "roillava_train_config.json").exists()


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_finetune_one_deepspeed_step(zero, tiny_base, toy_data, tmp_path):
    out = tmp_path / zero
    env = instruct_env(
        tiny_base,
        toy_data,
        out,
        MAX_STEPS="1",
        LR="1e-2",
        DS_CONFIG=f"./scripts/{zero}.json",
        EXTRA_ARGS="--warmup_steps 0",  # the recipe's warmup would make a single step a no-op
    )
    run_script("scripts/v1_5/finetune.sh", env, tmp_path)
    # Compare loaded models, not raw files: ZeRO-3's consolidated save names keys differently.
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    trained = model.state_dict()
    base = LlavaForConditionalGeneration.from_pretrained(tiny_base).state_dict()
    lm_key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained[lm_key], base[lm_key])
    tower_key = "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(trained[tower_key], base[tower_key])  # the vision tower stays frozen


def test_finetune_without_deepspeed(tiny_base, toy_data, tmp_path):
    """`LAUNCHER=python DS_CONFIG=` (set but empty) trains with the plain Trainer: no DeepSpeed needed."""
    out = tmp_path / "plain"
    env = instruct_env(tiny_base, toy_data, out, MAX_STEPS="1", LAUNCHER="python", DS_CONFIG="")
    log = run_script("scripts/v1_5/finetune.sh", env, tmp_path)
    assert "'loss'" in log
    config = json.loads((out / "roillava_train_config.json").read_text())
    assert config["training"]["deepspeed"] is None
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info


def test_resume_continues_from_last_checkpoint(tiny_base, toy_data, tmp_path):
    out = tmp_path / "resume"
    env = instruct_env(
        tiny_base, toy_data, out, SAVE_STEPS="1", DS_CONFIG="./scripts/zero2.json", MAX_STEPS="2"
    )
    run_script("scripts/v1_5/finetune.sh", env, tmp_path)
    log = run_script("scripts/v1_5/finetune.sh", {**env, "MAX_STEPS": "3"}, tmp_path)
    assert "resuming from" in log and "checkpoint-2" in log
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_projector_only_resume_matches_a_straight_run(tiny_base, toy_data, tmp_path):
    """A stage-1 checkpoint holds the projector alone, yet a run resumed from it ends where a straight run
    ends: the projector and DeepSpeed's optimizer states come back, the frozen rest from the base."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    env = {
        "MODEL": str(tiny_base),
        "DATA_PATH": toy_data["captions"],
        "IMAGE_FOLDER": toy_data["IMAGE_FOLDER"],
        "OUTPUT_DIR": str(straight),
        "MAX_STEPS": "2",
        "SAVE_STEPS": "1",
        "LR": "1e-2",
        "EXTRA_ARGS": "--warmup_steps 0 --lr_scheduler_type constant --save_total_limit 2",
    }
    run_script("scripts/v1_5/pretrain.sh", env, tmp_path)
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-1", resumed / "checkpoint-1")
    log = run_script("scripts/v1_5/pretrain.sh", {**env, "OUTPUT_DIR": str(resumed)}, tmp_path)
    assert "resuming from" in log and "checkpoint-1" in log
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 2
    after_one = load_file(straight / "checkpoint-1" / "mm_projector.safetensors")
    want = load_file(straight / "mm_projector.safetensors")
    got = load_file(resumed / "mm_projector.safetensors")
    for name in want:
        assert not torch.equal(want[name], after_one[name])  # step 2 moved it
        torch.testing.assert_close(got[name], want[name])


def test_zero_configs_do_not_clip_gradients():
    """LLaVA-1.5's ZeRO-2/3 configs set no gradient clipping (DeepSpeed's default: none)."""
    for name in ("zero2.json", "zero3.json"):
        config = json.loads((ROI / "scripts" / name).read_text())
        assert "gradient_clipping" not in config, name


@pytest.mark.parametrize(
    ("env", "capability", "expected"),
    [
        ({}, None, []),
        ({}, "8.0", ["--tf32", "True"]),
        ({}, "7.0", []),
        ({"TF32": "False"}, "9.0", ["--tf32", "False"]),
    ],
)
def test_tf32_follows_the_gpu(env, capability, expected, tmp_path):
    """`--tf32 True` (LLaVA's) only where TF32 exists: Ampere or newer, as nvidia-smi reports it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"  # shadows a real one; without a GPU it fails as on a CPU machine
    smi.write_text(f"#!/bin/sh\necho {capability}\n" if capability else "#!/bin/sh\nexit 9\n")
    smi.chmod(0o755)
    proc = subprocess.run(
        ["bash", "-c", '. scripts/launch.sh; printf "%s\\n" "${COMMON_ARGS[@]}"'],
        cwd=ROI,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    args = proc.stdout.split()
    got = args[args.index("--tf32") : args.index("--tf32") + 2] if "--tf32" in args else []
    assert got == expected
