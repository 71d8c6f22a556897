"""Every answerer at the real LLaVA-1.5-7B / CLIP-336 / SAM-H widths (shallow, random weights, bf16).

On `real_base` (llava-1.5-7b-hf's widths with 1 text layer, the hub's `CLIPImageProcessor` config) with
untrained adapters saved by the siblings' own builders at the real widths and training-script defaults:
the System-1 answerer, the ROI two-stage answerer, the eval runner, `python -m fast` (every stage, seg
included) and SegLLaVA's masks with SAM-H at 1024 px. Checked on the tensors the models really receive
(global forward hooks on the embedding lookup, CLIP's patch embedding and SAM's): 576 image rows per
image, 1,152 in Chain-of-Spot's stage 2, the LLaVA-1.5 padded frame (not a centre crop), SAM's 1024 px
input, and masks at the original image's resolution. Run with `make test-real` (under the heavy lock).
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytestmark = pytest.mark.real

IMAGE_ROWS = 576  # (336 / 14) ** 2
IMAGE_TOKEN = 32000
SIZES = [(448, 336), (300, 400)]  # landscape and portrait: both padded to a square, never cropped


class Seen:
    """Global forward hooks recording what the real models receive (no mocks: the modules run as usual)."""

    def __init__(self):
        self.image_rows: list[list[int]] = []  # per embedding call: <image> ids per row
        self.clip_pixels: list[torch.Tensor] = []
        self.sam_pixels: list[tuple] = []
        self.handle = nn.modules.module.register_module_forward_hook(self)

    def __call__(self, module, inputs, output):
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        x = inputs[0]
        if isinstance(module, nn.Embedding) and module.num_embeddings == 32064 and x.dim() == 2:
            self.image_rows.append((x == IMAGE_TOKEN).sum(1).tolist())
        elif isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.kernel_size == (14, 14):
            self.clip_pixels.append(x.detach().float().cpu())
        elif isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.kernel_size == (16, 16):
            self.sam_pixels.append(tuple(x.shape))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    g = np.random.default_rng(seed)
    return Image.fromarray(g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def assert_padded_frame(pixels: torch.Tensor, size: tuple[int, int]) -> None:
    """LLaVA-1.5 pads to a square with the mean colour: the bands beside the image normalise to ~0."""
    w, h = size
    band = int(336 * (1 - min(w, h) / max(w, h)) / 2) - 2
    assert band > 10
    edge = pixels[..., :band, :] if w > h else pixels[..., :, :band]
    assert edge.abs().max() < 0.05, "the image was not padded to a square (centre-cropped instead?)"


@pytest.fixture(scope="module")
def real_ckpts(real_base, tmp_path_factory) -> dict[str, Path]:
    """Untrained switch / ROI / seg adapters at the real widths, saved by each sibling's own code."""
    from playground.real_adapters import save_untrained_adapters

    return save_untrained_adapters(real_base, tmp_path_factory.mktemp("real_adapters"))


