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
        [PY, "-c", "import sys,time; from eval.qa_files import AnswersFile\n"
         "with AnswersFile(sys.argv[1], {}):\n    print('locked', flush=True); time.sleep(60)",
         str(answers)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        # refused, not waited for (a waiting lock would hang until the holder exits, then not raise)
        with pytest.raises(
            AnswersBusy, match=rf"{answers} is being written by another run \(pid {holder.pid}\)"
        ):
            AnswersFile(answers, {}).__enter__()
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
def test_broken_checkpoint_fails_naming_the_file(tmp_path, how):
    d = _llava_dir(tmp_path / "ckpt")
    check_checkpoint(d, "--model-path")  # the intact one passes
    message = _break(how, d)
    with pytest.raises(InputError) as e:
        check_checkpoint(d, "--model-path")
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
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_checkpoint(source, "--model-path")


def test_placeholder_file_is_named(tmp_path):
    with pytest.raises(InputError, match="--vision_pretrained is still the placeholder"):
        check_file("PATH/sam_vit_h_4b8939.pth", "--vision_pretrained")


# --- the repository cites nothing outside itself ----------------------------------------------------------
# Spelled in pieces so that this line does not match itself.
OUTSIDE_REFERENCES = re.compile(
    "|".join((r"\.\./" + "shared", "shared/" + "reference", "upstream" + "-spec", "§", r"\bissue #?\d+")),
    re.IGNORECASE,
)


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


# --- entry points: every input checked before a model loads, one line, in seconds -------------------------
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
}


def _run(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 120):
    start = time.monotonic()
    proc = subprocess.run(
        args, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    return proc, time.monotonic() - start


def _last_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """A question file, images and a complete-looking checkpoint directory (no model is ever loaded)."""
    root = tmp_path_factory.mktemp("world")
    (root / "images").mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "images" / "a.png")
    _write_jsonl(root / "q.jsonl", [GOOD, {"question_id": 2, "image": "a.png", "text": "shape?"}])
    ckpt = _llava_dir(root / "ckpt")
    data = root / "data.json"
    data.write_text(
        json.dumps(
            [
                {
                    "image": "a.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nq"},
                        {"from": "gpt", "value": "a"},
                    ],
                }
            ]
        )
    )
    return root, ckpt


def _answer_cmd(module: str, root: Path, model: Path | str, question_file: Path, answers: Path) -> list[str]:
    return [
        sys.executable, "-m", module, "--model-path", str(model), "--question-file", str(question_file),
        "--image-folder", str(root / "images"), "--answers-file", str(answers), "--device", "cpu",
    ]  # fmt: skip


def _bad_cases(root: Path, ckpt: Path) -> list[tuple[str, dict, str]]:
    dup = _write_jsonl(root / "dup.jsonl", [GOOD, GOOD])
    no_cfg = root / "no_cfg"
    if not no_cfg.exists():
        _llava_dir(no_cfg)
        (no_cfg / "config.json").unlink()
    return [
        ("duplicate id", {"question_file": dup}, f"{dup}:2: duplicate question_id 1"),
        ("no config.json", {"model": no_cfg}, f"{no_cfg} holds no config.json"),
        (
            "hub id offline",
            {"model": "llava-hf/not-here"},
            "is a hub id, not in the local cache, and HF_HUB_OFFLINE",
        ),
    ]


