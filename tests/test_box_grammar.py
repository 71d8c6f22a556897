"""Constrained stage-1 decoding: the box grammar's validator and its logits processor on real models."""

import copy
import json
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from fast.config import AgentConfig
from playground.demo import AGENT_KNOBS
from playground.real_shapes import real_tokenizer
from roillava.answer import generate
from roillava.box_grammar import (
    GRAMMAR_CHARS,
    MAX_BOX_CHARS,
    BoxGrammar,
    BoxLogitsProcessor,
    BoxState,
    can_write_boxes,
    grammar_tokens,
)
from roillava.data import open_image
from roillava.roi import (
    RoiConfig,
    answer_two_stage,
    generate_roi_texts,
    parse_roi_box,
    roi_logits_processor,
    stage1_prompt,
)
from roillava.roi_answer import main as roi_answer_main

MIN_SIDE = RoiConfig().min_side


def usable(text: str, min_side: float = MIN_SIDE) -> bool:
    parsed = parse_roi_box(text, min_side)
    x1, y1, x2, y2 = parsed.box
    return parsed.ok and not parsed.clamped and x1 < x2 and y1 < y2 and min(x2 - x1, y2 - y1) >= min_side


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "[",
        " [0.",
        "[0.1, 0.2, 0.5, 0.6]",
        "[0.1,0.2,0.5,0.6]",
        "[0.125, 0.25, 0.5, 0.625]",
        "[0.0, 0.0, 1.0, 1.0]",
        "[0.98, 0.5",  # x1 = 0.98 leaves exactly min_side up to 1.0
        "[0.1, 0.2, 0.12",  # 0.12 itself is too close to 0.1 (in floats), but 0.121.. are not
        "[0.1, 0.2, 0.5, 0.6",
    ],
)
def test_grammar_accepts_prefixes_of_valid_boxes(text):
    assert BoxGrammar(MIN_SIDE).is_prefix(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[0.5, 0.2, 0.1", "inverted x"),
        ("[0.1, 0.6, 0.5, 0.2", "inverted y"),
        ("[0.1, 0.2, 0.11", "x side below min_side, whatever digits follow"),
        ("[0.1, 0.2, 0.12,", "x side 0.12 - 0.1 < 0.02 in floats, as parse_roi_box computes it"),
        ("[0.99", "x1 = 0.99 leaves less than min_side"),
        ("[1.0", "x1 = 1 leaves no width"),
        ("[1.5", "above 1"),
        ("[1.01", "above 1"),
        ("[2", "above 1"),
        ("[-0.1", "negative"),
        ("[0.1234", "more decimals than the labels"),
        ("[.5", "no leading 0"),
        ("[0, 1", "an integer is not how the labels write 0"),
        ("[1, ", "an integer is not how the labels write 1"),
        ("[0.1 0.2", "missing comma"),
        ("[0.1,, 0.2", "double comma"),
        ("[0.1,  0.2", "two spaces"),
        ("[ 0.1", "space after ["),
        ("[0.1, 0.2, 0.5, 0.6, ", "a fifth number"),
        ("[0.1, 0.2, 0.5]", "three numbers"),
        ("[0.1, 0.2, 0.5, 0.6]]", "text after the box"),
        ("[0.1, 0.2, 0.5, 0.6] ", "text after the box"),
        ("  [", "more than one leading space"),
        ("[[0.1", "nested list"),
        ("The box is [0.1", "words"),
        ("[0.1e1", "exponent"),
        ("[nan", "not a number"),
        ("]", "closing first"),
    ],
)
def test_grammar_rejects_hostile_prefixes(text, why):
    assert not BoxGrammar(MIN_SIDE).is_prefix(text), why


@pytest.mark.parametrize(
    "text",
    ["", " ", "[", "[0.1", "[0.1,", "[0.1, 0.2, 0.5, 0.6", "[0.1, 0.2, 0.5, 0.6,", "[0.1, 0.2, 0.5, 0."],
)
def test_eos_only_after_the_closing_bracket(text):
    """A prefix that is not a whole box is not complete: EOS there would end an unusable box."""
    grammar = BoxGrammar(MIN_SIDE)
    assert not grammar.is_complete(text)
    assert grammar.is_complete("[0.1, 0.2, 0.5, 0.6]") and grammar.is_complete(" [0.0, 0.0, 1.0, 1.0]")


@pytest.mark.parametrize("min_side", [0.0, MIN_SIDE, 0.3, 0.999])
def test_random_walks_always_finish_a_usable_box(min_side):
    """From every accepted prefix some character continues it, and every walk ends in a box
    that parse_roi_box accepts: the grammar never leads a row into a dead end."""
    grammar = BoxGrammar(min_side)
    rng = random.Random(0)
    chars = sorted(GRAMMAR_CHARS)
    for _ in range(1000):
        text, state = "", BoxState()
        while not state.closed:
            options = [(c, s) for c in chars if (s := grammar.advance(state, c)) is not None]
            assert options, f"dead end after {text!r}"
            c, state = rng.choice(options)
            text += c
            assert len(text) <= MAX_BOX_CHARS
        assert grammar.is_complete(text) and usable(text, min_side), text


