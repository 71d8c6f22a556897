"""Switch-adapter training on a llava-hf base: projector alignment, LoRA (or full) instruction tuning.

Run through `pretrain.sh` / `finetune_lora.sh`. The HF Trainer does the work (DeepSpeed ZeRO-2/3 via
`--deepspeed`, activation checkpointing, resume); customised are a separate learning rate for both
projectors (`--mm_projector_lr`) and what a checkpoint holds (`SwiLLaVA.save_pretrained`: projector
files, or a peft adapter that includes both projectors, always with `swillava_config.json`). A run
resumes from the last `checkpoint-*` in `--output_dir` automatically.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, HfArgumentParser, LlavaForConditionalGeneration, Trainer
from transformers.integrations import is_deepspeed_zero3_enabled

from .data import SealCollator, SealDataset, data_files, load_json_records
from .model import (
    LORA_MODULES,
    MLP_PROJECTOR,
    OBJECT_PROJECTOR,
    ObjectProjectorConfig,
    SwiConfig,
    SwiLLaVA,
    add_lora,
    build_switch,
    llava_processor,
    load_mlp_projector,
    load_object_projector,
    load_trained_weights,
    quantization_config,
    set_trainable,
)

logger = logging.getLogger(__name__)
TRAIN_CONFIG_FILE = "swillava_train_config.json"


@dataclass
class ModelArguments:
    model_name_or_path: str = "llava-hf/llava-1.5-7b-hf"
    version: str = field(default="v1", metadata={"help": "conversation template: v1 | vicuna_v1 | plain"})
    tune_mm_mlp_adapter: bool = field(
        default=False,
        metadata={"help": "projector alignment: train the llava-hf MLP projector (long image rows)"},
    )
    tune_object_projector: bool = field(
        default=False,
        metadata={"help": "projector alignment: train the perceiver object projector (short rows)"},
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None,
        metadata={"help": "MLP projector to start from (mm_projector.safetensors or LLaVA's .bin)"},
    )
    pretrain_object_projector: str | None = field(
        default=None,
        metadata={
            "help": "object projector to start from (ours, SEAL's checkpoint or its perceiver mm_projector.bin)"
        },
    )
    object_projector_depth: int = 6
    object_projector_heads: int = 16
    object_projector_dim_head: int = 96
    object_projector_num_latents: int = 32
    object_projector_ff_mult: int = 4
    object_slots: int = field(default=3, metadata={"help": "object slots per sample (SEAL: 3)"})
    patch_scale: float = field(default=1.2, metadata={"help": "context around an object crop (SEAL: 1.2)"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2"})

    @property
    def projector_only(self) -> bool:
        return self.tune_mm_mlp_adapter or self.tune_object_projector


@dataclass
class DataArguments:
    data_path: str = field(
        default="../playground/data/seal_vqa_data", metadata={"help": "SEAL data folder or one JSON file"}
    )
    image_folder: str = "../playground/data"
    image_aspect_ratio: str = field(
        default="pad", metadata={"help": "pad (the only layout SEAL's boxes support)"}
    )
    skip_bad_records: bool = field(
        default=False, metadata={"help": "count and report bad records instead of stopping"}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "tokenise every record, print the summary and exit"}
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = 2048
    mm_projector_lr: float | None = field(
        default=None, metadata={"help": "learning rate of both projectors (default: --learning_rate)"}
    )
    lora_enable: bool = False
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_modules: str = field(
        default=",".join(LORA_MODULES),
        metadata={"help": "comma-separated language-model linear layers that get LoRA (default: all)"},
    )
    freeze_mm_mlp_adapter: bool = field(
        default=False,
        metadata={"help": "LoRA stage: keep the base's MLP projector frozen (and out of the adapter)"},
    )
    remove_unused_columns: bool = False
    bits: int = field(
        default=16,
        metadata={"help": "16, or 4/8: QLoRA, the language model's linears quantised (bitsandbytes)"},
    )
    quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 | fp4"})
    double_quant: bool = field(default=True, metadata={"help": "4-bit: quantise the quantisation constants"})

    def __post_init__(self):
        # LLaVA's recipe passes --tf32 True; without an Ampere GPU (a CPU run, an older card) transformers
        # would refuse it, so it is dropped with a warning rather than stopping the run.
        if self.tf32 and not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)):
            logger.warning("--tf32 True ignored: no Ampere or newer GPU")
            self.tf32 = None
        super().__post_init__()


def is_projector_param(name: str) -> bool:
    return f"{MLP_PROJECTOR}." in name or f"{OBJECT_PROJECTOR}." in name


class SwiTrainer(Trainer):
    """The HF Trainer with a projector learning rate and SwiLLaVA's checkpoint layout."""

    def __init__(self, *args, processor, run_config: dict, projectors_only: tuple[str, ...], **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = processor
        self.run_config = run_config
        self.projectors_only = projectors_only

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.args.mm_projector_lr is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault((is_projector_param(name), name in decay), []).append(p)
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(
            [
                {
                    "params": params,
                    "weight_decay": self.args.weight_decay if with_decay else 0.0,
                    **({"lr": self.args.mm_projector_lr} if projector else {}),
                }
                for (projector, with_decay), params in groups.items()
            ],
            **kwargs,
        )
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        model: SwiLLaVA = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(out, state_dict=state_dict, projectors_only=self.projectors_only)
        self.processor.save_pretrained(out)
        (out / TRAIN_CONFIG_FILE).write_text(json.dumps(self.run_config, indent=1))
        torch.save(self.args, out / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_trained_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """DeepSpeed's resume states hold the trained weights only: by default its `mp_rank_*_model_states.pt`
        holds the whole module (the frozen 7B included, ~13 GB) although only projectors or LoRA train.
        The frozen weights come back from the base on resume (`SwiLLaVA.load_state_dict`)."""
        engine = self.model_wrapped if self.is_deepspeed_enabled else None
        if engine is None or not hasattr(engine, "save_checkpoint"):
            return super()._save_optimizer_and_scheduler(output_dir)
        engine.save_checkpoint = functools.partial(engine.save_checkpoint, exclude_frozen_parameters=True)
        try:
            super()._save_optimizer_and_scheduler(output_dir)
        finally:
            del engine.save_checkpoint  # the bound method again


def load_processor(model_args: ModelArguments, data_args: DataArguments):
    if data_args.image_aspect_ratio != "pad":
        raise ValueError(
            f"--image_aspect_ratio {data_args.image_aspect_ratio!r}: only 'pad' is supported (object locations "
            "are normalised on the padded square)"
        )
    return llava_processor(model_args.model_name_or_path, "pad")


def swi_config(model_args: ModelArguments) -> SwiConfig:
    base = model_args.model_name_or_path
    # Record a local base as an absolute path: the checkpoint must load from any working directory.
    base = str(Path(base).resolve()) if Path(base).exists() else base
    return SwiConfig(
        base_model=base,
        object_projector=ObjectProjectorConfig(
            depth=model_args.object_projector_depth,
            heads=model_args.object_projector_heads,
            dim_head=model_args.object_projector_dim_head,
            num_latents=model_args.object_projector_num_latents,
            ff_mult=model_args.object_projector_ff_mult,
        ),
        object_slots=model_args.object_slots,
        patch_scale=model_args.patch_scale,
        template="v1" if model_args.version == "plain" else model_args.version,
    )


def image_features_mode(model_args: ModelArguments) -> str:
    """Projector alignment shows the image through the projector(s) being trained."""
    if model_args.tune_mm_mlp_adapter and model_args.tune_object_projector:
        return "alternate"
    if model_args.tune_object_projector:
        return "short"
    if model_args.tune_mm_mlp_adapter:
        return "long"
    return "rule"


def remove_shm_buffer_at_exit() -> None:
    """DeepSpeed's CPU all-reduce maps a 69 MB file in /dev/shm per rank, named by address and port,
    and never removes it: every CPU run would leak one. Remove this rank's when the process exits."""
    addr, port, rank = (os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK"))
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"
    atexit.register(Path("/dev/shm", name).unlink, missing_ok=True)


def check_train_inputs(model_args: ModelArguments, data_args: DataArguments) -> None:
    """Every input checked in seconds, before any model loads; a bad one exits with one line naming it:
    the base (a complete checkpoint, or a hub id that can be fetched), the data files, the image folder
    and every record's image, the projectors to start from."""
    from eval.checks import InputError, check_checkpoint, check_dir, check_record_images, fail

    try:
        check_checkpoint(model_args.model_name_or_path, "--model_name_or_path")
        files = data_files(data_args.data_path)
        check_dir(data_args.image_folder, "--image_folder")
        for flag in ("pretrain_mm_mlp_adapter", "pretrain_object_projector"):
            if getattr(model_args, flag):
                check_checkpoint(getattr(model_args, flag), f"--{flag}")
        for f in files:
            check_record_images(
                load_json_records(f),
                data_args.image_folder,
                f,
                strict=not (data_args.skip_bad_records or data_args.dry_run),
            )
    except (InputError, ValueError, FileNotFoundError) as e:
        raise fail(e) from None


def dry_run(dataset) -> None:
    """Build every example (tokens, images, object crops) without model weights; report every bad
    record; exit 1 if any."""
    from eval.checks import scan_records

    report = {**scan_records(len(dataset), dataset.example, what="records"), **dataset.summary()}
    print(json.dumps(report))
    if report["bad_records"]:
        raise SystemExit(1)


def resume_point(output_dir: str, data_args: DataArguments) -> str | None:
    """The last checkpoint in `output_dir`, if it was trained on this data (else a one-line exit)."""
    from eval.checks import InputError, fail, resume_checkpoint

    try:
        return resume_checkpoint(
            output_dir,
            files={"data_path": data_args.data_path},
            settings={"image_aspect_ratio": data_args.image_aspect_ratio},
        )
    except InputError as e:
        raise fail(e) from None


def train(argv: list[str] | None = None) -> None:
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
    transformers.set_seed(training_args.seed)  # the object projector's initialisation
    processor = load_processor(model_args, data_args)
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    quantization = None
    if training_args.bits != 16:
        if not training_args.lora_enable or model_args.projector_only:
            raise ValueError(
                "--bits 4/8 quantises the frozen language model under LoRA: pass --lora_enable True"
            )
        if is_deepspeed_zero3_enabled():
            raise ValueError("--bits 4/8 does not run under ZeRO-3: use scripts/zero2.json or no DeepSpeed")
        quantization = quantization_config(
            training_args.bits, dtype, training_args.quant_type, training_args.double_quant
        )
    last = None if data_args.dry_run else resume_point(training_args.output_dir, data_args)
    if data_args.dry_run:  # the model's shapes on the meta device, no weights: the dataset needs its layout
        with torch.device("meta"):
            llava = LlavaForConditionalGeneration(AutoConfig.from_pretrained(model_args.model_name_or_path))
    else:
        llava = LlavaForConditionalGeneration.from_pretrained(
            model_args.model_name_or_path,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            quantization_config=quantization,
        )
    llava.config.use_cache = False
    config = swi_config(model_args)
    model = build_switch(llava, processor.tokenizer, config)
    dataset = SealDataset(
        data_args.data_path,
        data_args.image_folder,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        layout=model.token_layout(),
        template=model_args.version,
        max_length=training_args.model_max_length,
        object_slots=config.object_slots,
        patch_scale=config.patch_scale,
        image_features=image_features_mode(model_args),
        skip_bad_records=data_args.skip_bad_records,
    )
    if data_args.dry_run:
        return dry_run(dataset)
    if model_args.pretrain_mm_mlp_adapter:
        load_mlp_projector(model, model_args.pretrain_mm_mlp_adapter)
    if model_args.pretrain_object_projector:
        load_object_projector(model, model_args.pretrain_object_projector)
    elif not model_args.tune_object_projector:
        logger.warning("no --pretrain_object_projector: the object projector starts from random weights")

    projectors_only: tuple[str, ...] = ()
    if model_args.projector_only:
        projectors_only = tuple(
            name
            for name, on in (
                (MLP_PROJECTOR, model_args.tune_mm_mlp_adapter),
                (OBJECT_PROJECTOR, model_args.tune_object_projector),
            )
            if on
        )
        set_trainable(
            model,
            language_model=False,
            mlp_projector=model_args.tune_mm_mlp_adapter,
            object_projector=model_args.tune_object_projector,
        )
    else:
        set_trainable(
            model,
            language_model=not training_args.lora_enable,
            mlp_projector=not training_args.freeze_mm_mlp_adapter,
            object_projector=True,
        )
        if training_args.lora_enable:
            if model_args.pretrain_mm_mlp_adapter and training_args.freeze_mm_mlp_adapter:
                raise ValueError(
                    "--pretrain_mm_mlp_adapter with --freeze_mm_mlp_adapter True: the adapter would not hold the "
                    "loaded MLP projector (it shares the base's); pass --freeze_mm_mlp_adapter False"
                )
            add_lora(
                model,
                r=training_args.lora_r,
                alpha=training_args.lora_alpha,
                dropout=training_args.lora_dropout,
                freeze_mlp_projector=training_args.freeze_mm_mlp_adapter,
                modules=tuple(m.strip() for m in training_args.lora_modules.split(",") if m.strip()),
            )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    logger.info(
        "trainable: %d tensors, %d parameters (%d in projectors)",
        len(trainable),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and is_projector_param(n)),
    )

    run_config = {
        "model": asdict(model_args),
        "data": asdict(data_args),
        "training": training_args.to_dict(),
        "swillava": asdict(config),
    }
    trainer = SwiTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=SealCollator(processor.tokenizer.pad_token_id),
        processor=processor,
        run_config=run_config,
        projectors_only=projectors_only,
    )
    out = Path(training_args.output_dir)
    if last:
        logger.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    trainer.save_state()
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        summary = dataset.summary()
        (out / "data_summary.json").write_text(json.dumps(summary))
        print(f"data summary: {json.dumps(summary)}", file=sys.stderr)


if __name__ == "__main__":
    train()
