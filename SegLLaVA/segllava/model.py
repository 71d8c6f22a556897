"""SegLLaVA: a llava-hf `LlavaForConditionalGeneration`, a transformers `SamModel` and LISA's `[SEG]` head, composed.

The language model answers with `[SEG]` tokens; the last-layer hidden state that predicts each `[SEG]`
(LISA's choice) goes through `text_hidden_fcs` (H -> H -> SAM prompt width) into SAM's
mask decoder as a sparse prompt, next to the dense `no_mask_embed`; the decoder's first mask, post-processed
to the original image size, is the answer. `[SEG]` positions are read from the token ids of the expanded
sequence (llava-hf puts one image token per feature row), so any number of images and `[SEG]` tokens per row,
and left or right padding, need no offsets.

Public API (what the composed agent calls; see also `SegLLaVA.from_pretrained`):

* ``seg = SegLLaVA.from_pretrained(adapter_dir, llava=shared_peft_model, sam=shared_sam)`` attaches the seg
  LoRA adapter to an already loaded llava-hf model (by name, next to other adapters) and one shared SAM;
  without them it loads both from the paths in ``segllava_config.json``.
* ``emb = seg.sam_image_embeddings(images)``: SAM's image encoder, once per image (PIL or uint8 arrays).
* ``logits = seg.masks_from_seg_hidden(seg_hidden, emb, image_index)``: [SEG] hidden states -> mask logits at
  each image's original size (binarise with ``> 0``).
* ``seg.segment(image, query) -> SegResult``: the whole path for one query (generated answer, masks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlavaForConditionalGeneration, SamModel
from transformers.utils import ModelOutput

from eval.llava_hf import (  # noqa: F401
    DTYPE_CHOICES,
    DTYPE_HELP,
    DTYPES,
    attach_lora_adapter,
    inference_dtype,
    load_llava_for_inference,
)
from eval.llava_hf import llava_processor as load_processor  # noqa: F401

from .conversation import IM_END, IM_START, SEG_TOKEN, TokenLayout
from .inference import SegResult, generate_masks
from .losses import SegLossWeights, seg_mask_loss
from .sam_checkpoint import load_sam
from .sam_io import postprocess_masks, sam_preprocess

CONFIG_FILE = "segllava_config.json"
HEADS_FILE = "seg_heads.safetensors"
SAM_SUBDIR = "sam"  # a merged (full) checkpoint keeps its whole SAM here
TEXT_HIDDEN_FCS = "text_hidden_fcs"
VISUAL_MODEL = "visual_model"  # LISA's attribute name for SAM, so its keys read `visual_model.*`
SAM_PARTS = ("vision_encoder", "prompt_encoder", "mask_decoder")
LISA_LOSS_WEIGHTS = SegLossWeights()  # CE + 2·BCE + 0.5·Dice


@dataclass
class SegConfig:
    """Everything needed to rebuild a SegLLaVA model; saved as `segllava_config.json` with every checkpoint.

    `weights`: "lora" (a peft adapter on `base_model`) or "full" (the directory is a llava-hf model with the
    LoRA merged, and its SAM in `sam/`). `sam_trained` names the SAM parts stored in `seg_heads.safetensors`
    on top of `vision_pretrained`. Relative paths are relative to the checkpoint directory.
    """

    base_model: str = "llava-hf/llava-1.5-7b-hf"
    vision_pretrained: str = ""
    sam_config: str = ""  # a SamConfig JSON, for a Meta-layout file of a size other than vit_b/l/h
    out_dim: int = 256
    use_mm_start_end: bool = True
    image_aspect_ratio: str = "pad"
    sam_trained: list[str] = field(default_factory=lambda: ["mask_decoder"])
    weights: str = "lora"

    def save(self, directory: str | Path) -> None:
        """Local paths are written relative to the checkpoint, so it can move together with them."""
        from eval.checks import relative_to_checkpoint

        data = asdict(self)
        for key in ("base_model", "vision_pretrained", "sam_config"):
            data[key] = relative_to_checkpoint(directory, data[key])
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> SegConfig:
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"not a SegLLaVA checkpoint: {path} is missing")
        return cls(**json.loads(path.read_text()))


@dataclass
class SamEmbeddings:
    """SAM image embeddings [M, C, h, w] with each image's resized (pre-pad) and original size."""

    embeddings: torch.Tensor
    resized_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]


