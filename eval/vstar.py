"""V*Bench by likelihood for the `s1` and `cos` modes: the option with the lowest mean token loss is chosen.

Both modes use the resumable loop every runner shares (`eval.runner.run_questions`: chunks, resume, missing
images recorded, not fatal). `s1` scores the options after `"<image>\\n" + question` (SEAL's prompt) on
the image in `image_view`: by default unpadded, through the plain CLIP processor, as SEAL scores a
question it does not search and as the FaST release scores every question (`eval/vstar_bench.py`).
`cos` first asks the ROI adapter for the region of interest, then scores the options after the
Chain-of-Spot stage-2 prompt (global image + crop), both images padded as Chain-of-Spot always does.
Each answer row's `text` is the chosen option and its `metadata` holds `option_losses` (in the file's
option order), `choice` and `image_view`.
"""

from __future__ import annotations

import dataclasses

from roillava.answer import build_prompt, option_losses
from roillava.roi import RoiConfig, generate_roi_texts, parse_roi_box, stage1_prompt, stage2_prompt

from .runner import run_questions
from .vstar_bench import VSTAR_DEFAULT_IMAGE_VIEW, check_image_view, vstar_pixel_values


def _choice(options: list[str], losses: list[float]) -> tuple[str, dict]:
    best = min(range(len(losses)), key=losses.__getitem__)
    return options[best], {"option_losses": losses, "choice": best}


def vstar_answer_file(
    model,
    processor,
    question_file: str,
    image_folder: str,
    answers_file: str,
    *,
    mode: str = "s1",
    roi_config: RoiConfig | None = None,
    template: str = "vicuna_v1",
    batch_size: int = 8,
    model_id: str = "llava",
    num_chunks: int = 1,
    chunk_idx: int = 0,
    progress: bool = True,
    image_view: str = VSTAR_DEFAULT_IMAGE_VIEW,
    model_signature: str,
) -> dict:
    """Likelihood answers for prepared V*Bench questions (rows carry `options`)."""
    if mode not in ("s1", "cos"):
        raise ValueError(f"V*Bench in-process modes are s1 and cos, got {mode!r}")
    check_image_view(image_view)
    roi_config = roi_config or RoiConfig()
    cfg = {"tokenizer": processor.tokenizer, "model_config": model.config}

    def solve_s1(rows: list[dict], images: list[list]) -> list[tuple[str, dict]]:
        out = []
        for q, ims in zip(rows, images):
            prompt = build_prompt(q["text"], ims, template=template, **cfg)
            pixels = vstar_pixel_values(processor.image_processor, ims, image_view) if ims else None
            text, meta = _choice(
                q["options"], option_losses(model, processor, prompt, q["options"], pixels=pixels)
            )
            out.append((text, {**meta, "image_view": image_view}))
        return out

    def solve_cos(rows: list[dict], images: list[list]) -> list[tuple[str, dict]]:
        kw = {"processor": processor, "model_config": model.config, "config": roi_config}
        stage1 = [stage1_prompt(q["text"], ims[0], **kw) for q, ims in zip(rows, images)]
        roi_texts, constrained = generate_roi_texts(model, processor, stage1, roi_config)
        out = []
        for q, ims, roi_text in zip(rows, images, roi_texts):
            roi = parse_roi_box(roi_text, roi_config.min_side)
            prompt = stage2_prompt(q["text"], ims[0], roi_text, roi, **kw)
            text, meta = _choice(q["options"], option_losses(model, processor, prompt, q["options"]))
            out.append(
                (
                    text,
                    {
                        **meta,
                        "roi_box": list(roi.box),
                        "roi_text": roi_text,
                        "fallback": roi.reason,
                        "constrained_box": constrained,
                        "image_view": "padded",
                    },
                )
            )
        return out

    return run_questions(
        question_file,
        image_folder,
        answers_file,
        solve_s1 if mode == "s1" else solve_cos,
        batch_size=batch_size,
        model_id=model_id,
        num_chunks=num_chunks,
        chunk_idx=chunk_idx,
        progress=progress,
        error_metadata={"option_losses": None, "choice": None, "image_view": None},
        settings={
            "runner": "vstar",
            "mode": mode,
            "model": model_signature,
            "template": template,
            "image_view": image_view,
            "roi": dataclasses.asdict(roi_config) if mode == "cos" else None,
        },  # fmt: skip
        needs_image=True,
    )
