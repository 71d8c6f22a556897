#!/bin/bash
# LLaVA-1.5 stage 1, projector alignment: plain template on LCS-558K captions, projector only, images
# resized and centre-cropped (LLaVA's default `square`; IMAGE_ASPECT_RATIO=pad pads instead).
# MODEL: a base that starts where LLaVA starts, Vicuna-7B-v1.5 + CLIP ViT-L/14-336 + a fresh projector,
# built once with
#   python -m roillava.build_base --lm lmsys/vicuna-7b-v1.5 \
#       --vision-tower openai/clip-vit-large-patch14-336 --out ./checkpoints/llava-v1.5-7b-base
# The checkpoint holds mm_projector.safetensors only (the projector is all that trains).
# Defaults are LLaVA-1.5's 8-GPU recipe; every setting below can be overridden from the environment,
# e.g. the toy world: MODEL=../playground/tiny_base DATA_PATH=... IMAGE_FOLDER=... BF16=False.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/launch.sh
DS_CONFIG=${DS_CONFIG-./scripts/zero2.json}  # set but empty: no DeepSpeed (with LAUNCHER=python)

launch train.py \
    ${DS_CONFIG:+--deepspeed "$DS_CONFIG"} \
    --model_name_or_path "${MODEL:-./checkpoints/llava-v1.5-7b-base}" \
    --version plain \
    --data_path "${DATA_PATH:-../playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}" \
    --image_folder "${IMAGE_FOLDER:-../playground/data/LLaVA-Pretrain/images}" \
    --tune_mm_mlp_adapter True \
    --image_aspect_ratio "${IMAGE_ASPECT_RATIO:-square}" \
    --output_dir "${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain}" \
    --per_device_train_batch_size "${BATCH:-32}" \
    --save_steps "${SAVE_STEPS:-24000}" \
    --learning_rate "${LR:-1e-3}" \
    "${COMMON_ARGS[@]}" \
    ${EXTRA_ARGS:-}
