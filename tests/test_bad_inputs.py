"""Bad inputs a newcomer meets in the first hour, one table per kind: each fails in seconds with one line
naming the file (and line or record), before any model loads, or is recorded per question in the output;
no answer is lost, duplicated or silently reused."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.checks import InputError, check_checkpoint, check_file
from eval.images import open_rgb, oriented_size, to_rgb
from eval.qa_files import AnswersBusy, AnswersFile, QuestionFileError, fingerprints, read_questions

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- question files: one policy for every runner ----------------------------------------------------------
GOOD = {"question_id": 1, "image": "a.png", "text": "What colour?"}
BAD_QUESTION_FILES = [
    # (name, lines, message that must appear; `{f}` is the file)
    ("duplicate id", [GOOD, {**GOOD, "text": "again"}], "{f}:2: duplicate question_id 1 (first at {f}:1)"),
    (
        "empty question",
        [GOOD, {"question_id": 2, "image": "a.png", "text": "  "}],
        "{f}:2: question 2 is empty",
    ),
    ("no text", [GOOD, {"question_id": 2, "image": "a.png"}], "{f}:2: question has no 'text'"),
    ("no id", [{"image": "a.png", "text": "x"}], "{f}:1: question has no 'question_id'"),
    ("text not a string", [{"question_id": 3, "text": ["x"]}], "{f}:1: 'text' must be a string"),
    (
        "empty image name",
        [{"question_id": 3, "text": "x", "image": ""}],
        "{f}:1: question 3: 'image' must be",
    ),
    ("invalid JSON", [GOOD, '{"question_id": 2, "text": '], "{f}:2: invalid JSON line"),
    ("not an object", [GOOD, "[1, 2]"], "{f}:2: expected a JSON object"),
]


@pytest.mark.parametrize("name,lines,message", BAD_QUESTION_FILES, ids=[c[0] for c in BAD_QUESTION_FILES])
def test_bad_question_file_names_file_and_line(tmp_path, name, lines, message):
    f = _write_jsonl(tmp_path / "q.jsonl", lines)
    with pytest.raises(QuestionFileError) as e:
        read_questions(f)
    assert message.format(f=f) in str(e.value)


def test_non_utf8_question_file_names_file_and_line(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_bytes(json.dumps(GOOD).encode() + b'\n{"question_id": 2, "text": "caf\xe9"}\n')
    with pytest.raises(QuestionFileError, match=rf"{f}:2: not UTF-8"):
        read_questions(f)


def test_every_bad_record_is_counted(tmp_path):
    f = _write_jsonl(tmp_path / "q.jsonl", [GOOD] + [{"question_id": i, "text": ""} for i in range(2, 10)])
    with pytest.raises(QuestionFileError, match=r"^8 bad question record\(s\): .*\(and 3 more\)"):
        read_questions(f)


def test_text_only_question_is_allowed_and_located(tmp_path):
    f = _write_jsonl(tmp_path / "q.jsonl", [GOOD, {"question_id": 2, "text": "no picture"}])
    qs = read_questions(f)
    assert [q["question_id"] for q in qs] == [1, 2] and qs.where[2] == f"{f}:2"


# --- answers files: lock, fingerprints, kills ------------------------------------------------------------
def test_second_writer_is_refused_at_once(tmp_path):
    answers = tmp_path / "a.jsonl"
    holder = subprocess.Popen(
        [PY, "-c", "import sys,time; sys.path.insert(0, sys.argv[1]); from eval.qa_files import AnswersFile\n"
         "with AnswersFile(sys.argv[2], {}):\n    print('locked', flush=True); time.sleep(60)",
         str(ROOT), str(answers)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(
            AnswersBusy, match=rf"{answers} is being written by another run \(pid {holder.pid}\)"
        ):
            AnswersFile(answers, {}).__enter__()
        assert time.monotonic() - start < 1
    finally:
        holder.kill()
        holder.wait()
    with AnswersFile(answers, {}):  # free again once the holder is gone
        pass


def test_resume_redoes_changed_questions_and_keeps_the_rest(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(img / name)
    questions = [
        {"question_id": 1, "image": "a.png", "text": "one"},
        {"question_id": 2, "image": "b.png", "text": "two"},
        {"question_id": 3, "text": "three"},
    ]
    settings = {"model": "m1", "max_new_tokens": 8}
    answers = tmp_path / "a.jsonl"
    with AnswersFile(answers, fingerprints(questions, img, settings)) as af:
        af.append([{"question_id": q["question_id"], "text": f"ans{q['question_id']}"} for q in questions])
    # the world is regenerated: same ids, question 1 reworded, image b redrawn
    questions[0]["text"] = "one, reworded"
    Image.new("RGB", (8, 8), (200, 20, 30)).save(img / "b.png")
    with AnswersFile(answers, fingerprints(questions, img, settings), quiet=True) as af:
        assert set(af.done) == {3} and af.redone == 2
    assert [json.loads(x)["question_id"] for x in answers.read_text().splitlines()] == [3]
    # another model or other generation settings: nothing is reused
    with AnswersFile(answers, fingerprints(questions, img, {**settings, "model": "m2"}), quiet=True) as af:
        assert not af.done and af.redone == 1


def test_rows_without_fingerprint_and_duplicates_are_not_reused(tmp_path):
    answers = _write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"question_id": 1, "text": "old, no fingerprint"},
            {"question_id": 2, "text": "x", "fingerprint": "f2"},
            {"question_id": 2, "text": "y", "fingerprint": "f2"},
            {"question_id": 9, "text": "another chunk's", "fingerprint": "f9"},
            "garbage",
        ],
    )
    with AnswersFile(answers, {1: "f1", 2: "f2"}, quiet=True) as af:
        assert set(af.done) == {2} and af.done[2]["text"] == "x"
    assert [json.loads(x)["question_id"] for x in answers.read_text().splitlines()] == [2, 9]


# --- images: every PIL mode, EXIF orientation -------------------------------------------------------------
def _grey(mode: str, value, size=(6, 4)) -> Image.Image:
    return Image.new(mode, size, value)


PIL_MODES = [
    # (mode, how to build it, file suffix, expected RGB of pixel (0, 0))
    ("1", lambda: _grey("1", 1), ".png", (255, 255, 255)),
    ("L", lambda: _grey("L", 100), ".png", (100, 100, 100)),
    ("LA transparent", lambda: Image.new("LA", (6, 4), (0, 0)), ".png", (255, 255, 255)),
    ("LA opaque", lambda: Image.new("LA", (6, 4), (60, 255)), ".png", (60, 60, 60)),
    ("P", lambda: Image.new("RGB", (6, 4), (0, 0, 255)).convert("P"), ".png", (0, 0, 255)),
    ("RGBA half", lambda: Image.new("RGBA", (6, 4), (0, 0, 0, 0)), ".png", (255, 255, 255)),
    ("RGBA opaque", lambda: Image.new("RGBA", (6, 4), (10, 200, 30, 255)), ".png", (10, 200, 30)),
    ("I;16", lambda: Image.fromarray(np.full((4, 6), 32896, np.uint16)), ".png", (128, 128, 128)),
    ("I;16 white", lambda: Image.fromarray(np.full((4, 6), 65535, np.uint16)), ".png", (255, 255, 255)),
    ("I", lambda: Image.fromarray(np.full((4, 6), 32896, np.int32), mode="I"), ".tif", (128, 128, 128)),
    (
        "F fraction",
        lambda: Image.fromarray(np.full((4, 6), 0.5, np.float32), mode="F"),
        ".tif",
        (128, 128, 128),
    ),
    ("F 0..255", lambda: Image.fromarray(np.full((4, 6), 64.0, np.float32), mode="F"), ".tif", (64, 64, 64)),
    ("CMYK", lambda: Image.new("CMYK", (6, 4), (0, 255, 255, 0)), ".jpg", (255, 0, 0)),
]


@pytest.mark.parametrize("mode,make,suffix,rgb", PIL_MODES, ids=[c[0] for c in PIL_MODES])
def test_every_pil_mode_becomes_the_right_rgb(tmp_path, mode, make, suffix, rgb):
    path = tmp_path / f"img{suffix}"
    make().save(path)
    for image in (open_rgb(path), to_rgb(make())):
        assert image.mode == "RGB" and image.size == (6, 4)
        got = image.getpixel((0, 0))
        tol = 12 if suffix == ".jpg" else 1
        assert all(abs(g - e) <= tol for g, e in zip(got, rgb)), (mode, got, rgb)


def test_sixteen_bit_png_is_not_white(tmp_path):
    ramp = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "depth.png")
    with Image.open(tmp_path / "depth.png") as raw:
        assert np.asarray(raw.convert("RGB")).mean() > 240  # what PIL alone does: nearly all white
    arr = np.asarray(open_rgb(tmp_path / "depth.png"))
    assert 50 < arr.mean() < 120 and arr[0, 0, 0] == 0


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (6, 4), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))  # red at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "photo.png", exif=exif)
    shown = open_rgb(tmp_path / "photo.png")
    assert shown.size == (4, 6) == oriented_size(tmp_path / "photo.png")
    assert shown.getpixel((3, 0)) == (255, 0, 0)  # the stored top-left is now the top-right


@pytest.mark.parametrize("loader", ["roillava.data", "swillava.data", "segllava.masks"])
def test_every_sibling_reads_images_the_same_way(tmp_path, loader):
    import importlib

    Image.fromarray(np.full((4, 6), 32896, np.uint16)).save(tmp_path / "a.png")
    module = importlib.import_module(loader)
    opener = getattr(module, "open_image", None) or module.open_rgb
    assert opener(tmp_path / "a.png").getpixel((0, 0)) == (128, 128, 128)


# --- checkpoints: checked in seconds, naming the file -----------------------------------------------------
def _safetensors(path: Path, tensors: int = 1, truncate: int = 0) -> Path:
    header = {
        f"t{i}": {"dtype": "F32", "shape": [4], "data_offsets": [16 * i, 16 * (i + 1)]}
        for i in range(tensors)
    }
    blob = json.dumps(header).encode()
    data = struct.pack("<Q", len(blob)) + blob + b"\0" * (16 * tensors)
    path.write_bytes(data[: len(data) - truncate] if truncate else data)
    return path


def _llava_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llava"}))
    _safetensors(root / "model.safetensors", 2)
    (root / "tokenizer_config.json").write_text("{}")
    (root / "tokenizer.json").write_text("{}")
    return root


def _break(how: str, d: Path) -> str:
    if how == "no config.json":
        (d / "config.json").unlink()
        return f"{d} holds no config.json"
    if how == "damaged config.json":
        (d / "config.json").write_text("{")
        return f"{d / 'config.json'}: damaged JSON"
    if how == "no weights":
        (d / "model.safetensors").unlink()
        return f"{d}: config.json but no weights (model.safetensors"
    if how == "truncated weights":
        _safetensors(d / "model.safetensors", 2, truncate=5)
        return f"{d / 'model.safetensors'}: truncated: tensor 't1'"
    if how == "garbage weights":
        (d / "model.safetensors").write_bytes(os.urandom(4096))
        return f"{d / 'model.safetensors'}: not a valid safetensors file"
    if how == "empty weights":
        (d / "model.safetensors").write_bytes(b"")
        return f"{d / 'model.safetensors'}: truncated safetensors file (0 bytes)"
    if how == "no tokenizer.json":
        (d / "tokenizer.json").unlink()
        return f"{d}: no tokenizer.json (nor tokenizer.model); it is written by processor.save_pretrained"
    if how == "missing shard":
        (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
        (d / "model.safetensors.index.json").write_text(
            json.dumps(
                {
                    "weight_map": {
                        "a": "model-00001-of-00002.safetensors",
                        "b": "model-00002-of-00002.safetensors",
                    }
                }
            )
        )
        return "shard model-00002-of-00002.safetensors named by model.safetensors.index.json is missing"
    if how == "adapter without weights":
        (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(d)}))
        return "adapter_config.json but no adapter_model.safetensors"
    raise AssertionError(how)


BROKEN_CHECKPOINTS = [
    "no config.json", "damaged config.json", "no weights", "truncated weights", "garbage weights",
    "empty weights", "no tokenizer.json", "missing shard", "adapter without weights",
]  # fmt: skip


@pytest.mark.parametrize("how", BROKEN_CHECKPOINTS)
def test_broken_checkpoint_fails_in_seconds_naming_the_file(tmp_path, how):
    d = _llava_dir(tmp_path / "ckpt")
    check_checkpoint(d, "--model-path")  # the intact one passes
    message = _break(how, d)
    start = time.monotonic()
    with pytest.raises(InputError) as e:
        check_checkpoint(d, "--model-path")
    assert time.monotonic() - start < 2
    assert message in str(e.value) and "\n" not in str(e.value)


BAD_SOURCES = [
    ("PATH/sam_vit_h_4b8939.pth", "still the placeholder 'PATH/sam_vit_h_4b8939.pth'"),
    ("./no/such/dir", "does not exist (neither a directory nor a hub id"),
    ("llava-hf/not-cached-here", "is a hub id, not in the local cache, and HF_HUB_OFFLINE is set"),
]


@pytest.mark.parametrize("source,message", BAD_SOURCES, ids=[s for s, _ in BAD_SOURCES])
def test_bad_model_source_fails_at_once(monkeypatch, tmp_path, source, message):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_checkpoint(source, "--model-path")
    assert time.monotonic() - start < 2


def test_placeholder_file_is_named(tmp_path):
    with pytest.raises(InputError, match="--vision_pretrained is still the placeholder"):
        check_file("PATH/sam_vit_h_4b8939.pth", "--vision_pretrained")


# --- the repository cites nothing outside itself ----------------------------------------------------------
OUTSIDE_REFERENCES = re.compile(r"\.\./shared|shared/reference|upstream-spec|§|\bissue #?\d+", re.IGNORECASE)


def test_repository_cites_nothing_outside_itself():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    found = []
    for name in tracked:
        if (
            Path(name).suffix not in {".py", ".md", ".sh", ".txt", ".toml", ".json"}
            and Path(name).name != "Makefile"
        ):
            continue
        if name == "tests/test_bad_inputs.py":
            continue
        text = (ROOT / name).read_text(errors="replace")
        found += [f"{name}: {m.group(0)}" for m in OUTSIDE_REFERENCES.finditer(text)]
    assert not found, found


def test_toy_target_sizes_are_stated_as_drawn():
    from playground import demo
    from playground.toyworld.scene import LARGE_SIDE, SMALL_SIDE

    doc = demo.vstar_toy_is_hard.__doc__
    assert f"{SMALL_SIDE[0]}-{SMALL_SIDE[1]} px" in doc and f"{LARGE_SIDE[0]}-{LARGE_SIDE[1]}" in doc
