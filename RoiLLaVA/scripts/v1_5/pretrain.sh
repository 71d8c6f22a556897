#!/bin/bash
# LLaVA-1.5 stage 1, projector alignment: plain template on LCS-558K captions, projector only.
# Defaults are LLaVA-1.5's 8-GPU recipe; every setting below can be overridden from the environment,
# e.g. the toy world: MODEL=../playground/tiny_base DATA_PATH=... IMAGE_FOLDER=... BF16=False.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/launch.sh
DS_CONFIG=${DS_CONFIG-./scripts/zero2.json}  # set but empty: no DeepSpeed (with LAUNCHER=python)

launch train.py \
    ${DS_CONFIG:+--deepspeed "$DS_CONFIG"} \
    --model_name_or_path "${MODEL:-llava-hf/llava-1.5-7b-hf}" \
    --version plain \
    --data_path "${DATA_PATH:-../playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}" \
    --image_folder "${IMAGE_FOLDER:-../playground/data/LLaVA-Pretrain/images}" \
    --tune_mm_mlp_adapter True \
    --image_aspect_ratio pad \
    --output_dir "${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain}" \
    --per_device_train_batch_size "${BATCH:-32}" \
    --save_steps "${SAVE_STEPS:-24000}" \
    --learning_rate "${LR:-1e-3}" \
    "${COMMON_ARGS[@]}" \
    ${EXTRA_ARGS:-}
