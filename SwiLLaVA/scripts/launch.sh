# Sourced by pretrain.sh and finetune_lora.sh (POSIX sh): how to start the Python entry point.
# LAUNCHER=deepspeed (default) uses every local GPU, or NUM_GPUS of them; on a CPU-only machine
# DeepSpeed runs one gloo process. LAUNCHER=torchrun, or LAUNCHER=python (no launcher; pass
# DS_CONFIG= empty to run without DeepSpeed).
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
        python) python "$@" ;;
        *) echo "unknown LAUNCHER=$LAUNCHER (deepspeed | torchrun | python)" >&2; return 2 ;;
    esac
}
