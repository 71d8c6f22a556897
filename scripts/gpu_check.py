"""One-GPU check of the real training and inference paths, in under 9 minutes on one H100.

1. LoRA r128 (every language-model linear, the base's projector shared) under DeepSpeed ZeRO-3 in bf16
   with SDPA, at LLaMA-7B width: 8 of the 32 decoder layers and the full CLIP ViT-L/14-336 (576 image
   rows), random weights built under `deepspeed.zero.Init`. Prints tokens/s, step time, peak GPU memory
   and MFU.
2. QLoRA: a 4-bit (NF4) load of a real-width base through `roillava.model.load_base(bits=4)` and one
   LoRA step; skipped, saying so, when bitsandbytes is not importable.
3. The agent (`fast`, every stage: switch, ROI, seg with SAM-H at 1024 px) on one image in bf16, with
   untrained adapters at the real widths.

`--dry-run` runs the same code on the CPU at tiny widths, one step each (the test suite runs it, so the
check cannot rot). The GPU machine needs DeepSpeed (and bitsandbytes for part 2) without a network: put
them in `gpu_deps/` with `bash scripts/gpu_deps.sh` and carry that folder with the checkout (README,
"Training on GPUs").

    python scripts/gpu_check.py [--dry-run] [--work DIR] [--steps 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_with_checkout_on_pythonpath() -> None:
    """On the GPU machine the checkout is copied there, not installed, and DeepSpeed comes in the carried
    `gpu_deps/site`: restart this script once with those folders (and, when the repository is not
    installed, its root and the three projects) on PYTHONPATH, which the training processes it starts
    inherit too. Installed (`make`) with no `gpu_deps/`, it runs as it is."""
    if os.environ.get("FAST_GPU_CHECK_PATHS") == "1":
        return
    paths = [ROOT / "gpu_deps" / "site"] if (ROOT / "gpu_deps" / "site").is_dir() else []
    if importlib.util.find_spec("roillava") is None:
        paths += [ROOT, ROOT / "RoiLLaVA", ROOT / "SwiLLaVA", ROOT / "SegLLaVA"]
    if not paths:
        return
    old = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "FAST_GPU_CHECK_PATHS": "1",
        "PYTHONPATH": os.pathsep.join([*map(str, paths), *([old] if old else [])]),
    }
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


run_with_checkout_on_pythonpath()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Dense bf16 tensor-core peak (FLOP/s) per card, for MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


@dataclass
class Result:
    part: str
    status: str  # ok | skipped | FAILED
    detail: dict


def device_and_peak() -> tuple[torch.device, str, float | None]:
    if not torch.cuda.is_available():
        return torch.device("cpu"), "cpu", None
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return torch.device("cuda", 0), name, peak


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def training_batch(config, batch: int, text_tokens: int, device, dtype) -> dict:
    """LLaVA-1.5 rows: BOS, one image (its 576 rows as `<image>` ids), then text; labels on the text only."""
    vc = config.vision_config
    rows = (vc.image_size // vc.patch_size) ** 2
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, config.text_config.vocab_size, (batch, text_tokens), generator=g)
    text[text == config.image_token_id] = 3
    ids = torch.cat(
        [torch.ones(batch, 1, dtype=torch.long), torch.full((batch, rows), config.image_token_id), text],
        dim=1,
    )
    labels = ids.clone()
    labels[:, : 1 + rows] = -100
    pixels = torch.randn(batch, 3, vc.image_size, vc.image_size, generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
        "pixel_values": pixels.to(device=device, dtype=dtype),
    }


def lm_parameters(model) -> int:
    return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for n, p in model.named_parameters()
               if "language_model" in n and "lora_" not in n)  # fmt: skip


# --- 1. LoRA r128 under ZeRO-3 --------------------------------------------------------------------------------
def zero3_lora(config, *, batch: int, text_tokens: int, steps: int, device, peak: float | None) -> dict:
    import deepspeed
    from transformers import LlavaForConditionalGeneration
    from transformers.integrations import HfDeepSpeedConfig

    from roillava.model import add_lora

    dtype = torch.bfloat16
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    ds_config = {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True},
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    reset_peak(device)
    start = time.perf_counter()
    # As the Trainer does: with an HfDeepSpeedConfig alive, transformers builds (and initialises) the model
    # partitioned under deepspeed.zero.Init, so no rank ever holds the whole model.
    hf_ds_config = HfDeepSpeedConfig(ds_config)
    model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = add_lora(model, r=128, alpha=256, dropout=0.05, freeze_projector=True)
    for p in model.parameters():  # ZeRO-3 packs every trainable weight into one buffer of one dtype
        if p.requires_grad:
            p.data = p.data.to(dtype)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    built = time.perf_counter() - start
    inputs = training_batch(config, batch, text_tokens, engine.device, dtype)
    tokens = inputs["input_ids"].numel()
    times, losses = [], []
    for step in range(steps + 1):  # step 0 warms up (allocator, kernels)
        sync(device)
        t = time.perf_counter()
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()
        sync(device)
        if step:
            times.append(time.perf_counter() - t)
        losses.append(float(loss))
    step_time = sum(times) / len(times) if times else float("nan")
    n_lm = lm_parameters(model)
    n_vision = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for n, p in model.named_parameters()
                   if "vision_tower" in n)  # fmt: skip
    image_rows = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
    # Forward and input-gradient backward through the frozen LM (4·N per token) + CLIP's forward (2·N per
    # image row); LoRA's own weights, attention scores and checkpoint recomputation are not counted.
    flops = 4 * n_lm * tokens + 2 * n_vision * batch * image_rows
    out = {
        "text_layers": config.text_config.num_hidden_layers,
        "vision_layers": config.vision_config.num_hidden_layers,
        "batch": batch,
        "tokens_per_step": tokens,
        "trainable_params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in trainable),
        "build_s": round(built, 1),
        "step_s": round(step_time, 3),
        "tokens_per_s": round(tokens / step_time, 1),
        "peak_memory_gb": round(peak_memory_gb(device), 2),
        "mfu": round(flops / step_time / peak, 3) if peak else None,
        "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)],
    }
    del engine, model, optimizer, hf_ds_config
    return out


# --- 2. QLoRA: 4-bit load and one LoRA step ---------------------------------------------------------------------
def qlora_step(base: Path, *, batch: int, text_tokens: int, device) -> dict:
    from roillava.model import add_lora, load_base

    dtype = torch.bfloat16
    reset_peak(device)
    start = time.perf_counter()
    model = load_base(str(base), dtype=dtype, bits=4, device=device)
    loaded = time.perf_counter() - start
    quantised = sorted(
        {type(m).__name__ for n, m in model.named_modules() if "language_model" in n and n.endswith("q_proj")}
    )
    kept = sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith(("linear_1", "lm_head"))})
    model = add_lora(model, r=128, alpha=256, dropout=0.05, freeze_projector=True)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(dtype)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    inputs = training_batch(model.config, batch, text_tokens, device, dtype)
    sync(device)
    t = time.perf_counter()
    # QLoRA keeps the norms in fp32 beside bf16 weights: the step runs under autocast, as the Trainer's bf16 does.
    with torch.autocast(torch.device(device).type, dtype=dtype):
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    sync(device)
    out = {
        "load_s": round(loaded, 1),
        "step_s": round(time.perf_counter() - t, 3),
        "peak_memory_gb": round(peak_memory_gb(device), 2),
        "loss": round(float(loss), 3),
        "lm_linear": quantised,
        "projector_and_lm_head": kept,
    }
    del model, optimizer
    return out


# --- 3. the agent on one image ----------------------------------------------------------------------------------
def agent_on_one_image(base: Path, work: Path, *, device, dry_run: bool) -> dict:
    import numpy as np
    from PIL import Image

    from fast.agent import FastAgent
    from fast.config import AgentConfig
    from playground.real_adapters import save_untrained_adapters

    perceiver = None
    if dry_run:
        from swillava.model import ObjectProjectorConfig

        perceiver = ObjectProjectorConfig(depth=1, heads=2, dim_head=16, num_latents=8, ff_mult=2)
    paths = save_untrained_adapters(
        base, work / "adapters", lora_r=4 if dry_run else 128, perceiver=perceiver
    )
    config = AgentConfig(
        base=str(base), switch=str(paths["switch"]), roi=str(paths["roi"]), seg=str(paths["seg"]),
        device=str(device), dtype="bf16", mode="system2_always", evidence="roi+seg",
        switch_max_new_tokens=2 if dry_run else 8, roi_max_new_tokens=4 if dry_run else 16,
        answer_max_new_tokens=2 if dry_run else 8,
    )  # fmt: skip
    reset_peak(device)
    start = time.perf_counter()
    agent = FastAgent(config)
    loaded = time.perf_counter() - start
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    if not dry_run:
        agent.answer(image, "What is the colour of the cup?")  # warm-up (kernels, allocator)
    sync(device)
    t = time.perf_counter()
    trace = agent.answer(image, "What pattern is on the blue object?")
    sync(device)
    return {
        "load_s": round(loaded, 1),
        "answer_s": round(time.perf_counter() - t, 2),
        "system": trace.system,
        "peak_memory_gb": round(peak_memory_gb(device), 2),
        "resident_ratio": round(agent.model.memory.ratio, 3),
    }


# --- driver ------------------------------------------------------------------------------------------------------
def build_bases(work: Path, dry_run: bool):
    """The ZeRO-3 model's config, and a saved base (with SAM) for the 4-bit load and the agent."""
    from transformers import LlavaConfig

    if dry_run:
        from playground.tiny_base import build_tiny_base

        base = work / "tiny_base"
        if not (base / "config.json").exists():
            build_tiny_base(base)
        config = LlavaConfig.from_pretrained(base)
        config.text_config.num_hidden_layers = 2
        return config, base
    from playground.real_shapes import RealShapeConfig, build_real_shape_base, llava_config

    base = work / "real_base_2l"
    if not (base / "config.json").exists():
        build_real_shape_base(base, RealShapeConfig(text_layers=2))
    return llava_config(RealShapeConfig(text_layers=8, vision_layers=24)), base


