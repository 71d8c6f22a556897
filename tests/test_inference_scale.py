"""Inference at scale on the tiny base: --dtype / --bits on every loader, straight-to-device loads, 4-bit
answers, and likelihood scoring that sends only the scored positions through lm_head."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_fast_agent import _one_thread, agent_config, fast_checkpoints  # noqa: F401
from torch.nn import functional as F

from eval.qa_files import model_signature

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def ckpts(tiny_base):
    return fast_checkpoints(tiny_base)


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(0)
    return Image.fromarray((torch.rand(336, 448, 3, generator=g) * 255).byte().numpy())


def _is_4bit(module) -> bool:
    return type(module).__name__ == "Linear4bit"


def assert_lm_only_quantised(llava) -> None:
    """The language model's linears are 4-bit; CLIP, the projector and lm_head keep their dtype."""
    from segllava.model import unwrap_llava

    core = unwrap_llava(llava)
    lm = [m for n, m in core.named_modules() if "language_model" in n and n.endswith(("q_proj", "down_proj"))]
    assert lm and all(_is_4bit(m) or _is_4bit(getattr(m, "base_layer", None)) for m in lm)
    for part in (core.model.vision_tower, core.model.multi_modal_projector, core.lm_head):
        assert not any(_is_4bit(m) for m in part.modules())
        assert all(p.is_floating_point() for p in part.parameters())


# --- --dtype: one resolution rule, in every sibling -----------------------------------------------------------
def test_dtype_auto_is_fp32_on_cpu_and_explicit_names_map():
    from roillava.model import inference_dtype as roi_dtype
    from segllava.model import inference_dtype as seg_dtype
    from swillava.model import inference_dtype as swi_dtype

    for resolve in (roi_dtype, swi_dtype, seg_dtype):
        assert resolve("auto", "cpu") == torch.float32
        assert resolve("bf16", "cpu") == torch.bfloat16
        assert resolve("fp16", "cuda") == torch.float16
        with pytest.raises(ValueError, match="dtype must be one of"):
            resolve("half", "cpu")


@pytest.mark.parametrize(
    "module",
    [
        "roillava.answer",
        "roillava.roi_answer",
        "swillava.infer",
        "fast.cli",
        "segllava.validate",
        "SegLLaVA/chat.py",
        "eval.run",
    ],
)
def test_every_inference_cli_offers_dtype_and_bits(module, capsys):
    import importlib

    from project_scripts import load_script

    main = (load_script(module) if module.endswith(".py") else importlib.import_module(module)).main
    argv = ["answer", "--help"] if module == "swillava.infer" else ["--help"]
    with pytest.raises(SystemExit):
        main(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert "--dtype {auto,bf16,fp16,fp32}" in text and "--bits {4,8,16}" in text
    assert "auto: bf16 on a GPU that supports it, else fp16 on CUDA, fp32 on CPU" in text


def test_answerer_flags_reach_the_loaded_model(tiny_base):
    import argparse

    from roillava.answer import add_answer_args, load_from_args

    args = add_answer_args(argparse.ArgumentParser()).parse_args(
        ["--model-path", str(tiny_base), "--question-file", "q", "--answers-file", "a", "--device", "cpu"]
        + ["--dtype", "bf16"]
    )
    model, _ = load_from_args(args)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# --- 4-bit: load and answer with every loader ----------------------------------------------------------------
def test_4bit_system1_and_roi_answerers(ckpts, toy_world, tmp_path):
    from roillava.answer import answer_file, load_for_inference
    from roillava.roi import RoiConfig, roi_answer_file

    pg = toy_world["playground"]
    rows = (pg / "data/eval/toy/llava_toy_val.jsonl").read_text().splitlines()[:2]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(rows) + "\n")
    images = pg / "data/toy/images"

    model, processor = load_for_inference(str(ckpts["base"]), bits=4)
    assert_lm_only_quantised(model)
    out = tmp_path / "s1.jsonl"
    answer_file(
        model, processor, str(qfile), str(images), str(out), batch_size=2, max_new_tokens=3,
        model_signature=model_signature(ckpts["base"]),
    )  # fmt: skip
    assert len(out.read_text().splitlines()) == 2

    # An adapter on a 4-bit base stays a peft layer (merging would round the update into NF4 blocks).
    roi, processor = load_for_inference(str(ckpts["roi"]), str(ckpts["base"]), bits=4)
    assert type(roi).__name__.startswith("PeftModel")
    assert_lm_only_quantised(roi)
    out = tmp_path / "roi.jsonl"
    roi_answer_file(
        roi, processor, str(qfile), str(images), str(out),
        config=RoiConfig(roi_max_new_tokens=6, max_new_tokens=3), batch_size=2,
        model_signature=model_signature(ckpts["roi"], ckpts["base"]),
    )  # fmt: skip
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) == 2 and all("roi_box" in a["metadata"] for a in answers)


