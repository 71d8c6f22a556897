"""LLaVA-1.5 training on the llava-hf model: projector alignment, instruction tuning, LoRA.

Run through `scripts/v1_5/{pretrain,finetune,finetune_lora,finetune_cos}.sh`. `--roi_data_path`
(the Chain-of-Spot ROI JSON) switches the data to the two-turn ROI conversation (`cos_data.py`).
The HF Trainer does the work
(DeepSpeed ZeRO-2/3 via `--deepspeed`, gradient checkpointing, resume); the only customisation is
the learning rate of some parameters: the projector's, as in LLaVA's own trainer (`--mm_projector_lr`),
and, optionally, LoRA+'s faster rate for the LoRA B matrices (`--lora_plus_ratio`).
A run resumes from the last `checkpoint-*` in `--output_dir` automatically.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser, Trainer, TrainerCallback
from transformers.trainer import SCHEDULER_NAME

from .cos_data import ChainOfSpotDataset
from .data import (
    DataCollatorForSupervisedDataset,
    LazySupervisedDataset,
    ModalityLengthGroupedSampler,
    load_json_records,
)
from .model import (
    PROJECTOR,
    add_lora,
    freeze_for_stage,
    llava_processor,
    load_base,
    load_projector,
    save_projector,
)
from .roi import RoiConfig
from .wording import ROI_CONFIG_FILE, TRAIN_CONFIG_FILE

logger = logging.getLogger(__name__)
PROJECTOR_FILE = "mm_projector.safetensors"


@dataclass
class ModelArguments:
    model_name_or_path: str = "llava-hf/llava-1.5-7b-hf"
    version: str = field(default="v1", metadata={"help": "conversation template: v1 | vicuna_v1 | plain"})
    tune_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "projector alignment: train the projector only"}
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None,
        metadata={"help": "projector weights to start from (mm_projector.safetensors or LLaVA's .bin)"},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2"})


@dataclass
class DataArguments:
    data_path: str = "../playground/data/llava_v1_5_mix665k.json"
    image_folder: str = "../playground/data"
    image_aspect_ratio: str = field(
        default="pad", metadata={"help": "pad (LLaVA-1.5) | square (centre crop)"}
    )
    skip_bad_records: bool = field(
        default=False, metadata={"help": "count and report bad records instead of stopping"}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "tokenise every record, print the summary and exit"}
    )
    roi_data_path: str | None = field(
        default=None,
        metadata={"help": "Chain-of-Spot ROI JSON: when given, train the two-turn ROI conversation"},
    )
    roi_wording: str = field(
        default="where",
        metadata={"help": "ROI prompt: where (ours, train and test) | what (Chain-of-Spot's test prompt)"},
    )
    roi_region_only: bool = field(
        default=False,
        metadata={
            "help": "train the stage-1 turn alone (global image + question → ROI box); the agent asks "
            "the ROI adapter for the region only. Default: Chain-of-Spot's whole conversation"
        },
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = 2048
    mm_projector_lr: float | None = None
    lora_plus_ratio: float | None = field(
        default=None,
        metadata={
            "help": "LoRA+ (Hayou et al. 2024): the LoRA B matrices train at this multiple of the rate"
        },
    )
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    freeze_mm_mlp_adapter: bool = field(
        default=False,
        metadata={"help": "keep the base's projector frozen (with LoRA: out of the adapter)"},
    )
    bits: int = field(
        default=16,
        metadata={"help": "4 or 8: QLoRA (the language model's linear layers quantised; needs LoRA)"},
    )
    remove_unused_columns: bool = False
    group_by_modality_length: bool = field(
        default=False,
        metadata={"help": "LLaVA's sampler: each step's samples (all ranks) are all image or all text-only"},
    )


class LLaVATrainer(Trainer):
    """The HF Trainer with LLaVA's additions.

    - An optimizer group per learning rate: the projector's `mm_projector_lr` (LLaVA's) and, with
      `lora_plus_ratio`, the LoRA B matrices' ratio × the rate (LoRA+: B starts at zero and learns
      slowly at A's rate).
    - `group_by_modality_length`: LLaVA's sampler (one modality per step across ranks).
    - Zero images of text-only samples (`image_present` False) run through the tower and projector
      and enter the loss with weight 0, so every rank runs the same modules every step.
    - Checkpoints hold what trains: projector-only runs (`projector_only`) save `mm_projector.safetensors`
      instead of the whole model, and DeepSpeed's states leave out frozen weights (they come from the
      base on resume).
    """

    def __init__(self, *args, projector_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.projector_only = projector_only

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        return ModalityLengthGroupedSampler(
            dataset.modality_lengths,
            batch_size=self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.seed,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        present = inputs.pop("image_present", None)
        zero_images = None
        if present is not None and not bool(present.all()):
            pixels = inputs.pop("pixel_values")
            zero_images = pixels[~present]
            if bool(present.any()):
                inputs["pixel_values"] = pixels[present]
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if zero_images is None:
            return result
        features = (
            self.accelerator.unwrap_model(model)
            .get_image_features(pixel_values=zero_images, return_dict=True)
            .pooler_output
        )
        unused = sum(f.sum() for f in features) * 0.0
        if return_outputs:
            return result[0] + unused, result[1]
        return result + unused

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.projector_only:
            return super().save_model(output_dir, _internal_call)
        out = Path(output_dir or self.args.output_dir)
        if self.args.should_save:
            out.mkdir(parents=True, exist_ok=True)
        save_projector(self.model, out / PROJECTOR_FILE, write=self.args.should_save)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.is_deepspeed_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        # DeepSpeed's module states would hold every frozen weight too (the whole base for stage 1).
        self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        from accelerate.utils import DeepSpeedSchedulerWrapper

        if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        if not (self.is_deepspeed_enabled and resume_from_checkpoint):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        # The Trainer loads DeepSpeed's module states strictly unless the model is PEFT; ours leave the
        # frozen weights out, so load them leniently (the frozen ones are the base's, already loaded).
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        load_path, _ = self.model_wrapped.load_checkpoint(
            resume_from_checkpoint,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise ValueError(f"DeepSpeed could not resume from {resume_from_checkpoint}")
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        projector = Path(resume_from_checkpoint) / PROJECTOR_FILE
        if self.projector_only and projector.is_file():
            load_projector(self.model if model is None else model, projector)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def param_lr(self, name: str) -> float:
        if PROJECTOR in name and self.args.mm_projector_lr is not None:
            return self.args.mm_projector_lr
        if ".lora_B." in name and self.args.lora_plus_ratio is not None:
            return self.args.learning_rate * self.args.lora_plus_ratio
        return self.args.learning_rate

    def create_optimizer(self, model=None):
        custom = self.args.mm_projector_lr is not None or self.args.lora_plus_ratio is not None
        if self.optimizer is not None or not custom:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, bool], list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault((self.param_lr(name), name in decay), []).append(p)
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        param_groups = [
            {"params": params, "weight_decay": self.args.weight_decay if with_decay else 0.0, "lr": lr}
            for (lr, with_decay), params in groups.items()
        ]
        self.optimizer = optimizer_cls(param_groups, **kwargs)
        return self.optimizer


def save_configs(directory: Path, config: dict, roi_config: RoiConfig | None) -> None:
    """The run's typed configuration, and for a ROI adapter the prompt settings it is to be asked with
    (`roi_config.json`, what the answerers and the agent read)."""
    (directory / TRAIN_CONFIG_FILE).write_text(json.dumps(config, indent=1))
    if roi_config is not None:
        (directory / ROI_CONFIG_FILE).write_text(json.dumps(asdict(roi_config), indent=1))


class SaveConfigCallback(TrainerCallback):
    """Writes the run's configurations next to every checkpoint."""

    def __init__(self, config: dict, roi_config: RoiConfig | None = None):
        self.config = config
        self.roi_config = roi_config

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                save_configs(ckpt, self.config, self.roi_config)


