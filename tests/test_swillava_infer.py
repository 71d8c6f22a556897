"""Switch inference: the missing-objects parser, SEAL's evidence prompt, batched decisions and the KV-cached scorer."""

import json

import pytest
import torch
from PIL import Image
from test_swillava_model import tiny_switch
from torch.nn import functional as F

from playground.toyworld.world import MISSING_OBJECTS_PREFIX as TOY_PREFIX
from playground.toyworld.world import missing_objects_answer
from swillava.infer import (
    REPLY_KINDS,
    SwitchAdapter,
    SwitchDecision,
    answer_questions,
    parse_missing_objects,
    switch_reply_kind,
    toy_switch_metrics,
)
from swillava.objects import MISSING_OBJECTS_PREFIX

P = MISSING_OBJECTS_PREFIX


def test_prefix_is_seals_sentence():
    assert P == TOY_PREFIX
    assert parse_missing_objects(missing_objects_answer(["red object", "blue object"])) == [
        "red object",
        "blue object",
    ]


@pytest.mark.parametrize(
    "text,expected",
    [
        (f"{P} purple object.", ["purple object"]),
        (f"{P} A, B.", ["A", "B"]),
        (f"{P} cup, red car and the dog.", ["cup", "red car", "the dog"]),
        (f"{P} cup, red car, and dog", ["cup", "red car", "dog"]),
        (f"{P} cup and dog", ["cup", "dog"]),
        (f"{P}   red object  ,  blue object  .  ", ["red object", "blue object"]),
        (f"{P} red object!!", ["red object"]),
        (f"{P} red object.;", ["red object"]),
        (f"{P} red object. I need a closer look.", ["red object"]),
        (f"{P} red object\nmore text", ["red object"]),
        (f"{P} red object, red object.", ["red object"]),
        (P.replace(" ", "  ").replace("unclear:", "UNCLEAR :") + " cat", ["cat"]),
        (f"{P}", []),
        (f"{P} .", []),
        ("cross", None),
        ("Sorry, I can not answer the question.", None),
        ("Some visual information about the following objects is missing or unclear: cat", None),
        ("", None),
    ],
)
def test_parse_missing_objects(text, expected):
    assert parse_missing_objects(text) == expected


def test_decision_properties():
    assert SwitchDecision("cross", None).answer == "cross" and not SwitchDecision("cross", None).needs_system2
    d = SwitchDecision(f"{P} cat.", ["cat"])
    assert d.needs_system2 and d.answer is None


@pytest.fixture(scope="module")
def adapter(tiny_base):
    model, processor = tiny_switch(tiny_base)
    with torch.no_grad():
        model.core.lm_head.weight.mul_(20)  # peaked greedy choices: float noise cannot flip them
    return SwitchAdapter(model, processor, max_new_tokens=5)


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(0)
    return Image.fromarray((torch.rand(336, 448, 3) * 255).byte().numpy())  # padded side 448, 56 px down


def test_evidence_prompt_is_seals(adapter, image):
    objects = [("red object", (10, 20, 30, 40)), ("blue object", (100, 50, 20, 20))]
    prompt = adapter.build_prompt(image, "What is it?", objects)
    text = adapter.tokenizer.decode(prompt.input_ids).replace(
        " \n", "\n"
    )  # chunks decode with a leading space
    # 448x336: padded side 448, 56 px vertical offset; two objects -> long objects, short image.
    expected = (
        "USER: " + "<image>" * 8 + "\nAdditional visual information to focus on: "
        "red object " + "<object>" * 49 + " at location [0.022,0.170,0.089,0.259]; "
        "blue object " + "<object>" * 49 + " at location [0.223,0.237,0.268,0.281].\nWhat is it? ASSISTANT:"
    )
    assert text.endswith(expected)
    assert prompt.crops.shape == (2, 3, 112, 112) and prompt.object_long == [True, True]
    three = adapter.build_prompt(image, "q", objects + [("cat", (1, 1, 5, 5))])
    assert three.object_long == [False] * 3 and not three.image_long
    with pytest.raises(ValueError, match="evidence object 1: .*comma"):
        adapter.build_prompt(image, "q", [("a", (1, 1, 5, 5)), ("b, c", (1, 1, 5, 5))])
    with pytest.raises(ValueError, match="evidence object 0: .*outside"):
        adapter.build_prompt(image, "q", [("a", (1000, 1, 5, 5))])


def test_batched_generation_equals_single(adapter, image):
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    items = [(image, "What color is the star?"), (flipped, "What shape is the red object? ok ok ok")]
    batched = adapter.decide_batch(items)
    assert batched == [adapter.decide(im, q) for im, q in items]
    # The rows really differ (a random model may still decode both greedily to the same text), so a
    # mix-up of rows would show in the comparison above.
    batch = adapter._batch([adapter.build_prompt(im, q) for im, q in items])
    with torch.no_grad():
        logits = adapter.model.llava(
            inputs_embeds=adapter._embed(batch), attention_mask=batch["attention_mask"]
        ).logits[:, -1]
    assert not torch.allclose(logits[0], logits[1])
    evidence = [(image, "What shape?", [("red object", (10, 20, 30, 40))]), (flipped, "Why?", [])]
    assert adapter.answer_with_evidence_batch(evidence) == [
        adapter.answer_with_evidence(*e) for e in evidence
    ]