@dataclass
class SegOutput(ModelOutput):
    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    bce_loss: torch.Tensor | None = None
    dice_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pred_masks: list[torch.Tensor] | None = None


def seg_token_positions(input_ids: torch.Tensor, seg_token_id: int) -> torch.Tensor:
    """[n, 2] (row, position) of every `[SEG]` token, row by row, left to right: the order of the gt masks.

    The ids are the expanded sequence llava-hf runs (one image token per feature row), so positions are
    final whatever the number of images, and padding on either side only shifts them.
    """
    return (input_ids == seg_token_id).nonzero()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, … over the real tokens of each row, so left- and right-padded rows compute the same states."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def unwrap_llava(model: nn.Module) -> LlavaForConditionalGeneration:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def build_text_hidden_fcs(hidden_size: int, out_dim: int) -> nn.ModuleList:
    """LISA's projector, with its module layout (`text_hidden_fcs.0.0` / `.0.2`) so its weights map."""
    return nn.ModuleList(
        [
            nn.Sequential(
                nn.Linear(hidden_size, hidden_size),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_size, out_dim),
                nn.Dropout(0.0),
            )
        ]
    )


def _resolve(directory: Path, path: str, field: str = "a path") -> str:
    """A relative path in the config is relative to the checkpoint directory; a hub id stays; a local path
    that does not exist is an error naming the config and the field."""
    from eval.checks import resolve_in_checkpoint

    return resolve_in_checkpoint(directory, path, f"{CONFIG_FILE}:{field}")


