"""Quiet third-party logs by default: a newcomer should see our progress and errors, not library chatter.

Silenced unless `FAST_VERBOSE=1` (or a `--verbose` flag, which sets it): bitsandbytes' "Failed to load CPU
gemm_4bit_forward … No module named 'kernels'" on every import (the CPU path works without that optional
kernel), and DeepSpeed's INFO/WARNING lines (kept: its errors).
"""

from __future__ import annotations

import logging
import os

QUIETED = {
    "bitsandbytes.backends.cpu.ops": logging.ERROR,
    "DeepSpeed": logging.ERROR,
    "deepspeed": logging.ERROR,
}


def verbose() -> bool:
    return os.environ.get("FAST_VERBOSE", "").lower() in ("1", "true", "yes")


def quiet_third_party(enable_verbose: bool | None = None) -> None:
    """Raise the level of the chatty loggers (or, verbose, restore them); safe to call before or after
    the libraries are imported (loggers are looked up by name)."""
    if enable_verbose:
        os.environ["FAST_VERBOSE"] = "1"  # child processes (launchers, chunk workers) follow
    loud = verbose() if enable_verbose is None else enable_verbose
    for name, level in QUIETED.items():
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET if loud else level)
        for handler in logger.handlers:  # DeepSpeed gives its logger a handler with its own level
            handler.setLevel(logging.NOTSET if loud else level)
