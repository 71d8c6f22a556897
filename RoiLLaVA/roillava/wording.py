"""How a ROI adapter is asked: the prompt settings it records, and the stage-1 wording to ask it with.

Every ROI checkpoint records its prompt settings next to its weights in `roi_config.json` (the typed
`roi.RoiConfig`: wording, template, ...), written by training and by conversion, as the other projects
save `swillava_config.json` and `segllava_config.json`. Checkpoints from before that file record the
same in their training-run file (`roillava_train_config.json`), which is still read.

Torch-free, so launchers can resolve and record it without loading the model stack. The prompts
themselves are built in `roi.py`, which also explains the two wordings.
"""

from __future__ import annotations

import json
from pathlib import Path

ROI_WORDINGS = ("where", "what")
DEFAULT_ROI_WORDING = "where"  # what our training uses unless told otherwise
UNRECORDED_ROI_WORDING = "what"  # Chain-of-Spot's evaluation prompt, for a model that records none
TRAIN_CONFIG_FILE = "roillava_train_config.json"  # our run config, saved next to every checkpoint
ROI_CONFIG_FILE = "roi_config.json"  # the adapter's prompt settings (`roi.RoiConfig`), saved next to it
ROI_WORDING_KEY = "roi_wording"
DEFAULT_TEMPLATE = "vicuna_v1"


def check_wording(wording: str) -> str:
    if wording not in ROI_WORDINGS:
        raise ValueError(f"ROI prompt wording must be one of {ROI_WORDINGS}, got {wording!r}")
    return wording


def recorded_template(model_dir: str | Path) -> str:
    """The conversation template the adapter was trained with (`roi_config.json`, else an older
    checkpoint's training-run file), else LLaVA-1.5's `vicuna_v1`."""
    d = Path(model_dir)
    for name, keys in ((ROI_CONFIG_FILE, ("template",)), (TRAIN_CONFIG_FILE, ("model", "version"))):
        try:
            value = json.loads((d / name).read_text())
            for key in keys:
                value = value[key]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
        return value
    return DEFAULT_TEMPLATE


def recorded_region_only(model_dir: str | Path) -> bool:
    """Whether the adapter was trained on the region turn alone (`roi_config.json`, `region_only`): its
    answers are stage 1's region; every older or converted checkpoint answers in two stages."""
    try:
        return bool(json.loads((Path(model_dir) / ROI_CONFIG_FILE).read_text()).get("region_only", False))
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def recorded_roi_wording(model_dir: str | Path) -> tuple[str, str] | None:
    """(wording, where it is recorded) for a checkpoint directory, or None when it records none.

    Read from its prompt settings (`roi_config.json`, `wording`), else an older checkpoint's run config
    (`roillava_train_config.json`, `data.roi_wording`), else a `"roi_wording"` entry of `config.json`
    (converted or merged checkpoints).
    """
    d = Path(model_dir)
    for name, keys in (
        (ROI_CONFIG_FILE, ("wording",)),
        (TRAIN_CONFIG_FILE, ("data", ROI_WORDING_KEY)),
        ("config.json", (ROI_WORDING_KEY,)),
    ):
        path = d / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text())
            for key in keys:
                value = value[key]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        try:
            return check_wording(value), f"{path}: {'.'.join(keys)}"
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return None


def resolve_roi_wording(model_dir: str | Path | None, requested: str | None = None) -> tuple[str, str]:
    """(wording, why): `requested` when given, else the checkpoint's record, else Chain-of-Spot's "what"."""
    if requested is not None:
        return check_wording(requested), "requested"
    recorded = recorded_roi_wording(model_dir) if model_dir is not None else None
    if recorded is not None:
        return recorded[0], f"recorded ({recorded[1]})"
    return UNRECORDED_ROI_WORDING, "not recorded by the checkpoint: Chain-of-Spot's evaluation wording"
