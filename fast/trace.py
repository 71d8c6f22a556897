"""What the agent did for one question, as JSON (and, on request, a PNG overlay of box and masks).

A trace is the paper's "transparent decision-making pipeline" made concrete: which system answered,
the objects the switch said were missing, the region the ROI adapter proposed, each object's mask
(COCO RLE), the evidence prompt the switch answered from, every fallback taken and per-stage latency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
from PIL import Image, ImageDraw


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO run-length encoding (pycocotools) of a binary [H, W] mask, JSON-ready."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """`(x, y, w, h)` of a mask's pixels, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x0, y0 = int(xs.min()), int(ys.min())
    return x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0


@dataclass
class Fallback:
    """One place where the pipeline could not do the planned thing, and what it did instead."""

    stage: str
    reason: str
    action: str
    object: str | None = None


@dataclass
class ObjectEvidence:
    """One missing object as fed back to the switch: its box (`x, y, w, h`, original pixels) and source."""

    name: str
    box: list[float]
    source: str  # "seg" (mask box) | "roi" (the proposed region) | "image" (the whole image)
    crop_bounds: list[int]  # the 1.2x context crop the switch sees (left, top, right, bottom)
    seg_text: str | None = None
    mask_rle: dict | None = None
    mask_area: int | None = None


