"""The switch's missing-object names decoded as spans of the question (`swillava.name_copy`)."""

import pytest
import torch
from PIL import Image
from test_swillava_model import tiny_switch
from transformers import LogitsProcessorList

from swillava.infer import SwitchAdapter, parse_missing_objects
from swillava.name_copy import NameCopyProcessor, NameListTokens, allowed_name_tokens
from swillava.objects import MISSING_OBJECTS_PREFIX
from swillava.switch_pass import switch_pass

QUESTION = "What pattern is on the green object?"
SUFFIX = "\nAnswer the question using a single word or phrase."
QUESTIONS = [QUESTION, "Is the red cross left of the blue star?" + SUFFIX, "What color is the diamond?"]


@pytest.fixture(scope="module")
def adapter(tiny_base):
    model, processor = tiny_switch(tiny_base)
    with torch.no_grad():
        model.core.lm_head.weight.mul_(20)  # peaked greedy choices: float noise cannot flip them
    return SwitchAdapter(model, processor, max_new_tokens=24)


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(0)
    return Image.fromarray((torch.rand(336, 448, 3) * 255).byte().numpy())


def test_allowed_tokens_follow_the_name_list_grammar(adapter):
    tok = adapter.tokenizer
    punct = NameListTokens.of(tok, MISSING_OBJECTS_PREFIX)
    assert tok.decode([punct.separator]).strip() == "," and tok.decode([punct.end]).strip() == "."
    source = tok(QUESTION, add_special_tokens=False).input_ids
    ids = {
        w: tok(f"{MISSING_OBJECTS_PREFIX} {w}", add_special_tokens=False).input_ids[-1]
        for w in ("green", "object")
    }
    stops = {punct.separator, punct.end, punct.eos}
    # A name starts with any token of the question; punctuation of the list cannot start it.
    assert set(allowed_name_tokens(source, [], punct)) == set(source) - stops
    # Within a name: the question's next token, or the name ends (separator or end).
    after_green = allowed_name_tokens(source, [ids["green"]], punct)
    assert set(after_green) == {ids["object"], punct.separator, punct.end}
    # After a separator a new name starts; after the end only EOS.
    assert set(allowed_name_tokens(source, [ids["green"], punct.separator], punct)) == set(source) - stops
    assert allowed_name_tokens(source, [ids["green"], punct.end], punct) == [punct.eos]
    # Where the name could end, the switch's own choice decides: a separator or a continuation it
    # prefers is allowed as ever; a token that fits no span ends the list.
    assert set(allowed_name_tokens(source, [ids["green"]], punct, punct.separator)) == set(after_green)
    is_id = tok(f"{MISSING_OBJECTS_PREFIX} green is", add_special_tokens=False).input_ids[-1]
    assert allowed_name_tokens(source, [ids["green"], ids["object"]], punct, is_id) == [punct.end]
    # A name must start (right after the sentence or a separator) whatever the switch prefers.
    assert set(allowed_name_tokens(source, [], punct, is_id)) == set(source) - stops
    # A span that is not in the question has no continuation but the list's punctuation.
    assert set(allowed_name_tokens(source, [ids["object"], ids["green"]], punct)) == {
        punct.separator,
        punct.end,
    }


def test_forced_names_are_spans_of_the_question(adapter, image):
    """System 2 always: the pass continues after the sentence. Copied names are question spans; the
    same random switch decoding freely writes names that are not."""
    prompts = [adapter.build_prompt(image, q) for q in QUESTIONS]
    sentence = adapter.sentence_ids()

    def names(copy: bool) -> list[list[str]]:
        adapter.copy_names = copy
        try:
            result = switch_pass(adapter, prompts, sentence, force=True, max_new_tokens=24)
        finally:
            adapter.copy_names = True
        return [
            parse_missing_objects(f"{MISSING_OBJECTS_PREFIX} {result.continuation[r]}")
            for r in range(len(prompts))
        ]

    copied = names(True)
    for question, row in zip(QUESTIONS, copied):
        asked = question.split("\n")[0]  # the instruction line is no source of names
        assert row, question  # at least one name per row
        assert all(name.lower() in asked.lower() for name in row), (row, asked)
    first_line = adapter.tokenizer(QUESTIONS[1].split("\n")[0], add_special_tokens=False).input_ids
    assert prompts[1].name_source == first_line
    free = names(False)
    assert any(name.lower() not in q.lower() for q, row in zip(QUESTIONS, free) for name in row or ["<none>"])
    adapter.copy_names = False
    assert adapter.names_processor(prompts, after_sentence=True) is None
    adapter.copy_names = True


def test_generate_is_constrained_only_after_the_sentence(adapter, image):
    """Inside `generate` (which starts from embeddings, so the processor sees the new tokens only) the
    constraint waits for the sentence: here the first two tokens the switch writes freely stand for it."""
    prompts = [adapter.build_prompt(image, q) for q in QUESTIONS]
    batch = adapter.collate(prompts)
    punct = NameListTokens.of(adapter.tokenizer, MISSING_OBJECTS_PREFIX)

    def run(processors):
        with torch.no_grad():
            return adapter.model.llava.generate(
                inputs_embeds=adapter.embed(batch), attention_mask=batch["attention_mask"],
                max_new_tokens=12, do_sample=False, eos_token_id=punct.eos,
                pad_token_id=adapter.tokenizer.pad_token_id, logits_processor=LogitsProcessorList(processors),
            )  # fmt: skip

    free = run([])
    for row in range(len(prompts)):
        sentence = free[row, :2].tolist()
        processor = NameCopyProcessor([prompts[row].name_source] * len(prompts), punct, sentence)
        constrained = run([processor])[row].tolist()
        assert constrained[:2] == sentence
        names = constrained[2:]
        for k in range(len(names)):
            if names[k - 1 : k] == [punct.eos] or (k and names[k - 1] == adapter.tokenizer.pad_token_id):
                break
            assert names[k] in allowed_name_tokens(prompts[row].name_source, names[:k], punct)
        assert names != free[row, 2:].tolist()  # the constraint changed what the random switch writes
