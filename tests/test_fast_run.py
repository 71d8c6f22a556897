"""FaST's batch contract: LLaVA answer JSONL + traces, resumable after a kill, V*Bench, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_fast_agent import _one_thread, agent_config, fast_checkpoints  # noqa: F401

from fast.agent import FastAgent
from fast.cli import main as fast_main
from fast.model import FastModel
from fast.run import answer_question_file, answer_vstar, config_path_for, read_questions, traces_path_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpts(tiny_base):
    return fast_checkpoints(tiny_base)


@pytest.fixture(scope="module")
def s2_agent(ckpts):
    """System 2 for every question, so every stage runs for every answer."""
    config = agent_config(ckpts, mode="system2_always")
    return FastAgent(config, FastModel(config))


def _image(seed: int, size=(448, 336)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy())


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fast_questions")
    images = root / "images"
    images.mkdir()
    rows = []
    for i in range(8):
        _image(i).save(images / f"{i}.jpg")
        rows.append({"question_id": f"q{i}", "image": f"{i}.jpg", "text": f"What pattern is on object {i}?"})
    rows.append({"question_id": "q_missing", "image": "nope.jpg", "text": "What is it?"})
    qf = root / "questions.jsonl"
    qf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return qf, images


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_writes_llava_answers_and_traces(s2_agent, questions, tmp_path):
    qf, images = questions
    answers = tmp_path / "answers.jsonl"
    summary = answer_question_file(s2_agent, qf, images, answers, batch_size=4, overlay_dir=tmp_path / "png")
    rows = _lines(answers)
    assert [r["question_id"] for r in rows] == [f"q{i}" for i in range(8)] + ["q_missing"]
    for r in rows:
        assert set(r) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata", "fingerprint"}
        assert r["metadata"]["trace"]["question_id"] == r["question_id"]
    assert rows[-1]["text"] == "" and "image not found" in rows[-1]["metadata"]["error"]
    assert (
        rows[0]["metadata"]["system"] == "system2"
        and rows[0]["text"] == rows[0]["metadata"]["trace"]["answer"]
    )
    traces = _lines(traces_path_for(answers))
    assert [t["question_id"] for t in traces] == [r["question_id"] for r in rows]
    assert summary["answered_now"] == 9 and summary["system2_now"] == 8
    assert len(list((tmp_path / "png").glob("*.png"))) == 8
    # chunks split the file as LLaVA's eval scripts expect
    chunked = tmp_path / "chunk1.jsonl"
    answer_question_file(s2_agent, qf, images, chunked, batch_size=4, num_chunks=3, chunk_idx=1)
    assert [r["question_id"] for r in _lines(chunked)] == ["q3", "q4", "q5"]


def test_killed_batch_resumes_with_each_answer_exactly_once(ckpts, s2_agent, questions, tmp_path):
    qf, images = questions
    answers = tmp_path / "answers.jsonl"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "fast", "--question-file", str(qf), "--image-folder", str(images),
        "--answers-file", str(answers), "--base", str(ckpts["base"]), "--switch", str(ckpts["switch"]),
        "--roi", str(ckpts["roi"]), "--evidence", "roi", "--mode", "system2-always", "--batch-size", "1",
        "--switch-max-new-tokens", "6", "--roi-max-new-tokens", "8", "--max-new-tokens", "4", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if answers.exists() and answers.read_text().count("\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert config_path_for(answers).is_file()
    # and a kill in the middle of a write: a cut-off answer line, a trace of an uncommitted question
    committed = [r["question_id"] for r in _lines(answers)] if answers.exists() else []
    with answers.open("a") as f:
        f.write('{"question_id": "q7", "text": "cut of')
    with traces_path_for(answers).open("a") as f:
        f.write(json.dumps({"question_id": "q6", "answer": "uncommitted"}) + "\n")
    # the same command again: its answers are the same question, image, checkpoints and settings
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    ids = [r["question_id"] for r in _lines(answers)]
    assert sorted(ids) == sorted([f"q{i}" for i in range(8)] + ["q_missing"]) and len(ids) == len(set(ids))
    assert summary["resumed"] == len(committed) and summary["answered_now"] == 9 - len(committed)
    trace_ids = [t["question_id"] for t in _lines(traces_path_for(answers))]
    assert sorted(trace_ids) == sorted(ids)
    assert all(t.get("answer") != "uncommitted" for t in _lines(traces_path_for(answers)))


def test_bad_question_lines_name_file_and_line(tmp_path):
    qf = tmp_path / "q.jsonl"
    qf.write_text('{"question_id": 1, "text": "a"}\n\n{"question_id": 2}\n')
    with pytest.raises(ValueError, match=rf"{qf}:3: question has no 'text'"):
        read_questions(qf)
    qf.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, "text": \n')
    with pytest.raises(ValueError, match=rf"{qf}:2: invalid JSON line"):
        read_questions(qf)
    qf.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n')
    with pytest.raises(ValueError, match=rf"{qf}:2: duplicate question_id 1"):
        read_questions(qf)
    with pytest.raises(FileNotFoundError, match="question file not found"):
        read_questions(tmp_path / "none.jsonl")


@pytest.fixture(scope="module")
def vstar_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vstar")
    for k, (category, options) in enumerate(
        [
            ("direct_attributes", ["plain", "checkered", "vertical stripes"]),
            ("relative_position", ["left", "right"]),
        ]
    ):
        (root / category).mkdir()
        for i in range(2):
            _image(10 + 2 * k + i).save(root / category / f"t{i}.jpg")
            ann = {
                "target_object": ["blue object"],
                "bbox": [[40, 30, 20, 20]],
                "question": "Which?",
                "options": options,
            }
            (root / category / f"t{i}.json").write_text(json.dumps(ann))
    return root


def test_vstar_scores_options_and_resumes(s2_agent, vstar_folder, tmp_path):
    # answers written inside the bench folder (LLaVA's layout) are not questions
    answers = vstar_folder / "answers" / "vstar.jsonl"
    summary = answer_vstar(s2_agent, vstar_folder, answers, batch_size=3)
    rows = _lines(answers)
    assert [r["question_id"] for r in rows] == [
        "direct_attributes/t0", "direct_attributes/t1", "relative_position/t0", "relative_position/t1",
    ]  # fmt: skip
    for r in rows:
        trace = r["metadata"]["trace"]
        assert (
            r["text"]
            == trace["options"][
                min(range(len(trace["option_losses"])), key=trace["option_losses"].__getitem__)
            ]
        )
        assert r["metadata"]["correct"] == (r["text"] == trace["options"][0])
        assert r["metadata"]["option_losses"] == trace["option_losses"]
        assert trace["options"][r["metadata"]["choice"]] == r["text"]
    n_correct = sum(r["metadata"]["correct"] for r in rows)
    assert summary["accuracy"] == n_correct / 4 and summary["system2_rate"] == 1.0
    assert set(summary["per_category"]) == {"direct_attributes", "relative_position"}
    (vstar_folder / "answers" / "run_result.json").write_text("{}")
    config_path_for(answers).write_text("{}")
    again = answer_vstar(s2_agent, vstar_folder, answers)
    assert again["answered_now"] == 0 and len(_lines(answers)) == 4
    (vstar_folder / "direct_attributes" / "bad.json").write_text('{"question": "q"}')
    with pytest.raises(ValueError, match="bad.json: no 'options'"):
        answer_vstar(s2_agent, vstar_folder, answers)
    (vstar_folder / "direct_attributes" / "bad.json").unlink()


def test_cli_single_question_prints_answer_and_trace(ckpts, tmp_path, capsys):
    image = tmp_path / "x.jpg"
    _image(3).save(image)
    fast_main([
        "--image", str(image), "--question", "What pattern is on the blue object?", "--base", str(ckpts["base"]),
        "--switch", str(ckpts["switch"]), "--roi", str(ckpts["roi"]), "--evidence", "roi", "--mode", "system2-always",
        "--switch-max-new-tokens", "4", "--roi-max-new-tokens", "6", "--max-new-tokens", "3",
        "--overlay-dir", str(tmp_path / "png"), "--trace-file", str(tmp_path / "trace.json"),
    ])  # fmt: skip
    out = capsys.readouterr()
    assert "system:   system2 (forced)" in out.out and "answer:" in out.out and "roi:" in out.out
    assert "resident parameters" in out.err and '"evidence": "roi"' in out.err
    # the trace JSON, and the overlay named after the image and question, with a legend panel below it
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert trace["system"] == "system2" and trace["roi"] is not None and trace["latency"]
    assert f"trace: {tmp_path / 'trace.json'}" in out.out
    overlay = tmp_path / "png" / "x_What_pattern_is_on_the_blue_object.png"
    assert overlay.is_file() and not (tmp_path / "png" / "0.png").exists()
    legend = Image.open(overlay)
    assert legend.width == 448 and legend.height > 336 + 12 * 5  # question, decision, ROI, answer, time
    panel = np.asarray(legend.convert("RGB"))[340:].astype(int)
    yellow = (panel[..., 0] > 180) & (panel[..., 1] > 160) & (panel[..., 2] < 90)
    assert yellow.any()  # the ROI line, in the ROI box's colour
    with pytest.raises(SystemExit):
        fast_main(["--image", str(image), "--base", "b", "--switch", "s"])  # no --question
