"""Checkpoints written by the original LLaVA-lineage code (LLaVA-1.5, Chain-of-Spot, SEAL, LISA and their LoRA
runs), read strictly and rewritten as llava-hf directories and peft adapters on them.

The original code stores a flat LLaMA (`model.layers.*`, `lm_head.weight`) with the image projector at
`model.mm_projector.*` (`.0`/`.2` for `mlp2x_gelu`, no index for a linear one) and no vision-tower weights (the
tower is built from the hub name in `config.json`); it marks an image by a placeholder id that is never embedded.
llava-hf needs the CLIP weights inside the checkpoint, an `<image>` token in the vocabulary and a two-layer
projector: a linear projector is written exactly as `linear_1` = the original layer, `projector_hidden_act`
"linear" (identity) and `linear_2` = identity with zero bias.

Weights are read from sharded `pytorch_model-*.bin` or `*.safetensors` with their index (pickles only with
`weights_only=True`). Every key is accounted for: a key that belongs to no known part stops the conversion with
an error that names it and the layout the keys look like, and a shard that cannot be read is named.

Shared by the three siblings' converters (`roillava.convert`, `swillava.convert`, `segllava.convert`), which
never import each other; like every module in `eval/`, it imports no sibling.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

IMAGE_TOKEN = "<image>"
# llava-hf pads the vocabulary to a multiple of 64 (32064 for LLaMA's 32000): spare rows let adapters add
# their own tokens (`<object>`, `[SEG]`) without resizing the shared base.
VOCAB_MULTIPLE = 64
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONVERSION_FILE = "conversion.json"
LLAMA_KEY = re.compile(
    r"model\.(embed_tokens\.weight|norm\.weight|layers\.\d+\.(?:self_attn\.[qkvo]_proj\.weight"
    r"|mlp\.(?:gate|up|down)_proj\.weight|(?:input|post_attention)_layernorm\.weight))|lm_head\.weight"
)
# Present in the original files, not weights of the model: rotary tables, and CLIP copies the original loader
# ignores too (the tower comes from its own checkpoint).
IGNORED_KEY = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|model\.vision_tower\..*")
REQUIRED_LLAMA = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
MLP_PROJECTOR_KEYS = {"0.weight", "0.bias", "2.weight", "2.bias"}
LINEAR_PROJECTOR_KEYS = {"weight", "bias"}
LORA_KEY = re.compile(
    r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"
    r"\.lora_([AB])(?:\.default)?\.weight"
)
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class CheckpointError(ValueError):
    """A checkpoint that is not the layout asked for, or a file that cannot be read."""


# --- reading ---------------------------------------------------------------------------------------------------
def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """One weights file (safetensors, or a torch pickle read with `weights_only=True`); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            try:  # memory-mapped: a 7B model's shards are not all copied into RAM at once
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) pickle format cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise CheckpointError(
            f"{path}: cannot read it ({type(e).__name__}: {str(e)[:200]}); the file is truncated or not a "
            "weights file"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors, got {type(state).__name__}")
    return dict(state)


def weight_files(directory: str | Path) -> tuple[list[Path], dict[str, str]]:
    """The weight shards of a model directory and, when there is an index, its key -> file map."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory")
    for name in INDEX_FILES:
        if (d / name).is_file():
            try:
                weight_map = json.loads((d / name).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{d / name}: not a weight index ({e})") from None
            files = [d / f for f in sorted(set(weight_map.values()))]
            for f in files:
                if not f.is_file():
                    raise CheckpointError(f"{d / name}: lists {f.name}, which is missing")
            return files, weight_map
    files = sorted(d.glob("model*.safetensors")) or sorted(d.glob("pytorch_model*.bin"))
    if not files and (d / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{d}: a LoRA run (adapter_config.json, adapter_model.*), not a full checkpoint; convert it with "
            "--from llava-lora / cos-lora (roillava) or fast-release (swillava) on its converted base"
        )
    if not files:
        raise CheckpointError(
            f"{d}: no weights (want pytorch_model*.bin or *.safetensors, with their index when sharded)"
        )
    return files, {}


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All shards of a model directory merged; keys the index promises but a shard lacks are an error."""
    files, weight_map = weight_files(directory)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        shard = load_weights_file(f)
        missing = [k for k, v in weight_map.items() if v == f.name and k not in shard]
        if missing:
            raise CheckpointError(f"{f}: the index lists {missing[0]!r} in this file, but the file lacks it")
        state.update(shard)
    return state


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing (the original checkpoint's config is needed for its geometry)"
        )
    return json.loads(path.read_text())


def layout_of(keys) -> str:
    """What a state dict looks like, from its key names (for error messages)."""
    keys = list(keys)

    def has(pattern: str) -> bool:
        return any(re.match(pattern, k) for k in keys)

    if has(r"(model\.)?language_model\.|model\.multi_modal_projector\."):
        return "a llava-hf checkpoint (already converted)"
    if has(r".*lora_[AB]"):
        return "a peft LoRA adapter (original LLaVA training code)"
    if has(r"model\.visual_model\.|model\.text_hidden_fcs\."):
        return "LISA (LLM + linear projector + text_hidden_fcs + SAM)"
    if has(r"model\.mm_projector_object\."):
        return "SEAL's VQA LLM (LLM + projector + perceiver object projector)"
    if has(r"image_encoder\.|mask_decoder\.|prompt_encoder\."):
        return "Meta's SAM checkpoint"
    if has(r"model\.mm_projector\.1\.latents"):
        return "SEAL's perceiver-pretrain mm_projector.bin"
    if has(r"model\.layers\.") and has(r"model\.mm_projector\.0\."):
        return "LLaVA-1.5 / Chain-of-Spot (LLM + mlp2x_gelu projector)"
    if has(r"model\.layers\.") and has(r"model\.mm_projector\.weight"):
        return "LLaVA with a linear projector"
    if has(r"model\.mm_projector\."):
        return "a projector-only mm_projector.bin"
    if has(r"(vision_model\.|text_model\.)"):
        return "a CLIP checkpoint"
    if has(r"model\.layers\."):
        return "a plain LLaMA language model (no projector)"
    return "no known layout"


@dataclass
class OriginalLlava:
    """An original LLaVA-lineage checkpoint split into its parts (keys as the original code names them)."""

    llama: dict[str, torch.Tensor]
    projector: dict[str, torch.Tensor]  # keys relative to `model.mm_projector.`
    extras: dict[str, dict[str, torch.Tensor]] = field(
        default_factory=dict
    )  # per prefix, keys relative to it

    @property
    def projector_type(self) -> str:
        return "mlp2x_gelu" if set(self.projector) == MLP_PROJECTOR_KEYS else "linear"


def split_original(
    state: Mapping[str, torch.Tensor], *, source: str, family: str, extra_prefixes: tuple[str, ...] = ()
) -> OriginalLlava:
    """Sort every key into LLaMA / projector / a family's extra parts; anything else is an error."""
    llama, projector = {}, {}
    extras: dict[str, dict[str, torch.Tensor]] = {p: {} for p in extra_prefixes}
    for key, value in state.items():
        if IGNORED_KEY.fullmatch(key):
            continue
        if LLAMA_KEY.fullmatch(key):
            llama[key] = value
        elif key.startswith("model.mm_projector.") and "model.mm_projector_object." not in key:
            projector[key.removeprefix("model.mm_projector.")] = value
        elif prefix := next((p for p in extra_prefixes if key.startswith(p)), None):
            extras[prefix][key.removeprefix(prefix)] = value
        else:
            raise CheckpointError(
                f"{source}: unexpected key {key!r} for a {family} checkpoint; its keys look like "
                f"{layout_of(state)}"
            )
    required = [*REQUIRED_LLAMA, "model.layers.0.self_attn.q_proj.weight"]
    for key in required:
        if key not in llama:
            raise CheckpointError(
                f"{source}: missing key {key!r} for a {family} checkpoint; its keys look like {layout_of(state)}"
            )
    layers = sorted({int(m[1]) for k in llama if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    per_layer = [k.removeprefix("model.layers.0.") for k in llama if k.startswith("model.layers.0.")]
    for i in layers:
        for name in per_layer:
            if f"model.layers.{i}.{name}" not in llama:
                raise CheckpointError(
                    f"{source}: missing key 'model.layers.{i}.{name}' (layer {i} is incomplete)"
                )
    if set(projector) not in (MLP_PROJECTOR_KEYS, LINEAR_PROJECTOR_KEYS):
        keys = sorted(f"model.mm_projector.{k}" for k in projector)
        raise CheckpointError(
            f"{source}: the projector keys {keys or 'model.mm_projector.*'} are neither mlp2x_gelu "
            f"(model.mm_projector.0/2.weight/bias) nor linear (model.mm_projector.weight/bias)"
        )
    for prefix, part in extras.items():
        if not part:
            raise CheckpointError(
                f"{source}: missing keys {prefix}* for a {family} checkpoint; its keys look like {layout_of(state)}"
            )
    return OriginalLlava(llama, projector, extras)


# --- tokenizer, vision tower, processor ------------------------------------------------------------------------
def load_original_tokenizer(directory: str | Path):
    """The checkpoint's own tokenizer (sentencepiece `tokenizer.model` or `tokenizer.json`) with its added ids."""
    from transformers import AutoTokenizer

    d = Path(directory)
    if not any((d / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
        raise CheckpointError(
            f"{d}: no tokenizer.model or tokenizer.json (the checkpoint's tokenizer is needed)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(d))
    added = d / "added_tokens.json"
    if added.is_file():  # ids the original run gave its new tokens (e.g. LISA's [SEG]) must survive loading
        for token, want in json.loads(added.read_text()).items():
            got = tokenizer.convert_tokens_to_ids(token)
            if got != want:
                raise CheckpointError(
                    f"{added}: {token!r} has id {want} there but {got} in the loaded tokenizer"
                )
    return tokenizer


def add_special_tokens(tokenizer, tokens: list[str]) -> dict[str, int]:
    """Add each missing token as a special token (after every existing id); returns all their ids."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def load_vision_tower(name_or_dir: str, dtype: torch.dtype):
    """CLIP's vision model from a directory (or a cached hub id): the original checkpoints do not hold it."""
    from transformers import CLIPVisionModel

    try:
        return CLIPVisionModel.from_pretrained(name_or_dir, dtype=dtype)
    except OSError as e:
        raise CheckpointError(
            f"vision tower {name_or_dir!r} not found ({str(e)[:120]}); pass --vision-tower DIR, a download of "
            "the CLIP model the checkpoint's config names"
        ) from None


def llava_hf_processor(tokenizer, vision_config, *, image_aspect_ratio: str, select_strategy: str):
    """llava-hf processor with the original preprocessing: `pad` (mean-colour square) or `square` (crop)."""
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    size = vision_config.image_size
    image_processor = LlavaImageProcessorPil(
        do_pad=image_aspect_ratio == "pad",
        do_resize=True,
        size={"shortest_edge": size},
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        resample=3,  # bicubic, as CLIPImageProcessor
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=select_strategy,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def aspect_ratio_of(config: dict) -> str:
    """The original `image_aspect_ratio`: "pad", or "square" (absent: LLaVA's default, resize + centre crop)."""
    value = config.get("image_aspect_ratio") or "square"
    if value not in ("pad", "square"):
        raise CheckpointError(f"config.json: image_aspect_ratio {value!r} is neither pad nor square")
    return value


# --- the llava-hf model ----------------------------------------------------------------------------------------
def _required(config: dict, name: str):
    if name not in config:
        raise CheckpointError(f"config.json: missing field {name!r}")
    return config[name]


def _grow(matrix: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows (the mean of the existing ones) for the added tokens and the padding to VOCAB_MULTIPLE."""
    extra = rows - matrix.shape[0]
    if extra <= 0:
        return matrix
    mean = matrix.float().mean(0, keepdim=True).to(matrix.dtype)
    return torch.cat([matrix, mean.expand(extra, -1)])


def llava_hf_projector_state(projector: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The original projector (keys after `model.mm_projector.`) as llava-hf `linear_1/linear_2` weights + act.

    mlp2x_gelu maps index for index; a linear projector becomes `linear_1` with an identity activation and an
    identity `linear_2` (zero bias), so its output is the original layer's exactly.
    """
    if set(projector) == LINEAR_PROJECTOR_KEYS:
        weight, bias = projector["weight"], projector["bias"]
        width = weight.shape[0]
        state = {
            "linear_1.weight": weight,
            "linear_1.bias": bias,
            "linear_2.weight": torch.eye(width, dtype=weight.dtype),
            "linear_2.bias": torch.zeros(width, dtype=bias.dtype),
        }
        return state, "linear"
    if set(projector) != MLP_PROJECTOR_KEYS:
        raise CheckpointError(f"projector keys {sorted(projector)} are neither mlp2x_gelu nor linear")
    return {f"linear_{1 + (k[0] == '2')}.{k[2:]}": v for k, v in projector.items()}, "gelu"


def build_llava_hf(
    original: OriginalLlava,
    config: dict,
    tokenizer,
    tower,
    *,
    image_aspect_ratio: str,
    dtype: torch.dtype,
    extra_tokens: tuple[str, ...] = (),
):
    """A `LlavaForConditionalGeneration` holding exactly the original weights, and its processor.

    The tokenizer gains `<image>` (and `extra_tokens`) after every existing id, so the original ids (e.g. LISA's
    `[SEG]`) stay; the embedding and `lm_head` grow to a multiple of 64 rows with the mean row.
    """
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    rows = original.llama["model.embed_tokens.weight"].shape[0]
    if len(tokenizer) > rows:
        raise CheckpointError(
            f"the tokenizer has {len(tokenizer)} ids but the checkpoint only {rows} embedding rows"
        )
    if tokenizer.pad_token is None:
        extra_tokens = (*extra_tokens, "<pad>")
    ids = add_special_tokens(tokenizer, [IMAGE_TOKEN, *extra_tokens])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<pad>"
    vocab = -(-max(rows, len(tokenizer)) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    hidden = original.llama["model.embed_tokens.weight"].shape[1]
    n_layers = len({m[1] for k in original.llama if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    heads = _required(config, "num_attention_heads")
    text = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=_required(config, "intermediate_size"),
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        rope_theta=config.get("rope_theta", 10000.0),
        hidden_act=config.get("hidden_act", "silu"),
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if config.get("hidden_size", hidden) != hidden or config.get("num_hidden_layers", n_layers) != n_layers:
        raise CheckpointError(
            f"config.json says hidden_size {config.get('hidden_size')} and {config.get('num_hidden_layers')} "
            f"layers; the weights have {hidden} and {n_layers}"
        )
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise CheckpointError(
            f"config.json: mm_vision_select_feature {feature!r} is neither patch nor cls_patch"
        )
    strategy = "default" if feature == "patch" else "full"
    vision = tower.config
    patches = (vision.image_size // vision.patch_size) ** 2
    linear = original.projector_type == "linear"
    mm_hidden = original.projector["weight" if linear else "0.weight"].shape[1]
    if mm_hidden != vision.hidden_size:
        raise CheckpointError(
            f"the projector reads {mm_hidden}-d features but the vision tower gives {vision.hidden_size}-d"
        )
    llava_config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=ids[IMAGE_TOKEN],
        image_seq_length=patches + (strategy == "full"),
        vision_feature_layer=config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=strategy,
        projector_hidden_act="linear" if linear else "gelu",
        tie_word_embeddings=False,
    )
    llava_config.pad_token_id = tokenizer.pad_token_id
    state = {}
    for key, value in original.llama.items():
        name = (
            "lm_head.weight"
            if key == "lm_head.weight"
            else "model.language_model." + key.removeprefix("model.")
        )
        state[name] = value
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        state[key] = _grow(state[key], vocab)
    projector_state, _ = llava_hf_projector_state(original.projector)
    state |= {"model.multi_modal_projector." + k: v for k, v in projector_state.items()}
    state |= {"model.vision_tower." + k: v for k, v in tower.state_dict().items()}
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"converted weights do not fit llava-hf: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    processor = llava_hf_processor(
        tokenizer, vision, image_aspect_ratio=image_aspect_ratio, select_strategy=strategy
    )
    return model.eval(), processor


def write_conversion_record(out: str | Path, record: dict) -> None:
    """`conversion.json`: where a converted model came from and what it keeps (aspect ratio, token ids)."""
    (Path(out) / CONVERSION_FILE).write_text(json.dumps(record, indent=1))


def convert_llava_directory(
    src: str | Path,
    out: str | Path,
    *,
    family: str,
    vision_tower: str | None = None,
    dtype: str = "auto",
    extra_prefixes: tuple[str, ...] = (),
    extra_tokens: tuple[str, ...] = (),
):
    """Read an original full checkpoint and write its llava-hf directory; returns (model, processor, original)."""
    src, out = Path(src), Path(out)
    config = read_config(src)
    state = read_state_dict(src)
    original = split_original(state, source=str(src), family=family, extra_prefixes=extra_prefixes)
    del state
    tokenizer = load_original_tokenizer(src)
    tower_name = vision_tower or config.get("mm_vision_tower") or config.get("vision_tower")
    if not tower_name:
        raise CheckpointError(f"{src / 'config.json'}: no mm_vision_tower; pass --vision-tower")
    weights_dtype = original.llama["lm_head.weight"].dtype
    torch_dtype = weights_dtype if dtype == "auto" else getattr(torch, dtype)
    tower = load_vision_tower(tower_name, torch_dtype)
    aspect = aspect_ratio_of(config)
    model, processor = build_llava_hf(
        original,
        config,
        tokenizer,
        tower,
        image_aspect_ratio=aspect,
        dtype=torch_dtype,
        extra_tokens=extra_tokens,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_conversion_record(
        out,
        {
            "from": family,
            "source": str(src),
            "vision_tower": tower_name,
            "image_aspect_ratio": aspect,
            "projector": original.projector_type,
            "dtype": str(torch_dtype).removeprefix("torch."),
            "token_ids": {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.get_added_vocab()},
        },
    )
    return model, processor, original


# --- LoRA runs of the original code ----------------------------------------------------------------------------
@dataclass
class OriginalLora:
    """A LoRA run of the original code: adapter weights renamed to llava-hf, its config and non-LoRA weights."""

    state: dict[str, torch.Tensor]  # peft keys on LlavaForConditionalGeneration
    r: int
    alpha: int
    dropout: float
    modules: tuple[str, ...]
    non_lora: dict[str, torch.Tensor]  # keys as the original model names them (`model.mm_projector.0.weight`)


def read_original_lora(directory: str | Path) -> OriginalLora:
    """`adapter_config.json` + `adapter_model.{bin,safetensors}` (+ `non_lora_trainables.bin`), peft 0.4 layout."""
    d = Path(directory)
    cfg_path = d / "adapter_config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (not a LoRA run directory of the original code)")
    cfg = json.loads(cfg_path.read_text())
    weights = next(
        (d / f for f in ("adapter_model.safetensors", "adapter_model.bin") if (d / f).is_file()), None
    )
    if weights is None:
        raise CheckpointError(f"{d}: no adapter_model.bin or adapter_model.safetensors")
    raw = load_weights_file(weights)
    state = {}
    for key, value in raw.items():
        m = LORA_KEY.fullmatch(key)
        if m is None:
            raise CheckpointError(
                f"{weights}: unexpected key {key!r} for an original LoRA adapter (want "
                f"base_model.model.model.layers.N.<proj>.lora_A/B.weight); its keys look like {layout_of(raw)}"
            )
        state[f"base_model.model.model.language_model.layers.{m[1]}.{m[2]}.lora_{m[3]}.weight"] = value
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str) or not set(targets) <= set(LORA_MODULES) or not targets:
        raise CheckpointError(f"{cfg_path}: target_modules {targets!r} are not a subset of {LORA_MODULES}")
    found = {k.split(".")[-3] for k in state}
    if not found <= set(targets):
        raise CheckpointError(
            f"{weights}: LoRA weights for {sorted(found - set(targets))} outside target_modules"
        )
    non_lora = {}
    side = d / "non_lora_trainables.bin"
    if side.is_file():
        for key, value in load_weights_file(side).items():
            key = key.removeprefix("base_model.model.") if key.startswith("base_model.model.") else key
            key = key.removeprefix("base_model.")
            if key.startswith("model.model."):
                key = key.removeprefix("model.")
            non_lora[key] = value
    return OriginalLora(
        state=state,
        r=int(_required(cfg, "r")),
        alpha=int(_required(cfg, "lora_alpha")),
        dropout=float(cfg.get("lora_dropout", 0.0)),
        modules=tuple(m for m in LORA_MODULES if m in targets),
        non_lora=non_lora,
    )


def mlp_projector_adapter_state(
    projector: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """An mlp2x_gelu `model.mm_projector.{0,2}.*` as peft `modules_to_save` keys of llava-hf's projector."""
    if set(projector) != MLP_PROJECTOR_KEYS:
        raise CheckpointError(
            f"{source}: projector keys {sorted(projector)} are not mlp2x_gelu's (model.mm_projector.0/2.*)"
        )
    return {
        f"base_model.model.model.multi_modal_projector.linear_{1 + (k[0] == '2')}.{k[2:]}": v
        for k, v in projector.items()
    }


def write_lora_adapter(
    out: str | Path,
    lora: OriginalLora,
    state: dict[str, torch.Tensor],
    *,
    base: str,
    modules_to_save: list[str] | None,
    dtype: torch.dtype,
) -> None:
    """Our adapter layout: `adapter_model.safetensors` + `adapter_config.json` (peft) on the llava-hf base."""
    from peft import LoraConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(out / "adapter_model.safetensors"))
    LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias="none",
        target_modules=rf".*language_model.*\.({'|'.join(lora.modules)})",
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(base),
    ).save_pretrained(str(out))
