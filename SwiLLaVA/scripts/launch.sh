# Sourced by pretrain.sh and finetune_lora.sh (POSIX sh): how to start the Python entry point.
# LAUNCHER=deepspeed (default) uses every local GPU, or NUM_GPUS of them; on a CPU-only machine
# DeepSpeed runs one gloo process. LAUNCHER=torchrun, or LAUNCHER=python (no launcher; pass
# DS_CONFIG= empty to run without DeepSpeed).
LAUNCHER=${LAUNCHER:-deepspeed}
MASTER_PORT=${MASTER_PORT:-$((29500 + $$ % 1000))}
launch() {
    case "$LAUNCHER" in
        deepspeed) deepspeed ${NUM_GPUS:+--num_gpus "$NUM_GPUS"} --master_port "$MASTER_PORT" "$@" ;;
        torchrun) torchrun --nproc_per_node "${NUM_GPUS:-1}" --master_port "$MASTER_PORT" "$@" ;;
        python) python "$@" ;;
        *) echo "unknown LAUNCHER=$LAUNCHER (deepspeed | torchrun | python)" >&2; return 2 ;;
    esac
}
