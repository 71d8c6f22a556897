"""V*Bench in one place: reading the benchmark folder, the image view its options are scored on, scoring.

Every V*Bench runner reads the folder here (`eval.run`'s `s1`/`cos` modes through
`benchmarks.prepare_vstar`, `python -m fast --vstar`, `python -m swillava.infer vstar`), so they ask
the same questions with the same ids (`<category>/<stem>`).

Layout: `<folder>/<category>/<stem>.json` (`question`, `options`, optional `target_object`, `bbox`;
`options[0]` is the correct one) next to the image `<stem>.<ext>` (craigwu/vstar_bench: categories
`direct_attributes` and `relative_position`). Folders named `answers*` hold runs, not questions.

Image view. SEAL's evaluation pads the image to a square for its free-form switch probe, but scores
the options of a question it did not search on the image as read: the unpadded image through the
plain CLIP processor (shortest side resized, centre crop). Only a question it searched is scored
with evidence, on the padded image. The FaST release deleted the search, so it scores every
question the unpadded way. `VSTAR_DEFAULT_IMAGE_VIEW` is therefore "unpadded" for options scored
without evidence; "padded" (the mean-colour square LLaVA-1.5 trains on) is the alternative.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

VSTAR_IMAGE_VIEWS = ("unpadded", "padded")
VSTAR_DEFAULT_IMAGE_VIEW = "unpadded"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class VStarQuestion:
    """One V*Bench question; `image` is where its image should be (it may be missing)."""

    question_id: str
    category: str
    question: str
    options: list[str]
    image: Path
    target_object: list = field(default_factory=list)
    bbox: list = field(default_factory=list)


@dataclass
class VStarBench:
    """The usable questions, and one `"<json>: reason"` line per record that is not a usable question."""

    questions: list[VStarQuestion]
    invalid: list[str]

    def raise_if_invalid(self) -> None:
        if self.invalid:
            raise ValueError(f"{len(self.invalid)} unusable V*Bench record(s), first: {self.invalid[0]}")


def read_vstar_bench(folder: str | Path) -> VStarBench:
    """All questions under `folder`, sorted by category and stem; unusable records are listed, not fatal.

    Unusable: invalid JSON, no question string, fewer than two options, several images with the
    json's stem. A question whose image is missing is kept (the runners record it as an image error).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"V*Bench folder not found: {root}")
    questions, invalid = [], []
    categories = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("answers"))
    for category in categories:
        for meta in sorted(category.glob("*.json")):
            try:
                ann = json.loads(meta.read_text(encoding="utf-8"))
                if not isinstance(ann, dict):
                    raise ValueError("not a JSON object")
                for key in ("question", "options"):
                    if key not in ann:
                        raise ValueError(f"no {key!r}")
                question, options = ann["question"], ann["options"]
                if not isinstance(question, str):
                    raise ValueError("'question' must be a string")
                if not isinstance(options, list) or len(options) < 2:
                    raise ValueError("'options' must list at least two answers")
                # The image is the file with the json's stem (SEAL's `split('.')[0]` breaks on dotted folders).
                images = sorted(
                    p
                    for p in category.glob(glob.escape(meta.stem) + ".*")
                    if p.suffix.lower() in IMAGE_SUFFIXES
                )
                if len(images) > 1:
                    raise ValueError(f"several images named {meta.stem}.*: {[p.name for p in images]}")
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
                invalid.append(f"{meta}: {e}")
                continue
            questions.append(
                VStarQuestion(
                    question_id=f"{category.name}/{meta.stem}",
                    category=category.name,
                    question=question,
                    options=[str(o) for o in options],
                    image=images[0] if images else meta.with_suffix(".jpg"),
                    target_object=list(ann.get("target_object") or []),
                    bbox=list(ann.get("bbox") or []),
                )
            )
    if not questions and not invalid:
        raise FileNotFoundError(f"no V*Bench questions (<category>/<stem>.json) under {root}")
    return VStarBench(questions, invalid)


def vstar_items(bench_folder: str | Path) -> list[tuple[dict, Path | None, str, list[str]]]:
    """V*Bench questions as (question row, image, question text, options; options[0] correct) for a
    question-file runner; an unusable record is an error."""
    bench = read_vstar_bench(bench_folder)
    bench.raise_if_invalid()
    items = []
    for q in bench.questions:
        row = {
            "question_id": q.question_id,
            "text": q.question,
            "category": q.category,
            "target_object": q.target_object,
            "bbox": q.bbox,
        }
        items.append((row, q.image, q.question, q.options))  # a missing image is a per-question error
    return items


def check_image_view(view: str) -> str:
    if view not in VSTAR_IMAGE_VIEWS:
        raise ValueError(f"V*Bench image view must be one of {VSTAR_IMAGE_VIEWS}, got {view!r}")
    return view


def pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """LLaVA's and SEAL's `expand2square`: the image centred on a `fill` square, offset `(long - short) // 2`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def vstar_pixel_values(image_processor, images: Sequence[Image.Image], view: str):
    """Processed pixels [n, 3, S, S] of `images` in the given view, whatever the processor's own `do_pad`.

    "padded": pad to a square with `int(255 * image_mean)` first; "unpadded": the image as it is. The
    processor then resizes the shortest side and centre-crops (its padding is switched off).
    """
    check_image_view(view)
    if view == "padded":
        fill = tuple(int(m * 255) for m in image_processor.image_mean)
        images = [pad_to_square(im.convert("RGB"), fill) for im in images]
    else:
        images = [im.convert("RGB") for im in images]
    return image_processor(list(images), do_pad=False, return_tensors="pt")["pixel_values"]


def answer_is_correct(options: Sequence[str], row: dict | None) -> bool | None:
    """Right iff the lowest-loss option of an answer row is option 0 (the correct one); an answerer that
    only names its choice is right iff its text is option 0. None: the row carries no usable choice."""
    from .metrics import vstar_accuracy

    if row is None:
        return None
    meta = row.get("metadata") or {}
    losses = meta.get("option_losses")
    if isinstance(losses, list) and len(losses) == len(options):
        try:
            return vstar_accuracy([losses]) == 1.0
        except ValueError:
            return None
    if row.get("text"):
        return row["text"].strip() == options[0]
    return None


def vstar_scores(results: Iterable[tuple[str, bool | None]]) -> dict:
    """The one V*Bench score of (category, correct) pairs: accuracy over all questions (micro) and per
    category, as fractions; an unscorable answer (None) counts as wrong and is counted."""
    per: dict[str, list[bool]] = {}
    unscorable = 0
    for category, correct in results:
        unscorable += correct is None
        per.setdefault(category, []).append(bool(correct))
    everything = [c for v in per.values() for c in v]
    return {
        "accuracy": sum(everything) / max(1, len(everything)),
        "per_category": {k: sum(v) / len(v) for k, v in sorted(per.items())},
        "n_per_category": {k: len(v) for k, v in sorted(per.items())},
        "unscorable": unscorable,
    }
