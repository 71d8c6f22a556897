"""Two-stage Chain-of-Spot answerer: region of interest first, then the answer from both views.

Batched (both stages), left-padded, greedy and resumable exactly like `roillava.answer`; writes
LLaVA answer JSONL whose `metadata` is `{"roi_box", "roi_text", "fallback", "constrained_box"}`
(`fallback`: why the full image was used instead of the proposed box, or null; `constrained_box`:
whether stage 1 decoded under the box grammar, which `--no-constrained-box` turns off). The stage-1
wording is the one the checkpoint records (`roi.resolve_roi_wording`) unless `--roi-wording` says
otherwise.

    python -m roillava.roi_answer --model-path CKPT --question-file Q.jsonl --image-folder DIR \\
        --answers-file A.jsonl [--batch-size 8] [--roi-wording where|what] [--roi-min-side 0.02] \\
        [--no-constrained-box]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .answer import add_answer_args, answer_errors, check_answer_args, load_from_args
from .roi import DEFAULT_MIN_SIDE, ROI_WORDINGS, RoiConfig, resolve_roi_wording, roi_answer_file
from .wording import recorded_region_only


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_answer_args(p)
    p.add_argument(
        "--roi-wording", choices=ROI_WORDINGS, default=None, help="default: the checkpoint's recorded wording"
    )
    p.add_argument("--roi-min-side", type=float, default=DEFAULT_MIN_SIDE)
    p.add_argument("--roi-max-new-tokens", type=int, default=128)
    p.add_argument(
        "--no-constrained-box",
        dest="constrained_box",
        action="store_false",
        help="decode the stage-1 box freely, as Chain-of-Spot does (default: under the box grammar)",
    )
    args = p.parse_args(argv)
    wording, why = resolve_roi_wording(args.model_path, args.roi_wording)
    print(f"ROI wording: {wording!r} ({why})", flush=True)
    config = RoiConfig(
        wording=wording,
        min_side=args.roi_min_side,
        template=args.conv_mode,
        roi_max_new_tokens=args.roi_max_new_tokens,
        max_new_tokens=args.max_new_tokens,
        constrained_box=args.constrained_box,
        region_only=recorded_region_only(args.model_path),
    )
    if config.region_only:
        print(
            "the adapter was trained on the region turn alone: each answer is its stage-1 region", flush=True
        )
    from eval.checks import fail
    from eval.logs import quiet_third_party
    from eval.qa_files import model_signature

    quiet_third_party(args.verbose or None)
    try:
        check_answer_args(args)
    except answer_errors() as e:
        raise fail(e) from None
    model, processor = load_from_args(args)
    summary = roi_answer_file(
        model,
        processor,
        args.question_file,
        args.image_folder,
        args.answers_file,
        config=config,
        batch_size=args.batch_size,
        model_id=Path(args.model_path).name,
        num_chunks=args.num_chunks,
        chunk_idx=args.chunk_idx,
        model_signature=model_signature(args.model_path, args.model_base),
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
