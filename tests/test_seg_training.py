"""SegLLaVA end to end as a user runs it: `deepspeed train_ds.py …` (LISA's README command) for 2 steps on the tiny
base + toy world, then validation, `eval/reasonseg.sh`, the LoRA merge and `--auto_resume`."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import SamModel

from segllava.inference import teacher_forced_masks
from segllava.masks import open_rgb
from segllava.model import SegLLaVA
from segllava.sources import val_items

ROOT = Path(__file__).resolve().parent.parent
SEG = ROOT / "SegLLaVA"
TOY_FLAGS = [
    "--sem_seg_data=ade20k", "--refer_seg_data=refcoco", "--epochs=1", "--steps_per_epoch=2", "--batch_size=1",
    "--grad_accumulation_steps=1", "--precision=fp32", "--workers=0", "--gradient_checkpointing=False",
    "--lr=1e-2", "--warmup_steps=0", "--val_batch_size=2",
]  # fmt: skip


def _write_refcoco(root: Path) -> None:
    """A one-image refCOCO in REFER's layout (refs pickle + instances.json + train2014 image)."""
    base = root / "refer_seg" / "refcoco"
    base.mkdir(parents=True)
    image_dir = root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    image_dir.mkdir(parents=True)
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(image_dir / "COCO_train2014_000000000005.jpg")
    refs = [{"ref_id": 0, "ann_id": 50, "image_id": 5, "split": "train", "sentences": [{"sent": "left box"}]}]
    with open(base / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    instances = {
        "images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 50, "image_id": 5, "category_id": 1, "segmentation": [[4, 4, 30, 4, 30, 40, 4, 40]]}
        ],
        "categories": [{"id": 1, "name": "box"}],
    }
    (base / "instances.json").write_text(json.dumps(instances))


@pytest.fixture(scope="module")
def run(tiny_base, toy_world, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("seg_run")
    dataset = tmp / "dataset"
    dataset.mkdir()
    for name in ("ade20k", "reason_seg"):
        (dataset / name).symlink_to(toy_world["dataset"] / name)
    _write_refcoco(dataset)
    # SAM given as Meta's original .pth (the real SAM is downloaded that way); it is converted on load.
    from test_sam_checkpoint import _meta_to_hf

    hf_state = SamModel.from_pretrained(tiny_base / "sam").state_dict()
    pth = tmp / "sam_tiny.pth"
    torch.save({meta: hf_state[hf] for meta, hf in _meta_to_hf(num_blocks=2).items()}, pth)
    cmd = [
        "deepspeed", "--num_gpus", "1", "--master_port", str(29500 + os.getpid() % 500), "train_ds.py",
        f"--version={tiny_base}", f"--dataset_dir={dataset}", f"--vision_pretrained={pth}", f"--sam_config={tiny_base / 'sam' / 'config.json'}",
        "--dataset=sem_seg||refer_seg", "--sample_rates=3,1", "--exp_name=toy", f"--log_base_dir={tmp / 'runs'}",
        *TOY_FLAGS,
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=SEG, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    return {"out": tmp / "runs" / "toy", "log": log, "dataset": dataset, "cmd": cmd, "env": env, "tmp": tmp}


def test_two_deepspeed_steps_write_a_self_contained_adapter(run) -> None:
    out, log = run["out"], run["log"]
    assert "DeepSpeed config: " in log and "zero2.json" in log
    assert "'loss'" in log and "'ce_loss'" in log and "'bce_loss'" in log and "'dice_loss'" in log
    ckpt = out / "checkpoint-2"
    for d in (out, ckpt):
        for name in (
            "adapter_model.safetensors",
            "seg_heads.safetensors",
            "segllava_config.json",
            "tokenizer.json",
        ):
            assert (d / name).is_file(), d / name
    assert any((ckpt / "global_step2").iterdir())  # the DeepSpeed state --auto_resume restarts from
    # DeepSpeed's module states hold only what trains (about the adapter + heads), not the frozen LLaVA and SAM.
    trained_bytes = sum(
        (ckpt / f).stat().st_size for f in ("adapter_model.safetensors", "seg_heads.safetensors")
    )
    states_bytes = sum(f.stat().st_size for f in (ckpt / "global_step2").glob("*model_states.pt"))
    assert 0 < states_bytes < 2 * trained_bytes
    # The default --train_embeddings new_tokens: the adapter holds the added tokens' rows, not the matrices.
    adapter = load_file(ckpt / "adapter_model.safetensors")
    rows = [v for k, v in adapter.items() if "trainable_tokens_delta" in k]
    assert len(rows) == 2 and all(v.shape[0] == 3 for v in rows)
    assert not any("embed_tokens.weight" in k or "lm_head.weight" in k for k in adapter)
    assert list(out.glob("events.out.tfevents.*"))  # TensorBoard, in the run directory as LISA's
    config = json.loads((out / "segllava_config.json").read_text())
    assert config["weights"] == "lora" and config["sam_trained"] == ["mask_decoder"]
    assert config["vision_pretrained"].endswith("sam_tiny.pth")
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_giou" in h]
    assert len(evals) == 1 and 0.0 <= evals[0]["eval_giou"] <= 1.0  # validated once, at the epoch's end
    assert all("ce_loss" in h for h in state["log_history"] if "loss" in h)
    train_args = json.loads((out / "segllava_train_config.json").read_text())["args"]
    assert train_args["dataset"] == "sem_seg||refer_seg" and train_args["lora_r"] == 8


def test_merge_then_reload_gives_equal_masks(run, tmp_path) -> None:
    from project_scripts import load_script

    merge_and_save = load_script("SegLLaVA/merge_lora_weights_and_save_hf_model.py").merge_and_save

    merged_dir = merge_and_save(run["out"], tmp_path / "merged")
    adapter = SegLLaVA.from_pretrained(run["out"])
    merged = SegLLaVA.from_pretrained(merged_dir)
    assert json.loads((merged_dir / "segllava_config.json").read_text())["weights"] == "full"
    assert (merged_dir / "sam" / "model.safetensors").is_file()
    items = val_items(run["dataset"], "ReasonSeg|val")[:2]
    images = [open_rgb(it.image_path) for it in items]
    questions = [it.question for it in items]
    a = teacher_forced_masks(adapter, adapter.processor, images, questions, "[SEG].")
    b = teacher_forced_masks(merged, merged.processor, images, questions, "[SEG].")
    for ma, mb in zip(a, b):
        torch.testing.assert_close(ma[0], mb[0], atol=1e-4, rtol=1e-4)
        assert torch.equal(ma[0] > 0, mb[0] > 0)


def test_reasonseg_runner_end_to_end(run, tmp_path) -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "eval" / "reasonseg.sh"), "--model", str(run["out"]), "--dataset-dir", str(run["dataset"]),
         "--out", str(tmp_path / "rs"), "--limit", "2", "--batch_size", "2", "--max_new_tokens", "4"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "rs" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["val_dataset"] == "ReasonSeg|val"
    for key in ("giou", "ciou", "giou_generated", "ciou_generated"):
        assert 0.0 <= metrics[key] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "rs" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"text", "intersection", "union", "target_size"} <= set(rows[0])


def test_eval_only_resumes_the_last_checkpoint(run, capsys) -> None:
    """`--eval_only` with --auto_resume picks up checkpoint-2 and prints its gIoU/cIoU (in-process, no DeepSpeed)."""
    from segllava.train import train

    flags = run["cmd"][run["cmd"].index("train_ds.py") + 1 :]
    train([*flags, "--eval_only", "--deepspeed="])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert report["checkpoint"].endswith("checkpoint-2") and report["n"] == 3
