"""SegLLaVA training with LISA's command line (`train_ds.py`), run by the HF Trainer under DeepSpeed ZeRO-2.

    cd SegLLaVA && deepspeed train_ds.py --version=<llava-hf dir or id> --dataset_dir=./dataset \
        --vision_pretrained=<SAM dir or sam_vit_h_4b8939.pth> --dataset="sem_seg||refer_seg" --sample_rates="3,1" \
        --exp_name=<name>

LISA's flags and defaults are kept except one: LoRA r8/α16 on q_proj,v_proj; the added tokens' rows of
`embed_tokens` and `lm_head` (LISA trains both whole matrices: `--train_embeddings full`), SAM's mask
decoder and `text_hidden_fcs` train; lr 3e-4 with AdamW β (0.9, 0.95),
100 warm-up steps then linear decay over `epochs × steps_per_epoch`; batch 2 × 10 accumulation; loss
CE + 2·BCE + 0.5·Dice. The run lives in `<log_base_dir>/<exp_name>` (TensorBoard events, `checkpoint-*`,
the final adapter); gIoU/cIoU on `--val_dataset` after every epoch keep the best checkpoint, and
`--auto_resume` (on by default) continues from the last checkpoint. Customised in the Trainer are only the
checkpoint layout (`SegLLaVA.save_pretrained`), the validation (`validate.py`) and the loss-part logging.

Additions: `--train_embeddings new_tokens` (the default) trains only the rows of the added tokens (`[SEG]`,
`<im_start>`, `<im_end>`) instead of copies of both matrices (LISA's, `full`), so the adapter stays small;
`--train_sam_encoder` also trains SAM's image encoder (for the toy world's tiny SAM; a real SAM is pretrained).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, LlavaForConditionalGeneration, Trainer, TrainerCallback
from transformers import TrainingArguments as HfTrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .hybrid import HybridDataset, SegCollator
from .losses import SegLossWeights
from .model import (
    SegConfig,
    SegLLaVA,
    build_seg_llava,
    ensure_seg_tokens,
    load_processor,
    load_sam_with_config,
)
from .sources import ReasonSegSource, ReferSegSource, SemSegSource, VqaSource, val_items
from .validate import evaluate_modes

logger = logging.getLogger(__name__)
TRAIN_CONFIG_FILE = "segllava_train_config.json"
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# LISA's image is 256 feature rows (CLIP-224); its collator cuts the text, the image counted as one token, at
# `model_max_length - 255`, so that the expanded sequence fits `model_max_length`.
LISA_IMAGE_ROWS = 256


def text_token_limit(model_max_length: int) -> int:
    """Tokens a conversation keeps, each image counted as one placeholder (LISA's cut, whatever the tower)."""
    return model_max_length - (LISA_IMAGE_ROWS - 1)


@dataclass
class SegTrainArgs:
    """LISA's `train_ds.py` flags (same names and defaults) plus the few this implementation adds."""

    version: str = field(
        default="llava-hf/llava-1.5-7b-hf", metadata={"help": "llava-hf base (dir or hub id)"}
    )
    vision_pretrained: str = field(
        default="facebook/sam-vit-huge", metadata={"help": "SAM: an HF SamModel dir or Meta's .pth"}
    )
    sam_config: str = field(
        default="", metadata={"help": "SamConfig JSON for a .pth that is not vit_b/l/h (e.g. a toy SAM)"}
    )
    vision_tower: str | None = field(
        default=None, metadata={"help": "ignored: the llava-hf base carries its vision tower"}
    )
    dataset_dir: str = "./dataset"
    dataset: str = "sem_seg||refer_seg||vqa||reason_seg"
    sample_rates: str = "9,3,3,1"
    sem_seg_data: str = "ade20k||cocostuff||pascal_part||paco_lvis||mapillary"
    refer_seg_data: str = "refclef||refcoco||refcoco+||refcocog"
    vqa_data: str = "llava_instruct_150k"
    reason_seg_data: str = "ReasonSeg|train"
    val_dataset: str = "ReasonSeg|val"
    explanatory: float = 0.1
    num_classes_per_sample: int = 3
    log_base_dir: str = "./runs"
    exp_name: str = "lisa"
    epochs: int = 10
    steps_per_epoch: int = 500
    batch_size: int = field(default=2, metadata={"help": "per device"})
    grad_accumulation_steps: int = 10
    val_batch_size: int = 1
    workers: int = 4
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 100
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = "q_proj,v_proj"
    precision: str = field(default="bf16", metadata={"help": "fp32 | bf16 | fp16"})
    image_size: int | None = field(
        default=None, metadata={"help": "SAM input size (default: the SAM's config)"}
    )
    model_max_length: int = field(
        default=512,
        metadata={
            "help": "LISA's: a conversation, each image counted as one token, is cut at model_max_length - 255 "
            "(LISA's 256-row image then fits in model_max_length); the image's rows come on top"
        },
    )
    out_dim: int | None = field(default=None, metadata={"help": "[SEG] projection width (default: SAM's)"})
    conv_type: str = field(default="llava_v1", metadata={"help": "llava_v1 (the only template LISA trains)"})
    image_aspect_ratio: str = field(
        default="pad", metadata={"help": "pad (LLaVA-1.5) | square (centre crop)"}
    )
    gradient_checkpointing: bool = True
    train_mask_decoder: bool = True
    use_mm_start_end: bool = True
    auto_resume: bool = True
    resume: str = field(default="", metadata={"help": "a checkpoint-* dir to resume from"})
    eval_only: bool = False
    no_eval: bool = False
    eval_mode: str = field(default="teacher", metadata={"help": "teacher | generate | both"})
    print_freq: int = 1
    seed: int = 42
    local_rank: int = field(default=-1, metadata={"help": "set by the deepspeed launcher"})
    deepspeed: str = field(
        default=str(SCRIPTS / "zero2.json"), metadata={"help": "DeepSpeed JSON ('' disables DeepSpeed)"}
    )
    train_embeddings: str = field(
        default="new_tokens",
        metadata={
            "help": "new_tokens (only the added tokens' rows train and are saved) | full (LISA: copies "
            "of embed_tokens and lm_head, 262.7M parameters at 7B)"
        },
    )
    train_sam_encoder: bool = field(
        default=False, metadata={"help": "toy world only: train SAM's image encoder"}
    )
    use_cpu: bool = field(
        default=False, metadata={"help": "train on the CPU even if an accelerator is present (bf16 included)"}
    )
    max_steps: int = field(
        default=-1, metadata={"help": "stop after this many steps (default: the schedule's)"}
    )
    save_steps: int | None = field(
        default=None, metadata={"help": "checkpoint every N steps (default: per epoch)"}
    )

    @property
    def output_dir(self) -> Path:
        return Path(self.log_base_dir) / self.exp_name

    def datasets(self) -> list[str]:
        return [d for d in self.dataset.split("||") if d]

    def rates(self) -> list[float]:
        return [float(r) for r in self.sample_rates.split(",")]

    def loss_weights(self) -> SegLossWeights:
        return SegLossWeights(self.ce_loss_weight, self.bce_loss_weight, self.dice_loss_weight)


def check_args(args: SegTrainArgs) -> None:
    if args.precision not in DTYPES:
        raise ValueError(f"--precision must be one of {sorted(DTYPES)}, got {args.precision!r}")
    if args.conv_type != "llava_v1":
        raise ValueError(f"--conv_type {args.conv_type!r}: only llava_v1 is implemented")
    if args.train_embeddings not in ("full", "new_tokens"):
        raise ValueError(f"--train_embeddings must be full or new_tokens, got {args.train_embeddings!r}")
    if args.eval_mode not in ("teacher", "generate", "both"):
        raise ValueError(f"--eval_mode must be teacher, generate or both, got {args.eval_mode!r}")
    if text_token_limit(args.model_max_length) < 16:
        raise ValueError(
            f"--model_max_length {args.model_max_length} leaves {text_token_limit(args.model_max_length)} text "
            f"tokens: as in LISA it counts a {LISA_IMAGE_ROWS}-row image (use at least {LISA_IMAGE_ROWS + 15})"
        )
    if len(args.datasets()) != len(args.rates()):
        raise ValueError(
            f"--dataset names {len(args.datasets())} families but --sample_rates has {len(args.rates())}"
        )


def check_seg_inputs(args: SegTrainArgs) -> None:
    """Every input checked in seconds, before any model loads; a bad one exits with one line naming it.
    bf16 where this machine cannot train in it falls back to fp32 with a notice."""
    from eval.checks import BF16_NOTICE, InputError, bf16_usable, check_checkpoint, check_dir, fail

    try:
        check_checkpoint(args.version, "--version")
        check_checkpoint(args.vision_pretrained, "--vision_pretrained")
        if args.sam_config:
            check_checkpoint(args.sam_config, "--sam_config")
        here = Path.cwd().name == "SegLLaVA" and Path("../dataset").is_dir()
        check_dir(
            args.dataset_dir,
            "--dataset_dir",
            hint="from SegLLaVA/ the repository's is ../dataset" if here else "",
        )
    except InputError as e:
        raise fail(e) from None
    if args.precision == "bf16" and not bf16_usable(getattr(args, "use_cpu", False)):
        print(
            BF16_NOTICE.replace(
                "BF16=False for the scripts; on a CPU, --use_cpu True keeps bf16", "--precision fp32"
            ),
            file=sys.stderr,
            flush=True,
        )
        args.precision = "fp32"


def read_data(args: SegTrainArgs) -> tuple[list | None, list]:
    """The training sources and the validation items, read before the model (errors exit in one line)."""
    from eval.checks import fail

    try:
        sources = None if args.eval_only else build_sources(args)
        items = (
            val_items(Path(args.dataset_dir), args.val_dataset)
            if (args.eval_only or not args.no_eval)
            else []
        )
    except (ValueError, OSError) as e:
        raise fail(e) from None
    return sources, items


def resume_point(args: SegTrainArgs) -> str | None:
    """`--resume`, else with `--auto_resume` the last checkpoint of the run folder, if it was trained on the
    same data choices (else a one-line exit; the dataset folders are too large to read for this);
    `--eval_only` reads it as it is."""
    from eval.checks import InputError, fail, resume_checkpoint

    out = args.output_dir
    if args.eval_only:
        return args.resume or (get_last_checkpoint(str(out)) if args.auto_resume and out.is_dir() else None)
    data = ("dataset", "sample_rates", "sem_seg_data", "refer_seg_data", "vqa_data", "reason_seg_data")
    try:
        return resume_checkpoint(
            out,
            files={},
            settings={key: getattr(args, key) for key in data},
            checkpoint=args.resume or None,
            auto=args.auto_resume,
        )
    except InputError as e:
        raise fail(e) from None


def build_sources(args: SegTrainArgs) -> list:
    root = Path(args.dataset_dir)
    k = args.num_classes_per_sample
    builders = {
        "sem_seg": lambda: SemSegSource(root, args.sem_seg_data.split("||"), k),
        "refer_seg": lambda: ReferSegSource(root, args.refer_seg_data.split("||"), k),
        "vqa": lambda: VqaSource(root, args.vqa_data),
        "reason_seg": lambda: ReasonSegSource(root, args.reason_seg_data, k, args.explanatory),
    }
    unknown = [d for d in args.datasets() if d not in builders]
    if unknown:
        raise ValueError(f"unknown --dataset {unknown}; known: {list(builders)}")
    return [builders[d]() for d in args.datasets()]


def _local_path(path: str) -> str:
    """A local path is recorded absolute, so the checkpoint loads from any working directory."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def build_model(args: SegTrainArgs) -> tuple[SegLLaVA, object, list[int]]:
    """The base, `[SEG]` (and image start/end) tokens, SAM and the head; returns (model, processor, new token ids)."""
    dtype = DTYPES[args.precision]
    processor = load_processor(args.version, args.image_aspect_ratio)
    llava = LlavaForConditionalGeneration.from_pretrained(
        args.version, dtype=dtype, attn_implementation="sdpa"
    )
    llava.config.use_cache = False
    # Seeded first: where `[SEG]` is new (a real LLaVA base), its embedding row is sampled around the mean.
    torch.manual_seed(args.seed)
    new_ids = ensure_seg_tokens(processor.tokenizer, llava, args.use_mm_start_end)
    sam = load_sam_with_config(args.vision_pretrained, args.sam_config).to(dtype)
    if args.image_size not in (None, sam.config.vision_config.image_size):
        raise ValueError(
            f"--image_size {args.image_size} differs from the SAM's {sam.config.vision_config.image_size}"
        )
    out_dim = sam.config.prompt_encoder_config.hidden_size if args.out_dim is None else args.out_dim
    trained = (["mask_decoder"] if args.train_mask_decoder else []) + (
        ["vision_encoder"] if args.train_sam_encoder else []
    )
    config = SegConfig(
        base_model=_local_path(args.version),
        vision_pretrained=_local_path(args.vision_pretrained),
        sam_config=_local_path(args.sam_config) if args.sam_config else "",
        out_dim=out_dim,
        use_mm_start_end=args.use_mm_start_end,
        image_aspect_ratio=args.image_aspect_ratio,
        sam_trained=trained,
    )
    torch.manual_seed(args.seed)  # text_hidden_fcs' initialisation
    seg = build_seg_llava(llava, sam, processor.tokenizer, config, args.loss_weights())
    seg.text_hidden_fcs.to(dtype)
    return seg, processor, new_ids


def set_trainable(seg: SegLLaVA, args: SegTrainArgs, new_token_ids: list[int]) -> None:
    """LISA's split: LoRA on the LM's q/v, embeddings and lm_head, SAM's mask decoder and text_hidden_fcs."""
    from peft import LoraConfig, get_peft_model

    for p in seg.parameters():
        p.requires_grad_(False)
    targets = "|".join(re.escape(t) for t in args.lora_target_modules.split(","))
    token_kwargs = (
        {"modules_to_save": ["embed_tokens", "lm_head"]}
        if args.train_embeddings == "full"
        else {"trainable_token_indices": {"embed_tokens": new_token_ids, "lm_head": new_token_ids}}
    )
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        bias="none",
        target_modules=rf".*language_model.*\.({targets})",
        task_type="CAUSAL_LM",
        **token_kwargs,
    )
    seg.llava = get_peft_model(seg.llava, lora)
    for p in seg.text_hidden_fcs.parameters():
        p.requires_grad_(True)
    for part in seg.seg_config.sam_trained:
        for p in getattr(seg.visual_model, part).parameters():
            p.requires_grad_(True)


