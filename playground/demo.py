"""`make demo`: the whole FaST pipeline on the toy world, through the same scripts real runs use.

Each stage writes a `.done` marker (with its wall time) when it finishes, so a rerun skips
finished stages; delete `playground/demo/` (or one stage's folder) to redo them. Results go to
`playground/demo/results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAYGROUND = ROOT / "playground"
DEMO = PLAYGROUND / "demo"
TOY = PLAYGROUND / "data" / "toy"
EVAL_TOY = PLAYGROUND / "data" / "eval" / "toy"
TOWER = PLAYGROUND / "tiny_tower"
BASE = DEMO / "tiny_base"
CKPT = DEMO / "checkpoints"

# The toy recipe: what differs from the real 8-GPU defaults of each script.
SYSTEM1_PRETRAIN = {"MAX_STEPS": "100", "BATCH": "16", "LR": "2e-3"}
SYSTEM1_FINETUNE = {"MAX_STEPS": "900", "BATCH": "16", "LR": "1e-3"}
ROI_TRAIN = {
    "MAX_STEPS": "200",
    "BATCH": "16",
    "LR": "1e-3",
    "MM_PROJECTOR_LR": "1e-3",
    "LORA_R": "32",
    "LORA_ALPHA": "64",
}
SWITCH_ARCH = "--object_projector_depth 2 --object_projector_heads 4 --object_projector_dim_head 48"
SWITCH_PRETRAIN = {
    "MAX_STEPS": "60",
    "BATCH": "16",
    "LR": "2e-3",
    "EXTRA_ARGS": f"{SWITCH_ARCH} --warmup_steps 0",
}
SWITCH_TRAIN = {
    "MAX_STEPS": "250",
    "BATCH": "16",
    "LR": "1e-3",
    "MM_PROJECTOR_LR": "1e-3",
    "LORA_R": "16",
    "LORA_ALPHA": "32",
    "EXTRA_ARGS": f"{SWITCH_ARCH} --lora_dropout 0",
}
TOY_ENV = {
    "IMAGE_FOLDER": str(TOY / "images"),
    "DS_CONFIG": "./scripts/zero2.json",
    "BF16": "False",
    "NUM_GPUS": "1",
    "WORKERS": "1",
    "GRAD_CKPT": "False",
    "LOG_STEPS": "50",
    "SAVE_STEPS": "300",
}


def run_stage(name: str, fn: Callable[[], dict | None], timings: dict) -> dict | None:
    """Run `fn` unless its marker says it finished; record its wall time either way."""
    marker = DEMO / "stages" / f"{name}.done"
    if marker.exists():
        record = json.loads(marker.read_text())
        print(f"[demo] {name}: done earlier ({record['seconds']:.0f}s), skipped", flush=True)
        timings[name] = record["seconds"]
        return record.get("result")
    print(f"[demo] {name} ...", flush=True)
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"seconds": seconds, "result": result}))
    timings[name] = seconds
    print(f"[demo] {name}: {seconds:.0f}s", flush=True)
    return result


def sh(script: str, cwd: Path, env: dict[str, str], log: Path) -> None:
    """Run one of the project's shell scripts as a user would; its output goes to the console and `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **TOY_ENV, **env, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as f:
        proc = subprocess.Popen(
            ["bash", script], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            f.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        proc.wait()
    if proc.returncode:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"[demo] {script} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")


def py(args: list[str], log: Path | None = None) -> None:
    cmd = [sys.executable, "-m", *args]
    if log is None:
        subprocess.run(cmd, cwd=ROOT, check=True)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        if subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"[demo] {' '.join(args[:1])} failed; see {log}")


def stage_world() -> dict:
    from playground.toyworld import generate

    return generate(PLAYGROUND, ROOT / "dataset", seed=0)


def stage_tower() -> None:
    if not (TOWER / "model.safetensors").exists():
        py(["playground.vision_pretrain", "--out", str(TOWER)], DEMO / "logs" / "vision_pretrain.log")


def stage_base() -> None:
    py(
        ["playground.tiny_base", "--out", str(BASE), "--vision-tower", str(TOWER)],
        DEMO / "logs" / "tiny_base.log",
    )


def stage_system1_pretrain() -> None:
    env = {
        "MODEL": str(BASE),
        "DATA_PATH": str(TOY / "blip_laion_cc_sbu_toy.json"),
        "OUTPUT_DIR": str(CKPT / "system1-pretrain"),
        **SYSTEM1_PRETRAIN,
    }
    sh("scripts/v1_5/pretrain.sh", ROOT / "RoiLLaVA", env, DEMO / "logs" / "system1_pretrain.log")


def stage_system1_finetune() -> None:
    env = {
        "MODEL": str(BASE),
        "PROJECTOR": str(CKPT / "system1-pretrain" / "mm_projector.safetensors"),
        "DATA_PATH": str(TOY / "llava_toy_instruct.json"),
        "OUTPUT_DIR": str(CKPT / "system1"),
        **SYSTEM1_FINETUNE,
    }
    sh("scripts/v1_5/finetune.sh", ROOT / "RoiLLaVA", env, DEMO / "logs" / "system1_finetune.log")


