"""`finetune_lora.sh` on the toy world: two ZeRO-3 steps on the Chain-of-Spot data, adapter + projector saved and loadable."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import run_script  # the same runner as the other training scripts
from transformers import LlavaForConditionalGeneration

from roillava.answer import load_for_inference
from roillava.model import find_projector
from roillava.roi import resolve_roi_wording


def toy_lora_env(tiny_base, toy_world, out: Path, port_offset: int, **overrides: str) -> dict[str, str]:
    """`finetune_lora.sh`'s environment on the toy world: Chain-of-Spot data, LoRA r8, one port per test."""
    toy = toy_world["playground"] / "data" / "toy"
    return {
        "MODEL": str(tiny_base),
        "DATA_PATH": str(toy / "llava_toy_instruct.json"),
        "IMAGE_FOLDER": str(toy / "images"),
        "ROI_DATA": str(toy / "chain-of-spot.json"),
        "OUTPUT_DIR": str(out),
        "LORA_R": "8",
        "LORA_ALPHA": "16",
        "MASTER_PORT": str(29500 + (os.getpid() + port_offset) % 1000),
        **overrides,
    }


def test_finetune_lora_two_steps_saves_adapter_with_projector(tiny_base, toy_world, tmp_path):
    out = tmp_path / "cos-lora"
    env = toy_lora_env(
        tiny_base, toy_world, out, 0,
        MAX_STEPS="2", LR="1e-2", MM_PROJECTOR_LR="1e-2",
        FREEZE_PROJECTOR="False",  # the script shares the base's projector unless told otherwise
        EXTRA_ARGS="--warmup_steps 0",  # the recipe's warmup would make the first step a no-op
    )  # fmt: skip
    log = run_script("scripts/v1_5/finetune_lora.sh", env, tmp_path)
    assert "'loss'" in log
    # DeepSpeed's CPU all-reduce mapped a 69 MB /dev/shm file for the run; training removes it at exit
    assert "deepspeed_shm_comm_op built successfully" in log
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{env['MASTER_PORT']}_*"))

    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and adapter_cfg["lora_alpha"] == 16
    assert adapter_cfg["modules_to_save"] == ["multi_modal_projector"]
    adapter = load_file(out / "adapter_model.safetensors")
    projector_keys = [k for k in adapter if "multi_modal_projector" in k]
    assert len(projector_keys) == 4 and any("lora_A" in k and "q_proj" in k for k in adapter)

    config = json.loads((out / "roillava_train_config.json").read_text())
    assert config["data"]["roi_data_path"] == env["ROI_DATA"] and config["data"]["roi_wording"] == "where"
    assert resolve_roi_wording(out)[0] == "where"  # asked at test time as it was trained
    # the adapter's own prompt settings (roi.RoiConfig), which the answerers and the agent read
    roi_config = json.loads((out / "roi_config.json").read_text())
    assert (roi_config["wording"], roi_config["template"]) == ("where", config["model"]["version"])
    assert "roi_config.json" in resolve_roi_wording(out)[1]
    assert config["training"]["mm_projector_lr"] == 1e-2 and config["training"]["lora_enable"] is True
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["roi_questions"] == 3 * toy_world["size"].train and summary["roi_missing"] == 0

    merged, processor = load_for_inference(str(out))
    projector = find_projector(merged).state_dict()
    base = find_projector(LlavaForConditionalGeneration.from_pretrained(tiny_base)).state_dict()
    weight = next(k for k in projector_keys if k.endswith("linear_1.weight"))
    torch.testing.assert_close(projector["linear_1.weight"], adapter[weight])
    assert not torch.equal(projector["linear_1.weight"], base["linear_1.weight"])  # the projector trained
    assert processor.image_processor.do_pad

    # The run's data record: a rerun on other ROI data stops, in seconds, instead of resuming the old checkpoint.
    record = json.loads((out / "run_data.json").read_text())
    assert record["settings"]["roi_region_only"] is False and set(record["files"]) == {
        "data_path",
        "roi_data_path",
    }
    rois = json.loads(Path(env["ROI_DATA"]).read_text())
    first = next(iter(rois))
    rois[first]["params"][2] += 1
    changed = tmp_path / "chain-of-spot-changed.json"
    changed.write_text(json.dumps(rois))
    log = run_script(
        "scripts/v1_5/finetune_lora.sh", {**env, "ROI_DATA": str(changed)}, tmp_path, returncode=2
    )
    assert f"error: {out}/checkpoint-2 was trained on other data: roi_data_path ({changed}) changed" in log
    assert "Loading weights" not in log and json.loads((out / "run_data.json").read_text()) == record


def test_frozen_projector_is_neither_trained_nor_saved(tiny_base, tmp_path):
    """`--freeze_mm_mlp_adapter`: the adapter is LoRA only and reuses the base's projector."""
    from roillava.model import add_lora, freeze_for_stage

    model = LlavaForConditionalGeneration.from_pretrained(tiny_base)
    freeze_for_stage(model, projector_only=False, freeze_projector=True)
    assert not any(p.requires_grad for p in find_projector(model).parameters())
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, freeze_projector=True)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    peft_model.save_pretrained(tmp_path)
    assert not [k for k in load_file(tmp_path / "adapter_model.safetensors") if "multi_modal_projector" in k]
    with pytest.raises(ValueError, match="contradict"):
        freeze_for_stage(model, projector_only=True, freeze_projector=True)


