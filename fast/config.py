"""The agent's typed configuration, saved next to every run and printed at its start."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from eval.runner import VSTAR_DEFAULT_IMAGE_VIEW, VSTAR_IMAGE_VIEWS

EVIDENCE_MODES = ("roi", "seg", "roi+seg")
MODES = ("fast", "system2_always", "system1")
CONFIG_FILE_SUFFIX = ".config.json"
DTYPES = ("auto", "bf16", "fp16", "fp32")
BITS = (4, 8, 16)
_TORCH_DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # older run configs


@dataclass
class AgentConfig:
    """Checkpoints and knobs of one FaST run.

    `base` is the llava-hf System-1 checkpoint every adapter was trained on; `switch`, `roi` and `seg`
    are the adapter directories their siblings save. `sam` defaults to the SAM the seg checkpoint names.

    `mode`: "fast" (the switch decides), "system2_always" (System 2 for every question: the switch is
    made to start its missing-objects sentence and only names the objects) or "system1" (the base with
    every adapter disabled, the demo's baseline). `evidence`: what System 2 feeds back to the switch:
    "roi" (the proposed region as each object's box), "seg" (masks segmented on the whole image) or
    "roi+seg" (masks segmented inside the proposed region). `switch_decision`: "generate" decodes the
    switch's answer and parses it (SEAL); "prefix" makes the same decision from one teacher-forced pass
    (does greedy decoding start with the missing-objects sentence?) and decodes only what is needed.
    `seg_decoding`: "teacher" forces LISA's
    answer `"[SEG]."` (one pass, always a mask), "generate" decodes and uses the first `[SEG]`.
    `seg_retry_whole_image`: an object the proposed region yields no mask for is segmented again on the
    whole image (a region that misses the object would otherwise leave only the region as its box).
    `roi_wording`: the ROI adapter's stage-1 wording ("where" | "what"); None: the one the adapter
    records (else Chain-of-Spot's "what"). `option_image_view`: how the image is shown when options are
    scored without object evidence (System-1 rows): "unpadded" (SEAL's V*Bench evaluation and the FaST
    release: plain CLIP resize + centre crop) or "padded" (the mean-colour square every other prompt
    uses). System-2 rows, whose prompt carries evidence, always see the padded image, as in SEAL.
    `confidence_threshold`: in "fast" mode, a System-1 row goes to System 2 also when the switch's direct
    answer is unsure: its confidence (the geometric mean of the answer's token probabilities, or for
    options the probability margin between the best two) is below the threshold. 0 turns it off; the
    demo calibrates it on a held-out split (`fast.calibration`). `confidence_option_counts`: the
    questions it applies to, by their number of options (0: free-form); None: every question. Margins
    of two and of four options are not on one scale, and System 2 may help one kind only (on V*Bench,
    attributes: four options; not left/right: two). A reply that is neither an answer nor
    the missing-objects sentence goes to System 2 whatever the threshold. `copy_names`: the switch's
    missing-object names are decoded as spans of the question (`swillava.name_copy`), as SEAL's
    training names are; off, they are decoded freely.
    `dtype`: the weights' dtype ("auto": bf16 on a GPU that supports it, else fp16 on CUDA, fp32 on CPU);
    `bits` 4 or 8 loads the shared language model with bitsandbytes (CLIP, projectors, lm_head, SAM and
    the adapters stay in `dtype`); every weight is loaded straight to `device`.
    """

    base: str
    switch: str
    roi: str | None = None
    seg: str | None = None
    sam: str | None = None
    mode: str = "fast"
    evidence: str = "roi+seg"
    device: str = "cpu"
    dtype: str = "auto"
    bits: int = 16
    switch_decision: str = "prefix"
    switch_max_new_tokens: int = 200
    roi_max_new_tokens: int = 128
    seg_max_new_tokens: int = 32
    answer_max_new_tokens: int = 128
    max_objects: int = 3
    question_suffix: str = ""
    fallback_object_name: str = "region of interest"
    seg_prompt: str = "Can you segment the {name} in this image?"
    seg_decoding: str = "teacher"
    seg_retry_whole_image: bool = True
    mask_threshold: float = 0.0
    batch_size: int = 8
    roi_wording: str | None = None
    option_image_view: str = VSTAR_DEFAULT_IMAGE_VIEW
    confidence_threshold: float = 0.0
    confidence_option_counts: list[int] | None = None
    copy_names: bool = True

    def __post_init__(self):
        self.dtype = _TORCH_DTYPE_NAMES.get(self.dtype, self.dtype)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.evidence not in EVIDENCE_MODES:
            raise ValueError(f"evidence must be one of {EVIDENCE_MODES}, got {self.evidence!r}")
        if self.mode != "system1":
            if "roi" in self.evidence and not self.roi:
                raise ValueError(f"evidence {self.evidence!r} needs a ROI adapter (--roi)")
            if "seg" in self.evidence and not self.seg:
                raise ValueError(f"evidence {self.evidence!r} needs a seg adapter (--seg)")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be at least 1, got {self.max_objects}")
        if self.switch_decision not in ("prefix", "generate"):
            raise ValueError(f"switch_decision must be prefix or generate, got {self.switch_decision!r}")
        if self.seg_decoding not in ("teacher", "generate"):
            raise ValueError(f"seg_decoding must be teacher or generate, got {self.seg_decoding!r}")
        if self.roi_wording not in (None, "where", "what"):
            raise ValueError(f"roi_wording must be where or what, got {self.roi_wording!r}")
        if self.option_image_view not in VSTAR_IMAGE_VIEWS:
            raise ValueError(
                f"option_image_view must be one of {VSTAR_IMAGE_VIEWS}, got {self.option_image_view!r}"
            )
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}")
        if self.confidence_threshold > 0 and self.switch_decision != "prefix":
            raise ValueError(
                "confidence_threshold needs switch_decision 'prefix' (its pass scores the answer)"
            )
        if self.confidence_option_counts is not None and any(
            not isinstance(n, int) or n < 0 for n in self.confidence_option_counts
        ):
            raise ValueError(
                "confidence_option_counts must be numbers of options (0: free-form), "
                f"got {self.confidence_option_counts!r}"
            )
        if "{name}" not in self.seg_prompt:
            raise ValueError(f"seg_prompt must contain {{name}}, got {self.seg_prompt!r}")

    @property
    def torch_dtype(self):
        """`dtype` resolved for `device`."""
        from roillava.stage import BaseStage

        return BaseStage.inference_dtype(self.dtype, self.device)

    @property
    def uses_roi(self) -> bool:
        return "roi" in self.evidence

    @property
    def uses_seg(self) -> bool:
        return "seg" in self.evidence

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> AgentConfig:
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown AgentConfig fields {unknown}")
        return cls(**raw)
