#!/usr/bin/env bash
# VQAv2 test-dev, LLaVA-1.5 protocol (eval/README.md, VQAv2).
#   bash eval/vqav2.sh --mode s1|cos|fast --model-path CKPT [--roi-path ..] [--batch-size 8] [--gpus 0,1,2,3]
# Reads playground/data/eval/vqav2/llava_vqav2_mscoco_test-dev2015.jsonl + test2015/; writes
# answers/<split>/<ckpt>/merge.jsonl and answers_upload/<split>/<ckpt>.json (EvalAI); val accuracy
# when --split names a val file and v2_mscoco_val2014_annotations.json is present.
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" vqav2 "$@"
