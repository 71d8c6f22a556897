#!/bin/bash
# Chain-of-Spot ROI adapter: LoRA (r128/α256) on every language-model linear layer, on LLaVA-665K
# rewritten into the two-turn ROI conversation with the Chain-of-Spot ROI JSON (ROI_DATA). The adapter
# shares the base's projector (FREEZE_PROJECTOR=True, the default: the agent holds one projector);
# FREEZE_PROJECTOR=False trains a projector copy at MM_PROJECTOR_LR and saves it with the adapter.
# QLoRA: DS_CONFIG=./scripts/zero2.json EXTRA_ARGS="--bits 4" (bitsandbytes does not work with ZeRO-3).
# Defaults are the real 8-GPU setting; override from the environment as in finetune.sh, e.g. the toy world:
#   MODEL=<system-1 checkpoint> DATA_PATH=../playground/data/toy/llava_toy_instruct.json \
#   IMAGE_FOLDER=../playground/data/toy/images ROI_DATA=../playground/data/toy/chain-of-spot.json BF16=False
# ROI_WORDING: the ROI prompt, "where" (default, used at test time too) or "what".
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
    --roi_data_path "${ROI_DATA:-../playground/data/chain-of-spot.json}" \
    --roi_wording "${ROI_WORDING:-where}" \
    --image_aspect_ratio pad \
    --group_by_modality_length "${GROUP_BY_MODALITY:-True}" \
    --lora_enable True \
    --lora_r "${LORA_R:-128}" \
    --lora_alpha "${LORA_ALPHA:-256}" \
    --freeze_mm_mlp_adapter "${FREEZE_PROJECTOR:-True}" \
    --mm_projector_lr "${MM_PROJECTOR_LR:-2e-5}" \
    --output_dir "${OUTPUT_DIR:-./checkpoints/cos-v1.5-7b-lora}" \
    --per_device_train_batch_size "${BATCH:-16}" \
    --save_steps "${SAVE_STEPS:-50000}" \
    --learning_rate "${LR:-2e-4}" \
    "${COMMON_ARGS[@]}" \
    ${EXTRA_ARGS:-}
