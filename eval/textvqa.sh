#!/usr/bin/env bash
# TextVQA val with OCR-token prompts, LLaVA-1.5 protocol (eval/README.md, TextVQA).
#   bash eval/textvqa.sh --mode s1|cos|fast --model-path CKPT [--roi-path ..] [--batch-size 8]
# Reads playground/data/eval/textvqa/llava_textvqa_val_v051_ocr.jsonl + train_images/; scores against
# TextVQA_0.5.1_val.json by question_id.
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" textvqa "$@"
