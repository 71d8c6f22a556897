#!/bin/sh
# Switch adapter, stage 2: LoRA (r 128, alpha 256, dropout 0.05) on every linear layer of the language
# model; the perceiver object projector trains fully at MM_PROJECTOR_LR (--mm_projector_lr) and is saved
# inside the adapter (peft modules_to_save), so the output directory is self-contained on top of its base.
# The llava-hf MLP projector is the base's, shared and frozen (FREEZE_MM_MLP_ADAPTER=True, the default
# unless PROJECTOR is given): Sys2-LLaVA's run trains no projector at all, and a 21M copy per adapter
# would put the agent over its memory budget. FREEZE_MM_MLP_ADAPTER=False trains a copy of it too.
# Defaults are FaST's recipe: llava-hf/llava-1.5-7b-hf, SEAL's data
# folder (craigwu/seal_vqa_data) in ../playground/data/seal_vqa_data with its images (coco2014/,
# coco2017/, gqa/) under ../playground/data, 2 epochs, batch 16, lr 2e-5, ZeRO-3, bf16, tf32 (on Ampere+).
# OBJECT_PROJECTOR: pretrain.sh's mm_projector_object.safetensors (default: pretrain.sh's default output),
# SEAL's perceiver mm_projector.bin, or empty for a random start. PROJECTOR: an MLP projector to start from.
# Every setting can be overridden from the environment (see pretrain.sh), e.g. the toy world:
#   MODEL=../playground/demo/checkpoints/system1 DATA_PATH=../playground/data/toy/seal \
#   IMAGE_FOLDER=../playground/data/toy/images OBJECT_PROJECTOR=./checkpoints/toy-pretrain/mm_projector_object.safetensors \
#   BF16=False sh finetune_lora.sh
set -eu
cd "$(dirname "$0")"
. ./scripts/launch.sh

DS_CONFIG=${DS_CONFIG-./scripts/zero3.json}  # set but empty: no DeepSpeed (with LAUNCHER=python)
OBJECT_PROJECTOR=${OBJECT_PROJECTOR-./checkpoints/swillava-v1.5-7b-pretrain/mm_projector_object.safetensors}
PROJECTOR=${PROJECTOR:-}
# Share the base's MLP projector (no 21M copy per adapter); an MLP projector to start from must train.
FREEZE_MM_MLP_ADAPTER=${FREEZE_MM_MLP_ADAPTER:-$([ -n "$PROJECTOR" ] && echo False || echo True)}

launch train.py \
    ${DS_CONFIG:+--deepspeed "$DS_CONFIG"} \
    --model_name_or_path "${MODEL:-llava-hf/llava-1.5-7b-hf}" \
    ${OBJECT_PROJECTOR:+--pretrain_object_projector "$OBJECT_PROJECTOR"} \
    ${PROJECTOR:+--pretrain_mm_mlp_adapter "$PROJECTOR"} \
    --version "${VERSION:-v1}" \
    --data_path "${DATA_PATH:-../playground/data/seal_vqa_data}" \
    --image_folder "${IMAGE_FOLDER:-../playground/data}" \
    --lora_enable True \
    --lora_r "${LORA_R:-128}" \
    --lora_alpha "${LORA_ALPHA:-256}" \
    --mm_projector_lr "${MM_PROJECTOR_LR:-2e-5}" \
    --freeze_mm_mlp_adapter "$FREEZE_MM_MLP_ADAPTER" \
    --bf16 "${BF16:-True}" \
    --output_dir "${OUTPUT_DIR:-./checkpoints/swi-llava-v1.5-7b-lora}" \
    --num_train_epochs "${EPOCHS:-2}" \
    --max_steps "${MAX_STEPS:--1}" \
    --per_device_train_batch_size "${BATCH:-16}" \
    --gradient_accumulation_steps "${GRAD_ACC:-1}" \
    --save_strategy steps \
    --save_steps "${SAVE_STEPS:-5000}" \
    --save_total_limit 1 \
    --learning_rate "${LR:-2e-5}" \
    --weight_decay 0. \
    --warmup_steps "${WARMUP:-0.03}" \
    --lr_scheduler_type cosine \
    --logging_steps "${LOG_STEPS:-1}" \
    --model_max_length "${MAX_LEN:-2048}" \
    --tf32 "${TF32:-True}" \
    --max_grad_norm "${MAX_GRAD_NORM:-0}" \
    --activation_checkpointing "${GRAD_CKPT:-True}" \
    --dataloader_num_workers "${WORKERS:-4}" \
    --seed "${SEED:-42}" \
    --report_to "${REPORT_TO:-none}" \
    ${EXTRA_ARGS:-}
