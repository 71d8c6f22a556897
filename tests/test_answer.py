"""The System-1 answerer: batched equals single, and a killed run resumes with each answer exactly once."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eval.qa_files import AnswersFile
from roillava.answer import answer_file, build_prompt, generate, option_losses
from roillava.data import open_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def questions(toy_world):
    pg = toy_world["playground"]
    rows = [json.loads(line) for line in (pg / "data/eval/toy/llava_toy_val.jsonl").read_text().splitlines()]
    return rows, pg / "data/eval/toy/llava_toy_val.jsonl", pg / "data/toy/images"


def peaked(llava):
    """A random model whose greedy choices are well separated, so float noise cannot flip them."""
    torch.manual_seed(0)
    with torch.no_grad():
        llava.lm_head.weight.mul_(20)
    return llava


def test_batched_equals_single(llava, processor, questions):
    rows, _, images = questions
    model = peaked(llava)
    processor.image_processor.do_pad = True
    prompts = [
        build_prompt(
            q["text"] + " ok" * i,  # different lengths, so left padding really happens
            [open_image(images / q["image"])],
            tokenizer=processor.tokenizer,
            model_config=model.config,
            template="vicuna_v1",
        )
        for i, q in enumerate(rows[:8])
    ]
    batched = generate(model, processor, prompts, max_new_tokens=6)
    single = [generate(model, processor, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1


def test_answer_file_batch_8_equals_batch_1(llava, processor, questions, tmp_path):
    """The whole runner (prompts, padding, static cache, resumable writes): same answers at batch 8 and 1."""
    _, question_file, images = questions
    model = peaked(llava)
    texts = {}
    for batch_size in (8, 1):
        out = tmp_path / f"b{batch_size}.jsonl"
        answer_file(model, processor, str(question_file), str(images), str(out), batch_size=batch_size,
                    max_new_tokens=6, progress=False, model_signature="peaked tiny")  # fmt: skip
        texts[batch_size] = {
            r["question_id"]: r["text"] for r in map(json.loads, out.read_text().splitlines())
        }
    assert texts[8] == texts[1]
    assert len(texts[1]) == 12 and len(set(texts[1].values())) > 1


def test_option_losses_are_per_option_mean_cross_entropy(llava, processor, questions):
    """Options of different lengths scored together equal each scored alone and a hand computation."""
    rows, _, images = questions
    prompt = build_prompt(
        rows[0]["text"],
        [open_image(images / rows[0]["image"])],
        tokenizer=processor.tokenizer,
        model_config=llava.config,
        template="vicuna_v1",
    )
    options = ["striped", "vertical stripes", "plain"]
    together = option_losses(llava, processor, prompt, options)
    alone = [option_losses(llava, processor, prompt, [o])[0] for o in options]
    assert together == pytest.approx(alone, rel=1e-4)
    tok = processor.tokenizer
    target = tok("vertical stripes", add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = torch.tensor([prompt.input_ids + target])
    pixels = processor.image_processor(prompt.images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = llava(input_ids=ids, pixel_values=pixels).logits[0]
    start = len(prompt.input_ids)
    by_hand = torch.nn.functional.cross_entropy(logits[start - 1 : -1], torch.tensor(target))
    assert together[1] == pytest.approx(by_hand.item(), rel=1e-4)


def test_resume_drops_a_partial_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(
        '{"question_id": "a", "text": "x", "fingerprint": "fa"}\n'
        '{"question_id": "b", "text": "y", "fingerprint": "fb"}\n{"question_id": "c", "te'
    )
    with AnswersFile(path, {"a": "fa", "b": "fb", "c": "fc"}) as answers:
        assert set(answers.done) == {"a", "b"}
    assert path.read_text().endswith('"fb"}\n')


def test_missing_image_is_recorded_not_fatal(llava, processor, tmp_path, questions):
    _, question_file, images = questions
    rows = [json.loads(line) for line in question_file.read_text().splitlines()][:3]
    rows[1]["image"] = "nope.jpg"
    qf = tmp_path / "q.jsonl"
    qf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = answer_file(
        llava, processor, str(qf), str(images), str(tmp_path / "a.jsonl"), max_new_tokens=2, progress=False,
        model_signature="tiny",
    )  # fmt: skip
    answers = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert summary["missing_images"] == 1 and len(answers) == 3
    assert (
        "image not found"
        in answers[[a["question_id"] for a in answers].index(rows[1]["question_id"])]["metadata"]["error"]
    )


def test_killed_answerer_resumes_exactly_once(tiny_base, questions, tmp_path):
    rows, question_file, images = questions
    answers = tmp_path / "answers.jsonl"
    cmd = [
        sys.executable, "-m", "roillava.answer", "--model-path", str(tiny_base), "--question-file", str(question_file),
        "--image-folder", str(images), "--answers-file", str(answers), "--batch-size", "1", "--max-new-tokens", "4",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not answers.exists() or len(answers.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(answers.read_text().splitlines())
    assert 3 <= n_before < len(rows), "the kill should land mid-run"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    ids = [json.loads(line)["question_id"] for line in answers.read_text().splitlines()]
    assert sorted(ids) == sorted(r["question_id"] for r in rows)
    assert len(ids) == len(set(ids))