def bitsandbytes_problem() -> str | None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a missing CUDA library
        return f"{type(e).__name__}: {e}"
    return None


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny widths, one step each (the same code)")
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--steps", type=int, default=5, help="timed ZeRO-3 steps after one warm-up step")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--text-tokens", type=int, default=448, help="text tokens per row besides the 577 image/BOS"
    )
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    device, name, peak = device_and_peak()
    if device.type == "cuda":
        os.environ.setdefault("DS_ACCELERATOR", "cuda")
    elif not args.dry_run:
        raise SystemExit("no CUDA device: run with --dry-run on a CPU")
    steps, batch, text = (1, 1, 16) if args.dry_run else (args.steps, args.batch, args.text_tokens)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"[gpu-check] device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}); work: {work}")
    start = time.perf_counter()
    config, base = build_bases(work, args.dry_run)
    results: list[Result] = []

    def part(label, fn):
        t = time.perf_counter()
        try:
            detail = fn()
            status = "ok"
        except Exception as e:  # report and go on: every part is worth seeing
            import traceback

            traceback.print_exc()
            detail, status = {"error": f"{type(e).__name__}: {e}"[:300]}, "FAILED"
        detail["wall_s"] = round(time.perf_counter() - t, 1)
        results.append(Result(label, status, detail))
        print(f"[gpu-check] {label}: {status} {json.dumps(detail)}", flush=True)

    try:
        import deepspeed  # noqa: F401

        part("zero3_lora_r128_bf16", lambda: zero3_lora(config, batch=batch, text_tokens=text, steps=steps,
                                                         device=device, peak=peak))  # fmt: skip
    except ImportError as e:
        results.append(
            Result("zero3_lora_r128_bf16", "skipped", {"reason": f"DeepSpeed not importable: {e}"})
        )
    problem = bitsandbytes_problem()
    if problem is None:
        part("qlora_4bit_step", lambda: qlora_step(base, batch=batch, text_tokens=text, device=device))
    else:
        reason = f"bitsandbytes not importable ({problem}); carry it in gpu_deps/ (scripts/gpu_deps.sh)"
        results.append(Result("qlora_4bit_step", "skipped", {"reason": reason}))
        print(f"[gpu-check] qlora_4bit_step: SKIPPED: {reason}")
    part("agent_one_image_bf16", lambda: agent_on_one_image(base, work, device=device, dry_run=args.dry_run))

    print(f"\n| part | status | key numbers |  (device: {name}, total {time.perf_counter() - start:.0f}s)")
    print("|---|---|---|")
    for r in results:
        print(f"| {r.part} | {r.status} | {', '.join(f'{k}={v}' for k, v in r.detail.items())} |")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


if __name__ == "__main__":
    failed = [r for r in main() if r.status == "FAILED"]
    sys.exit(1 if failed else 0)
