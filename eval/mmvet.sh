#!/usr/bin/env bash
# MM-Vet, LLaVA-1.5 protocol (eval/README.md, MM-Vet): writes the submission file for its grader.
#   bash eval/mmvet.sh --mode s1|cos|fast --model-path CKPT [--roi-path ..] [--batch-size 8]
# Reads playground/data/eval/mm-vet/llava-mm-vet.jsonl + images/; writes results/<ckpt>.json.
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" mmvet "$@"
