#!/usr/bin/env bash
# V*Bench by likelihood multiple choice, SEAL's protocol (eval/README.md, V*Bench).
#   bash eval/vstar.sh --mode s1|cos|fast --model-path CKPT [--roi-path ..] [--bench-dir DIR]
# Reads <bench-dir>/{direct_attributes,relative_position}/<stem>.json + image (default
# playground/data/eval/vstar_bench; the toy set is playground/data/eval/vstar_toy).
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" vstar "$@"