def test_accepted_boxes_agree_with_parse_roi_box():
    """Random 4-number lists: the grammar accepts exactly the well-formed ones parse_roi_box takes."""
    grammar = BoxGrammar(MIN_SIDE)
    rng = random.Random(1)
    values = ["0.0", "1.0", "0.02", "0.5", "0.52", "0.519", "0.98", "0.999", "0.1", "0.12", "0.121", "0.08"]
    for _ in range(2000):
        text = "[" + ", ".join(rng.choice(values) for _ in range(4)) + "]"
        assert grammar.is_complete(text) == usable(text), text


def test_grammar_tokens_are_the_vocabulary_pieces_made_of_box_characters():
    tok = real_tokenizer()
    tokens = grammar_tokens(tok)
    assert set("".join(tokens.values())) <= GRAMMAR_CHARS
    assert {tokens[i] for i in tok.convert_tokens_to_ids(list("0123456789.,[]"))} == set("0123456789.,[]")
    assert tok.eos_token_id not in tokens and tok.pad_token_id not in tokens
    assert tok.convert_tokens_to_ids("<image>") not in tokens


def test_default_budgets_hold_the_longest_box_with_the_llama_vocabulary():
    """LLaMA writes each digit as a token: the longest box is one token per character, plus EOS."""
    tok = real_tokenizer()
    longest = " [0.123, 0.456, 0.789, 0.999]"
    assert len(longest) == MAX_BOX_CHARS and BoxGrammar(MIN_SIDE).is_complete(longest)
    assert len(tok(longest, add_special_tokens=False).input_ids) <= MAX_BOX_CHARS
    assert RoiConfig().roi_max_new_tokens >= MAX_BOX_CHARS + 1
    assert AgentConfig.__dataclass_fields__["roi_max_new_tokens"].default >= MAX_BOX_CHARS + 1
    assert AGENT_KNOBS["roi_max_new_tokens"] >= MAX_BOX_CHARS + 1


def random_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def test_processor_with_the_llama_vocabulary():
    """A random LLaMA-vocabulary model: free decoding writes no box, constrained decoding always does."""
    tok = real_tokenizer()
    free, constrained = [], []
    for seed in range(4):
        model = random_llama(len(tok), seed)
        ids = torch.randint(3, 32000, (6, 12), generator=torch.Generator().manual_seed(seed))
        kw = {"max_new_tokens": MAX_BOX_CHARS + 1, "do_sample": False, "pad_token_id": tok.pad_token_id}
        with torch.no_grad():
            out = model.generate(ids, eos_token_id=tok.eos_token_id, **kw)
            free += tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            proc = BoxLogitsProcessor(tok, MIN_SIDE)
            out = model.generate(
                ids, eos_token_id=tok.eos_token_id, logits_processor=LogitsProcessorList([proc]), **kw
            )
            constrained += tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    assert all(usable(t.strip()) for t in constrained), constrained
    assert not any(usable(t.strip()) for t in free), free


@pytest.fixture()
def padded_processor(processor):
    proc = copy.deepcopy(processor)
    proc.image_processor.do_pad = True
    return proc


def perturbed(llava, seed: int):
    """The tiny random LLaVA with a seeded, peaked output layer: each seed prefers other tokens."""
    model = copy.deepcopy(llava)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.lm_head.weight
        weight.add_(torch.randn(weight.shape, generator=generator) * weight.std()).mul_(20)
    return model


def test_stage_one_boxes_are_always_usable_on_a_random_llava(toy_world, padded_processor, llava):
    """Stage 1 on a random tiny LLaVA, several seeds, batched with left padding: every constrained
    box is usable, and unconstrained decoding of the same models writes no usable box."""
    pg = toy_world["playground"]
    lines = (pg / "data/eval/toy/llava_toy_val.jsonl").read_text().splitlines()[:8]
    rows = [json.loads(line) for line in lines]
    boxes, free = [], []
    for seed in range(3):
        model = perturbed(llava, seed)
        for constrained in (True, False):
            config = RoiConfig(roi_max_new_tokens=MAX_BOX_CHARS + 1, constrained_box=constrained)
            kw = {"processor": padded_processor, "model_config": model.config, "config": config}
            prompts = [
                stage1_prompt(
                    r["text"] + " ok" * (i % 3), open_image(pg / "data/toy/images" / r["image"]), **kw
                )
                for i, r in enumerate(rows)
            ]  # different lengths: real left padding
            texts, used = generate_roi_texts(model, padded_processor, prompts, config)
            assert used is constrained
            (boxes if constrained else free).extend(texts)
    assert len(boxes) == 3 * len(rows) and all(usable(t) for t in boxes), boxes
    assert len(set(boxes)) > 1  # the seeds and prompts give different boxes, not one memorised answer
    assert not any(usable(t) for t in free), free


