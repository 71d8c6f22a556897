#!/usr/bin/env bash
# GQA testdev-balanced, LLaVA-1.5 protocol (eval/README.md, GQA).
#   bash eval/gqa.sh --mode s1|cos|fast --model-path CKPT [--roi-path ..] [--batch-size 8] [--gpus 0,1,2,3]
# Reads playground/data/eval/gqa/llava_gqa_testdev_balanced.jsonl + data/images/; writes
# answers/<split>/<ckpt>/merge.jsonl and data/testdev_balanced_predictions.json; scores against
# data/testdev_balanced_questions.json when present.
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" gqa "$@"