def test_4bit_switch_answers(ckpts, image):
    from swillava.infer import SwitchAdapter

    adapter = SwitchAdapter.from_pretrained(ckpts["switch"], bits=4, max_new_tokens=3)
    assert_lm_only_quantised(adapter.model.llava)
    assert adapter.decide(image, "What color is the star?").text is not None
    losses = adapter.option_losses(image, "What shape?", ["cross", "star"])
    assert len(losses) == 2 and all(x == x and x > 0 for x in losses)


def test_4bit_seg_masks_at_image_resolution(ckpts, image):
    from segllava.model import SegLLaVA

    seg = SegLLaVA.from_pretrained(ckpts["seg"], bits=4, device="cpu")
    assert_lm_only_quantised(seg.llava)
    assert not any(_is_4bit(m) for m in seg.visual_model.modules())
    result = seg.segment(image, "Can you segment the red object in this image?", max_new_tokens=4)
    assert all(m.shape == (image.height, image.width) for m in result.masks)


def test_agent_config_and_cli_carry_dtype_and_bits(ckpts, image, tmp_path):
    from fast.agent import FastAgent
    from fast.cli import build_parser, config_from_args
    from fast.config import AgentConfig
    from fast.model import FastModel

    argv = ["--base", "b", "--switch", "s", "--roi", "r", "--seg", "g", "--dtype", "bf16", "--bits", "4"]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert (cfg.dtype, cfg.bits, cfg.torch_dtype) == ("bf16", 4, torch.bfloat16)
    assert AgentConfig(base="b", switch="s", roi="r", seg="g", dtype="float32").dtype == "fp32"  # old runs
    with pytest.raises(ValueError, match="bits must be one of"):
        AgentConfig(base="b", switch="s", roi="r", seg="g", bits=2)

    config = agent_config(ckpts, bits=4, mode="system2_always")
    model = FastModel(config)
    assert_lm_only_quantised(model.peft)
    assert sorted(model.adapters) == ["roi", "seg", "switch"]
    trace = FastAgent(config, model).answer(image, "What pattern is on the red object?")
    assert trace.system == "system2" and trace.answer is not None


def test_eval_runner_passes_dtype_and_bits(tmp_path):
    from eval.benchmarks import BENCHMARKS
    from eval.run import build_parser, config_from_args, fast_command, resolve_paths

    argv = [
        "pope",
        "--mode",
        "fast",
        "--model-path",
        "B",
        "--switch-path",
        "S",
        "--dtype",
        "fp16",
        "--bits",
        "8",
    ]
    args = build_parser().parse_args(argv + ["--data-root", str(tmp_path)])
    cfg = config_from_args(args)
    assert (cfg.dtype, cfg.bits) == ("fp16", 8)
    bench = BENCHMARKS["pope"]
    cmd = fast_command(cfg, bench, resolve_paths(bench, args, cfg.ckpt), tmp_path / "1_0.jsonl")
    assert cmd[cmd.index("--dtype") + 1] == "fp16" and cmd[cmd.index("--bits") + 1] == "8"


