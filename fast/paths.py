"""The three siblings are separate projects; FaST sits above them and imports all three."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIBLINGS = ("RoiLLaVA", "SwiLLaVA", "SegLLaVA")


def add_sibling_paths() -> None:
    """Put the repository root and each sibling's directory on `sys.path` (as pytest's pythonpath does)."""
    for path in (ROOT, *(ROOT / s for s in SIBLINGS)):
        if str(path) not in sys.path:
            sys.path.append(str(path))
