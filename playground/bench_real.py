"""`make bench-real`: every training entry point at the real LLaVA-1.5-7B / CLIP-336 / SAM-H widths, and the
agent's resident parameters at the true sizes.

Each entry point runs as its user types it (the shell script or `deepspeed train_ds.py`, bf16, DeepSpeed on
gloo when there is no GPU) for a couple of steps on the toy world, in a subprocess timed by
`/usr/bin/time -v` (peak RSS of the largest process of the run). The models have every real width but only
`--text-layers` (default 1) language-model layers, so the numbers compare entry points and catch
regressions (a checkpoint that holds the frozen model, a step that materialises the full vocabulary), they
are not 7B timings. A failing entry point prints FAILED and its last error line; the others still run.

The agent row counts the composed agent on the meta device at the true sizes (32 layers, SAM ViT-H) with
the training scripts' defaults, as a ratio to LLaVA-1.5-7B + SAM-H.

    python -m playground.bench_real [--work DIR] [--text-layers 1] [--steps 2] [--only roillava_finetune_lora,segllava_train_ds]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class EntryPoint:
    name: str
    cwd: str  # relative to the repository root
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    output: str = "out"  # the run's output directory, relative to the work directory


@dataclass
class Row:
    name: str
    ok: bool
    seconds_per_step: float | None = None
    peak_rss_gb: float | None = None
    checkpoint_mb: float | None = None
    error: str = ""


def entry_points(work: Path, base: Path, steps: int) -> list[EntryPoint]:
    toy = work / "playground" / "data" / "toy"
    # A few steps, batch 1, bf16 (the scripts' default), one CPU process, a checkpoint at the last step.
    common = {
        "MODEL": str(base),
        "IMAGE_FOLDER": str(toy / "images"),
        "MAX_STEPS": str(steps),
        "SAVE_STEPS": str(steps),
        "BATCH": "1",
        "BF16": "True",
        "NUM_GPUS": "1",
        "WORKERS": "0",
        "LOG_STEPS": "1",
    }
    from playground.demo import free_port

    cpu = "" if _has_cuda() else "--use_cpu True"

    def script(name, cwd, path, extra="", **env):
        out = work / "runs" / name
        return EntryPoint(
            name,
            cwd,
            ["bash", path],
            {**common, "OUTPUT_DIR": str(out), "EXTRA_ARGS": f"{cpu} {extra}".strip(), **env},
            str(out),
        )

    instruct, captions = str(toy / "llava_toy_instruct.json"), str(toy / "blip_laion_cc_sbu_toy.json")
    roi = str(toy / "chain-of-spot.json")
    seg_out = work / "runs" / "segllava_train_ds"
    return [
        script("roillava_pretrain", "RoiLLaVA", "scripts/v1_5/pretrain.sh", DATA_PATH=captions),
        script("roillava_finetune_full", "RoiLLaVA", "scripts/v1_5/finetune.sh", DATA_PATH=instruct),
        script(
            "roillava_finetune_lora",
            "RoiLLaVA",
            "scripts/v1_5/finetune_lora.sh",
            DATA_PATH=instruct,
            ROI_DATA=roi,
        ),
        script(
            "roillava_cos_full", "RoiLLaVA", "scripts/v1_5/finetune_cos.sh", DATA_PATH=instruct, ROI_DATA=roi
        ),
        script(
            "roillava_qlora_4bit",
            "RoiLLaVA",
            "scripts/v1_5/finetune_lora.sh",
            "--bits 4",
            DATA_PATH=instruct,
            ROI_DATA=roi,
            DS_CONFIG="./scripts/zero2.json",
        ),  # fmt: skip
        script("swillava_pretrain", "SwiLLaVA", "pretrain.sh", DATA_PATH=captions),
        # OBJECT_PROJECTOR empty: a random perceiver start, so this row does not depend on the pretrain row.
        script(
            "swillava_finetune_lora",
            "SwiLLaVA",
            "finetune_lora.sh",
            DATA_PATH=str(toy / "seal"),
            OBJECT_PROJECTOR="",
        ),
        EntryPoint(
            "segllava_train_ds",
            "SegLLaVA",
            [
                "deepspeed",
                "--num_gpus",
                "1",
                "--master_port",
                str(free_port()),
                "train_ds.py",
                f"--version={base}",
                f"--dataset_dir={work / 'dataset'}",
                f"--vision_pretrained={base / 'sam'}",
                "--dataset=reason_seg",
                "--sample_rates=1",
                "--num_classes_per_sample=1",
                "--batch_size=1",
                "--grad_accumulation_steps=1",
                f"--max_steps={steps}",
                "--precision=bf16",
                "--workers=0",
                f"--log_base_dir={seg_out.parent}",
                f"--exp_name={seg_out.name}",
            ]
            + (["--use_cpu=True"] if cpu else []),  # bf16 on a CPU: the Trainer wants use_cpu
            {},
            str(seg_out),
        ),  # fmt: skip
    ]


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


STEPS_PER_SECOND = re.compile(r"'train_steps_per_second': '?([0-9.]+)")
PEAK_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
ERROR_LINE = re.compile(r"(Error|Exception|error:|FAILED|Traceback|Killed|assert)", re.IGNORECASE)


def last_error_line(log: str) -> str:
    """The last error line; a bare exception name (`AssertionError`) gets the statement that raised it."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and "Maximum resident" not in ln]
    errors = [k for k, ln in enumerate(lines) if ERROR_LINE.search(ln)]
    if not errors:
        return (lines or ["(no output)"])[-1][:200]
    k = errors[-1]
    line = lines[k]
    if re.fullmatch(r"(\[rank\d+\]: )?\w+(Error|Exception)", line):
        code = [ln for ln in lines[max(0, k - 4) : k] if not set(ln.split(":")[-1].strip()) <= {"^", "~"}]
        if code:
            line = f"{line}: {code[-1].split(': ', 1)[-1].strip()}"
    return line[:200]


def directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def run_entry_point(ep: EntryPoint, log_dir: Path, timeout: int) -> Row:
    env = {**os.environ, **ep.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    log = log_dir / f"{ep.name}.log"
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [*timer, *ep.command], cwd=ROOT / ep.cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        text, code = f"{e.stdout or ''}{e.stderr or ''}\nFAILED: timed out after {timeout}s", -1
    wall = time.perf_counter() - start
    log.write_text(text if isinstance(text, str) else text.decode(errors="replace"))
    rss = PEAK_RSS.findall(text)
    row = Row(ep.name, code == 0, peak_rss_gb=int(rss[-1]) / 2**20 if rss else None)
    rate = STEPS_PER_SECOND.findall(text)
    row.seconds_per_step = 1 / float(rate[-1]) if rate and float(rate[-1]) > 0 else None
    row.checkpoint_mb = directory_mb(Path(ep.output))
    if code != 0:
        program = text.split("\tCommand being timed:")[0]  # what /usr/bin/time appends is not the error
        row.error = f"exit {code} after {wall:.0f}s: {last_error_line(program)} (log: {log})"
    return row


def agent_row() -> str:
    from fast.memory import (
        PROJECTOR_COPIES_AND_FULL_EMBEDDINGS,
        SCRIPT_DEFAULTS,
        agent_memory_on_meta,
        real_size_configs,
    )

    configs = real_size_configs()
    lines = []
    for label, recipe in (
        ("scripts' defaults", SCRIPT_DEFAULTS),
        ("with projector copies + seg full embeddings", PROJECTOR_COPIES_AND_FULL_EMBEDDINGS),
    ):
        report = agent_memory_on_meta(*configs, recipe)
        lines.append(
            f"| agent ({label}) | {report.agent_params / 1e9:.3f}B | {report.llava_plus_sam_params / 1e9:.3f}B | "
            f"x{report.ratio:.3f} | {'ok' if report.ratio <= 1.1 else 'OVER 1.1'} |"
        )
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    def num(x, fmt):
        return format(x, fmt) if x is not None else "-"

    out = ["| entry point | status | s/step | peak RSS (GB) | checkpoint (MB) |", "|---|---|---|---|---|"]
    for r in rows:
        status = "ok" if r.ok else "FAILED"
        out.append(
            f"| {r.name} | {status} | {num(r.seconds_per_step, '.1f')} | {num(r.peak_rss_gb, '.2f')} | "
            f"{num(r.checkpoint_mb, '.0f')} |"
        )
    failures = [f"{r.name}: FAILED {r.error}" for r in rows if not r.ok]
    return "\n".join(out + ([""] + failures if failures else []))


def prepare(work: Path, text_layers: int) -> Path:
    """The toy world (data in the real layouts) and a real-width base with `text_layers` LM layers."""
    from playground.real_shapes import RealShapeConfig, build_real_shape_base
    from playground.toyworld import WorldSize, generate

    if not (work / "playground" / "data" / "toy").exists():
        size = WorldSize(train=24, val=4, vstar=2, vstar_calib=0, seg_train=4, seg_val=2)
        generate(work / "playground", work / "dataset", seed=0, size=size)
    base = work / f"real_base_{text_layers}l"
    if not (base / "config.json").exists():
        build_real_shape_base(base, RealShapeConfig(text_layers=text_layers))
    return base


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="work directory (default: a temporary one, removed)")
    p.add_argument(
        "--text-layers", type=int, default=1, help="1 keeps full fine-tuning near 10 GB RSS on a CPU"
    )
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--timeout", type=int, default=900, help="seconds per entry point")
    p.add_argument("--only", default="", help="comma-separated entry point names (default: all)")
    p.add_argument("--skip-training", action="store_true", help="only the agent's parameter count")
    args = p.parse_args(argv)

    print("## Agent resident parameters at the true sizes (meta device)\n")
    print("| configuration | agent | LLaVA-1.5-7B + SAM-H | ratio | limit 1.1 |\n|---|---|---|---|---|")
    print(agent_row(), flush=True)
    if args.skip_training:
        return
    temporary = args.work is None
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_real_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = prepare(work, args.text_layers)
        (work / "logs").mkdir(exist_ok=True)
        eps = entry_points(work, base, args.steps)
        wanted = {n for n in args.only.split(",") if n}
        unknown = wanted - {ep.name for ep in eps}
        if unknown:
            raise SystemExit(f"unknown entry points {sorted(unknown)}; known: {[ep.name for ep in eps]}")
        rows = []
        for ep in eps:
            if wanted and ep.name not in wanted:
                continue
            print(f"[bench-real] {ep.name} ...", file=sys.stderr, flush=True)
            rows.append(run_entry_point(ep, work / "logs", args.timeout))
        print(
            f"\n## Training entry points at real widths ({args.text_layers} LM layer(s), {args.steps} steps, "
            f"batch 1, bf16, {'CUDA' if _has_cuda() else 'CPU'})\n"
        )
        print(table(rows))
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
