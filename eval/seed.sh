#!/usr/bin/env bash
# SEED-Bench image questions, LLaVA-1.5 protocol (eval/README.md, SEED-Bench).
#   bash eval/seed.sh --mode s1|cos|fast --model-path CKPT [--roi-path ..] [--batch-size 8] [--gpus 0,1,2,3]
# Reads playground/data/eval/seed_bench/llava-seed-bench.jsonl; scores against SEED-Bench.json and
# writes answers_upload/<ckpt>.jsonl.
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" seed "$@"
