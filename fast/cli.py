"""`python -m fast`: one question, a LLaVA question file, or a V*Bench folder.

    python -m fast --image x.jpg --question "What pattern is on the blue object?" \
        --base CKPT/system1 --switch CKPT/switch --roi CKPT/roi --seg CKPT/seg
    python -m fast --question-file Q.jsonl --image-folder DIR --answers-file A.jsonl \
        --base B --switch SW --roi ROI --seg SEG [--evidence roi+seg] [--num-chunks N --chunk-idx K] [--batch-size B]
    python -m fast --vstar --bench-folder DIR --answers-file A.jsonl --base B --switch SW --roi ROI --seg SEG

Batch and V*Bench runs write LLaVA answer JSONL (trace in `metadata.trace`), `<answers>.traces.jsonl`
and `<answers>.config.json` (the AgentConfig and the memory report); both resume where they stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from eval.vstar_bench import VSTAR_DEFAULT_IMAGE_VIEW, VSTAR_IMAGE_VIEWS

from .agent import FastAgent
from .config import BITS, DTYPES, EVIDENCE_MODES, AgentConfig
from .run import answer_question_file, answer_vstar, config_path_for, file_stem, save_overlay


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = p.add_argument_group("what to answer (one of)")
    what.add_argument("--image", help="single question: the image")
    what.add_argument("--question", help="single question: its text")
    what.add_argument("--question-file", help="LLaVA question JSONL")
    what.add_argument("--vstar", action="store_true", help="V*Bench multiple choice by likelihood")
    p.add_argument("--image-folder", default="", help="images of --question-file")
    p.add_argument("--bench-folder", help="V*Bench folder (<category>/<stem>.jpg + .json)")
    p.add_argument("--answers-file", help="answers JSONL (batch and V*Bench)")
    p.add_argument("--traces-file", default=None, help="default: <answers>.traces.jsonl")
    p.add_argument(
        "--overlay-dir", default=None, help="write a PNG overlay (with a legend) of every System-2 trace here"
    )
    p.add_argument(
        "--trace-file",
        default=None,
        help="single question: write its trace JSON here (default: fast_traces/<image>_<question>.json)",
    )
    p.add_argument("--options", nargs="+", default=None, help="single question: score these options")
    models = p.add_argument_group("checkpoints")
    models.add_argument("--base", required=True, help="the llava-hf System-1 checkpoint the adapters share")
    models.add_argument("--switch", required=True)
    models.add_argument("--roi", default=None)
    models.add_argument("--seg", default=None)
    models.add_argument(
        "--sam", default=None, help="SAM directory (default: the one the seg checkpoint names)"
    )
    run = p.add_argument_group("run")
    run.add_argument("--mode", default="fast", choices=("fast", "system2-always", "system1"))
    run.add_argument("--evidence", default="roi+seg", choices=EVIDENCE_MODES)
    run.add_argument("--switch-decision", default="prefix", choices=("prefix", "generate"))
    run.add_argument("--seg-decoding", default="teacher", choices=("teacher", "generate"))
    run.add_argument(
        "--seg-retry-whole-image",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="segment on the whole image an object the proposed region yields no mask for",
    )
    run.add_argument(
        "--roi-wording",
        default=None,
        choices=("where", "what"),
        help="the ROI adapter's stage-1 wording (default: the one it records, else Chain-of-Spot's 'what')",
    )
    run.add_argument(
        "--option-image-view",
        default=VSTAR_DEFAULT_IMAGE_VIEW,
        choices=VSTAR_IMAGE_VIEWS,
        help="image of the options scored without evidence (V*Bench; SEAL and the FaST release: unpadded)",
    )
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--num-chunks", type=int, default=1)
    run.add_argument("--chunk-idx", type=int, default=0)
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="auto: bf16 on a GPU that supports it, else fp16 on CUDA, fp32 on CPU",
    )
    run.add_argument(
        "--bits",
        type=int,
        default=16,
        choices=BITS,
        help="4/8: the shared language model in bitsandbytes 4/8-bit",
    )
    run.add_argument("--switch-max-new-tokens", type=int, default=200)
    run.add_argument("--roi-max-new-tokens", type=int, default=128)
    run.add_argument("--seg-max-new-tokens", type=int, default=32)
    run.add_argument("--max-new-tokens", type=int, default=128, help="the final answer's")
    run.add_argument(
        "--question-suffix", default="", help="appended to every question (e.g. a short-answer hint)"
    )
    run.add_argument(
        "--confidence-threshold", type=float, default=0.0,
        help="fast mode: also send System 1's unsure answers (confidence below this) to System 2; 0: off",
    )  # fmt: skip
    run.add_argument("--model-id", default="fast")
    run.add_argument(
        "--verbose", action="store_true", help="keep the libraries' log chatter (FAST_VERBOSE=1)"
    )
    run.add_argument("--temperature", type=float, default=0.0, help="only greedy decoding (0) is supported")
    return p


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        base=args.base,
        switch=args.switch,
        roi=args.roi,
        seg=args.seg,
        sam=args.sam,
        mode=args.mode.replace("-", "_"),
        evidence=args.evidence,
        switch_decision=args.switch_decision,
        seg_decoding=args.seg_decoding,
        seg_retry_whole_image=args.seg_retry_whole_image,
        device=args.device,
        dtype=args.dtype,
        bits=args.bits,
        switch_max_new_tokens=args.switch_max_new_tokens,
        roi_max_new_tokens=args.roi_max_new_tokens,
        seg_max_new_tokens=args.seg_max_new_tokens,
        answer_max_new_tokens=args.max_new_tokens,
        question_suffix=args.question_suffix,
        batch_size=args.batch_size,
        roi_wording=args.roi_wording,
        option_image_view=args.option_image_view,
        confidence_threshold=args.confidence_threshold,
    )


def check_cli_inputs(args: argparse.Namespace):
    """Every input checked before any model loads; a bad one exits with one line (no traceback) naming it.
    Returns the single question's image (read here, so an unreadable one fails now)."""
    from eval.checks import InputError, check_checkpoint, check_dir, fail
    from eval.qa_files import AnswersBusy, AnswersFile, QuestionFileError, read_questions

    try:
        for flag in ("base", "switch", "roi", "seg", "sam"):
            check_checkpoint(getattr(args, flag), f"--{flag}", check_base=False)
        image = None
        if args.image is not None:
            from roillava.data import open_image

            try:
                image = open_image(Path(args.image))
            except OSError as e:
                raise InputError(f"--image: {e}") from None
        if args.question is not None and not args.question.strip():
            raise InputError("--question is empty")
        if args.question_file:
            questions = read_questions(args.question_file)
            if any(q.get("image") for q in questions):
                check_dir(args.image_folder or ".", "--image-folder")
        if args.vstar:
            check_dir(args.bench_folder, "--bench-folder")
        if args.answers_file and (args.question_file or args.vstar):
            with AnswersFile(args.answers_file, {}, quiet=True):
                pass
    except (InputError, QuestionFileError, AnswersBusy, FileNotFoundError) as e:
        raise fail(e) from None
    return image


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    single = args.image is not None or args.question is not None
    modes = [single, args.question_file is not None, args.vstar]
    if sum(modes) != 1:
        p.error("give exactly one of: --image with --question, --question-file, --vstar")
    if single and (args.image is None or args.question is None):
        p.error("a single question needs both --image and --question")
    if (args.question_file or args.vstar) and not args.answers_file:
        p.error("--answers-file is required for --question-file and --vstar")
    if args.vstar and not args.bench_folder:
        p.error("--vstar needs --bench-folder")
    if args.temperature != 0:
        p.error("only greedy decoding is supported (--temperature 0)")
    from eval.logs import quiet_third_party

    quiet_third_party(args.verbose or None)
    image = check_cli_inputs(args)
    config = config_from_args(args)
    print("[fast] " + config.to_json().replace("\n", " "), file=sys.stderr)
    agent = FastAgent(config)
    print("[fast] " + agent.model.memory.summary(), file=sys.stderr)
    for note in agent.model.token_notes:
        print(f"[fast] token ids: {note}", file=sys.stderr)

    if single:
        name = file_stem(f"{Path(args.image).stem}_{args.question}")
        trace = agent.answer(image, args.question, options=args.options, question_id=name)
        print(trace.readable())
        trace_file = Path(args.trace_file or Path("fast_traces") / f"{name}.json")
        trace_file.parent.mkdir(parents=True, exist_ok=True)
        trace_file.write_text(json.dumps({**trace.to_dict(), "image": str(args.image)}, indent=1))
        print(f"trace: {trace_file}")
        if args.overlay_dir:
            print(f"overlay: {save_overlay(image, trace, args.overlay_dir, name)}")
        return

    record = {"agent_config": json.loads(config.to_json()), "memory": agent.model.memory.as_dict()}
    if config.roi:
        record["roi_wording"] = {
            "wording": agent.model.roi_config.wording,
            "source": agent.model.roi_wording_source,
        }
    Path(args.answers_file).parent.mkdir(parents=True, exist_ok=True)
    config_path_for(args.answers_file).write_text(json.dumps(record, indent=1))
    common = {
        "traces_file": args.traces_file,
        "batch_size": args.batch_size,
        "num_chunks": args.num_chunks,
        "chunk_idx": args.chunk_idx,
        "model_id": args.model_id,
        "overlay_dir": args.overlay_dir,
    }
    if args.vstar:
        summary = answer_vstar(agent, args.bench_folder, args.answers_file, **common)
    else:
        summary = answer_question_file(
            agent, args.question_file, args.image_folder, args.answers_file, **common
        )
    print(json.dumps(summary))