def naive_option_losses(adapter, image, question, options, objects):
    """Full recompute per option: the prompt's embeddings plus the option's, one forward each."""
    batch = adapter._batch([adapter.build_prompt(image, question, objects)])
    prompt = adapter._embed(batch)
    losses = []
    for ids in adapter.option_ids(options):
        ids = torch.tensor([ids])
        embeds = torch.cat([prompt, adapter.model.core.get_input_embeddings()(ids)], dim=1)
        logits = adapter.model.llava(inputs_embeds=embeds).logits[0, prompt.shape[1] - 1 : -1]
        losses.append(F.cross_entropy(logits, ids[0]).item())
    return losses


@pytest.mark.parametrize("objects", [[], [("red object", (10, 20, 30, 40))]])
def test_cached_option_scorer_equals_full_recompute(adapter, image, objects):
    options = ["cross", "a red star", "square", ""]
    calls = []
    hook = adapter.model.core.model.language_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        cached = adapter.option_losses(image, "What shape is the red object?", options, objects)
    finally:
        hook.remove()
    assert len(calls) == 2  # the prompt once, then every option in one batch on its cache
    with torch.no_grad():
        naive = naive_option_losses(adapter, image, "What shape is the red object?", options, objects)
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(naive), atol=1e-4, rtol=1e-4)


def test_toy_metrics_run_on_the_toy_val_set(adapter, toy_world, tmp_path):
    pg = toy_world["playground"]
    questions = [
        json.loads(line) for line in (pg / "data/eval/toy/llava_toy_val.jsonl").read_text().splitlines()
    ]
    qf = tmp_path / "q.jsonl"
    qf.write_text("".join(json.dumps(q) + "\n" for q in questions[:6]))
    metrics = toy_switch_metrics(
        adapter,
        str(qf),
        str(pg / "data/eval/toy/toy_val_annotations.json"),
        str(pg / "data/toy/images"),
        batch_size=4,
    )
    assert metrics["n_easy"] + metrics["n_hard"] == 6
    for key in ("f1_system2", "object_names_exact", "acc_hard_oracle_evidence", "acc_easy_direct"):
        assert 0.0 <= metrics[key] <= 1.0


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("checkered", "answer"),
        ("The blue object has horizontal stripes.", "answer"),
        ("It is very very small.", "answer"),  # one word said twice is English
        (MISSING_OBJECTS_PREFIX + " blue object.", "missing"),
        (
            "  sorry, I cannot answer the question. Some visual information about the following objects is "
            "missing or unclear: star.",
            "missing",
        ),
        # the README's command without the short-answer suffix once returned this as an answer
        (
            "The blue object. Some visual information about information about the blue object is missing "
            "or unclear: blue.",
            "garbled",
        ),
        ("blue. Sorry, I can not answer the question.", "garbled"),
        ("the object is missing or unclear", "garbled"),
        ("stripes on the stripes on the", "garbled"),
        ("", "garbled"),
        ("   \n", "garbled"),
    ],
)
def test_switch_reply_kind(text, kind):
    assert switch_reply_kind(text) == kind
    assert kind in REPLY_KINDS


def test_answer_runner_writes_decisions_resumes_and_records_image_errors(adapter, image, tmp_path):
    """`swillava.infer answer` through the shared loop: one row per question with the decision, an error row
    for a question without a readable image, and a rerun that answers nothing again."""
    image.save(tmp_path / "a.png")
    rows = [
        {"question_id": "q1", "image": "a.png", "text": "What color is the square?"},
        {"question_id": "q2", "image": "gone.png", "text": "What is it?"},
        {"question_id": "q3", "text": "No image here?"},
    ]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = tmp_path / "a.jsonl"
    first = answer_questions(
        adapter, str(questions), str(tmp_path), str(answers), batch_size=2, progress=False,
        model_signature="switch A",
    )  # fmt: skip
    got = {r["question_id"]: r for r in map(json.loads, answers.read_text().splitlines())}
    assert first["answered_now"] == 3 and sorted(got) == ["q1", "q2", "q3"]
    decision = adapter.decide(image, rows[0]["text"])
    assert got["q1"]["text"] == decision.text and got["q1"]["needs_system2"] == decision.needs_system2
    assert got["q1"]["metadata"] == {} and got["q1"]["model_id"] == "swillava"
    assert got["q2"]["text"] == "" and got["q2"]["needs_system2"] is None
    assert "image not found" in got["q2"]["metadata"]["error"]
    assert got["q3"]["metadata"]["error"] == f"question has no 'image' ({questions}:3)"
    again = answer_questions(
        adapter, str(questions), str(tmp_path), str(answers), progress=False, model_signature="switch A"
    )
    assert again["answered_now"] == 0 and again["resumed"] == 3
    # Other weights (a retrained checkpoint in the same folder signs differently): nothing is reused.
    other = answer_questions(
        adapter, str(questions), str(tmp_path), str(answers), progress=False, model_signature="switch B"
    )
    assert other["answered_now"] == 3 and other["resumed"] == 0
