"""Synthetic checkpoints in the published layouts of the original code (LLaVA-1.5, Chain-of-Spot, SEAL, LISA,
LLaVA/FaST LoRA runs), and reference forwards of the original architectures, for the converter tests.

Widths are tiny (a 1-layer, 64-wide LLaMA; a 2-layer CLIP at 28 px, 4 patches) but every key name is the
published one; the tokenizer is a real sentencepiece model trained here, with the original files next to it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

BASE_VOCAB = 120  # sentencepiece pieces (LLaMA's 32000 in the real files)
HIDDEN = 64
CLIP_HIDDEN = 32
PLACEHOLDER = -200  # the original code's image placeholder id
TEXT = [
    "a chat between a curious user and an artificial intelligence assistant",
    "USER: what is the region of interest in the image ASSISTANT: the dog",
    "Sorry, I can not answer the question. Some visual information about the following objects is missing",
    "Can you segment the red object in this image? Sure, it is the segmentation result",
    "the quick brown fox jumps over the lazy dog near the river bank",
]


def write_sentencepiece(directory: Path, *, added: dict[str, int] | None = None, pad: str = "<unk>") -> None:
    """The original repos' tokenizer files: `tokenizer.model`, `tokenizer_config.json`, `added_tokens.json`."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT * 20),
        model_writer=model,
        vocab_size=BASE_VOCAB,
        model_type="bpe",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": pad}
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "legacy": False, **special})
    )
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    if added:
        (directory / "added_tokens.json").write_text(json.dumps(added))


def clip_tower(directory: Path, *, image_size: int = 28, seed: int = 1) -> CLIPVisionModel:
    """A tiny CLIP vision model saved as a hub-style directory (`vision_model.*` keys)."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=CLIP_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=14,
        hidden_act="quick_gelu",
    )
    tower = CLIPVisionModel(config).eval()
    tower.save_pretrained(directory)
    return tower


def tiny_llama(vocab: int = BASE_VOCAB, seed: int = 0) -> LlamaForCausalLM:
    """A LLaMA whose state dict has the original flat names (`model.layers.*`, `lm_head.weight`)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=vocab,
        rms_norm_eps=1e-5,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def original_config(llama: LlamaForCausalLM, **fields) -> dict:
    """`config.json` of an original LLaVA-lineage checkpoint (flat LLaMA fields + the `mm_*` fields)."""
    c = llama.config
    return {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "vocab_size": c.vocab_size,
        "mm_hidden_size": CLIP_HIDDEN,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        **fields,
    }