class SegLLaVA(nn.Module):
    """LLaVA (plain or peft-wrapped) + SAM + `text_hidden_fcs`; `forward` computes LISA's training loss.

    `forward` takes the collator's batch: `input_ids`/`attention_mask`/`labels` [N, L] (one row per
    conversation), `pixel_values` [M, 3, s, s] (CLIP, one per image), `image_run_index` (the image of each
    image-token run, row-major; one per row when each conversation shows one image), `sam_pixel_values`
    [M, 3, S, S], `resized_sizes`/`original_sizes` [M, 2], and `gt_masks`: per row a [k, H, W] float tensor,
    one mask per `[SEG]` of that row. Each `[SEG]` is decoded on the image of the last image run before it.
    """

    accepts_loss_kwargs = False  # the Trainer then scales the loss for gradient accumulation itself

    def __init__(
        self,
        llava: nn.Module,
        sam: SamModel,
        config: SegConfig,
        *,
        seg_token_id: int,
        layout: TokenLayout,
        loss_weights: SegLossWeights = LISA_LOSS_WEIGHTS,
    ):
        super().__init__()
        self.llava = llava
        self.visual_model = sam
        self.seg_config = config
        self.seg_token_id = seg_token_id
        self.layout = layout
        self.loss_weights = loss_weights
        prompt_width = sam.config.prompt_encoder_config.hidden_size
        if config.out_dim != prompt_width:
            raise ValueError(f"out_dim {config.out_dim} differs from the SAM prompt width {prompt_width}")
        hidden = unwrap_llava(llava).config.text_config.hidden_size
        self.text_hidden_fcs = build_text_hidden_fcs(hidden, config.out_dim)

    @property
    def core(self) -> LlavaForConditionalGeneration:
        return unwrap_llava(self.llava)

    @property
    def config(self):
        """The llava-hf config (the Trainer and DeepSpeed read sizes from it)."""
        return self.core.config

    @property
    def sam_image_size(self) -> int:
        return self.visual_model.config.vision_config.image_size

    # --- vision ------------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected CLIP features [M, N, H] (llava-hf's layer and CLS rules); no graph for frozen parts."""
        core = self.core
        trainable = any(p.requires_grad for p in core.model.vision_tower.parameters()) or any(
            p.requires_grad for p in core.model.multi_modal_projector.parameters()
        )
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            out = core.model.get_image_features(
                pixel_values=pixel_values.to(core.dtype),
                vision_feature_layer=core.config.vision_feature_layer,
                vision_feature_select_strategy=core.config.vision_feature_select_strategy,
            )
        return torch.stack(list(out.pooler_output))

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_run_index: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings with image features scattered into the image-token runs.

        `image_run_index[k]` is the image (row of `pixel_values`) shown by the k-th image run of the batch, runs
        counted row by row, left to right; with one image per conversation it is each row's image.
        """
        embeds = self.core.get_input_embeddings()(input_ids)
        is_image = input_ids == self.core.config.image_token_id
        if not is_image.any():
            return embeds
        features = self.image_features(pixel_values)[image_run_index]
        if int(is_image.sum()) != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"{int(is_image.sum())} image tokens for {features.shape[0]} image runs of {features.shape[1]} rows"
            )
        return embeds.masked_scatter(
            is_image.unsqueeze(-1), features.reshape(-1, features.shape[-1]).to(embeds.dtype)
        )

    def seg_image_index(
        self, input_ids: torch.Tensor, where: torch.Tensor, image_run_index: torch.Tensor
    ) -> torch.Tensor:
        """For each `[SEG]` at (row, position): the image of the last image run before it in its row."""
        run_length = self.layout.image_length
        starts = []  # (row, first position) of every run, row-major: the order of image_run_index
        for row, positions in enumerate((input_ids == self.core.config.image_token_id).tolist()):
            image_positions = [p for p, is_image in enumerate(positions) if is_image]
            starts += [(row, p) for p in image_positions[::run_length]]
        out = []
        for row, pos in where.tolist():
            before = [k for k, (r, start) in enumerate(starts) if r == row and start < pos]
            if not before:
                raise ValueError(f"row {row}: a [SEG] at position {pos} follows no image")
            out.append(int(image_run_index[before[-1]]))
        return torch.tensor(out, dtype=torch.long, device=input_ids.device)

    def sam_image_embeddings(self, images: Sequence[Image.Image | np.ndarray]) -> SamEmbeddings:
        """SAM's image encoder, run once per image; keep the result to decode any number of masks."""
        prepared = [sam_preprocess(im, self.sam_image_size) for im in images]
        pixels = torch.stack([p.pixel_values for p in prepared])
        return SamEmbeddings(
            self.encode_sam_pixels(pixels),
            [p.resized_size for p in prepared],
            [p.original_size for p in prepared],
        )

    def encode_sam_pixels(self, sam_pixel_values: torch.Tensor) -> torch.Tensor:
        encoder = self.visual_model.vision_encoder
        params = next(encoder.parameters())
        trainable = any(p.requires_grad for p in encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            return encoder(sam_pixel_values.to(device=params.device, dtype=params.dtype)).last_hidden_state

    def decode_masks(self, prompts: torch.Tensor, image_embeddings: torch.Tensor) -> torch.Tensor:
        """[n, C] prompt embeddings on [n, C, h, w] image embeddings -> [n, 4h, 4w] low-res logits (mask 0)."""
        sam = self.visual_model
        n = prompts.shape[0]
        _, _, h, w = image_embeddings.shape
        dtype = image_embeddings.dtype
        positional = sam.get_image_wide_positional_embeddings().to(dtype).repeat(n, 1, 1, 1)
        dense = sam.prompt_encoder.no_mask_embed.weight.to(dtype).reshape(1, -1, 1, 1).expand(n, -1, h, w)
        masks, _ = sam.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=positional,
            sparse_prompt_embeddings=prompts.to(dtype)[:, None, None, :],
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return masks[:, 0, 0]

    def masks_from_seg_hidden(
        self, seg_hidden: torch.Tensor, sam: SamEmbeddings, image_index: Sequence[int] | torch.Tensor
    ) -> list[torch.Tensor]:
        """[n, H] `[SEG]` hidden states, each on image `image_index[i]` -> n logit maps at original size."""
        if seg_hidden.shape[0] == 0:
            return []
        index = torch.as_tensor(image_index, dtype=torch.long, device=sam.embeddings.device)
        prompts = self.text_hidden_fcs[0](seg_hidden.to(next(self.text_hidden_fcs.parameters()).dtype))
        low_res = self.decode_masks(prompts, sam.embeddings[index])
        return [
            postprocess_masks(
                low_res[i : i + 1], self.sam_image_size, sam.resized_sizes[m], sam.original_sizes[m]
            )[0]
            for i, m in enumerate(index.tolist())
        ]

    # --- language ----------------------------------------------------------------------------------------
    def seg_hidden_states(
        self, hidden: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states predicting each `[SEG]` ([n, H]) and the row each belongs to ([n])."""
        where = seg_token_positions(input_ids, self.seg_token_id)
        if (where[:, 1] == 0).any():
            raise ValueError("a [SEG] token at position 0 has no predicting hidden state")
        return hidden[where[:, 0], where[:, 1] - 1], where[:, 0]

    def language_forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor, labels=None):
        return self.llava(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            labels=labels,
            output_hidden_states=True,
            use_cache=False,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_run_index: torch.Tensor,
        sam_pixel_values: torch.Tensor,
        resized_sizes: torch.Tensor,
        original_sizes: torch.Tensor,
        labels: torch.Tensor | None = None,
        gt_masks: list[torch.Tensor] | None = None,
    ) -> SegOutput:
        embeds = self.embed(input_ids, pixel_values, image_run_index)
        out = self.language_forward(embeds, attention_mask, labels)
        seg_hidden, rows = self.seg_hidden_states(out.hidden_states[-1], input_ids)
        where = seg_token_positions(input_ids, self.seg_token_id)
        sam = SamEmbeddings(
            self.encode_sam_pixels(sam_pixel_values),
            [tuple(s) for s in resized_sizes.tolist()],
            [tuple(s) for s in original_sizes.tolist()],
        )
        masks = self.masks_from_seg_hidden(
            seg_hidden, sam, self.seg_image_index(input_ids, where, image_run_index)
        )
        per_row = _group(masks, rows.tolist(), input_ids.shape[0])
        if labels is None or gt_masks is None:
            return SegOutput(logits=out.logits, pred_masks=per_row)
        if len(gt_masks) != input_ids.shape[0]:
            raise ValueError(f"{len(gt_masks)} gt mask sets for {input_ids.shape[0]} conversations")
        for row, (pred, gt) in enumerate(zip(per_row, gt_masks)):
            if pred.shape[0] != gt.shape[0]:
                raise ValueError(
                    f"conversation {row}: {pred.shape[0]} [SEG] tokens but {gt.shape[0]} gt masks"
                )
        bce, dice = seg_mask_loss(per_row, [g.to(p.dtype) for p, g in zip(per_row, gt_masks)])
        # Parameters of heads that got no mask this step still join the graph (times 0): every rank must
        # reduce the same gradients under DeepSpeed/DDP.
        heads = [*self.text_hidden_fcs.parameters(), *self.visual_model.parameters()]
        unused = sum(p.float().sum() for p in heads if p.requires_grad) * 0.0
        loss = self.loss_weights.combine(out.loss, bce, dice) + unused
        return SegOutput(
            loss=loss, ce_loss=out.loss, bce_loss=bce, dice_loss=dice, logits=out.logits, pred_masks=per_row
        )

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """Called by the HF Trainer; checkpointing lives in the language model."""
        self.core.activation_checkpointing_enable(**kwargs)
        self.core.enable_input_require_grads()

    # --- saving ------------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As `nn.Module`'s, except that a strict load accepts missing frozen weights: DeepSpeed's resume
        states hold only what trains (LoRA, new token rows, heads); the frozen rest is the base and SAM."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict:
            trainable = {n for n, p in self.named_parameters() if p.requires_grad}
            missing = [k for k in result.missing_keys if k in trainable]
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    f"SegLLaVA state dict: missing trained weights {missing[:5]} ({len(missing)}), "
                    f"unexpected keys {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
                )
        return result

    def save_pretrained(
        self, directory: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write the peft adapter, `seg_heads.safetensors` (text_hidden_fcs + trained SAM parts) and the config.

        `state_dict` is this module's (e.g. gathered by DeepSpeed); a plain (non-peft) model writes a full
        llava-hf directory instead of the adapter.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = self.state_dict() if state_dict is None else state_dict
        llava_state = {k.removeprefix("llava."): v for k, v in state.items() if k.startswith("llava.")}
        is_peft = self.core is not self.llava
        self.llava.save_pretrained(out, state_dict=llava_state)
        heads = {
            k: v.detach().cpu().contiguous()
            for k, v in state.items()
            if k.startswith(f"{TEXT_HIDDEN_FCS}.")
            or any(k.startswith(f"{VISUAL_MODEL}.{part}.") for part in self.seg_config.sam_trained)
        }
        save_file(heads, str(out / HEADS_FILE))
        replace(self.seg_config, weights="lora" if is_peft else "full").save(out)

    def load_heads(self, path: str | Path) -> None:
        """Load `seg_heads.safetensors`: text_hidden_fcs (strict) and the SAM parts it holds (each complete)."""
        path = Path(path)
        state = load_file(str(path))
        fcs = {
            k.removeprefix(f"{TEXT_HIDDEN_FCS}."): v
            for k, v in state.items()
            if k.startswith(f"{TEXT_HIDDEN_FCS}.")
        }
        try:
            self.text_hidden_fcs.load_state_dict(fcs, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: text_hidden_fcs do not match the model ({e})") from None
        unknown = [k for k in state if not k.startswith((f"{TEXT_HIDDEN_FCS}.", f"{VISUAL_MODEL}."))]
        if unknown:
            raise ValueError(f"{path}: unexpected keys {unknown[:5]}")
        for part in SAM_PARTS:
            prefix = f"{VISUAL_MODEL}.{part}."
            sub = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            if sub:
                try:
                    getattr(self.visual_model, part).load_state_dict(sub, strict=True)
                except RuntimeError as e:
                    raise ValueError(f"{path}: SAM {part} does not match the SAM config ({e})") from None

    # --- loading -----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        llava: nn.Module | None = None,
        sam: SamModel | None = None,
        adapter_name: str = "seg",
        merge: bool | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        bits: int = 16,
    ) -> SegLLaVA:
        """Load a SegLLaVA checkpoint (adapter or merged) for inference.

        `llava`: an already loaded llava-hf model or peft model (the agent's shared base); the seg adapter is
        added to it under `adapter_name` and made active. Otherwise the base is loaded from the config and the
        adapter merged (`merge` defaults to True then; never into a 4/8-bit base, where the update would be
        rounded away). `sam`: a loaded SamModel to share; its trained parts are overwritten by the checkpoint's.
        A base loaded here goes straight to `device` (`bits` 4/8: its language model quantised; CLIP, the
        projector and lm_head stay in `dtype`). The processor is at `seg.processor`.
        """
        directory = Path(directory)
        config = SegConfig.load(directory)
        processor = load_processor(directory, config.image_aspect_ratio)
        if config.weights == "full":
            if llava is None:
                llava = load_llava_for_inference(directory, device=device, dtype=dtype, bits=bits)
        else:
            from peft import PeftModel

            shared = llava is not None
            if llava is None:
                llava = load_llava_for_inference(
                    _resolve(directory, config.base_model, "base_model"),
                    device=device,
                    dtype=dtype,
                    bits=bits,
                )
            ensure_seg_tokens(processor.tokenizer, unwrap_llava(llava), config.use_mm_start_end)
            # The one attach path (as the agent's other stages); a model of its own is then merged.
            was_peft = isinstance(llava, PeftModel)
            llava, _ = attach_lora_adapter(llava, directory, adapter_name)
            llava.set_adapter(adapter_name)
            if not was_peft:
                quantised = getattr(unwrap_llava(llava), "is_quantized", False)
                if (merge if merge is not None else not shared) and not quantised:
                    llava = llava.merge_and_unload()
        if sam is None:
            sam_path = (
                directory / SAM_SUBDIR
                if config.weights == "full"
                else _resolve(directory, config.vision_pretrained, "vision_pretrained")
            )
            sam = load_sam_with_config(
                str(sam_path),
                _resolve(directory, config.sam_config, "sam_config") if config.weights != "full" else "",
            )
        seg = build_seg_llava(llava, sam, processor.tokenizer, config)
        if (directory / HEADS_FILE).is_file():
            seg.load_heads(directory / HEADS_FILE)
        seg.processor = processor
        seg.visual_model.to(device=device, dtype=dtype)
        seg.text_hidden_fcs.to(device=device, dtype=dtype)
        if not getattr(seg.core, "is_quantized", False):  # bitsandbytes weights cannot be cast
            seg.llava.to(device=device, dtype=dtype)
        return seg.eval()

    # --- inference ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def segment(self, image: Image.Image, query: str, *, max_new_tokens: int = 32) -> SegResult:
        """Generate LISA's answer to `query` about `image` and decode a mask for every `[SEG]` it emits."""
        return generate_masks(self, self.processor, [image], [query], max_new_tokens=max_new_tokens)[0]


def _group(masks: list[torch.Tensor], rows: list[int], n_rows: int) -> list[torch.Tensor]:
    """Per-row [k, H, W] stacks (empty [0, 1, 1] for rows without `[SEG]`)."""
    grouped: list[list[torch.Tensor]] = [[] for _ in range(n_rows)]
    for mask, row in zip(masks, rows):
        grouped[row].append(mask)
    empty = masks[0].new_zeros((0, 1, 1)) if masks else torch.zeros((0, 1, 1))
    return [torch.stack(g) if g else empty for g in grouped]


# --- building ------------------------------------------------------------------------------------------------
BITS_HELP = "load the language model in 4-bit (NF4) or 8-bit with bitsandbytes; CLIP, projector, lm_head and SAM stay in the dtype"


def load_sam_with_config(path: str, sam_config: str = "") -> SamModel:
    """`load_sam`, with an explicit SamConfig JSON when given (a Meta .pth of a non-standard size)."""
    from transformers import SamConfig

    return load_sam(path, SamConfig.from_json_file(sam_config) if sam_config else None)


def ensure_seg_tokens(tokenizer, llava: LlavaForConditionalGeneration, use_mm_start_end: bool) -> list[int]:
    """Add `[SEG]` (and `<im_start>`/`<im_end>`) if missing; resize the embeddings if the vocab grew.

    Returns the ids of these tokens: the "new token rows" a run may train instead of whole matrices.
    """
    wanted = [SEG_TOKEN] + ([IM_START, IM_END] if use_mm_start_end else [])
    missing = [t for t in wanted if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if len(tokenizer) > llava.get_input_embeddings().num_embeddings:
        # Mean initialisation (deterministic up to a 1e-9 covariance): the loader repeats it.
        llava.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return tokenizer.convert_tokens_to_ids(wanted)


def token_layout(tokenizer, llava_config, use_mm_start_end: bool) -> TokenLayout:
    """Image run length from the config: patches, plus CLS under the "full" selection strategy."""
    vc = llava_config.vision_config
    length = (vc.image_size // vc.patch_size) ** 2 + (llava_config.vision_feature_select_strategy == "full")
    return TokenLayout(
        image_token_id=llava_config.image_token_id,
        image_length=length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        im_start_id=tokenizer.convert_tokens_to_ids(IM_START) if use_mm_start_end else None,
        im_end_id=tokenizer.convert_tokens_to_ids(IM_END) if use_mm_start_end else None,
    )


def build_seg_llava(
    llava: nn.Module,
    sam: SamModel,
    tokenizer,
    config: SegConfig,
    loss_weights: SegLossWeights = LISA_LOSS_WEIGHTS,
) -> SegLLaVA:
    """A SegLLaVA around loaded parts; the tokenizer must already hold `[SEG]` (see `ensure_seg_tokens`)."""
    seg_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
    if seg_id is None or seg_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {SEG_TOKEN} token; call ensure_seg_tokens first")
    layout = token_layout(tokenizer, unwrap_llava(llava).config, config.use_mm_start_end)
    return SegLLaVA(llava, sam, config, seg_token_id=seg_id, layout=layout, loss_weights=loss_weights)