@pytest.fixture(scope="module")
def toy_questions(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("real_questions")
    images = root / "images"
    images.mkdir()
    rows = []
    for k, size in enumerate(SIZES):
        _image(k, size).save(images / f"{k}.png")
        rows.append({"question_id": k, "image": f"{k}.png", "text": "What color is the star?"})
    qfile = root / "questions.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return qfile, images


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_system1_answerer(real_base, toy_questions, tmp_path):
    from roillava.answer import main

    qfile, images = toy_questions
    out = tmp_path / "s1.jsonl"
    with Seen() as seen:
        main(["--model-path", str(real_base), "--question-file", str(qfile), "--image-folder", str(images),
              "--answers-file", str(out), "--device", "cpu", "--dtype", "bf16", "--max-new-tokens", "2",
              "--batch-size", "2"])  # fmt: skip
    assert [a["question_id"] for a in _lines(out)] == [0, 1]
    assert [IMAGE_ROWS, IMAGE_ROWS] in seen.image_rows  # the batched prefill: one image per row
    assert all(r in (0, IMAGE_ROWS) for call in seen.image_rows for r in call)
    pixels = seen.clip_pixels[0]
    assert pixels.shape == (2, 3, 336, 336) and pixels.dtype == torch.float32  # (recorded as float)
    for k, size in enumerate(SIZES):
        assert_padded_frame(pixels[k], size)


def test_4bit_answer_at_real_width(real_base, toy_questions, tmp_path):
    """QLoRA-style inference: the LM's linears in NF4, CLIP / projector / lm_head in bf16, one answer."""
    from roillava.answer import answer_file, load_for_inference

    qfile, images = toy_questions
    model, processor = load_for_inference(str(real_base), dtype=torch.bfloat16, bits=4)
    q_proj = model.model.language_model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit"
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
    assert type(model.model.multi_modal_projector.linear_1) is nn.Linear
    out = tmp_path / "4bit.jsonl"
    with Seen() as seen:
        answer_file(
            model, processor, str(qfile), str(images), str(out), batch_size=1, max_new_tokens=2,
            model_signature="4-bit real shapes",
        )  # fmt: skip
    assert len(_lines(out)) == 2 and [IMAGE_ROWS] in seen.image_rows


def test_roi_two_stage_answerer(real_ckpts, toy_questions, tmp_path):
    from roillava.roi_answer import main

    qfile, images = toy_questions
    out = tmp_path / "roi.jsonl"
    with Seen() as seen:
        main(["--model-path", str(real_ckpts["roi"]), "--model-base", str(real_ckpts["base"]),
              "--question-file", str(qfile), "--image-folder", str(images), "--answers-file", str(out),
              "--device", "cpu", "--dtype", "bf16", "--max-new-tokens", "2", "--roi-max-new-tokens", "4",
              "--batch-size", "2"])  # fmt: skip
    answers = _lines(out)
    assert [a["question_id"] for a in answers] == [0, 1]
    assert all(len(a["metadata"]["roi_box"]) == 4 for a in answers)
    assert [IMAGE_ROWS] * 2 in seen.image_rows  # stage 1: the image
    assert [IMAGE_ROWS * 2] * 2 in seen.image_rows  # stage 2: the image and the crop, 1,152 rows
    assert all(r in (0, IMAGE_ROWS, 2 * IMAGE_ROWS) for call in seen.image_rows for r in call)


def test_eval_runner(real_base, toy_questions, tmp_path):
    from eval.run import main

    qfile, images = toy_questions
    summary = main(["mmvet", "--model-path", str(real_base), "--data-root", str(tmp_path), "--question-file",
                    str(qfile), "--image-folder", str(images), "--device", "cpu", "--dtype", "bf16",
                    "--max-new-tokens", "2", "--batch-size", "2", "--no-score", "--quiet"])  # fmt: skip
    assert summary is None or isinstance(summary, dict)
    written = sorted(tmp_path.rglob("1_0.jsonl"))
    assert written and len(_lines(written[0])) == 2


def test_fast_agent_every_stage(real_ckpts, tmp_path, capsys):
    from fast.cli import main

    image = tmp_path / "x.png"
    _image(7, SIZES[0]).save(image)
    with Seen() as seen:
        main(["--image", str(image), "--question", "What pattern is on the blue object?",
              "--base", str(real_ckpts["base"]), "--switch", str(real_ckpts["switch"]),
              "--roi", str(real_ckpts["roi"]), "--seg", str(real_ckpts["seg"]), "--mode", "system2-always",
              "--evidence", "roi+seg", "--device", "cpu", "--dtype", "bf16", "--switch-max-new-tokens", "4",
              "--roi-max-new-tokens", "4", "--max-new-tokens", "2",
              "--trace-file", str(tmp_path / "trace.json")])  # fmt: skip
    out = capsys.readouterr()
    assert "system:   system2 (forced)" in out.out and "answer:" in out.out
    assert "resident parameters" in out.err
    rows = [r for call in seen.image_rows for r in call]
    assert IMAGE_ROWS in rows  # the switch and the ROI stage see the whole 576-row image
    assert (1, 3, 1024, 1024) in seen.sam_pixels or any(s[-2:] == (1024, 1024) for s in seen.sam_pixels)
    assert_padded_frame(seen.clip_pixels[0][0], SIZES[0])


def test_seg_masks_at_sam_h_1024(real_ckpts):
    from segllava.conversation import VAL_ANSWER
    from segllava.inference import teacher_forced_masks
    from segllava.model import SegLLaVA

    seg = SegLLaVA.from_pretrained(real_ckpts["seg"], device="cpu", dtype=torch.bfloat16)
    images = [_image(k, size) for k, size in enumerate(SIZES)]
    with Seen() as seen:
        for image in images:
            question = "Can you segment the star in this image?"
            masks = teacher_forced_masks(seg, seg.processor, [image], [question], VAL_ANSWER)[0]
            assert len(masks) == 1  # one [SEG] in LISA's answer "[SEG]."
            assert masks[0].shape == (image.height, image.width)  # the original resolution
    assert seen.sam_pixels and all(s[-2:] == (1024, 1024) for s in seen.sam_pixels)
    assert all(rows == [IMAGE_ROWS] for rows in seen.image_rows)


def test_peak_rss_within_budget():
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    assert peak_gb <= 12, f"peak RSS {peak_gb:.1f} GB"
