# Sourced by the training scripts: how to start the Python entry point.
# LAUNCHER=deepspeed (default) uses every local GPU, or NUM_GPUS of them; on a CPU-only machine
# DeepSpeed runs one gloo process. LAUNCHER=python runs one process without a launcher (its
# single-process distributed environment is set here, so DeepSpeed needs no mpi4py).
LAUNCHER=${LAUNCHER:-deepspeed}
# A port the OS reports free (bound to port 0): trainings started side by side on one machine (two
# seeds, a test beside a demo) drew colliding random ports before.
MASTER_PORT=${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
# bf16 (the default) needs a CUDA GPU that supports it, or --use_cpu True on a CPU: elsewhere the run
# falls back to fp32 with a notice instead of stopping in transformers' "doesn't support bf16/gpu".
if [ -z "${BF16:-}" ]; then
    case " ${EXTRA_ARGS:-} " in
        *"--use_cpu True"* | *"--use_cpu=True"*) BF16=True ;;
        *)
            if python -c "import sys, torch; sys.exit(not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()))" 2>/dev/null; then
                BF16=True
            else
                BF16=False
                echo "notice: no CUDA GPU with bf16 here: training in fp32 (BF16=False); BF16=True EXTRA_ARGS='--use_cpu True' trains in bf16 on the CPU" >&2
            fi ;;
    esac
fi

# The DeepSpeed launcher's own INFO lines only with FAST_VERBOSE=1 (its errors always).
case "${FAST_VERBOSE:-}" in 1 | true | yes) DS_LOG_LEVEL=${DS_LOG_LEVEL:-info} ;; *) DS_LOG_LEVEL=${DS_LOG_LEVEL:-error} ;; esac
launch() {
    case "$LAUNCHER" in
        deepspeed) deepspeed ${NUM_GPUS:+--num_gpus "$NUM_GPUS"} --master_port "$MASTER_PORT" --log_level "$DS_LOG_LEVEL" "$@" ;;
        torchrun) torchrun --nproc_per_node "${NUM_GPUS:-1}" --master_port "$MASTER_PORT" "$@" ;;
        python) RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT="$MASTER_PORT" python "$@" ;;
        *) echo "unknown LAUNCHER=$LAUNCHER (deepspeed | torchrun | python)" >&2; return 2 ;;
    esac
}

# TF32 matmuls (LLaVA-1.5 passes --tf32 True) exist on Ampere and newer GPUs only, and the Trainer stops
# on --tf32 True elsewhere. TF32=auto (default) passes True when nvidia-smi reports compute capability
# 8.0 or more and leaves the flag out otherwise (a CPU, an older GPU); TF32=True/False forces it.
TF32=${TF32:-auto}
if [ "$TF32" = auto ]; then
    TF32=
    CAPABILITY=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 || true)
    if [ "${CAPABILITY%%.*}" -ge 8 ] 2>/dev/null; then TF32=True; fi
fi

# Run plumbing every recipe shares (precision, length, schedule shape, logging, checkpoints);
# each script adds its own data, model and hyper-parameters.
COMMON_ARGS=(
    --bf16 "${BF16:-True}"
    --num_train_epochs "${EPOCHS:-1}"
    --max_steps "${MAX_STEPS:--1}"
    --gradient_accumulation_steps "${GRAD_ACC:-1}"
    --save_strategy steps
    --save_total_limit 1
    --weight_decay 0.
    --warmup_steps 0.03
    --lr_scheduler_type cosine
    --logging_steps "${LOG_STEPS:-1}"
    --model_max_length "${MAX_LEN:-2048}"
    --activation_checkpointing "${GRAD_CKPT:-True}"
    --dataloader_num_workers "${WORKERS:-4}"
    --seed "${SEED:-42}"
    --report_to "${REPORT_TO:-none}"
    ${TF32:+--tf32 "$TF32"}
)
