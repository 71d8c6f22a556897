"""RoiLLaVA's training scripts at llava-1.5-7b-hf's real widths (1 text layer, 2 CLIP-336 layers): one
step each through `bash scripts/v1_5/*.sh`, in bf16 as the scripts default, with the checkpoints' contents,
image rows and the saved processor checked.

Run the whole file under `flock /tmp/fast-heavy.lock` (make test-real): each run holds a 0.5B-parameter
model. Full fine-tuning uses SGD here: AdamW's two fp32 moments of 0.49B trainable weights (3.9 GB) would
push one CPU run past 10 GB; the recipe's AdamW path is the same code, exercised by every other run.
Each run's wall time, s/step and peak RSS (the process tree's) are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parent.parent
ROI = ROOT / "RoiLLaVA"
IMAGE_ROWS = 576  # CLIP ViT-L/14 at 336 px
PROJECTOR_PARAMS = 1024 * 4096 + 4096 + 4096 * 4096 + 4096  # mlp2x_gelu, CLIP-L → LLaMA-7B


def peak_rss_of_tree(proc: subprocess.Popen, stop: threading.Event, peak: list[int]) -> None:
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            tree = [root, *root.children(recursive=True)]
            peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)


def run_real(script: str, env: dict, log_dir: Path, name: str) -> dict:
    """Run one training script as a user would (bf16 on the CPU); return its log and measurements."""
    full_env = {
        **os.environ,
        "BF16": "True",
        "NUM_GPUS": "1",
        "WORKERS": "0",
        "BATCH": "1",
        "MAX_STEPS": "1",
        "LOG_STEPS": "1",
        "GRAD_CKPT": "True",
        "MASTER_PORT": str(29500 + (os.getpid() + hash(name)) % 1000),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # deepspeed beside this python
        **env,
    }
    full_env["EXTRA_ARGS"] = f"--use_cpu True --warmup_steps 0 {env.get('EXTRA_ARGS', '')}"
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", script], cwd=ROI, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=peak_rss_of_tree, args=(proc, stop, peak), daemon=True)
    watcher.start()
    log, _ = proc.communicate(timeout=900)
    stop.set()
    watcher.join()
    seconds = time.perf_counter() - start
    (log_dir / f"{name}.log").write_text(log)
    assert proc.returncode == 0, log[-5000:]
    assert "'loss'" in log
    state = json.loads((Path(env["OUTPUT_DIR"]) / "trainer_state.json").read_text())
    runtime = next(e["train_runtime"] for e in state["log_history"] if "train_runtime" in e)
    result = {
        "run": name,
        "wall_s": round(seconds, 1),
        "s_per_step": round(runtime / state["global_step"], 1),
        "peak_rss_gb": round(peak[0] / 2**30, 2),
    }
    print(f"\n[real] {json.dumps(result)}")
    return result


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_saved_processor(out: Path, do_pad: bool) -> None:
    config = json.loads((out / "processor_config.json").read_text())
    image_processor = config["image_processor"]
    assert image_processor["image_processor_type"].startswith("LlavaImageProcessor")  # not the hub's CLIP one
    assert image_processor["do_pad"] is do_pad
    assert image_processor["crop_size"] == {"height": 336, "width": 336}


@pytest.fixture(scope="module")
def toy(toy_world) -> dict:
    toy = toy_world["playground"] / "data" / "toy"
    return {
        "IMAGE_FOLDER": str(toy / "images"),
        "instruct": str(toy / "llava_toy_instruct.json"),
        "captions": str(toy / "blip_laion_cc_sbu_toy.json"),
        "roi": str(toy / "chain-of-spot.json"),
    }


def test_real_image_rows_and_text_only_zero_image(real_base, toy, tmp_path):
    """576 image rows per image, 1,152 for a Chain-of-Spot sample (the view and its ROI crop), both on the
    padded 336 px frame; a text-only batch runs a zero 336 px image through the tower (weight 0)."""
    from transformers import LlavaForConditionalGeneration

    from roillava.cos_data import ChainOfSpotDataset
    from roillava.data import DataCollatorForSupervisedDataset, LazySupervisedDataset
    from roillava.model import find_projector, llava_processor
    from roillava.train import LLaVATrainer, TrainingArguments, processed_image_size

    processor = llava_processor(real_base, "pad")
    model = LlavaForConditionalGeneration.from_pretrained(real_base, dtype=torch.bfloat16)
    kw = dict(
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        model_config=model.config,
        template="v1",
        max_length=2048,
    )
    image_id = model.config.image_token_id
    plain = LazySupervisedDataset(toy["instruct"], toy["IMAGE_FOLDER"], **kw)[0]
    assert int((plain["input_ids"] == image_id).sum()) == IMAGE_ROWS
    assert plain["pixel_values"].shape == (1, 3, 336, 336)
    cos = ChainOfSpotDataset(toy["instruct"], toy["IMAGE_FOLDER"], roi_data_path=toy["roi"], **kw)[0]
    assert int((cos["input_ids"] == image_id).sum()) == 2 * IMAGE_ROWS
    assert cos["pixel_values"].shape == (2, 3, 336, 336)

    text = tmp_path / "text.json"
    convs = [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red."}]
    text.write_text(json.dumps([{"id": "t", "conversations": convs}]))
    item = LazySupervisedDataset(str(text), toy["IMAGE_FOLDER"], **kw)[0]
    batch = DataCollatorForSupervisedDataset(
        processor.tokenizer.pad_token_id, image_size=processed_image_size(processor.image_processor)
    )([item])
    assert batch["pixel_values"].shape == (1, 3, 336, 336) and not batch["image_present"].any()
    rows = []
    projector = find_projector(model)
    hook = projector.register_forward_hook(lambda m, i, out: rows.append(out.shape[1]))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=True)
    loss = LLaVATrainer(model=model, args=args).compute_loss(model, dict(batch))
    loss.backward()
    hook.remove()
    assert rows == [IMAGE_ROWS] and torch.isfinite(loss)
    assert all(p.grad is not None for p in projector.parameters())


def test_real_pretrain_checkpoint_holds_the_projector_only(real_base, toy, tmp_path):
    """System-1 stage 1 (ZeRO-2): the checkpoint is the projector and DeepSpeed's states of it, nothing else
    (it held the whole frozen model's weights and DeepSpeed states before)."""
    out = tmp_path / "pretrain"
    env = {
        "MODEL": str(real_base),
        "DATA_PATH": toy["captions"],
        "IMAGE_FOLDER": toy["IMAGE_FOLDER"],
        "OUTPUT_DIR": str(out),
        "SAVE_STEPS": "1",
        # constant: the resume below extends the run, and a cosine over 1 step would end at rate 0
        "EXTRA_ARGS": "--lr_scheduler_type constant",
    }
    result = run_real("scripts/v1_5/pretrain.sh", env, tmp_path, "pretrain")
    ckpt = out / "checkpoint-1"
    files = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    assert "mm_projector.safetensors" in files and not any(f.endswith("model.safetensors") for f in files)
    projector = load_file(ckpt / "mm_projector.safetensors")
    assert sum(t.numel() for t in projector.values()) == PROJECTOR_PARAMS
    # bf16 projector file + DeepSpeed: fp32 master, two Adam moments, the module's trainable weights
    assert dir_bytes(ckpt) < 18 * PROJECTOR_PARAMS, files
    assert set(load_file(out / "mm_projector.safetensors")) == set(projector)
    assert not (out / "model.safetensors").exists()
    check_saved_processor(out, do_pad=False)  # stage 1 centre-crops (`square`), as LLaVA's
    print(f"[real] pretrain checkpoint: {dir_bytes(ckpt) / 2**20:.0f} MiB; {result}")
    # ... and a run resumes from it: the projector and its optimizer states come back, the rest from the base
    before = load_file(out / "mm_projector.safetensors")
    run_real("scripts/v1_5/pretrain.sh", {**env, "MAX_STEPS": "2"}, tmp_path, "pretrain_resume")
    assert "resuming from" in (tmp_path / "pretrain_resume.log").read_text()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    after = load_file(out / "mm_projector.safetensors")
    assert all(not torch.equal(after[k], before[k]) for k in before)


def test_real_cos_lora_zero3_bf16_checkpoint_holds_the_adapter_only(real_base, toy, tmp_path):
    """`finetune_lora.sh` as shipped (ZeRO-3, bf16, LoRA r128/α256, the base's projector shared), two
    images per sample: the checkpoint holds the adapter and DeepSpeed's states of it."""
    out = tmp_path / "cos-lora"
    env = {
        "MODEL": str(real_base),
        "DATA_PATH": toy["instruct"],
        "IMAGE_FOLDER": toy["IMAGE_FOLDER"],
        "ROI_DATA": toy["roi"],
        "OUTPUT_DIR": str(out),
        "SAVE_STEPS": "1",
    }
    result = run_real("scripts/v1_5/finetune_lora.sh", env, tmp_path, "cos_lora_zero3")
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert {t.dtype for t in adapter.values()} == {torch.bfloat16}
    lora_params = sum(t.numel() for t in adapter.values())
    ckpt = out / "checkpoint-1"
    files = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in files and not any(
        f.endswith("model.safetensors") for f in files if "adapter" not in f
    )
    assert dir_bytes(ckpt) < 18 * lora_params, files
    check_saved_processor(out, do_pad=True)
    print(f"[real] LoRA checkpoint: {dir_bytes(ckpt) / 2**20:.0f} MiB for {lora_params / 1e6:.1f}M; {result}")


@pytest.mark.parametrize(
    ("script", "extra"),
    [("scripts/v1_5/finetune.sh", {}), ("scripts/v1_5/finetune_cos.sh", {"ROI_DATA": "roi"})],
    ids=["system1", "chain_of_spot"],
)
def test_real_full_finetune_zero3_bf16(script, extra, real_base, toy, tmp_path):
    """Full fine-tuning (language model + projector, tower frozen) under ZeRO-3 in bf16; the saved model
    loads with every weight and the padded-frame processor."""
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "full"
    env = {
        "MODEL": str(real_base),
        "DATA_PATH": toy["instruct"],
        "IMAGE_FOLDER": toy["IMAGE_FOLDER"],
        "OUTPUT_DIR": str(out),
        "EXTRA_ARGS": "--optim sgd",
        **{k: toy[v] for k, v in extra.items()},
    }
    run_real(script, env, tmp_path, f"full_{Path(script).stem}")
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    check_saved_processor(out, do_pad=True)
    # The end-of-run checkpoint: the 16-bit model, and DeepSpeed's states of the trainable weights only
    # (SGD: the fp32 master copy; the frozen tower's weights are not in them).
    trainable = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" not in n)
    (ckpt,) = out.glob("checkpoint-*")
    (states,) = ckpt.glob("global_step*")
    assert dir_bytes(states) < 4 * trainable + 50 * 2**20
    print(
        f"[real] full checkpoint: {dir_bytes(ckpt) / 2**30:.2f} GiB, DeepSpeed states {dir_bytes(states) / 2**30:.2f} GiB"
    )


def test_real_qlora_four_bit_step(real_base, toy, tmp_path):
    """QLoRA (`--bits 4`, ZeRO-2): the 7B-width linear layers in bitsandbytes 4-bit, tower and projector in
    bf16, one LoRA step; the adapter holds LoRA weights only."""
    import bitsandbytes as bnb

    from roillava.model import load_base

    model = load_base(str(real_base), dtype=torch.bfloat16, bits=4)
    lm = [m for n, m in model.named_modules() if "language_model" in n and n.endswith("_proj")]
    assert len(lm) == 7 and all(isinstance(m, bnb.nn.Linear4bit) for m in lm)
    for name, p in model.named_parameters():
        if "vision_tower" in name or "multi_modal_projector" in name:
            assert p.dtype == torch.bfloat16, name
    del model
    out = tmp_path / "qlora"
    env = {
        "MODEL": str(real_base),
        "DATA_PATH": toy["instruct"],
        "IMAGE_FOLDER": toy["IMAGE_FOLDER"],
        "ROI_DATA": toy["roi"],
        "OUTPUT_DIR": str(out),
        "DS_CONFIG": "./scripts/zero2.json",
        "EXTRA_ARGS": "--bits 4",
    }
    run_real("scripts/v1_5/finetune_lora.sh", env, tmp_path, "qlora4")
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)


def test_real_finetune_with_lora_flags_zero3_bf16(real_base, toy, tmp_path):
    """`finetune.sh` (System-1 instruction data) with LoRA flags under ZeRO-3 in bf16: LoRA weights in
    the model's dtype beside the frozen bf16 model."""
    out = tmp_path / "lora"
    env = {
        "MODEL": str(real_base),
        "DATA_PATH": toy["instruct"],
        "IMAGE_FOLDER": toy["IMAGE_FOLDER"],
        "OUTPUT_DIR": str(out),
        "EXTRA_ARGS": "--lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5",
    }
    run_real("scripts/v1_5/finetune.sh", env, tmp_path, "finetune_lora_flags")
    adapter = load_file(out / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.bfloat16}
    assert any("multi_modal_projector" in k for k in adapter)  # the projector trains with it here
