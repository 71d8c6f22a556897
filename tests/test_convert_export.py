"""Our adapters exported as standalone models: the merged model computes what base + adapter computes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_fast_agent import fast_checkpoints
from transformers import LlavaForConditionalGeneration


@pytest.fixture(scope="module")
def ckpts(tiny_base):
    return fast_checkpoints(tiny_base)


def test_roi_adapter_exports_to_a_llava_hf_directory(ckpts, tmp_path):
    from peft import PeftModel

    from roillava.convert import main

    main(["--from", "adapter", "--in", str(ckpts["roi"]), "--out", str(tmp_path / "roi")])
    merged, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "roi", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    unmerged = PeftModel.from_pretrained(
        LlavaForConditionalGeneration.from_pretrained(ckpts["base"]), str(ckpts["roi"])
    )
    image_id = merged.config.image_token_id
    ids = torch.tensor([[1, 5, 6] + [image_id] * 49 + [7, 8, 9]])
    pixels = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = unmerged.eval()(input_ids=ids, pixel_values=pixels).logits
        got = merged.eval()(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (tmp_path / "roi" / "processor_config.json").is_file()


def test_switch_adapter_exports_to_a_full_switch(ckpts, tmp_path):
    from peft import PeftModel

    from swillava.convert import main
    from swillava.model import SwiConfig, build_switch, llava_processor, load_switch

    main(["--from", "adapter", "--in", str(ckpts["switch"]), "--out", str(tmp_path / "sw")])
    assert SwiConfig.load(tmp_path / "sw").weights == "full"
    merged, _ = load_switch(tmp_path / "sw")
    processor = llava_processor(ckpts["switch"], "pad")
    unmerged = build_switch(
        LlavaForConditionalGeneration.from_pretrained(ckpts["base"]),
        processor.tokenizer,
        SwiConfig.load(ckpts["switch"]),
    )
    unmerged.llava = PeftModel.from_pretrained(unmerged.llava, str(ckpts["switch"]))
    unmerged.eval()
    image_id, object_id = merged.image_token_id, merged.object_token_id
    ids = torch.tensor(
        [[1, 5] + [image_id] * merged.long_length + [6] + [object_id] * merged.short_length + [7, 8]]
    )
    g = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": ids,
        "pixel_values": torch.randn(1, 3, 112, 112, generator=g),
        "object_pixel_values": torch.randn(1, 1, 3, 112, 112, generator=g),
        "object_long": torch.tensor([[False]]),
    }
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, unmerged(**batch).logits, atol=1e-5, rtol=1e-4)


def test_seg_adapter_exports_with_the_converter_command(ckpts, tmp_path):
    from segllava.convert import main
    from segllava.inference import teacher_forced_masks
    from segllava.model import SegLLaVA

    main(["--from", "adapter", "--in", str(ckpts["seg"]), "--out", str(tmp_path / "seg")])
    assert json.loads((tmp_path / "seg" / "segllava_config.json").read_text())["weights"] == "full"
    adapter, merged = SegLLaVA.from_pretrained(ckpts["seg"]), SegLLaVA.from_pretrained(tmp_path / "seg")
    image = Image.fromarray(
        (torch.rand(60, 80, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy()
    )
    q = ["Can you segment the red object in this image?"]
    (a,), (b,) = (teacher_forced_masks(m, m.processor, [image], q, "[SEG].") for m in (adapter, merged))
    torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)


def test_export_of_a_non_adapter_is_named(tmp_path):
    from roillava.convert import main

    with pytest.raises(SystemExit, match="adapter_config.json: missing"):
        main(["--from", "adapter", "--in", str(tmp_path), "--out", str(tmp_path / "o")])
