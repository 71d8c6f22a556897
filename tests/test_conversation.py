"""Label masks are built per segment: only assistant answers (and their closing EOS) are supervised."""

import pytest

from roillava.conversation import (
    IGNORE_INDEX,
    conversation_segments,
    get_template,
    llava_turns,
    tokenize_segments,
)

N_IMG = 5  # image tokens per image in these tests


@pytest.fixture(scope="module")
def tok(processor):
    return processor.tokenizer


def supervised_spans(ids, labels):
    """Contiguous runs of supervised ids."""
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab == IGNORE_INDEX:
            if cur:
                spans.append(cur)
            cur = []
        else:
            assert lab == i
            cur.append(i)
    if cur:
        spans.append(cur)
    return spans


def encode(tok, turns, template, image_id):
    segments = conversation_segments(get_template(template), turns)
    return tokenize_segments(segments, tok, image_id, N_IMG)


def test_v1_multi_turn_supervises_each_answer_and_eos(tok):
    image_id = tok.convert_tokens_to_ids("<image>")
    turns = [("<image>\nWhat shape is the red object?", "star"), ("What color is the star?", "red")]
    ids, labels = encode(tok, turns, "v1", image_id)
    eos = tok.eos_token_id
    spans = supervised_spans(ids, labels)
    assert spans == [
        tok("star", add_special_tokens=False).input_ids + [eos],
        tok("red", add_special_tokens=False).input_ids + [eos],
    ]
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    assert ids.count(image_id) == N_IMG
    # Everything before the first answer decodes to the system prompt and the user turn.
    first_answer = labels.index(spans[0][0])
    prompt = tok.decode([i for i in ids[:first_answer] if i != image_id], skip_special_tokens=True)
    assert prompt.startswith("A chat between a curious user") and prompt.endswith("ASSISTANT:")
    assert "USER: " in prompt


def test_whole_string_tokenisation_matches_segments(tok):
    """Per-segment ids equal the ids of the full LLaVA prompt string (no boundary drift)."""
    image_id = tok.convert_tokens_to_ids("<image>")
    ids, _ = encode(tok, [("What shape is the red object?", "star")], "v1", image_id)
    system = get_template("v1").system
    whole = tok(
        f"{system} USER: What shape is the red object? ASSISTANT: star", add_special_tokens=False
    ).input_ids
    assert ids == [tok.bos_token_id, *whole, tok.eos_token_id]


def test_plain_template_supervises_caption_only(tok):
    image_id = tok.convert_tokens_to_ids("<image>")
    ids, labels = encode(
        tok, [("<image>\nRender a clear and concise summary of the photo.", "a red star")], "plain", image_id
    )
    assert ids[: 1 + N_IMG] == [tok.bos_token_id] + [image_id] * N_IMG
    assert supervised_spans(ids, labels) == [tok("a red star\n", add_special_tokens=False).input_ids]
    assert "summary" not in tok.decode(ids)


def test_chain_of_spot_two_turn_shape(tok):
    """Two images (global, crop) and two supervised answers: the box, then the answer."""
    image_id = tok.convert_tokens_to_ids("<image>")
    q = "What shape is the red object?"
    turns = [
        (
            f'<image>\nTo answer the question: "{q}", where is the region of interest in the image?',
            "[0.125, 0.25, 0.5, 0.625]",
        ),
        (f'The region of interest in the image is <image>\n. Answer the question: "{q}"', "star"),
        ("Now answer the following questions based on the raw image: What color is the star?", "red"),
    ]
    ids, labels = encode(tok, turns, "v1", image_id)
    assert ids.count(image_id) == 2 * N_IMG
    spans = supervised_spans(ids, labels)
    assert [tok.decode(s, skip_special_tokens=True) for s in spans] == [
        "[0.125, 0.25, 0.5, 0.625]",
        "star",
        "red",
    ]
    assert all(labels[i] == IGNORE_INDEX for i, t in enumerate(ids) if t == image_id)


def test_llava_turns_moves_image_to_front_and_rejects_bad_records():
    turns = llava_turns(
        [{"from": "human", "value": "What is it? <image>"}, {"from": "gpt", "value": "a star"}]
    )
    assert turns == [("<image>\nWhat is it?", "a star")]
    with pytest.raises(ValueError, match="no conversations"):
        llava_turns([])
    with pytest.raises(ValueError, match="odd number"):
        llava_turns([{"from": "human", "value": "hi"}])
    with pytest.raises(ValueError, match="human/gpt"):
        llava_turns([{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}])


def test_open_turn_only_last():
    with pytest.raises(ValueError, match="last turn"):
        conversation_segments(get_template("v1"), [("a", None), ("b", "c")])
    segs = conversation_segments(get_template("v1"), [("a", None)])
    assert segs[-1].text.endswith("ASSISTANT:") and not segs[-1].supervised


def test_unknown_template():
    with pytest.raises(ValueError, match="unknown conversation template"):
        get_template("llama_3")
