#!/usr/bin/env bash
# ReasonSeg gIoU / cIoU as LISA computes them (eval/README.md, ReasonSeg), through SegLLaVA's validator.
#   bash eval/reasonseg.sh --model SEG_CKPT [--split val|test] [--dataset-dir DIR] [--mode teacher|generate|both]
#                          [--out DIR] [any other segllava.validate flag, e.g. --batch_size 8 --limit 20]
# Reads DIR/reason_seg/ReasonSeg/<split>/*.jpg + .json (default DIR: ./dataset); SEG_CKPT is a SegLLaVA adapter
# or merged directory. Writes OUT/metrics.json and OUT/predictions.jsonl (default OUT:
# DIR/reason_seg/ReasonSeg/answers/<split>/<checkpoint name>, next to the data as the other runners do). Paths are
# relative to the caller's directory.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
MODEL="" SPLIT=val DATA=./dataset MODE=both OUT="" REST=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --split) SPLIT="$2"; shift 2 ;;
        --dataset-dir|--dataset_dir) DATA="$2"; shift 2 ;;
        --mode) MODE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        *) REST+=("$1"); shift ;;
    esac
done
[[ -n "$MODEL" ]] || { echo "usage: bash eval/reasonseg.sh --model SEG_CKPT [--split val|test] ..." >&2; exit 2; }
OUT="${OUT:-$DATA/reason_seg/ReasonSeg/answers/$SPLIT/$(basename "$MODEL")}"
mkdir -p "$OUT"
PYTHONSAFEPATH=1 exec "$PY" -m segllava.validate --model "$MODEL" --dataset_dir "$DATA" --val_dataset "ReasonSeg|$SPLIT" \
    --mode "$MODE" --out "$OUT/metrics.json" --predictions "$OUT/predictions.jsonl" ${REST[@]+"${REST[@]}"}
