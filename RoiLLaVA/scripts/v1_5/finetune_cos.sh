#!/bin/bash
# Chain-of-Spot's own recipe: full fine-tuning (language model + projector, vision tower frozen) of
# LLaVA-1.5 on LLaVA-665K rewritten into the two-turn ROI conversation. ZeRO-3, 1 epoch, bs 16/GPU,
# lr 2e-5, cosine, warmup 0.03, no weight decay, max length 2048, gradient checkpointing.
# Chain-of-Spot starts from llava-v1.5-{7,13}b and reloads that checkpoint's own projector; the
# llava-hf base already holds it, so PROJECTOR stays empty unless you start from elsewhere.
# Overrides from the environment as in finetune.sh, plus ROI_DATA and ROI_WORDING (where | what).
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
    --output_dir "${OUTPUT_DIR:-./checkpoints/cos-v1.5-7b}" \
    --per_device_train_batch_size "${BATCH:-16}" \
    --save_steps "${SAVE_STEPS:-50000}" \
    --learning_rate "${LR:-2e-5}" \
    "${COMMON_ARGS[@]}" \
    ${EXTRA_ARGS:-}