def test_learning_rate_groups_projector_and_lora_plus(tiny_base, tmp_path):
    """`--mm_projector_lr` for the projector, `--lora_plus_ratio` × the rate for the LoRA B matrices."""
    from roillava.model import add_lora, freeze_for_stage
    from roillava.train import LLaVATrainer, TrainingArguments

    model = LlavaForConditionalGeneration.from_pretrained(tiny_base)
    freeze_for_stage(model, projector_only=False, freeze_projector=False)
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, freeze_projector=False)
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=0.1, mm_projector_lr=0.5, lora_plus_ratio=4, report_to=[]
    )
    optimizer = LLaVATrainer(model=peft_model, args=args).create_optimizer()
    names = {id(p): n for n, p in peft_model.named_parameters()}
    by_lr: dict[float, list[str]] = {}
    for group in optimizer.param_groups:
        by_lr.setdefault(group["lr"], []).extend(names[id(p)] for p in group["params"])
    assert set(by_lr) == {0.1, 0.4, 0.5}
    assert by_lr[0.1] and all(".lora_A." in n for n in by_lr[0.1])
    assert by_lr[0.4] and all(".lora_B." in n for n in by_lr[0.4])
    assert by_lr[0.5] and all("multi_modal_projector" in n for n in by_lr[0.5])
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {n for group in by_lr.values() for n in group}


def test_finetune_lora_zero3_bf16_trains(tiny_base, toy_world, tmp_path):
    """The script's own precision (bf16) under ZeRO-3: every trainable weight (LoRA and the projector)
    stays in the model's dtype, so ZeRO-3's one flat buffer takes them (fp32 LoRA beside bf16 stops it)."""
    out = tmp_path / "cos-lora-bf16"
    env = toy_lora_env(
        tiny_base, toy_world, out, 7,
        MAX_STEPS="1", BF16="True", FREEZE_PROJECTOR="False", EXTRA_ARGS="--use_cpu True --warmup_steps 0",
    )  # fmt: skip
    log = run_script("scripts/v1_5/finetune_lora.sh", env, tmp_path)
    assert "'loss'" in log
    adapter = load_file(out / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.bfloat16}
    assert any("multi_modal_projector" in k for k in adapter) and any("lora_A" in k for k in adapter)


def test_qlora_four_bit_step(tiny_base, toy_world, tmp_path):
    """`--bits 4` (QLoRA, under ZeRO-2): the language model's linear layers load as bitsandbytes 4-bit,
    the vision tower, projector and head stay floating point, and a LoRA step trains."""
    out = tmp_path / "qlora"
    env = toy_lora_env(
        tiny_base, toy_world, out, 11,
        MAX_STEPS="1", BF16="True", DS_CONFIG="./scripts/zero2.json",
        EXTRA_ARGS="--use_cpu True --warmup_steps 0 --bits 4",
    )  # fmt: skip
    log = run_script("scripts/v1_5/finetune_lora.sh", env, tmp_path)
    assert "'loss'" in log
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)  # the base's projector is shared by default
    assert json.loads((out / "roillava_train_config.json").read_text())["training"]["bits"] == 4


def test_qlora_quantises_the_language_model_only(tiny_base):
    import bitsandbytes as bnb

    from roillava.model import add_lora, freeze_for_stage, load_base

    for bits, linear in ((4, bnb.nn.Linear4bit), (8, bnb.nn.Linear8bitLt)):
        model = load_base(str(tiny_base), dtype=torch.bfloat16, bits=bits)
        lm_linears = [
            m
            for n, m in model.named_modules()
            if "language_model" in n and n.endswith(("q_proj", "down_proj"))
        ]
        assert lm_linears and all(isinstance(m, linear) for m in lm_linears)
        for name, p in model.named_parameters():
            if "vision_tower" in name or "multi_modal_projector" in name or name.startswith("lm_head"):
                assert p.dtype == torch.bfloat16, name
        freeze_for_stage(model, projector_only=False, freeze_projector=False)  # no grads asked of ints
        peft_model = add_lora(model, r=4, alpha=8, dropout=0.0)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        assert trainable and all(p.is_floating_point() for p in trainable)
        assert find_projector(peft_model).linear_1.weight.dtype == torch.bfloat16


def test_finetune_lora_twice_with_one_seed_gives_the_same_adapter(tiny_base, toy_world, tmp_path):
    """Two runs with the same SEED save bitwise-equal adapters on the CPU: the LoRA matrices, drawn
    before the Trainer seeds, are seeded too (they were not: two demo runs' ROI adapters differed)."""
    adapters = []
    for run in ("a", "b"):
        out = tmp_path / run
        env = toy_lora_env(
            tiny_base, toy_world, out, 13,
            MAX_STEPS="2", SEED="5", LAUNCHER="python", DS_CONFIG="", WORKERS="1",
            EXTRA_ARGS="--warmup_steps 0 --lora_dropout 0",
        )  # fmt: skip
        run_script("scripts/v1_5/finetune_lora.sh", env, tmp_path)
        adapters.append(load_file(out / "adapter_model.safetensors"))
    a, b = adapters
    assert a.keys() == b.keys() and any("lora_A" in k for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