def stage_system1_eval() -> dict:
    sys.path.insert(0, str(ROOT / "RoiLLaVA"))
    from eval.toy import toy_accuracy
    from roillava.answer import answer_file, load_for_inference

    model, processor = load_for_inference(str(CKPT / "system1"))
    answers = DEMO / "answers" / "system1.jsonl"
    run = answer_file(
        model,
        processor,
        str(EVAL_TOY / "llava_toy_val.jsonl"),
        str(TOY / "images"),
        str(answers),
        batch_size=16,
        max_new_tokens=8,
    )
    acc = toy_accuracy(answers, EVAL_TOY / "toy_val_annotations.json")
    return {**acc, "sec_per_question": run["sec_per_question"]}


def stage_roi_train() -> None:
    env = {
        "MODEL": str(CKPT / "system1"),
        "DATA_PATH": str(TOY / "llava_toy_instruct.json"),
        "ROI_DATA": str(TOY / "chain-of-spot.json"),
        "OUTPUT_DIR": str(CKPT / "roi"),
        **ROI_TRAIN,
    }
    sh("scripts/v1_5/finetune_lora.sh", ROOT / "RoiLLaVA", env, DEMO / "logs" / "roi_train.log")


def stage_roi_eval() -> dict:
    sys.path.insert(0, str(ROOT / "RoiLLaVA"))
    from eval.toy import toy_roi_metrics
    from roillava.answer import load_for_inference
    from roillava.roi import RoiConfig, roi_answer_file

    model, processor = load_for_inference(str(CKPT / "roi"))
    answers = DEMO / "answers" / "roi_two_stage.jsonl"
    config = RoiConfig(roi_max_new_tokens=24, max_new_tokens=8)
    run = roi_answer_file(
        model,
        processor,
        str(EVAL_TOY / "llava_toy_val.jsonl"),
        str(TOY / "images"),
        str(answers),
        config=config,
        batch_size=16,
    )
    return {
        **toy_roi_metrics(answers, EVAL_TOY / "toy_val_annotations.json"),
        "sec_per_question": run["sec_per_question"],
    }


def stage_switch_pretrain() -> None:
    env = {
        "MODEL": str(CKPT / "system1"),
        "DATA_PATH": str(TOY / "blip_laion_cc_sbu_toy.json"),
        "OUTPUT_DIR": str(CKPT / "switch-pretrain"),
        **SWITCH_PRETRAIN,
    }
    sh("pretrain.sh", ROOT / "SwiLLaVA", env, DEMO / "logs" / "switch_pretrain.log")


def stage_switch_train() -> None:
    env = {
        "MODEL": str(CKPT / "system1"),
        "DATA_PATH": str(TOY / "seal"),
        "OBJECT_PROJECTOR": str(CKPT / "switch-pretrain" / "mm_projector_object.safetensors"),
        "OUTPUT_DIR": str(CKPT / "switch"),
        **SWITCH_TRAIN,
    }
    sh("finetune_lora.sh", ROOT / "SwiLLaVA", env, DEMO / "logs" / "switch_train.log")


def stage_switch_eval() -> dict:
    sys.path.insert(0, str(ROOT / "SwiLLaVA"))
    from swillava.infer import SwitchAdapter, toy_switch_metrics

    adapter = SwitchAdapter.from_pretrained(CKPT / "switch", max_new_tokens=24)
    return toy_switch_metrics(
        adapter,
        str(EVAL_TOY / "llava_toy_val.jsonl"),
        str(EVAL_TOY / "toy_val_annotations.json"),
        str(TOY / "images"),
        batch_size=32,
    )


ADAPTER_STAGES = {
    "roi": (("roi_train", stage_roi_train), ("roi_eval", stage_roi_eval)),
    "switch": (
        ("switch_pretrain", stage_switch_pretrain),
        ("switch_train", stage_switch_train),
        ("switch_eval", stage_switch_eval),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--adapters",
        default="",
        help="comma-separated adapter stages to add after System 1: roi, switch (their toy recipes are still being tuned)",
    )
    args = parser.parse_args()
    timings: dict[str, float] = {}
    results: dict = {}
    run_stage("toy_world", stage_world, timings)
    run_stage("vision_tower", stage_tower, timings)
    run_stage("tiny_base", stage_base, timings)
    run_stage("system1_pretrain", stage_system1_pretrain, timings)
    run_stage("system1_finetune", stage_system1_finetune, timings)
    results["system1"] = run_stage("system1_eval", stage_system1_eval, timings)
    for adapter in filter(None, args.adapters.split(",")):
        if adapter not in ADAPTER_STAGES:
            raise SystemExit(f"unknown adapter {adapter!r}; known: {sorted(ADAPTER_STAGES)}")
        for name, fn in ADAPTER_STAGES[adapter]:
            result = run_stage(name, fn, timings)
        results[adapter] = result
    results["timings"] = {k: round(v, 1) for k, v in timings.items()}
    (DEMO / "results.json").write_text(json.dumps(results, indent=1))
    s1 = results["system1"]
    print("\n| system   | acc_easy | acc_hard | acc_all | s/question |")
    print("|----------|----------|----------|---------|------------|")
    print(
        f"| System 1 | {s1['acc_easy']:.3f}    | {s1['acc_hard']:.3f}    | {s1['acc_all']:.3f}   | {s1['sec_per_question']:.4f}     |"
    )
    print(f"\ntimings (s): {results['timings']}\nwritten: {DEMO / 'results.json'}")


if __name__ == "__main__":
    main()
