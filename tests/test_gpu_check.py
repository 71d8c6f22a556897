"""The GPU check's code path, run on the CPU at tiny widths (`--dry-run`), so it cannot rot between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_runs_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gpu_check.py"), "--dry-run", "--work", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = {r["part"]: r for r in json.loads(out.read_text())}
    assert list(parts) == ["zero3_lora_r128_bf16", "qlora_4bit_step", "agent_one_image_bf16"]
    assert all(r["status"] == "ok" for r in parts.values()), parts
    zero3 = parts["zero3_lora_r128_bf16"]["detail"]
    assert zero3["tokens_per_s"] > 0 and zero3["step_s"] > 0 and zero3["peak_memory_gb"] > 0
    assert zero3["trainable_params"] > 0 and zero3["mfu"] is None  # no peak FLOP/s for a CPU
    qlora = parts["qlora_4bit_step"]["detail"]
    assert qlora["lm_linear"] == ["Linear4bit"] and "Linear4bit" not in qlora["projector_and_lm_head"]
    assert parts["agent_one_image_bf16"]["detail"]["system"] == "system2"
    assert "| zero3_lora_r128_bf16 | ok |" in proc.stdout  # the table the README asks for