def save_sharded_bin(directory: Path, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    """`pytorch_model-0000k-of-0000n.bin` + `pytorch_model.bin.index.json`, as the original releases."""
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for k in range(shards):
        name = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {key: state[key].clone() for key in keys[k * per : (k + 1) * per]}
        torch.save(part, directory / name)
        weight_map |= dict.fromkeys(part, name)
    (directory / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def save_safetensors_shards(directory: Path, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: state[key].contiguous() for key in keys[k * per : (k + 1) * per]}
        save_file(part, str(directory / name))
        weight_map |= dict.fromkeys(part, name)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def mlp_projector_state(seed: int = 2, inp: int = CLIP_HIDDEN, out: int = HIDDEN) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.mm_projector.0.weight": torch.randn(out, inp, generator=g) * 0.2,
        "model.mm_projector.0.bias": torch.randn(out, generator=g) * 0.1,
        "model.mm_projector.2.weight": torch.randn(out, out, generator=g) * 0.2,
        "model.mm_projector.2.bias": torch.randn(out, generator=g) * 0.1,
    }


def linear_projector_state(
    seed: int = 3, inp: int = CLIP_HIDDEN, out: int = HIDDEN
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.mm_projector.weight": torch.randn(out, inp, generator=g) * 0.2,
        "model.mm_projector.bias": torch.randn(out, generator=g) * 0.1,
    }


def reference_projector(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The original `mm_projector`: Linear, or Linear-GELU-Linear (`mlp2x_gelu`)."""
    if "model.mm_projector.weight" in state:
        return F.linear(x, state["model.mm_projector.weight"], state["model.mm_projector.bias"])
    h = F.gelu(F.linear(x, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"]))
    return F.linear(h, state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])


def original_llava_dir(
    directory: Path,
    tower_dir: Path,
    *,
    projector: dict[str, torch.Tensor],
    extra: dict[str, torch.Tensor] | None = None,
    config_fields: dict | None = None,
    added: dict[str, int] | None = None,
    safetensors: bool = False,
) -> tuple[Path, LlamaForCausalLM]:
    """A full original checkpoint directory: LLaMA + projector (+ family parts), sharded, with its tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = BASE_VOCAB + len(added or {})
    llama = tiny_llama(vocab)
    state = dict(llama.state_dict())
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # present in llava-v1.5's files
    state |= projector | (extra or {})
    (save_safetensors_shards if safetensors else save_sharded_bin)(directory, state)
    fields = {"mm_vision_tower": str(tower_dir), "mm_projector_type": "mlp2x_gelu", **(config_fields or {})}
    (directory / "config.json").write_text(json.dumps(original_config(llama, **fields)))
    write_sentencepiece(directory, added=added)
    return directory, llama


def reference_logits(
    llama: LlamaForCausalLM,
    tower: CLIPVisionModel,
    project,
    ids: list[int],
    pixel_values: torch.Tensor,
    *,
    select_layer: int = -2,
) -> torch.Tensor:
    """The original LLaVA forward: CLIP layer `select_layer` without CLS -> projector -> spliced at -200."""
    with torch.no_grad():
        feats = tower(pixel_values, output_hidden_states=True).hidden_states[select_layer][:, 1:]
        image = project(feats)[0]
        at = ids.index(PLACEHOLDER)
        embed = llama.get_input_embeddings()
        embeds = torch.cat(
            [embed(torch.tensor(ids[:at])), image, embed(torch.tensor(ids[at + 1 :]))]
        ).unsqueeze(0)
        return llama(inputs_embeds=embeds).logits[0]


def converted_logits(model, ids: list[int], pixel_values: torch.Tensor, image_rows: int) -> torch.Tensor:
    """The llava-hf forward of the same prompt: the placeholder becomes `image_rows` `<image>` tokens."""
    image_id = model.config.image_token_id
    at = ids.index(PLACEHOLDER)
    expanded = ids[:at] + [image_id] * image_rows + ids[at + 1 :]
    with torch.no_grad():
        return model(input_ids=torch.tensor([expanded]), pixel_values=pixel_values).logits[0]


# --- SEAL's object projector, written from its description (LayerNorm -> Perceiver resampler -> Linear) ---------
def perceiver_state(
    *,
    dim: int = CLIP_HIDDEN,
    out: int = HIDDEN,
    depth: int = 2,
    heads: int = 2,
    dim_head: int = 96,
    latents: int = 8,
    ff_mult: int = 4,
    prefix: str = "model.mm_projector_object.",
    seed: int = 4,
) -> dict[str, torch.Tensor]:
    """SEAL's `mm_projector_object` key names and shapes, random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    inner = heads * dim_head
    s = {"0.weight": 1 + r(dim, scale=0.1), "0.bias": r(dim, scale=0.1)}
    s |= {"1.latents": r(latents, dim, scale=1.0), "1.media_pos_emb": r(1, 1, dim, scale=1.0)}
    for i in range(depth):
        a, f = f"1.layers.{i}.0.", f"1.layers.{i}.1."
        for norm in ("norm_media", "norm_latents"):
            s[a + norm + ".weight"], s[a + norm + ".bias"] = 1 + r(dim, scale=0.1), r(dim, scale=0.1)
        s[a + "to_q.weight"], s[a + "to_kv.weight"], s[a + "to_out.weight"] = (
            r(inner, dim),
            r(2 * inner, dim),
            r(dim, inner),
        )
        s[f + "0.weight"], s[f + "0.bias"] = 1 + r(dim, scale=0.1), r(dim, scale=0.1)
        s[f + "1.weight"], s[f + "3.weight"] = r(ff_mult * dim, dim), r(dim, ff_mult * dim)
    s["1.norm.weight"], s["1.norm.bias"] = 1 + r(dim, scale=0.1), r(dim, scale=0.1)
    s["2.weight"], s["2.bias"] = r(out, dim), r(out, scale=0.1)
    return {prefix + k: v for k, v in s.items()}


def reference_perceiver(
    state: dict[str, torch.Tensor], x: torch.Tensor, *, heads: int, prefix: str
) -> torch.Tensor:
    """SEAL's forward: LN; media + media_pos_emb; per layer latents += attn([media; latents]) and += ff; LN; Linear."""
    s = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    dim = x.shape[-1]

    def ln(t, name):
        return F.layer_norm(t, (dim,), s[name + ".weight"], s[name + ".bias"])

    x = ln(x, "0") + s["1.media_pos_emb"][0]
    b = x.shape[0]
    lat = s["1.latents"].unsqueeze(0).expand(b, -1, -1)
    depth = len({k.split(".")[2] for k in s if k.startswith("1.layers.")})
    for i in range(depth):
        a, f = f"1.layers.{i}.0.", f"1.layers.{i}.1."
        media, normed = ln(x, a + "norm_media"), ln(lat, a + "norm_latents")
        q = F.linear(normed, s[a + "to_q.weight"])
        kv = F.linear(torch.cat([media, normed], 1), s[a + "to_kv.weight"])
        k, v = kv.chunk(2, -1)
        dh = q.shape[-1] // heads

        qh, kh, vh = (t.reshape(b, t.shape[1], heads, dh).permute(0, 2, 1, 3) for t in (q, k, v))
        attn = ((qh * dh**-0.5) @ kh.transpose(-1, -2)).softmax(-1) @ vh
        lat = F.linear(attn.permute(0, 2, 1, 3).reshape(b, -1, heads * dh), s[a + "to_out.weight"]) + lat
        h = F.gelu(F.linear(ln(lat, f + "0"), s[f + "1.weight"]))
        lat = F.linear(h, s[f + "3.weight"]) + lat
    return F.linear(ln(lat, "1.norm"), s["2.weight"], s["2.bias"])


# --- LISA's parts ------------------------------------------------------------------------------------------------
def text_hidden_fcs_state(hidden: int = HIDDEN, out_dim: int = 256, seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.text_hidden_fcs.0.0.weight": torch.randn(hidden, hidden, generator=g) * 0.1,
        "model.text_hidden_fcs.0.0.bias": torch.randn(hidden, generator=g) * 0.1,
        "model.text_hidden_fcs.0.2.weight": torch.randn(out_dim, hidden, generator=g) * 0.1,
        "model.text_hidden_fcs.0.2.bias": torch.randn(out_dim, generator=g) * 0.1,
    }


def reference_text_hidden_fcs(state: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """LISA's `text_hidden_fcs[0]`: Linear(H, H), ReLU, Linear(H, 256), Dropout(0)."""
    p = "model.text_hidden_fcs.0."
    return F.linear(
        F.relu(F.linear(h, state[p + "0.weight"], state[p + "0.bias"])),
        state[p + "2.weight"],
        state[p + "2.bias"],
    )


# --- LoRA runs of the original code ------------------------------------------------------------------------------
def original_lora_dir(
    directory: Path,
    llama: LlamaForCausalLM,
    *,
    r: int = 4,
    alpha: int = 8,
    modules=("q_proj", "v_proj", "down_proj"),
    non_lora: dict[str, torch.Tensor] | None = None,
    seed: int = 6,
    adapter_name_in_keys: bool = False,
) -> dict[str, torch.Tensor]:
    """peft 0.4's `adapter_model.bin` (`base_model.model.model.layers.N.<proj>.lora_A.weight`), its config and
    `non_lora_trainables.bin` (keys prefixed `base_model.model.`); returns the LoRA weights by layer name."""
    g = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, module in llama.named_modules():
        if (
            isinstance(module, nn.Linear)
            and name.split(".")[-1] in modules
            and name.startswith("model.layers")
        ):
            tag = ".default" if adapter_name_in_keys else ""
            state[f"base_model.model.{name}.lora_A{tag}.weight"] = (
                torch.randn(r, module.in_features, generator=g) * 0.1
            )
            state[f"base_model.model.{name}.lora_B{tag}.weight"] = (
                torch.randn(module.out_features, r, generator=g) * 0.1
            )
    torch.save(state, directory / "adapter_model.bin")
    (directory / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": r,
                "lora_alpha": alpha,
                "lora_dropout": 0.05,
                "bias": "none",
                "target_modules": list(modules),
                "base_model_name_or_path": "liuhaotian/llava-v1.5-7b",
            }
        )
    )
    torch.save(
        {f"base_model.model.{k}": v for k, v in (non_lora or {}).items()},
        directory / "non_lora_trainables.bin",
    )
    return state


def merged_llama(
    llama: LlamaForCausalLM, lora: dict[str, torch.Tensor], *, r: int, alpha: int
) -> LlamaForCausalLM:
    """The original model with W + (alpha / r) B A folded in (what the original loader's merge gives)."""
    import copy

    merged = copy.deepcopy(llama)
    modules = dict(merged.named_modules())
    for key, a in lora.items():
        if ".lora_A" not in key:
            continue
        name = key.removeprefix("base_model.model.").split(".lora_A")[0]
        b = lora[key.replace("lora_A", "lora_B")]
        with torch.no_grad():
            modules[name].weight += (alpha / r) * b @ a
    return merged