class EpochCallback(TrainerCallback):
    """Gives the dataset the epoch number at each epoch start, before the loader forks its workers,
    so per-epoch random choices (Chain-of-Spot's question) are seeded and survive a resume."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))  # floor: a resume mid-epoch keeps its epoch


def run_config(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> dict:
    return {"model": asdict(model_args), "data": asdict(data_args), "training": training_args.to_dict()}


def build_dataset(cls, model_args, data_args, training_args, processor, model_config, **extra):
    return cls(
        data_args.data_path,
        data_args.image_folder,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        model_config=model_config,
        template=model_args.version,
        max_length=training_args.model_max_length,
        skip_bad_records=data_args.skip_bad_records,
        **extra,
    )


def dataset_choice(dataset_cls, dataset_kwargs, data_args: DataArguments, training_args) -> tuple:
    """The dataset class and its extra arguments: `--roi_data_path` selects Chain-of-Spot's."""
    if not data_args.roi_data_path:
        return dataset_cls, dict(dataset_kwargs or {})
    if dataset_cls is not LazySupervisedDataset:
        raise ValueError(f"--roi_data_path selects ChainOfSpotDataset; got dataset_cls={dataset_cls}")
    kwargs = {
        "roi_data_path": data_args.roi_data_path,
        "wording": data_args.roi_wording,
        "region_only": data_args.roi_region_only,
        "seed": training_args.seed,
        **(dataset_kwargs or {}),
    }
    return ChainOfSpotDataset, kwargs


