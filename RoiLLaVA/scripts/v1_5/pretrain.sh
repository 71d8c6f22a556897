#!/bin/bash
# LLaVA-1.5 stage 1, projector alignment: plain template on LCS-558K captions, projector only.
# Defaults are LLaVA-1.5's 8-GPU recipe; every setting below can be overridden from the environment,
# e.g. the toy world: MODEL=../playground/tiny_base DATA_PATH=... IMAGE_FOLDER=... BF16=False.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/launch.sh

launch train.py \
    --deepspeed "${DS_CONFIG:-./scripts/zero2.json}" \
    --model_name_or_path "${MODEL:-llava-hf/llava-1.5-7b-hf}" \
    --version plain \
    --data_path "${DATA_PATH:-../playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}" \
    --image_folder "${IMAGE_FOLDER:-../playground/data/LLaVA-Pretrain/images}" \
    --tune_mm_mlp_adapter True \
    --image_aspect_ratio pad \
    --bf16 "${BF16:-True}" \
    --output_dir "${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain}" \
    --num_train_epochs "${EPOCHS:-1}" \
    --max_steps "${MAX_STEPS:--1}" \
    --per_device_train_batch_size "${BATCH:-32}" \
    --gradient_accumulation_steps "${GRAD_ACC:-1}" \
    --save_strategy steps \
    --save_steps "${SAVE_STEPS:-24000}" \
    --save_total_limit 1 \
    --learning_rate "${LR:-1e-3}" \
    --weight_decay 0. \
    --warmup_steps 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps "${LOG_STEPS:-1}" \
    --model_max_length "${MAX_LEN:-2048}" \
    --activation_checkpointing "${GRAD_CKPT:-True}" \
    --dataloader_num_workers "${WORKERS:-4}" \
    --seed "${SEED:-42}" \
    --report_to "${REPORT_TO:-none}" \
    ${EXTRA_ARGS:-}
