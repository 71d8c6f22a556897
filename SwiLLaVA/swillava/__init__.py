"""SwiLLaVA: the switch adapter (SEAL-style VQA LLM with a second, Perceiver-based object projector)."""

import sys
from pathlib import Path

# The shared, torch-free helpers (`eval/`: question/answers files, input checks, metrics) live at the
# repository root, beside this project: make them importable however it is started. Appended, so it never
# shadows an installed package.
_REPO = Path(__file__).resolve().parents[2]
if (_REPO / "eval" / "qa_files.py").is_file() and str(_REPO) not in sys.path:
    sys.path.append(str(_REPO))

from eval.logs import quiet_third_party  # noqa: E402

quiet_third_party()
