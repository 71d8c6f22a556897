"""SegLLaVA's `deepspeed train_ds.py …` at llava-1.5-7b-hf widths with SAM ViT-H widths at 1024 px (`real_base`,
`real_base/sam`), with LISA's defaults (ZeRO-2, bf16, LoRA r8, `--model_max_length 512`), two steps on toy
ReasonSeg / ADE20K data.

Checks what only real shapes show: a conversation holds 576 image rows and still fits LISA's 512; SAM's
64×64 embeddings give 256×256 mask logits, returned at the original image's size; checkpoints hold the
trained weights only (LoRA, the added tokens' rows, the heads).
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parent.parent
SEG = ROOT / "SegLLaVA"


@pytest.fixture(scope="module")
def run(real_base, toy_world, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("real_seg")
    dataset = tmp / "dataset"
    dataset.mkdir()
    for name in ("ade20k", "reason_seg"):
        (dataset / name).symlink_to(toy_world["dataset"] / name)
    cmd = [
        "deepspeed", "--num_gpus", "1", "--master_port", str(29500 + os.getpid() % 500 + 500), "train_ds.py",
        f"--version={real_base}", f"--dataset_dir={dataset}", f"--vision_pretrained={real_base / 'sam'}",
        "--dataset=sem_seg||reason_seg", "--sample_rates=1,1", "--sem_seg_data=ade20k", "--exp_name=real",
        f"--log_base_dir={tmp / 'runs'}", "--epochs=1", "--steps_per_epoch=2", "--batch_size=1",
        "--grad_accumulation_steps=1", "--workers=0", "--warmup_steps=0", "--no_eval=True", "--use_cpu=True",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(cmd, cwd=SEG, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    (tmp / "train.log").write_text(log)
    assert proc.returncode == 0, log[-5000:]
    return {"out": tmp / "runs" / "real", "log": log, "dataset": dataset, "tmp": tmp}


def test_two_bf16_zero2_steps_save_only_trained_weights(run) -> None:
    out, log = run["out"], run["log"]
    assert "zero2.json" in log and "'loss'" in log and "'dice_loss'" in log
    ckpt = out / "checkpoint-2"
    adapter = load_file(ckpt / "adapter_model.safetensors")
    assert {v.dtype for v in adapter.values()} == {torch.bfloat16}
    rows = {k: v for k, v in adapter.items() if "trainable_tokens_delta" in k}
    assert len(rows) == 2 and all(v.shape == (3, 4096) for v in rows.values())  # [SEG], <im_start>, <im_end>
    assert all("lora_" in k or "trainable_tokens_delta" in k for k in adapter)
    heads = load_file(ckpt / "seg_heads.safetensors")
    assert any(k.startswith("text_hidden_fcs.") for k in heads)
    assert any(k.startswith("visual_model.mask_decoder.") for k in heads)
    assert not any(k.startswith("visual_model.vision_encoder.") for k in heads)  # SAM-H's encoder is frozen
    assert not list(out.rglob("model.safetensors"))
    trained = sum((ckpt / f).stat().st_size for f in ("adapter_model.safetensors", "seg_heads.safetensors"))
    states = sum(f.stat().st_size for f in ckpt.glob("global_step*/*model_states.pt"))
    assert 0 < states < 2 * trained < 2**27  # the whole model would be ~1.1 GB
    args = json.loads((out / "segllava_train_config.json").read_text())["args"]
    assert (
        args["model_max_length"] == 512
        and args["precision"] == "bf16"
        and args["train_embeddings"] == "new_tokens"
    )


def test_576_image_rows_fit_lisas_512_and_masks_come_back_at_the_image_size(run) -> None:
    from segllava.hybrid import encode_conversations
    from segllava.inference import teacher_forced_masks
    from segllava.model import SegLLaVA
    from segllava.sources import ReasonSegSource, val_items
    from segllava.train import text_token_limit

    seg = SegLLaVA.from_pretrained(run["out"], dtype=torch.bfloat16)
    assert seg.layout.image_length == 576 and seg.sam_image_size == 1024
    saved = json.loads((run["out"] / "processor_config.json").read_text())["image_processor"]
    assert saved["image_processor_type"].startswith("LlavaImageProcessor") and saved["do_pad"] is True
    tok = seg.processor.tokenizer
    source = ReasonSegSource(run["dataset"], "ReasonSeg|train", 3, 0.1)
    sample = source.sample(random.Random(0))
    ids, _, _ = encode_conversations(sample, tok, seg.layout, seg.seg_token_id, text_token_limit(512))
    assert all(row.count(seg.layout.image_token_id) == 576 and len(row) > 576 for row in ids)

    item = val_items(run["dataset"], "ReasonSeg|val")[0]
    image = Image.open(item.image_path).convert("RGB")
    image = image.crop((0, 0, image.width, image.height * 2 // 3))  # not square: the padded frame matters
    sam = seg.sam_image_embeddings([image])
    assert sam.embeddings.shape[-3:] == (256, 64, 64)
    low_res = seg.decode_masks(torch.zeros(1, 256, dtype=torch.bfloat16), sam.embeddings)
    assert low_res.shape[-2:] == (256, 256)
    ((mask,),) = teacher_forced_masks(seg, seg.processor, [image], [item.question], "[SEG].")
    assert mask.shape == (image.height, image.width) and torch.isfinite(mask.float()).all()
