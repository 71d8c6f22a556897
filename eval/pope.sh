#!/usr/bin/env bash
# POPE, the three COCO splits, LLaVA-1.5 protocol (eval/README.md, POPE).
#   bash eval/pope.sh --mode s1|cos|fast --model-path CKPT [--roi-path ..] [--batch-size 8]
# Reads playground/data/eval/pope/llava_pope_test.jsonl + val2014/; labels coco/coco_pope_<split>.json,
# matched by question_id and (image, question), never by order.
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" pope "$@"
