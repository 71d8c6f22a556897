#!/usr/bin/env bash
# ScienceQA-IMG test, LLaVA-1.5 protocol (eval/README.md, ScienceQA).
#   bash eval/sqa.sh --mode s1|cos|fast --model-path CKPT [--roi-path ..] [--batch-size 8]
# Reads playground/data/eval/scienceqa/llava_test_CQM-A.json + images/test/; scores with
# pid_splits.json and problems.json.
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" sqa "$@"