@pytest.mark.parametrize("module", ["roillava.answer", "roillava.roi_answer"])
@pytest.mark.parametrize("case", [0, 1, 2], ids=["duplicate id", "no config.json", "hub id offline"])
def test_answerers_fail_before_loading_with_one_line(small_world, tmp_path, module, case):
    root, ckpt = small_world
    name, override, message = _bad_cases(root, ckpt)[case]
    qf = override.get("question_file", root / "q.jsonl")
    model = override.get("model", ckpt)
    proc, _ = _run(
        _answer_cmd(module, root, model, qf, tmp_path / "a.jsonl"),
        env={"HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in _last_line(proc) and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_answerer_refuses_a_busy_answers_file(small_world, tmp_path):
    root, ckpt = small_world
    answers = tmp_path / "a.jsonl"
    with AnswersFile(answers, {}):
        proc, _ = _run(_answer_cmd("roillava.answer", root, ckpt, root / "q.jsonl", answers))
    assert (
        proc.returncode == 2
        and f"{answers} is being written by another run (pid {os.getpid()})" in _last_line(proc)
    )


def test_fast_cli_unreadable_image_is_one_line(small_world, tmp_path):
    root, ckpt = small_world
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    proc, _ = _run(
        [
            sys.executable,
            "-m",
            "fast",
            "--image",
            str(bad),
            "--question",
            "what?",
            "--base",
            str(ckpt),
            "--switch",
            str(ckpt),
        ]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert _last_line(proc).startswith(f"error: --image: unreadable image {bad}")


def test_fast_cli_bad_question_file_is_one_line(small_world, tmp_path):
    root, ckpt = small_world
    qf = tmp_path / "q.jsonl"
    qf.write_bytes(b'{"question_id": 1, "text": "\xff"}\n')
    proc, _ = _run(
        [sys.executable, "-m", "fast", "--question-file", str(qf), "--image-folder", str(root / "images"),
         "--answers-file", str(tmp_path / "a.jsonl"), "--base", str(ckpt), "--switch", str(ckpt)]
    )  # fmt: skip
    assert proc.returncode == 2 and f"{qf}:1: not UTF-8" in _last_line(proc), proc.stderr[-2000:]


TRAINING_CASES = [
    # (name, script, cwd, env / args, message)
    (
        "roi missing data",
        "roi",
        {"DATA_PATH": "{root}/none.json"},
        "--data_path: {root}/none.json does not exist",
    ),
    ("roi no config", "roi", {"MODEL": "{root}/no_cfg"}, "{root}/no_cfg holds no config.json"),
    ("roi hub offline", "roi", {"MODEL": "llava-hf/not-here"}, "is a hub id, not in the local cache"),
    (
        "roi missing image",
        "roi",
        {"DATA_PATH": "{root}/missing_image.json"},
        "1 of 1 records are bad (record 0: image 'gone.png' not found",
    ),
    (
        "switch missing images",
        "switch",
        {"IMAGE_FOLDER": "{root}/nope"},
        "--image_folder: {root}/nope does not exist",
    ),
    ("switch no config", "switch", {"MODEL": "{root}/no_cfg"}, "{root}/no_cfg holds no config.json"),
    (
        "seg placeholder SAM",
        "seg",
        ["--vision_pretrained=PATH/sam_vit_h_4b8939.pth"],
        "still the placeholder 'PATH/sam_vit_h_4b8939.pth'",
    ),
    (
        "seg dataset dir",
        "seg",
        ["--dataset_dir=./dataset"],
        "--dataset_dir: dataset does not exist; from SegLLaVA/ the repository's is ../dataset",
    ),
]


@pytest.mark.parametrize("name,script,override,message", TRAINING_CASES, ids=[c[0] for c in TRAINING_CASES])
def test_training_scripts_check_inputs_before_loading(small_world, tmp_path, name, script, override, message):
    """The design card's commands, on a machine without a GPU (bf16 falls back with a notice) and a bad input."""
    root, ckpt = small_world
    _bad_cases(root, ckpt)  # makes no_cfg
    (root / "missing_image.json").write_text(
        json.dumps(
            [
                {
                    "image": "gone.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nq"},
                        {"from": "gpt", "value": "a"},
                    ],
                }
            ]
        )
    )
    fill = {"root": str(root)}
    env = {"MODEL": str(ckpt), "DATA_PATH": str(root / "data.json"), "IMAGE_FOLDER": str(root / "images"),
           "OUTPUT_DIR": str(tmp_path / "out"), "LAUNCHER": "python", "DS_CONFIG": "", "HF_HUB_CACHE": str(tmp_path / "hub")}  # fmt: skip
    env.pop("BF16", None)
    if isinstance(override, dict):
        env.update({k: v.format(**fill) for k, v in override.items()})
    if script == "roi":
        cmd, cwd = ["bash", "./scripts/v1_5/finetune_lora.sh"], ROOT / "RoiLLaVA"
        env["ROI_DATA"] = str(root / "data.json")
    elif script == "switch":
        cmd, cwd = ["sh", "pretrain.sh"], ROOT / "SwiLLaVA"
    else:
        args = [
            f"--version={ckpt}",
            "--dataset_dir=../dataset",
            f"--vision_pretrained={ckpt}",
            "--deepspeed=",
        ]
        cmd, cwd = [sys.executable, "train_ds.py", *args, *override], ROOT / "SegLLaVA"
    base_env = {k: v for k, v in ENV.items() if k != "BF16"}
    proc = subprocess.run(cmd, cwd=cwd, env={**base_env, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert message.format(**fill) in _last_line(proc), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if script != "seg" and not (__import__("torch").cuda.is_available()):
        assert "notice: no CUDA GPU with bf16 here: training in fp32 (BF16=False)" in proc.stderr


def test_bf16_refusal_falls_back_to_fp32_with_a_notice(capsys):
    from transformers import HfArgumentParser

    from eval.checks import parse_training_args
    from roillava.train import TrainingArguments

    if __import__("torch").cuda.is_available():
        pytest.skip("bf16 works here")
    (args,) = parse_training_args(
        HfArgumentParser(TrainingArguments), ["--output_dir", "/tmp/x", "--bf16", "True"]
    )
    assert args.bf16 is False and "training in fp32 instead" in capsys.readouterr().err


# --- noise and dependencies ------------------------------------------------------------------------------
def test_bitsandbytes_cpu_kernel_warning_is_quiet_by_default():
    code = "import roillava, bitsandbytes"
    quiet, _ = _run([sys.executable, "-c", code], env={"FAST_VERBOSE": ""})
    loud, _ = _run([sys.executable, "-c", code], env={"FAST_VERBOSE": "1"})
    assert quiet.returncode == 0 and loud.returncode == 0
    assert "gemm_4bit_forward" not in quiet.stderr
    if "gemm_4bit_forward" not in loud.stderr:
        pytest.skip("this CPU's bitsandbytes path has nothing to warn about")


def _pins(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.startswith(("#", "-r")):
            pkg, version = line.split("==")
            out[pkg.strip()] = version.strip()
    return out


# Pinned but not imported by name: who uses each.
USED_INDIRECTLY = {
    "tokenizers": "transformers' fast tokenizers (pinned to the version transformers was tested with)",
    "accelerate": "the HF Trainer",
    "sentencepiece": "LLaMA's slow tokenizer (tokenizer.model) when a checkpoint ships no tokenizer.json",
    "tensorboard": "SegLLaVA's training logs (report_to tensorboard)",
    "bitsandbytes": "transformers' BitsAndBytesConfig (--bits 4/8: QLoRA)",
}
MODULE_OF = {"opencv-python-headless": "cv2", "pillow": "PIL"}


def test_requirements_split_and_every_pin_used():
    run, dev = _pins("requirements.txt"), _pins("requirements-dev.txt")
    assert "pytest" not in run and "ruff" not in run and {"pytest", "ruff"} <= set(dev)
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    assert "requirements-dev.txt" in (ROOT / "Makefile").read_text()
    code = "\n".join(
        (ROOT / f).read_text()
        for f in subprocess.run(
            ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True
        ).stdout.split()
        if (ROOT / f).is_file()
    )
    unused = [
        pkg
        for pkg in run
        if pkg not in USED_INDIRECTLY
        and not re.search(rf"^\s*(import|from) {MODULE_OF.get(pkg, pkg)}\b", code, re.MULTILINE)
    ]
    assert not unused, unused


# --- --dry_run: every record, no model weights, every bad record reported ---------------------------------
@pytest.fixture()
def no_weight_loading(monkeypatch):
    """Loading llava weights is an error here (transformers' loader, not our code, is replaced)."""
    from transformers import LlavaForConditionalGeneration

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded")

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", classmethod(refuse))


def _with_bad_records(source: Path, out: Path, n: int, bad: dict[int, str]) -> Path:
    records = json.loads(source.read_text())
    records = (records * (n // len(records) + 1))[:n]
    for i, how in bad.items():
        records[i] = {**records[i], "image": "gone.png"} if how == "image" else {"id": "no conversations"}
    out.write_text(json.dumps(records))
    return out


@pytest.mark.parametrize("sibling", ["roillava", "swillava"])
def test_dry_run_reports_every_bad_record_without_weights(
    sibling, tiny_base, toy_world, tmp_path, capsys, no_weight_loading
):
    toy = toy_world["playground"] / "data" / "toy"
    source = (
        toy / "llava_toy_instruct.json" if sibling == "roillava" else toy / "seal" / "toy_focus_data.json"
    )
    data = _with_bad_records(
        source, tmp_path / "data.json", 64, {10: "conversations", 50: "image", 63: "image"}
    )
    train = __import__(f"{sibling}.train", fromlist=["train"]).train
    argv = [
        "--model_name_or_path", str(tiny_base), "--data_path", str(data), "--image_folder", str(toy / "images"),
        "--output_dir", str(tmp_path / "out"), "--dry_run", "True", "--bf16", "False", "--report_to", "none",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        train(argv)
    assert e.value.code == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["records"] == 64 and report["bad_records"] == 3
    assert [m.split(":")[0] for m in report["first_bad"]] == [f"{data} record {i}" for i in (10, 50, 63)]


def test_training_stops_at_start_on_a_bad_record_it_would_not_sample(tiny_base, toy_world, tmp_path, capsys):
    """A bad record at index 50 of 64, one step: found before the model loads, not never."""
    from roillava.train import train

    toy = toy_world["playground"] / "data" / "toy"
    data = _with_bad_records(toy / "llava_toy_instruct.json", tmp_path / "data.json", 64, {50: "image"})
    argv = [
        "--model_name_or_path", str(tiny_base), "--data_path", str(data), "--image_folder", str(toy / "images"),
        "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--bf16", "False", "--report_to", "none",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        train(argv)
    assert e.value.code == 2
    assert (
        f"{data}: 1 of 64 records are bad (record 50: image 'gone.png' not found" in capsys.readouterr().err
    )


# --- LoRA+: peft's optimizer is not the same parameter grouping, so ours stays ----------------------------
def test_peft_loraplus_groups_differ_from_ours(tiny_base, tmp_path):
    """peft's `create_loraplus_optimizer` puts every 1-D parameter (the projector's biases) in the fast
    B group and knows no projector rate; ours speeds up only the LoRA B matrices and keeps the projector
    at `--mm_projector_lr` (LLaVA's). Should peft ever match, this test says so and ours can go."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    from roillava.model import PROJECTOR, add_lora, load_base
    from roillava.train import LLaVATrainer, TrainingArguments

    model = add_lora(load_base(str(tiny_base)), r=4, alpha=8, dropout=0.0)
    lr, ratio, projector_lr = 1e-4, 16.0, 2e-5
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=lr, lora_plus_ratio=ratio, mm_projector_lr=projector_lr,
        report_to="none", use_cpu=True,
    )  # fmt: skip
    ours = LLaVATrainer(model=model, args=args).create_optimizer()
    theirs = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio)
    names = {id(p): n for n, p in model.named_parameters()}

    def rates(opt) -> dict[str, float]:
        return {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}

    ours_lr, theirs_lr = rates(ours), rates(theirs)
    assert set(ours_lr) == set(theirs_lr)
    for name, rate in ours_lr.items():
        expected = projector_lr if PROJECTOR in name else lr * ratio if ".lora_B." in name else lr
        assert rate == pytest.approx(expected), name
    differ = sorted(n for n in ours_lr if ours_lr[n] != pytest.approx(theirs_lr[n]))
    assert differ and all(PROJECTOR in n for n in differ), differ


# --- the shared answering loop: resume, changed questions, per-question errors, progress -------------------
def test_runner_redoes_regenerated_questions_and_shows_progress(tmp_path, capsys):
    """The toy world regenerated (same ids, new question text and images): the rerun answers them again
    instead of 'finishing' at once with the old answers; unchanged ones are kept; every id once."""
    from eval.runner import run_questions

    img = tmp_path / "images"
    img.mkdir()
    for name, colour in (("a.png", (1, 2, 3)), ("b.png", (4, 5, 6))):
        Image.new("RGB", (8, 8), colour).save(img / name)
    rows = [
        {"question_id": "q1", "image": "a.png", "text": "one"},
        {"question_id": "q2", "image": "b.png", "text": "two"},
        {"question_id": "q3", "image": "b.png", "text": "three"},
        {"question_id": "q4", "text": "text only"},
    ]
    qf = _write_jsonl(tmp_path / "q.jsonl", rows)
    answers = tmp_path / "a.jsonl"

    def solver(tag):
        return lambda batch, images: [(f"{tag}:{q['text']}", {}) for q in batch]

    first = run_questions(str(qf), str(img), str(answers), solver("v1"), batch_size=2, settings={"m": 1})
    assert first["answered_now"] == 4 and first["text_only"] == 1
    assert "answering: 100%" in capsys.readouterr().err  # a tqdm bar with rate and ETA
    rows[0]["text"] = "one, reworded"
    _write_jsonl(qf, rows)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(img / "b.png")
    second = run_questions(str(qf), str(img), str(answers), solver("v2"), batch_size=2, settings={"m": 1})
    assert second["answered_now"] == 3 and second["redone"] == 3 and second["resumed"] == 1
    got = {json.loads(x)["question_id"]: json.loads(x)["text"] for x in answers.read_text().splitlines()}
    assert len(answers.read_text().splitlines()) == 4
    assert got == {"q1": "v2:one, reworded", "q2": "v2:two", "q3": "v2:three", "q4": "v1:text only"}
    # same inputs, other generation settings: answered again, never mixed
    third = run_questions(str(qf), str(img), str(answers), solver("v3"), batch_size=2, settings={"m": 2})
    assert third["answered_now"] == 4


def test_runner_records_a_missing_image_key_when_an_image_is_needed(tmp_path):
    from eval.runner import run_questions

    qf = _write_jsonl(tmp_path / "q.jsonl", [{"question_id": 7, "text": "where?"}])
    answers = tmp_path / "a.jsonl"
    summary = run_questions(
        str(qf),
        str(tmp_path),
        str(answers),
        lambda b, i: [("x", {})] * len(b),
        needs_image=True,
        progress=False,
    )
    (row,) = [json.loads(x) for x in answers.read_text().splitlines()]
    assert summary["missing_images"] == 1 and row["text"] == ""
    assert row["metadata"]["error"] == f"question has no 'image' ({qf}:1)"


def test_checkpoint_paths_are_relative_and_a_missing_one_is_named(tmp_path):
    from eval.checks import resolve_in_checkpoint
    from segllava.model import CONFIG_FILE, SegConfig

    base, sam, ckpt = (
        tmp_path / "tree" / "base",
        tmp_path / "tree" / "sam",
        tmp_path / "tree" / "ckpts" / "seg",
    )
    for d in (base, sam, ckpt):
        d.mkdir(parents=True)
    SegConfig(base_model=str(base), vision_pretrained=str(sam)).save(ckpt)
    saved = json.loads((ckpt / CONFIG_FILE).read_text())
    assert saved["base_model"] == "../../base" and saved["vision_pretrained"] == "../../sam"
    moved = tmp_path / "moved"
    (tmp_path / "tree").rename(moved)  # the whole tree moves: still loads
    assert resolve_in_checkpoint(
        moved / "ckpts" / "seg", saved["vision_pretrained"], f"{CONFIG_FILE}:vision_pretrained"
    ) == str(moved / "ckpts" / "seg" / "../../sam")
    alone = tmp_path / "alone"
    (moved / "ckpts" / "seg").rename(alone)  # the checkpoint alone: a clear error, not "unsupported type"
    with pytest.raises(
        InputError, match=rf"{alone / CONFIG_FILE} names vision_pretrained '../../sam', which does not exist"
    ):
        resolve_in_checkpoint(alone, saved["vision_pretrained"], f"{CONFIG_FILE}:vision_pretrained")
    # a hub id stays a hub id
    assert resolve_in_checkpoint(alone, "facebook/sam-vit-huge", "x:y") == "facebook/sam-vit-huge"


def test_deepspeed_chatter_is_quiet_by_default_and_verbose_restores_it(monkeypatch):
    import logging

    from deepspeed.utils import logger as ds_logger

    from eval.logs import quiet_third_party

    monkeypatch.delenv("FAST_VERBOSE", raising=False)
    quiet_third_party()
    assert not ds_logger.isEnabledFor(logging.WARNING) and ds_logger.isEnabledFor(logging.ERROR)
    quiet_third_party(True)
    assert ds_logger.isEnabledFor(logging.WARNING) and os.environ["FAST_VERBOSE"] == "1"
    monkeypatch.delenv("FAST_VERBOSE")
    quiet_third_party()


@pytest.mark.parametrize("loader", ["roillava.data", "swillava.data"])
def test_non_utf8_training_data_names_file_and_line(tmp_path, loader):
    import importlib

    data = tmp_path / "data.json"
    data.write_bytes(b'[{"id": 1,\n "conversations": "caf\xe9"}]')
    with pytest.raises(ValueError, match=rf"{data}:2: not UTF-8"):
        importlib.import_module(loader).load_json_records(data)


def test_seg_validate_checks_before_loading(small_world, tmp_path):
    root, ckpt = small_world
    proc, _ = _run(
        [
            sys.executable,
            "-m",
            "segllava.validate",
            "--model",
            str(root / "no_cfg"),
            "--dataset_dir",
            str(tmp_path),
        ]
    )
    _bad_cases(root, ckpt)
    proc, _ = _run(
        [
            sys.executable,
            "-m",
            "segllava.validate",
            "--model",
            str(root / "no_cfg"),
            "--dataset_dir",
            str(tmp_path),
        ]
    )
    assert proc.returncode == 2 and f"{root / 'no_cfg'} holds no config.json" in _last_line(proc), (
        proc.stderr[-2000:]
    )


def test_hub_id_without_network_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: as good as no network
    with pytest.raises(
        InputError,
        match=r"'llava-hf/llava-1\.5-7b-hf' is a hub id, not in the local cache, and the hub is unreachable: download it",
    ):
        check_checkpoint("llava-hf/llava-1.5-7b-hf", "--model_name_or_path")


@pytest.mark.parametrize("how", ["no config.json", "truncated weights", "no tokenizer.json"])
def test_loaders_check_the_directory_first(tmp_path, how):
    """The library loaders themselves (not only the CLIs): a damaged directory is named before any weights
    are read (without config.json the loader once grew to 23 GB)."""
    from roillava.answer import load_for_inference
    from swillava.model import load_switch

    d = _llava_dir(tmp_path / "ckpt")
    message = _break(how, d)
    for load in (load_for_inference, load_switch):
        with pytest.raises(InputError) as e:
            load(str(d))
        assert message in str(e.value)
