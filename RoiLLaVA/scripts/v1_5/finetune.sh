#!/bin/bash
# LLaVA-1.5 stage 2, visual instruction tuning: full language model + projector (vision tower frozen).
# Defaults are LLaVA-1.5's 8-GPU recipe; override any setting from the environment (see pretrain.sh).
# PROJECTOR: the stage-1 mm_projector to start from (leave empty when the base already has one).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/launch.sh
DS_CONFIG=${DS_CONFIG-./scripts/zero3.json}  # set but empty: no DeepSpeed (with LAUNCHER=python)

launch train.py \
    ${DS_CONFIG:+--deepspeed "$DS_CONFIG"} \
    --model_name_or_path "${MODEL:-llava-hf/llava-1.5-7b-hf}" \
    ${PROJECTOR:+--pretrain_mm_mlp_adapter "$PROJECTOR"} \
    --version "${VERSION:-v1}" \
    --data_path "${DATA_PATH:-../playground/data/llava_v1_5_mix665k.json}" \
    --image_folder "${IMAGE_FOLDER:-../playground/data}" \
    --image_aspect_ratio pad \
    --group_by_modality_length "${GROUP_BY_MODALITY:-True}" \
    --output_dir "${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b}" \
    --per_device_train_batch_size "${BATCH:-16}" \
    --save_steps "${SAVE_STEPS:-50000}" \
    --learning_rate "${LR:-2e-5}" \
    "${COMMON_ARGS[@]}" \
    ${EXTRA_ARGS:-}