def resume_point(output_dir: str, data_args: DataArguments) -> str | None:
    """The last checkpoint in `output_dir`, if it was trained on this data (else a one-line exit)."""
    from eval.checks import InputError, fail, resume_checkpoint

    try:
        return resume_checkpoint(
            output_dir,
            files={"data_path": data_args.data_path, "roi_data_path": data_args.roi_data_path},
            settings={
                "image_aspect_ratio": data_args.image_aspect_ratio,
                "roi_wording": data_args.roi_wording,
                "roi_region_only": data_args.roi_region_only,
            },
        )
    except InputError as e:
        raise fail(e) from None


def load_processor(model_args: ModelArguments, data_args: DataArguments):
    return llava_processor(model_args.model_name_or_path, data_args.image_aspect_ratio)


def processed_image_size(image_processor) -> tuple[int, int]:
    """(height, width) of the pixel values the processor makes: the crop it ends with."""
    crop = dict(image_processor.crop_size)
    return int(crop["height"]), int(crop["width"])


def remove_shm_buffer_at_exit() -> None:
    """DeepSpeed's CPU all-reduce maps a 69 MB file in /dev/shm per rank, named by address and port,
    and never removes it: every CPU run would leak one. Remove this rank's when the process exits."""
    addr, port, rank = (os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK"))
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"
    atexit.register(Path("/dev/shm", name).unlink, missing_ok=True)


def check_train_inputs(model_args: ModelArguments, data_args: DataArguments) -> None:
    """Every input checked in seconds, before any model loads; a bad one exits with one line naming it:
    the base (a complete checkpoint, or a hub id that can be fetched), the data and ROI files, the image
    folder and every record's image, the projector to start from."""
    from eval.checks import InputError, check_checkpoint, check_dir, check_file, check_record_images, fail

    try:
        check_checkpoint(model_args.model_name_or_path, "--model_name_or_path")
        check_file(data_args.data_path, "--data_path")
        check_dir(data_args.image_folder, "--image_folder")
        if data_args.roi_data_path:
            check_file(data_args.roi_data_path, "--roi_data_path")
        if model_args.pretrain_mm_mlp_adapter:
            check_checkpoint(model_args.pretrain_mm_mlp_adapter, "--pretrain_mm_mlp_adapter")
        records = load_json_records(data_args.data_path)
        check_record_images(
            records,
            data_args.image_folder,
            data_args.data_path,
            strict=not (data_args.skip_bad_records or data_args.dry_run),
        )
    except (InputError, ValueError, FileNotFoundError) as e:
        raise fail(e) from None


def dry_run(dataset) -> None:
    """Build every example (tokens and images) without model weights; report every bad record; exit 1 if any."""
    from eval.checks import scan_records

    report = {**scan_records(len(dataset), dataset.example, what=str(dataset.data_path)), **dataset.summary()}
    print(json.dumps(report))
    if report["bad_records"]:
        raise SystemExit(1)


def train(argv: list[str] | None = None, dataset_cls=LazySupervisedDataset, dataset_kwargs=None) -> None:
    from eval.checks import parse_training_args

    remove_shm_buffer_at_exit()
    # Inputs first: TrainingArguments sets up DeepSpeed (on a CPU it may compile an op for minutes).
    if not {"-h", "--help"} & set(sys.argv[1:] if argv is None else argv):
        model_args, data_args, _ = HfArgumentParser(
            (ModelArguments, DataArguments), add_help=False
        ).parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        check_train_inputs(model_args, data_args)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parse_training_args(parser, argv)
    from eval.logs import quiet_third_party

    quiet_third_party()  # DeepSpeed, imported by now, resets its logger's level on import
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    if training_args.bits in (4, 8) and not (training_args.lora_enable or model_args.tune_mm_mlp_adapter):
        raise ValueError(
            f"--bits {training_args.bits} quantises the language model: it needs --lora_enable True"
        )
    processor = load_processor(model_args, data_args)
    if (
        data_args.dry_run
    ):  # the model's config, not its weights: the dataset needs only its token ids and sizes
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(model_args.model_name_or_path)
        dataset_cls, dataset_kwargs = dataset_choice(dataset_cls, dataset_kwargs, data_args, training_args)
        return dry_run(
            build_dataset(
                dataset_cls, model_args, data_args, training_args, processor, model_config, **dataset_kwargs
            )
        )
    last = resume_point(training_args.output_dir, data_args)
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    # Seeded before the model: the LoRA matrices are drawn when they are added, before the Trainer seeds.
    transformers.set_seed(training_args.seed)
    model = load_base(
        model_args.model_name_or_path,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        bits=training_args.bits,
    )
    model.config.use_cache = False
    dataset_cls, dataset_kwargs = dataset_choice(dataset_cls, dataset_kwargs, data_args, training_args)
    if data_args.roi_data_path:
        # Recorded in the model's config.json too, so a full fine-tune or a merged copy is asked as trained.
        model.config.roi_wording = data_args.roi_wording
    dataset = build_dataset(
        dataset_cls, model_args, data_args, training_args, processor, model.config, **dataset_kwargs
    )
    if model_args.pretrain_mm_mlp_adapter:
        load_projector(model, model_args.pretrain_mm_mlp_adapter)
    freeze_for_stage(
        model,
        projector_only=model_args.tune_mm_mlp_adapter,
        freeze_projector=training_args.freeze_mm_mlp_adapter,
    )
    if training_args.activation_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        model = add_lora(
            model,
            r=training_args.lora_r,
            alpha=training_args.lora_alpha,
            dropout=training_args.lora_dropout,
            freeze_projector=training_args.freeze_mm_mlp_adapter,
            activation_checkpointing=training_args.activation_checkpointing,
        )

    config = run_config(model_args, data_args, training_args)
    roi_config = (
        RoiConfig(
            wording=data_args.roi_wording,
            template=model_args.version,
            region_only=data_args.roi_region_only,
        )
        if data_args.roi_data_path
        else None
    )
    trainer = LLaVATrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorForSupervisedDataset(
            processor.tokenizer.pad_token_id, image_size=processed_image_size(processor.image_processor)
        ),
        callbacks=[SaveConfigCallback(config, roi_config)]
        + ([EpochCallback(dataset)] if hasattr(dataset, "set_epoch") else []),
        projector_only=model_args.tune_mm_mlp_adapter,
    )
    if last:
        logger.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    trainer.save_state()

    out = Path(training_args.output_dir)
    trainer.save_model(str(out))  # projector-only runs: mm_projector.safetensors alone
    if trainer.is_world_process_zero():
        processor.save_pretrained(out)
        save_configs(out, config, roi_config)
        summary = dataset.summary()
        (out / "data_summary.json").write_text(json.dumps(summary))
        print(f"data summary: {json.dumps(summary)}", file=sys.stderr)


if __name__ == "__main__":
    train()
