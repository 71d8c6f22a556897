#!/usr/bin/env bash
# MME, LLaVA-1.5 protocol (eval/README.md, MME).
#   bash eval/mme.sh --mode s1|cos|fast --model-path CKPT [--roi-path ..] [--batch-size 8]
# Reads playground/data/eval/MME/llava_mme.jsonl + MME_Benchmark_release_version/; writes
# eval_tool/answers/<ckpt>/<category>.txt for the official calculation.py.
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" mme "$@"
