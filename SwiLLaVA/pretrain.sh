#!/bin/sh
# Switch adapter, stage 1: projector alignment on captions (plain template; SEAL's recipe).
# The language model and vision tower stay frozen. By default only the perceiver object projector trains
# (SEAL's "perceiver" run: lr 2e-4, 5 epochs, batch 32, ZeRO-2): the llava-hf base already has an aligned
# MLP projector. PROJECTORS=mlp,object also aligns the MLP projector (even records through it, odd
# records through the perceiver); PROJECTORS=mlp aligns it alone (SEAL's "linear" run used lr 2e-3, 1 epoch).
# Writes $OUTPUT_DIR/mm_projector_object.safetensors (keys model.mm_projector_object.*, SEAL's layout),
# plus mm_projector.safetensors when the MLP projector trains, and swillava_config.json.
# Every setting can be overridden from the environment, e.g. the toy world:
#   MODEL=../playground/demo/tiny_base DATA_PATH=../playground/data/toy/blip_laion_cc_sbu_toy.json \
#   IMAGE_FOLDER=../playground/data/toy/images BF16=False sh pretrain.sh
set -eu
cd "$(dirname "$0")"
. ./scripts/launch.sh

DS_CONFIG=${DS_CONFIG-./scripts/zero2.json}  # set but empty: no DeepSpeed (with LAUNCHER=python)
PROJECTORS=${PROJECTORS:-object}
case "$PROJECTORS" in
    object) TUNE_MLP=False; TUNE_OBJECT=True ;;
    mlp) TUNE_MLP=True; TUNE_OBJECT=False ;;
    mlp,object | object,mlp) TUNE_MLP=True; TUNE_OBJECT=True ;;
    *) echo "PROJECTORS must be object, mlp or mlp,object (got $PROJECTORS)" >&2; exit 2 ;;
esac

launch train.py \
    ${DS_CONFIG:+--deepspeed "$DS_CONFIG"} \
    --model_name_or_path "${MODEL:-llava-hf/llava-1.5-7b-hf}" \
    --version plain \
    --data_path "${DATA_PATH:-../playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}" \
    --image_folder "${IMAGE_FOLDER:-../playground/data/LLaVA-Pretrain/images}" \
    --tune_mm_mlp_adapter "$TUNE_MLP" \
    --tune_object_projector "$TUNE_OBJECT" \
    --bf16 "${BF16:-True}" \
    --output_dir "${OUTPUT_DIR:-./checkpoints/swillava-v1.5-7b-pretrain}" \
    --num_train_epochs "${EPOCHS:-5}" \
    --max_steps "${MAX_STEPS:--1}" \
    --per_device_train_batch_size "${BATCH:-32}" \
    --gradient_accumulation_steps "${GRAD_ACC:-1}" \
    --save_strategy steps \
    --save_steps "${SAVE_STEPS:-24000}" \
    --save_total_limit 1 \
    --learning_rate "${LR:-2e-4}" \
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