@dataclass
class Trace:
    question_id: str
    question: str
    image: str | None
    mode: str
    evidence_mode: str
    system: str = "system1"  # "system1" | "system2"
    decision: str | None = None  # how the switch decided: "generate" | "prefix" | "forced"
    switch_text: str | None = None
    forced_system2: bool = False
    # Why System 2 answered: "missing_objects" (the switch's sentence), "forced" (System 2 always),
    # "garbled_reply" (a reply that was neither an answer nor the sentence), "low_confidence".
    route: str | None = None
    switch_reply: str | None = None  # a free-form direct reply's kind: "answer" | "garbled"
    confidence: float | None = None  # of the direct answer (token probability or option margin)
    missing_objects: list[str] | None = None
    roi: dict | None = None  # text, box (normalised padded frame), box_pixels (x, y, w, h), ok, reason
    objects: list[ObjectEvidence] = field(default_factory=list)
    evidence_prompt: str | None = None
    fallbacks: list[Fallback] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    answer: str = ""
    options: list[str] | None = None
    option_losses: list[float] | None = None
    error: str | None = None

    def fallback(self, stage: str, reason: str, action: str, obj: str | None = None) -> None:
        self.fallbacks.append(Fallback(stage, reason, action, obj))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Trace:
        """A trace read back from JSON (a traces file or an answer's metadata)."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in raw.items() if k in known}
        data["objects"] = [ObjectEvidence(**o) for o in raw.get("objects", [])]
        data["fallbacks"] = [Fallback(**f) for f in raw.get("fallbacks", [])]
        return cls(**data)

    def readable(self) -> str:
        """A few lines for a person at a terminal."""
        lines = [
            f"question: {self.question}",
            f"system:   {self.system}" + (" (forced)" if self.forced_system2 else ""),
        ]
        if self.route is not None:
            lines[-1] += f", via {self.route}"
        if self.switch_text is not None:
            lines.append(f"switch:   {self.switch_text}")
        if self.confidence is not None:
            lines.append(f"confidence: {self.confidence:.3f}")
        if self.missing_objects is not None:
            lines.append(f"missing:  {', '.join(self.missing_objects) or '(none parsed)'}")
        if self.roi is not None:
            lines.append(
                f"roi:      {self.roi['text']!r} -> box {self.roi['box']}"
                + ("" if self.roi["ok"] else f" ({self.roi['reason']})")
            )
        for o in self.objects:
            area = f", mask {o.mask_area} px" if o.mask_area is not None else ""
            lines.append(f"object:   {o.name}: box {[round(v, 1) for v in o.box]} from {o.source}{area}")
        if self.evidence_prompt:
            lines.append("evidence: " + self.evidence_prompt.replace("\n", " | "))
        for f in self.fallbacks:
            who = f" [{f.object}]" if f.object else ""
            lines.append(f"fallback: {f.stage}{who}: {f.reason} -> {f.action}")
        if self.option_losses is not None:
            lines.append(
                "options:  " + ", ".join(f"{o} ({v:.3f})" for o, v in zip(self.options, self.option_losses))
            )
        lines.append("latency:  " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.latency.items()))
        lines.append(f"answer:   {self.answer}")
        return "\n".join(lines)


_MASK_COLOURS = ((255, 60, 60), (60, 200, 255), (255, 200, 40))


def _legend_lines(trace: Trace) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend's lines and their colours: decision, missing objects, ROI box, masks, answer, time per stage."""
    white, grey = (255, 255, 255), (200, 200, 200)
    decision = trace.system + (" (forced)" if trace.forced_system2 else "")
    if trace.decision:
        decision += f", switch by {trace.decision}"
    lines = [(f"Q: {trace.question}", white), (f"decision: {decision}", white)]
    if trace.missing_objects is not None:
        lines.append((f"missing: {', '.join(trace.missing_objects) or '(none parsed)'}", grey))
    if trace.roi is not None:
        state = "" if trace.roi.get("ok", True) else f" (not used: {trace.roi.get('reason')})"
        lines.append((f"ROI box (yellow): {trace.roi.get('text')!r}{state}", (255, 230, 0)))
    for k, o in enumerate(trace.objects):
        area = f", mask {o.mask_area} px" if o.mask_area is not None else ", no mask"
        colour = _MASK_COLOURS[k % len(_MASK_COLOURS)]
        lines.append((f"mask/box {o.name}: from {o.source}{area} (green box, white crop)", colour))
    for f in trace.fallbacks:
        lines.append((f"fallback {f.stage}: {f.reason} -> {f.action}", grey))
    lines.append((f"A: {trace.answer}", (120, 255, 120)))
    if trace.latency:
        lines.append(("time: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in trace.latency.items()), grey))
    return lines


def _wrap(text: str, width_chars: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, max(8, width_chars)) or [""]


def draw_overlay(image: Image.Image, trace: Trace, *, legend: bool = True) -> Image.Image:
    """The image with the ROI box (yellow), each object's mask (tinted), box (green) and crop (white);
    below it, with `legend`, a panel saying what each mark is plus the decision, answer and time per stage."""
    canvas = image.convert("RGB").copy()
    arr = np.asarray(canvas).astype(np.float32)
    for k, o in enumerate(trace.objects):
        if o.mask_rle is not None:
            m = rle_to_mask(o.mask_rle)
            colour = np.asarray(_MASK_COLOURS[k % len(_MASK_COLOURS)], dtype=np.float32)
            arr[m] = 0.45 * arr[m] + 0.55 * colour
    canvas = Image.fromarray(arr.round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    if trace.roi is not None and trace.roi.get("box_pixels") is not None:
        x, y, w, h = trace.roi["box_pixels"]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 230, 0), width=2)
    for o in trace.objects:
        left, top, right, bottom = o.crop_bounds
        draw.rectangle([left, top, right - 1, bottom - 1], outline=(255, 255, 255), width=1)
        x, y, w, h = o.box
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(40, 230, 60), width=1)
    if not legend:
        return canvas
    from PIL import ImageFont

    font = ImageFont.load_default()
    width = max(canvas.width, 320)
    char_w, line_h = 6, 12
    rows = [
        (piece, colour)
        for text, colour in _legend_lines(trace)
        for piece in _wrap(text, (width - 8) // char_w)
    ]
    out = Image.new("RGB", (width, canvas.height + 6 + line_h * len(rows)), (20, 20, 20))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (text, colour) in enumerate(rows):
        draw.text((4, canvas.height + 3 + line_h * i), text, fill=colour, font=font)
    return out
