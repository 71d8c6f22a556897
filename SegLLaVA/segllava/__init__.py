"""SegLLaVA: the segmentation adapter (LISA-style [SEG] token decoded by a SAM mask decoder)."""

import sys
from pathlib import Path

# The shared metrics (`eval/metrics.py`) live at the repository root, beside this project: make them importable
# however SegLLaVA is started (`cd SegLLaVA && deepspeed train_ds.py …`, `python -m segllava.validate …`).
# Appended, so it never shadows an installed package.
_REPO = Path(__file__).resolve().parents[2]
if (_REPO / "eval" / "metrics.py").is_file() and str(_REPO) not in sys.path:
    sys.path.append(str(_REPO))

from eval.logs import quiet_third_party  # noqa: E402

quiet_third_party()