def test_two_stage_answers_record_the_constraint(toy_world, padded_processor, llava):
    pg = toy_world["playground"]
    row = json.loads((pg / "data/eval/toy/llava_toy_val.jsonl").read_text().splitlines()[0])
    image = open_image(pg / "data/toy/images" / row["image"])
    model = perturbed(llava, 0)
    for constrained in (True, False):
        config = RoiConfig(
            roi_max_new_tokens=MAX_BOX_CHARS + 1, max_new_tokens=1, constrained_box=constrained
        )
        (answer,) = answer_two_stage(model, padded_processor, [row["text"]], [[image]], config)
        assert answer.metadata["constrained_box"] is constrained
        assert (answer.metadata["fallback"] is None) is constrained, answer.roi_text


def test_one_processor_serves_successive_generations(toy_world, padded_processor, llava):
    """`generate` resets the processor: the agent and the answerers may reuse one across batches."""
    pg = toy_world["playground"]
    rows = [json.loads(line) for line in (pg / "data/eval/toy/llava_toy_val.jsonl").read_text().splitlines()]
    model = perturbed(llava, 5)
    config = RoiConfig()
    kw = {"processor": padded_processor, "model_config": model.config, "config": config}
    prompts = [
        stage1_prompt(r["text"], open_image(pg / "data/toy/images" / r["image"]), **kw) for r in rows[:4]
    ]
    proc = roi_logits_processor(padded_processor.tokenizer, config)
    first = generate(
        model, padded_processor, prompts[:3], max_new_tokens=MAX_BOX_CHARS + 1, logits_processor=proc
    )
    second = generate(
        model, padded_processor, prompts[3:], max_new_tokens=MAX_BOX_CHARS + 1, logits_processor=proc
    )
    assert all(usable(t) for t in first + second), first + second
    assert roi_logits_processor(padded_processor.tokenizer, RoiConfig(constrained_box=False)) is None


def test_cli_decodes_under_the_grammar_unless_told_not_to(toy_world, tiny_base, tmp_path):
    """`roillava.roi_answer` on the random tiny base: a usable box by default, free text with the flag."""
    pg = toy_world["playground"]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text((pg / "data/eval/toy/llava_toy_val.jsonl").read_text().splitlines()[0] + "\n")
    metadata = {}
    for flags in ([], ["--no-constrained-box"]):
        answers = tmp_path / f"a{len(flags)}.jsonl"
        roi_answer_main([
            "--model-path", str(tiny_base), "--question-file", str(qfile), "--image-folder",
            str(pg / "data/toy/images"), "--answers-file", str(answers), "--max-new-tokens", "1",
            "--roi-max-new-tokens", str(MAX_BOX_CHARS + 1), "--device", "cpu", *flags,
        ])  # fmt: skip
        metadata[bool(flags)] = json.loads(answers.read_text())["metadata"]
    assert metadata[False]["constrained_box"] is True and metadata[False]["fallback"] is None
    assert usable(metadata[False]["roi_text"])
    assert metadata[True]["constrained_box"] is False and metadata[True]["fallback"]


def test_a_vocabulary_that_cannot_write_a_box_is_refused_by_name():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "[": 2, "]": 3, "a": 4}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="</s>")
    with pytest.raises(ValueError, match=r"no single token for ',.0123456789'.*--no-constrained-box"):
        BoxLogitsProcessor(tok, MIN_SIDE)
    assert not can_write_boxes(tok) and can_write_boxes(real_tokenizer())
    # The answerers then decode freely (with a warning) and record it.
    assert roi_logits_processor(tok, RoiConfig()) is None


@pytest.mark.real
def test_constrained_boxes_at_real_width(real_base):
    """llava-1.5-7b-hf's widths and vocabulary (32064 rows, random weights, bf16): usable boxes, batched."""
    from PIL import Image

    from roillava.answer import load_for_inference

    model, processor = load_for_inference(str(real_base), dtype=torch.bfloat16)
    config = RoiConfig(roi_max_new_tokens=MAX_BOX_CHARS + 1)
    kw = {"processor": processor, "model_config": model.config, "config": config}
    images = [Image.new("RGB", size, colour) for size, colour in (((640, 480), "red"), ((300, 500), "blue"))]
    prompts = [stage1_prompt("What color is the star?", im, **kw) for im in images]
    texts, used = generate_roi_texts(model, processor, prompts, config)
    assert used and len(texts) == 2 and all(usable(t) for t in texts), texts