def load_checkpoint_weights(seg: SegLLaVA, directory: Path) -> None:
    """Weights `SegLLaVA.save_pretrained` wrote, into a model built and wrapped the same way."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from .model import HEADS_FILE

    set_peft_model_state_dict(seg.llava, load_file(str(directory / "adapter_model.safetensors")))
    seg.load_heads(directory / HEADS_FILE)


class EpochCallback(TrainerCallback):
    """Gives the dataset the epoch at each epoch start (before the loader forks workers): seeded draws."""

    def __init__(self, dataset: HybridDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class SegTrainer(Trainer):
    """The HF Trainer with SegLLaVA's checkpoint layout, LISA's validation and loss-part logging."""

    def __init__(
        self, *a, processor, run_config: dict, val_items=None, eval_modes=("teacher",), val_batch_size=1, **kw
    ):
        super().__init__(*a, **kw)
        self.processor = processor
        self.run_config = run_config
        self.val_items = val_items or []
        self.eval_modes = eval_modes
        self.val_batch_size = val_batch_size
        self.loss_part_sums: dict[str, float] = {}
        self.loss_part_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        for k in ("ce_loss", "bce_loss", "dice_loss"):
            self.loss_part_sums[k] = self.loss_part_sums.get(k, 0.0) + float(outputs[k].detach())
        self.loss_part_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also carry the mean CE / BCE / Dice since the last log (LISA logs the three)."""
        if "loss" in logs and self.loss_part_count:
            logs.update({k: v / self.loss_part_count for k, v in self.loss_part_sums.items()})
            self.loss_part_sums, self.loss_part_count = {}, 0
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        seg: SegLLaVA = self.accelerator.unwrap_model(self.model)
        was_training = seg.training
        seg.eval()
        metrics = evaluate_modes(
            seg, self.processor, self.val_items, self.eval_modes, batch_size=self.val_batch_size
        )
        seg.train(was_training)
        scalars = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.log(scalars)
        return scalars

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        seg: SegLLaVA = self.accelerator.unwrap_model(self.model)
        seg.save_pretrained(out, state_dict=state_dict)
        self.processor.save_pretrained(out)
        (out / TRAIN_CONFIG_FILE).write_text(json.dumps(self.run_config, indent=1))
        torch.save(self.args, out / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_checkpoint_weights(
            self.accelerator.unwrap_model(model or self.model), Path(resume_from_checkpoint)
        )

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """DeepSpeed's resume states hold the trained weights only: by default its `mp_rank_*_model_states.pt`
        holds the whole module (the frozen LLaVA and SAM, ~15 GB at 7B + SAM-H). The frozen weights come
        back from the base on resume (`SegLLaVA.load_state_dict`)."""
        engine = self.model_wrapped if self.is_deepspeed_enabled else None
        if engine is None or not hasattr(engine, "save_checkpoint"):
            return super()._save_optimizer_and_scheduler(output_dir)
        engine.save_checkpoint = functools.partial(engine.save_checkpoint, exclude_frozen_parameters=True)
        try:
            super()._save_optimizer_and_scheduler(output_dir)
        finally:
            del engine.save_checkpoint  # the bound method again


def training_arguments(args: SegTrainArgs) -> HfTrainingArguments:
    """LISA's schedule and checkpointing as TrainingArguments: an epoch is `steps_per_epoch` steps, and
    validation plus a checkpoint follow each epoch (or every `--save_steps`), keeping the best gIoU."""
    evaluate = not args.no_eval
    strategy = "steps" if args.save_steps else "epoch"
    return HfTrainingArguments(
        output_dir=str(args.output_dir),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accumulation_steps,
        learning_rate=args.lr,
        adam_beta1=args.beta1,
        adam_beta2=args.beta2,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=args.warmup_steps,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps > 0 else args.epochs * args.steps_per_epoch,
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
        logging_steps=args.print_freq,
        report_to=["tensorboard"],
        save_strategy=strategy,
        save_steps=args.save_steps or 500,  # read only under the "steps" strategy
        save_total_limit=1,
        eval_strategy=strategy if evaluate else "no",
        eval_steps=args.save_steps if evaluate and args.save_steps else None,
        metric_for_best_model="giou" if evaluate else None,
        greater_is_better=True if evaluate else None,
        activation_checkpointing=args.gradient_checkpointing,
        dataloader_num_workers=args.workers,
        remove_unused_columns=False,
        seed=args.seed,
        deepspeed=args.deepspeed or None,
        use_cpu=args.use_cpu,
    )


def remove_shm_buffer_at_exit() -> None:
    """DeepSpeed's CPU all-reduce maps a 69 MB file in /dev/shm per rank, named by address and port,
    and never removes it: every CPU run would leak one. Remove this rank's when the process exits."""
    addr, port, rank = (os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK"))
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"
    atexit.register(Path("/dev/shm", name).unlink, missing_ok=True)


def train(argv: list[str] | None = None) -> None:
    remove_shm_buffer_at_exit()
    (args,) = HfArgumentParser(SegTrainArgs).parse_args_into_dataclasses(args=argv)
    check_args(args)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    if args.vision_tower:
        logger.warning(
            "--vision-tower %s is ignored: the llava-hf base carries its own tower", args.vision_tower
        )
    # TensorBoard events go straight into the run directory, as LISA's do.
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(args.output_dir))
    check_seg_inputs(args)
    # The data is read before the model: a missing file shows up in seconds, not after a 7B load.
    modes = ("teacher", "generate") if args.eval_mode == "both" else (args.eval_mode,)
    sources, items = read_data(args)
    hf_args = training_arguments(args)  # first: it sets up the distributed environment DeepSpeed needs
    last = resume_point(args)
    from eval.logs import quiet_third_party

    quiet_third_party()  # DeepSpeed, imported by now, resets its logger's level on import
    seg, processor, new_ids = build_model(args)
    set_trainable(seg, args, new_ids)
    n_train = sum(p.numel() for p in seg.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d (SAM parts: %s)", n_train, seg.seg_config.sam_trained)
    logger.info("DeepSpeed config: %s", args.deepspeed or "none")

    run_config = {"args": asdict(args), "segllava": asdict(seg.seg_config)}
    out = args.output_dir
    if args.eval_only:
        if last:
            load_checkpoint_weights(seg, Path(last))
        seg.eval()
        metrics = evaluate_modes(seg, processor, items, modes, batch_size=args.val_batch_size)
        print(json.dumps({"checkpoint": last, **metrics}, indent=1))
        return

    world = int(os.environ.get("WORLD_SIZE", "1"))
    length = args.batch_size * args.grad_accumulation_steps * args.steps_per_epoch * world
    dataset = HybridDataset(
        sources,
        args.rates(),
        length,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        layout=seg.layout,
        seg_token_id=seg.seg_token_id,
        sam_image_size=seg.sam_image_size,
        max_length=text_token_limit(args.model_max_length),
        seed=args.seed,
    )
    trainer = SegTrainer(
        model=seg,
        args=hf_args,
        train_dataset=dataset,
        eval_dataset=items or None,  # read by our `evaluate`, which runs LISA's validation on them
        data_collator=SegCollator(processor.tokenizer.pad_token_id),
        processor=processor,
        run_config=run_config,
        val_items=items,
        eval_modes=modes,
        val_batch_size=args.val_batch_size,
        callbacks=[EpochCallback(dataset)],
    )
    if last:
        logger.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    trainer.save_state()
    trainer.save_model(str(out))