# --- likelihood: only the scored rows reach lm_head ----------------------------------------------------------
class LmHeadRows:
    """A forward hook on lm_head recording how many positions each call projects to the vocabulary."""

    def __init__(self, lm_head):
        self.rows: list[int] = []
        self.handle = lm_head.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        x = inputs[0]
        self.rows.append(x.shape[:-1].numel())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def full_logits_losses(
    llava, tokenizer, prompt_ids: list[int], pixel_values, options: list[str]
) -> list[float]:
    """The old computation: prompt + option through the whole model, float32 logits at every position."""
    losses = []
    for option in options:
        ids = tokenizer(option, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        seq = torch.tensor([prompt_ids + ids])
        logits = llava(input_ids=seq, pixel_values=pixel_values).logits.float()
        start = len(prompt_ids)
        losses.append(F.cross_entropy(logits[0, start - 1 : -1], torch.tensor(ids)).item())
    return losses


def test_llava_option_scoring_equals_full_logits_and_projects_only_scored_rows(tiny_base, image):
    from transformers import LlavaForConditionalGeneration

    from roillava.answer import build_prompt
    from roillava.model import llava_processor
    from swillava.likelihood import llava_option_losses_batch

    llava = LlavaForConditionalGeneration.from_pretrained(tiny_base).eval()
    processor = llava_processor(tiny_base, "pad")
    tok = processor.tokenizer
    prompts = [
        build_prompt(q, [image], tokenizer=tok, model_config=llava.config, template="vicuna_v1")
        for q in ("What shape is it?", "What color is the star?")
    ]
    pixels = processor.image_processor([image, image], return_tensors="pt")["pixel_values"]
    options = [["cross", "a red star", "square"], ["red", "blue"]]
    with LmHeadRows(llava.lm_head) as calls:
        scores = llava_option_losses_batch(llava, tok, [p.input_ids for p in prompts], pixels, options)
    option_tokens = [len(tok(o, add_special_tokens=False).input_ids) + 1 for opts in options for o in opts]
    # Prefill: one row per prompt; option pass: every option token but the first (the prompt's row predicts it).
    assert calls.rows == [len(prompts), sum(option_tokens) - len(option_tokens)]
    with torch.no_grad():
        for p, opts, got in zip(prompts, options, scores):
            want = full_logits_losses(llava, tok, p.input_ids, pixels[:1], opts)
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=1e-4)


def test_switch_scoring_projects_only_scored_rows(ckpts, image):
    from swillava.infer import SwitchAdapter
    from swillava.switch_pass import option_losses_batch

    adapter = SwitchAdapter.from_pretrained(ckpts["switch"], max_new_tokens=3)
    options = ["cross", "a red star", "square", ""]
    n_tokens = [len(ids) for ids in adapter.option_ids(options)]
    lm_head = adapter.model.core.lm_head
    with LmHeadRows(lm_head) as calls:
        single = adapter.option_losses(image, "What shape is the red object?", options)
    assert calls.rows == [1, sum(n_tokens) - len(n_tokens)]
    prompt = adapter.build_prompt(image, "What shape is the red object?")
    with LmHeadRows(lm_head) as calls:
        batched = option_losses_batch(adapter, [prompt, prompt], [options, options[:2]])
    assert calls.rows == [2, sum(n_tokens) - len(n_tokens) + sum(n_tokens[:2]) - 2]
    torch.testing.assert_close(torch.tensor(batched[0]), torch.tensor(single), atol=1e-4, rtol=1e-4)

    # The old computation: the whole prompt + option sequence with float32 logits everywhere.
    batch = adapter._batch([prompt])
    with torch.no_grad():
        embeds = adapter._embed(batch)
        for ids, got in zip(adapter.option_ids(options), single):
            seq = torch.tensor([ids])
            full = torch.cat([embeds, adapter.model.core.get_input_embeddings()(seq)], dim=1)
            logits = adapter.model.llava(inputs_embeds=full).logits.float()[0, embeds.shape[1] - 1 : -1]
            assert abs(F.cross_entropy(logits, seq[0]).item() - got) < 1e-4


def test_scoring_runs_in_the_models_dtype(ckpts, image):
    """bf16 weights: the kept logits stay bf16 (no float32 copy of the vocabulary over the sequence)."""
    from swillava.infer import SwitchAdapter

    adapter = SwitchAdapter.from_pretrained(ckpts["switch"], dtype=torch.bfloat16, max_new_tokens=3)
    seen = []
    handle = adapter.model.core.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        losses = adapter.option_losses(image, "What shape?", ["cross", "a red star"])
    finally:
        handle.remove()
    assert seen == [torch.bfloat16, torch.bfloat16] and all(x > 0 for x in losses)
