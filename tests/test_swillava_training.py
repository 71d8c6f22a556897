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
    # The default shares the base's MLP projector: the adapter holds no copy, and the projector is the base's.
    assert not any("multi_modal_projector" in k for k in load_file(out / "adapter_model.safetensors"))
    base_mlp = load_file(tiny_base / "model.safetensors")
    (mlp_key,) = [k for k in base_mlp if k.endswith("multi_modal_projector.linear_1.weight")]
    assert torch.equal(adapter.model.mlp_projector.linear_1.weight, base_mlp[mlp_key])
    image = Image.open(toy / "images" / "train" / "000000.jpg")
    decision = adapter.decide(image, "What shape is the red object?")
    assert isinstance(decision.text, str)
    assert (
        len(adapter.option_losses(image, "What shape?", ["star", "cross"], [("red object", (1, 1, 30, 30))]))
        == 2
    )


def deepspeed_states_bytes(checkpoint: Path) -> int:
    """Bytes of DeepSpeed's module states (the optimizer states are separate files)."""
    return sum(f.stat().st_size for f in checkpoint.glob("global_step*/*model_states.pt"))


def test_bf16_stages_under_zero_train_save_only_trained_weights_and_resume(tiny_base, toy_world, tmp_path):
    """The scripts' bf16 default: the projector stage (ZeRO-2) and LoRA (ZeRO-3, adapter and perceiver copy in
    one dtype) train; DeepSpeed's resume states hold the trained weights only; a rerun resumes from them."""
    toy = toy_world["playground"] / "data" / "toy"
    common = {"MODEL": str(tiny_base), "IMAGE_FOLDER": str(toy / "images"), "BF16": "True", "SAVE_STEPS": "1",
              "EXTRA_ARGS": f"{TINY_PERCEIVER} --use_cpu True"}  # fmt: skip
    pretrain = tmp_path / "pretrain"
    env = {**common, "OUTPUT_DIR": str(pretrain), "DATA_PATH": str(toy / "blip_laion_cc_sbu_toy.json")}
    run_sh("pretrain.sh", {**env, "MAX_STEPS": "1"}, tmp_path / "pretrain1.log")
    projector_bytes = (pretrain / "mm_projector_object.safetensors").stat().st_size
    whole_model_bytes = (tiny_base / "model.safetensors").stat().st_size // 2  # bf16
    assert 0 < deepspeed_states_bytes(pretrain / "checkpoint-1") < 2 * projector_bytes < whole_model_bytes / 4
    assert not list(pretrain.rglob("model.safetensors"))
    log = run_sh("pretrain.sh", {**env, "MAX_STEPS": "2"}, tmp_path / "pretrain2.log")
    assert "resuming from" in log and (pretrain / "checkpoint-2").is_dir()

    lora = tmp_path / "lora"
    env = {**common, "OUTPUT_DIR": str(lora), "DATA_PATH": str(toy / "seal" / "toy_focus_data.json"),
           "OBJECT_PROJECTOR": str(pretrain / "mm_projector_object.safetensors"), "LORA_R": "8", "LORA_ALPHA": "16"}  # fmt: skip
    log = run_sh("finetune_lora.sh", {**env, "MAX_STEPS": "1"}, tmp_path / "lora1.log")
    # (the launcher's command line, quoting the json, shows only with FAST_VERBOSE: read the run's config)
    run = json.loads((lora / "checkpoint-1" / "swillava_train_config.json").read_text())
    assert "'loss'" in log and run["training"]["deepspeed"].endswith("zero3.json")
    adapter = load_file(lora / "checkpoint-1" / "adapter_model.safetensors")
    assert {v.dtype for v in adapter.values()} == {torch.bfloat16}
    adapter_bytes = (lora / "checkpoint-1" / "adapter_model.safetensors").stat().st_size
    assert 0 < deepspeed_states_bytes(lora / "checkpoint-1") < 2 * adapter_bytes < whole_model_bytes / 4
    # LLaVA's recipe: no gradient clipping; --tf32 True is passed and dropped on this CPU.
    training = json.loads((lora / "checkpoint-1" / "swillava_train_config.json").read_text())["training"]
    assert training["max_grad_norm"] == 0 and training["tf32"] is None and "--tf32 True ignored" in log
    log = run_sh("finetune_lora.sh", {**env, "MAX_STEPS": "2"}, tmp_path / "lora2.log")
    assert "resuming from" in log and (lora / "checkpoint-2" / "adapter_model.safetensors").is_file()


def test_qlora_quantises_only_the_language_model_and_trains(tiny_base, toy_world, tmp_path):
    """`--bits 4`: CLIP, both projectors (the perceiver included) and lm_head stay in full precision; only the
    language model's linears are 4-bit, none of them trains; a LoRA step runs (bitsandbytes on this CPU)."""
    import bitsandbytes as bnb
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from swillava.model import SwiConfig, build_switch, quantization_config, set_trainable

    llava = LlavaForConditionalGeneration.from_pretrained(
        tiny_base, dtype=torch.bfloat16, quantization_config=quantization_config(4, torch.bfloat16)
    )
    swi = build_switch(
        llava, AutoProcessor.from_pretrained(tiny_base).tokenizer, SwiConfig(base_model=str(tiny_base))
    )
    quantised = {n for n, m in swi.core.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantised and all(".language_model." in n for n in quantised)
    assert any(n.endswith("self_attn.q_proj") for n in quantised)
    for part in ("vision_tower", "multi_modal_projector", "mm_projector_object"):
        assert not any(f".{part}." in n for n in quantised), part
    assert not isinstance(swi.core.lm_head, bnb.nn.Linear4bit)
    set_trainable(swi, language_model=True, mlp_projector=True, object_projector=True)  # no error on uint8
    assert not any(p.requires_grad for p in swi.core.parameters() if not p.is_floating_point())

    toy = toy_world["playground"] / "data" / "toy"
    out = tmp_path / "qlora"
    log = run_sh(
        "finetune_lora.sh",
        {"MODEL": str(tiny_base), "IMAGE_FOLDER": str(toy / "images"), "DATA_PATH": str(toy / "seal" / "toy_focus_data.json"),
         "OUTPUT_DIR": str(out), "MAX_STEPS": "1", "OBJECT_PROJECTOR": "", "LORA_R": "8", "LORA_ALPHA": "16",
         "LAUNCHER": "python", "DS_CONFIG": "", "BF16": "True", "EXTRA_ARGS": f"{TINY_PERCEIVER} --use_cpu True --bits 4"},
        tmp_path / "qlora.log",
    )  # fmt: skip
    assert "'loss'" in log
    adapter = load_file(out / "adapter_model.safetensors")
    assert all("lora_" in k or "mm_projector_object" in k for k in adapter)
